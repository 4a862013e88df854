"""What differs between the Pythons we support (3.10 to 3.13), in one place.

Ubuntu 22.04 ships 3.10: it lacks ``tomllib`` (the ``tomli`` package is the same parser under
another name) and ``asyncio.timeout`` (aiohttp already depends on ``async-timeout`` there,
which has the same interface). On 3.10 ``asyncio.TimeoutError`` is not the builtin
``TimeoutError``: code that catches a timeout of ``asyncio.wait_for`` or aiohttp catches
``asyncio.TimeoutError``, which names the right class on every version.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout

    import tomllib
else:  # pragma: no cover - exercised by the 3.10 run in .ci/run
    import tomli as tomllib
    from async_timeout import timeout

__all__ = ["timeout", "tomllib"]
