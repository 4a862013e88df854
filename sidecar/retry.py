"""One retry policy and one helper, for everything the sidecar tries again.

A :class:`RetryPolicy` says how long to wait before retry number *n* (0-based): exponential
from ``base`` up to ``cap``, with jitter, and never less than the server's ``Retry-After``
(itself capped, so that a server or a receiver cannot park us for days); and how many attempts
are made in all (``max_attempts``; ``None``: until cancelled). :func:`parse_retry_after` is the
one parser of ``Retry-After``, in seconds or as an HTTP date.

:func:`retrying` runs a REST call under a policy: a :class:`~sidecar.errors.MattermostError`
whose ``retryable`` is true is tried again; :class:`~sidecar.errors.Unauthorized` is re-raised
at once, before anything else looks at it. Tests pass :data:`NO_WAIT` (or a policy with their
own ``sleep`` and ``clock``) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timezone
from typing import TypeVar

from sidecar.errors import MattermostError, Unauthorized

T = TypeVar("T")

MAX_RETRY_AFTER = 3600.0  # seconds: the longest Retry-After honoured


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After (delay-seconds or HTTP-date); ``None`` if unusable.

    ``now`` is the wall clock (Unix seconds) an HTTP date is measured against.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


async def _sleep(delay: float) -> None:
    await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to wait between attempts, and how many to make.

    ``jitter`` is the random share of each wait: 1.0 waits ``uniform(0, d)`` ("full jitter"),
    0.5 ``uniform(d/2, d)``, 0.0 exactly ``d``, where ``d = min(cap, base * 2**n)``.
    ``sleep``, ``clock`` and ``rng`` are seams for tests.
    """

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 1.0
    max_attempts: int | None = None  # attempts in all, the first included; None: no limit
    retry_after_cap: float = MAX_RETRY_AFTER
    sleep: Callable[[float], Awaitable[None]] = field(default=_sleep, compare=False)
    clock: Callable[[], float] = field(default=time.time, compare=False)
    rng: random.Random | None = field(default=None, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry number ``attempt`` (0-based), at least ``retry_after``."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(attempt, 0), 64))
        delay = (self.rng or random).uniform(ceiling * (1.0 - self.jitter), ceiling)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.retry_after_cap))
        return float(delay)

    def retry_after(self, value: str | None) -> float | None:
        """A ``Retry-After`` header in seconds, an HTTP date measured against ``clock``."""
        return parse_retry_after(value, now=self.clock())

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` attempts made are all this policy allows."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def with_attempts(self, max_attempts: int | None) -> RetryPolicy:
        """The same waits, another number of attempts."""
        return replace(self, max_attempts=max_attempts)


async def _no_sleep(_delay: float) -> None:
    await asyncio.sleep(0)  # still yield, as a real wait would


NO_WAIT = RetryPolicy(base=0.0, cap=0.0, retry_after_cap=0.0, sleep=_no_sleep)
"""A policy that never waits (tests)."""

OnRetry = Callable[[MattermostError, int, float], None]
"""Told ``(error, attempts made so far, delay)`` before each wait."""


async def retrying(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, *, on_retry: OnRetry | None = None
) -> T:
    """``await call()`` until it succeeds, retrying what :class:`MattermostError` says may help.

    :class:`Unauthorized` is re-raised at once; an error that is not retryable, or the last
    one when the policy's attempts are used up, is raised to the caller. Cancel the caller to
    give up earlier.
    """
    attempts = 0
    while True:
        try:
            return await call()
        except Unauthorized:
            raise
        except MattermostError as exc:
            attempts += 1
            if not exc.retryable or policy.exhausted(attempts):
                raise
            delay = policy.delay(attempts - 1, exc.retry_after)
            if on_retry is not None:
                on_retry(exc, attempts, delay)
            await policy.sleep(delay)
