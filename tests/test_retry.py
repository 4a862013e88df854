"""Unit tests of the one retry policy and its helper (no test here waits for real)."""

from __future__ import annotations

import random

import pytest

from sidecar.errors import BadAnswer, MattermostError, SidecarError, Unauthorized
from sidecar.retry import NO_WAIT, RetryPolicy, parse_retry_after, retrying

NOW = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT


class Slept:
    """An injected ``sleep`` that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.waits.append(delay)


class Flaky:
    """A call that raises each scripted error once, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_delays_grow_to_the_cap_with_jitter_and_honour_retry_after() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0, jitter=0.5, rng=random.Random(3))
    for attempt in range(8):
        ceiling = min(8.0, 2.0**attempt)
        assert ceiling / 2 <= policy.delay(attempt) <= ceiling
    assert RetryPolicy(base=1.0, cap=8.0, jitter=0.0).delay(2) == 4.0
    assert policy.delay(0, retry_after=30.0) == 30.0
    assert RetryPolicy(retry_after_cap=5.0).delay(0, retry_after=10**9) == 5.0


def test_retry_after_as_an_http_date_uses_the_injected_clock() -> None:
    policy = RetryPolicy(clock=lambda: NOW)
    assert policy.retry_after("Wed, 21 Oct 2015 07:28:30 GMT") == 30.0
    assert policy.retry_after("120") == 120.0
    assert policy.retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=NOW) == 0.0


async def test_retryable_errors_are_retried_with_the_policys_waits() -> None:
    slept = Slept()
    policy = RetryPolicy(base=1.0, cap=4.0, jitter=0.0, sleep=slept)
    call = Flaky(
        MattermostError("503", status=503),
        MattermostError("timeout"),
        MattermostError("429", status=429, retry_after=10.0),
    )
    told: list[int] = []
    assert await retrying(call, policy, on_retry=lambda _e, n, _d: told.append(n)) == "ok"
    assert call.calls == 4
    assert slept.waits == [1.0, 2.0, 10.0]
    assert told == [1, 2, 3]


@pytest.mark.parametrize(
    "error",
    [MattermostError("404", status=404), BadAnswer("bad shape"), Unauthorized("401", status=401)],
)
async def test_what_cannot_succeed_is_raised_at_once(error: MattermostError) -> None:
    call = Flaky(error)
    with pytest.raises(type(error)):
        await retrying(call, NO_WAIT)
    assert call.calls == 1


def test_unauthorized_is_never_a_retryable_error() -> None:
    # Even with a status that would otherwise be retried, a rejected token stays final.
    assert not Unauthorized("401", status=None).retryable
    assert isinstance(Unauthorized("401"), SidecarError)


async def test_max_attempts_raises_the_last_error() -> None:
    call = Flaky(*(MattermostError(f"503 #{i}", status=503) for i in range(5)))
    with pytest.raises(MattermostError, match="#2"):
        await retrying(call, NO_WAIT.with_attempts(3))
    assert call.calls == 3
