"""Unit tests of the outbox against a scripted callback client and in-memory REST and state.

Each test waits on the outbox's own drain point (``drain``), never on a sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import pytest
from fakes import (
    BOT,
    SETTINGS,
    FakeRest,
    FakeState,
    ScriptedCallbacks,
    answer,
    config,
    done,
    job,
)

from harness import wait_until
from sidecar import history
from sidecar.config import WebhookConfig
from sidecar.delivery import Attempt, Failure
from sidecar.errors import MattermostError, Unauthorized
from sidecar.guard import FORBIDDEN_MESSAGE
from sidecar.health import Metrics
from sidecar.outbox import Callbacks, Outbox
from sidecar.replies import Replier
from sidecar.retry import NO_WAIT
from sidecar.runtime import Live, Runtime
from sidecar.state import Job


def runtime(**webhook: Any) -> Runtime:
    """The runtime of ``config(**webhook)``, with both reply overrides on."""
    return replace(Runtime.build(config(**webhook), bot_user_id=BOT.id), reply=SETTINGS)


class Rig:
    def __init__(
        self,
        callbacks: Callbacks,
        *,
        retries: int = 2,
        max_in_flight: int = 4,
        backlog: int | None = None,
        **webhook: Any,
    ) -> None:
        self.callbacks = callbacks
        self.rest = FakeRest()
        self.state = FakeState()
        self.metrics = Metrics("test")
        self.fatal: list[BaseException] = []
        self.live = Live(runtime(retries=retries, **webhook))
        self.outbox = Outbox(
            state=cast(Any, self.state),
            callbacks=callbacks,
            replier=Replier(rest=self.rest, metrics=self.metrics, retry=NO_WAIT.with_attempts(3)),
            metrics=self.metrics,
            live=self.live,
            max_in_flight=max_in_flight,
            on_fatal=self.fatal.append,
            delivery_retry=NO_WAIT,
            backlog=backlog,
        )

    async def run(self) -> None:
        self.outbox.submit([job()], done())
        assert await self.outbox.drain(grace=30) == 0
        assert self.outbox.depth == 0

    def deliveries(self, outcome: str) -> float:
        return float(self.metrics.child(self.metrics.deliveries, "hook", outcome)._value.get())


REPLY = json.dumps({"text": "pong"}).encode()


async def test_a_5xx_is_retried_then_the_reply_is_posted() -> None:
    rig = Rig(ScriptedCallbacks(answer(503, retry_after=2.0), answer(200, REPLY)))
    await rig.run()
    assert len(rig.callbacks.sent) == 2
    assert [p["message"] for p in rig.rest.created] == ["pong"]
    assert rig.state.outcomes() == [history.DELIVERED]
    assert len(rig.state.updates) == 1  # the retry's schedule was committed before waiting
    assert (rig.deliveries("retried"), rig.deliveries("delivered")) == (1, 1)


async def test_a_refused_address_is_not_retried_and_is_labelled_refused() -> None:
    refused = Attempt(None, b"", f"{FORBIDDEN_MESSAGE} (10.0.0.1)", 1.0, None, Failure.REFUSED)
    rig = Rig(ScriptedCallbacks(refused))
    await rig.run()
    assert len(rig.callbacks.sent) == 1
    assert rig.state.outcomes() == [history.REFUSED]
    assert (rig.deliveries("refused"), rig.deliveries("failed")) == (1, 0)


async def test_timeouts_use_up_the_retries_then_a_dead_letter() -> None:
    timeout = Attempt(None, b"", "timeout", 1.0, None, Failure.TIMEOUT)
    rig = Rig(ScriptedCallbacks(timeout, timeout, timeout), retries=2)
    await rig.run()
    assert len(rig.callbacks.sent) == 3
    assert rig.state.outcomes() == [history.FAILED]
    assert (rig.deliveries("retried"), rig.deliveries("failed")) == (2, 1)


async def test_a_too_large_answer_is_delivered_without_a_reply() -> None:
    large = Attempt(200, b"", "response too large (> 1 MiB)", 1.0, None, Failure.TOO_LARGE)
    rig = Rig(ScriptedCallbacks(large))
    await rig.run()
    assert rig.state.outcomes() == [history.NO_REPLY]
    assert rig.rest.created == []


async def test_a_reply_is_retried_while_the_server_fails_then_given_up() -> None:
    rig = Rig(ScriptedCallbacks(answer(200, REPLY)))
    rig.rest.failures["create_post"] = [MattermostError("503", status=503) for _ in range(3)]
    await rig.run()
    assert rig.rest.calls.count("create_post") == 3  # the policy's three attempts
    assert rig.state.outcomes() == [history.REPLY_FAILED]


async def test_unauthorized_while_replying_is_fatal_and_not_retried() -> None:
    rig = Rig(ScriptedCallbacks(answer(200, REPLY)))
    rig.rest.failures["create_post"] = [Unauthorized("401", status=401)]
    await rig.run()
    assert rig.rest.calls.count("create_post") == 1
    assert [type(e) for e in rig.fatal] == [Unauthorized]


def test_webhook_config_is_what_the_fakes_build() -> None:
    hook = config().webhooks[0]
    assert isinstance(hook, WebhookConfig) and hook.callback_urls == (
        "https://hooks.example.com/hook",
    )


async def test_a_resumed_job_waits_out_its_schedule_on_the_injected_clock() -> None:
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    rig = Rig(ScriptedCallbacks(answer(503), answer(200)), retries=1)
    rig.outbox._delivery_retry = replace(
        NO_WAIT, clock=lambda: 1000.0, sleep=sleep, base=2.0, cap=2.0, jitter=0.0
    )
    resumed = job()
    resumed.next_at = 1030.0  # scheduled before a restart
    rig.outbox.submit([resumed], done())
    assert await rig.outbox.drain(grace=30) == 0
    assert waits == [30.0, 2.0]  # the schedule, then the retry's backoff
    assert rig.state.updates[-1].next_at == 1002.0  # committed on the same clock
    assert rig.state.outcomes() == [history.DELIVERED]


# --- a reload while deliveries are in flight ------------------------------------------------------


class GatedCallbacks:
    """Answers 503 to the first POST once ``release`` is set, 200 with a reply to the others;
    records each attempt's timeout."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.timeouts: list[tuple[str, float]] = []

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> Attempt:
        self.timeouts.append((headers["webhook-id"], timeout))
        if len(self.timeouts) == 1:
            self.started.set()
            await self.release.wait()
            return answer(503)
        return answer(200, REPLY)


async def test_a_reload_in_flight_leaves_each_job_with_the_runtime_it_started_with() -> None:
    callbacks = GatedCallbacks()
    rig = Rig(callbacks, retries=1, username="before", timeout=5)
    first = replace(job(), id="w1/0", webhook_id="w1")
    rig.outbox.submit([first], done())
    await callbacks.started.wait()  # the first job's first attempt is in flight
    rig.live.runtime = runtime(retries=1, username="after", timeout=7)  # the reload's swap
    second = replace(job(), id="w2/0", webhook_id="w2")
    rig.outbox.submit([second], done())
    callbacks.release.set()
    assert await rig.outbox.drain(grace=30) == 0
    # Each reply with the runtime its job started with: the webhook's username then.
    assert len(rig.rest.created) == 2
    by_job = {p["props"]["override_username"]: p["pending_post_id"] for p in rig.rest.created}
    assert by_job["before"] == _pending(first) and by_job["after"] == _pending(second)
    # Except, as documented, each delivery attempt: it reads the current runtime (the retry
    # of the first job, made after the reload, has the new timeout).
    assert sorted(callbacks.timeouts) == [("w1", 5), ("w1", 7), ("w2", 7)]


def _pending(j: Job) -> str:
    from sidecar.replies import _pending_id

    return _pending_id(j.id + j.redelivery_of, 0)


class HeldCallbacks:
    """``outbox.Callbacks`` whose every POST waits until the test answers it."""

    def __init__(self) -> None:
        self.sent = 0
        self.reached = asyncio.Event()  # a POST is waiting for its answer
        self.answer = asyncio.Event()

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> Attempt:
        self.sent += 1
        self.reached.set()
        await self.answer.wait()
        return answer(200, b"")


async def test_the_outbox_holds_at_most_its_backlog_then_has_room_when_jobs_finish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.outbox")
    callbacks = HeldCallbacks()
    outbox = Rig(callbacks, max_in_flight=1, backlog=2).outbox
    assert outbox.has_room
    outbox.submit([replace(job(), id="a/0"), replace(job(), id="b/0")], done())
    assert not outbox.has_room  # two held: the dispatcher must wait
    await callbacks.reached.wait()  # one in flight, one waiting for the slot
    room = asyncio.create_task(outbox.room())
    await wait_until(lambda: "outbox full" in caplog.text, what="the wait for room")
    assert "outbox full (2 jobs held, 1 in flight at most)" in caplog.text
    assert not room.done() and not outbox.has_room
    callbacks.answer.set()  # the deliveries finish
    await asyncio.wait_for(room, timeout=30)
    assert outbox.has_room and outbox.depth <= 1  # resumed at three quarters of the backlog
    assert await outbox.drain(grace=30) == 0 and callbacks.sent == 2
    # Full again within the minute: it waits as before, without a second line.
    callbacks.answer, callbacks.reached = asyncio.Event(), asyncio.Event()
    outbox.submit([replace(job(), id="c/0"), replace(job(), id="d/0")], done())
    await callbacks.reached.wait()
    room = asyncio.create_task(outbox.room())
    callbacks.answer.set()
    await asyncio.wait_for(room, timeout=30)
    assert caplog.text.count("outbox full") == 1
    assert await outbox.drain(grace=30) == 0 and callbacks.sent == 4


def test_the_default_backlog_is_sixteen_jobs_per_slot_and_at_least_1024() -> None:
    assert Rig(ScriptedCallbacks()).outbox.backlog == 1024  # max_in_flight 4
    assert Rig(ScriptedCallbacks(), max_in_flight=100).outbox.backlog == 1600
