"""What differs between the Pythons we support (3.10 to 3.13), in one place.

Ubuntu 22.04 ships 3.10. It lacks ``tomllib`` (the ``tomli`` package is the same parser under
another name), ``asyncio.timeout`` (aiohttp already depends on ``async-timeout`` there, which
has the same interface) and ``enum.StrEnum`` (a two-line equivalent below). On 3.10
``asyncio.TimeoutError`` is not the builtin ``TimeoutError``: code that catches a timeout of
``asyncio.wait_for`` or aiohttp catches ``asyncio.TimeoutError``, which names the right class
on every version.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout
    from enum import StrEnum

    import tomllib
else:  # pragma: no cover - exercised by the 3.10 run in .ci/run
    from enum import Enum

    import tomli as tomllib
    from async_timeout import timeout

    class StrEnum(str, Enum):
        """3.11's ``enum.StrEnum``: members are strings and print as their value."""

        def __str__(self) -> str:
            return str(self.value)


__all__ = ["StrEnum", "timeout", "tomllib"]
