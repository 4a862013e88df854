"""Never lose a message, for real: end to end through a restart or a drop.

Each test failed on the code before the fix: the comment on each says how.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

import sidecar.dispatch
import sidecar.mattermost
from harness import FAST, World, make_config, running, wait_until
from sidecar.testing.recorder import CallbackRecorder, Reply

DAY = 86_400_000
TWO_HOURS = 7_200_000


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="sidecar")
    yield caplog


def events(cb: CallbackRecorder) -> Counter[tuple[str, str]]:
    """(text, event) of every callback request (extended payloads carry the event)."""
    got: Counter[tuple[str, str]] = Counter()
    for r in cb.requests:
        form = parse_qs(r.body.decode(), keep_blank_values=True)
        got[(form["text"][0], form.get("event", ["posted"])[0])] += 1
    return got


def hook(cb: CallbackRecorder, *event_names: str, channels: tuple[str, ...] = ("dev",)) -> Any:
    return {
        "channels": list(channels),
        "events": list(event_names),
        "extended_payload": True,
        "callback_urls": [cb.url_for()],
    }


async def caught_up(logs: pytest.LogCaptureFixture, count: int = 1) -> None:
    await wait_until(
        lambda: sum("caught up:" in r.getMessage() for r in logs.records) >= count,
        what=f"catch-up number {count}",
    )


async def gap(world: World, app: Any) -> None:
    """A server restart with the websocket held down: what follows is only seen over REST."""
    world.mm.fail_next(1_000_000, 503, path_prefix="/api/v4/websocket")
    await world.mm.restart()
    await wait_until(lambda: not app.gateway.connected, what="disconnected")


def end_gap(world: World) -> None:
    world.mm.clear_failures()


# -- 1a. the newest post of a channel, edited while the sidecar was stopped --------------------


async def test_edit_of_the_newest_post_while_stopped_fires(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """Before: its create_at equalled the cursor, it was found in `seen` as a post and never
    reached the edit check."""
    config = make_config(world, tmp_path, [hook(cb, "posted", "post_edited")])
    async with running(config):
        target = world.mm.post(world.alice["id"], world.dev["id"], "v1")
        await cb.wait_for(1)
    world.mm.edit(target["id"], "v2")
    async with running(config):
        await cb.wait_for(2)
        await caught_up(logs)
    assert events(cb) == Counter({("v1", "posted"): 1, ("v2", "post_edited"): 1})


# -- 1b. a webhook that listens only for edits still moves the cursor --------------------------


async def test_edits_only_webhook_moves_the_cursor(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """Before: nothing listened to `posted`, so the cursor never moved; every catch-up walked
    the channel from the first start, and (item 2) the edit wrote cursor 0."""
    config = make_config(world, tmp_path, [hook(cb, "post_edited")])
    async with running(config) as app:
        first = world.mm.post(world.alice["id"], world.dev["id"], "one")
        world.mm.edit(first["id"], "one, edited")
        await cb.wait_for(1)
        last = world.mm.post(world.alice["id"], world.dev["id"], "two")
        await wait_until(
            lambda: (
                app.pipeline is not None
                and app.pipeline.dispatcher.progress.cursors.get(world.dev["id"])
                == last["create_at"]
            ),
            what="the cursor at the newest post",
        )
    world.mm.edit(last["id"], "two, edited")  # while stopped
    async with running(config):
        await cb.wait_for(2)
        await caught_up(logs)
    assert events(cb) == Counter(
        {("one, edited", "post_edited"): 1, ("two, edited", "post_edited"): 1}
    )


# -- 2. a reaction as a channel's first event ---------------------------------------------------


async def test_reaction_as_first_event_replays_no_history(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """Before: the reaction wrote cursor 0 for the channel; the restart fired its history."""
    history = world.mm.post(world.alice["id"], world.dev["id"], "history")
    config = make_config(world, tmp_path, [hook(cb, "posted", "reaction_added")])
    async with running(config):
        world.mm.react(world.bob["id"], history["id"], "tada")
        await cb.wait_for(1)
    async with running(config):
        await caught_up(logs)
        world.mm.post(world.alice["id"], world.dev["id"], "after the restart")
        await cb.wait_for(2)
    assert events(cb) == Counter(
        {("history", "reaction_added"): 1, ("after the restart", "posted"): 1}
    )


# -- 3. a post stamped in the future blinds nothing ----------------------------------------------


async def test_future_stamped_post_does_not_blind_catch_up(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """Before: the cursor of dev jumped a day ahead, and town-square (no cursor of its own)
    was caught up from the newest cursor of any channel: both gap posts were skipped."""
    config = make_config(world, tmp_path, [hook(cb, "posted", channels=("dev", "town-square"))])
    async with running(config) as app:
        now = int(time.time() * 1000)
        world.mm.post(world.alice["id"], world.dev["id"], "imported", create_at=now + DAY)
        await cb.wait_for(1)
        await gap(world, app)
        world.mm.post(world.alice["id"], world.dev["id"], "gap in dev")
        world.mm.post(world.alice["id"], world.town["id"], "gap in town")
        end_gap(world)
        await cb.wait_for(3)
        await caught_up(logs)
    assert events(cb) == Counter(
        {("imported", "posted"): 1, ("gap in dev", "posted"): 1, ("gap in town", "posted"): 1}
    )


# -- 4. the sidecar's clock two hours ahead of the server's ------------------------------------


async def test_clock_offset_measured_in_server_time(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the window (600 s) was measured on our clock, two hours ahead: catch-up skipped
    everything as too old. Now "now" comes from the server's Date header."""

    def ahead() -> int:
        return int(time.time() * 1000) + TWO_HOURS

    monkeypatch.setattr(sidecar.mattermost, "local_now_ms", ahead)
    monkeypatch.setattr(sidecar.dispatch, "now_ms", ahead)  # the old code's clock
    config = make_config(world, tmp_path, [hook(cb, "posted")], catch_up_window=600)
    async with running(config) as app:
        world.mm.post(world.alice["id"], world.dev["id"], "live")
        await cb.wait_for(1)
        await gap(world, app)
        world.mm.post(world.alice["id"], world.dev["id"], "during the gap")
        end_gap(world)
        await cb.wait_for(2)
    world.mm.post(world.alice["id"], world.dev["id"], "while stopped")
    async with running(config):
        await cb.wait_for(3)
    assert events(cb) == Counter(
        {("live", "posted"): 1, ("during the gap", "posted"): 1, ("while stopped", "posted"): 1}
    )
    assert "catch-up skipped" not in logs.text


# -- 5. one frame with an absurd seq ------------------------------------------------------------


async def test_absurd_seq_reconnects_and_catches_up(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """Before: next_seq jumped to 10^12 and every later frame was dropped as a replay, at debug
    level, until the next reconnect."""
    config = make_config(world, tmp_path, [hook(cb, "posted")])
    async with running(config) as app:
        connection = app.gateway.connection_id
        world.mm.post(world.alice["id"], world.dev["id"], "before")
        await cb.wait_for(1)
        frame = {"event": "typing", "data": {}, "broadcast": {}, "seq": 10**12}
        world.mm.inject_frame(json.dumps(frame))
        await caught_up(logs)  # after the reconnect (before: after the "seq jumped" catch-up)
        await wait_until(lambda: app.gateway.connected, what="connected again")
        world.mm.post(world.alice["id"], world.dev["id"], "after")
        await cb.wait_for(2)
        assert app.gateway.connection_id != connection
    assert events(cb) == Counter({("before", "posted"): 1, ("after", "posted"): 1})
    assert f"seq {10**12} where" in logs.text


async def test_resume_replay_duplicates_are_skipped_not_a_desync(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """A plain drop resumes; its replay keeps the connection (no fresh hello)."""
    config = make_config(world, tmp_path, [hook(cb, "posted")])
    async with running(config) as app:
        connection = app.gateway.connection_id
        for i in range(3):
            world.mm.post(world.alice["id"], world.dev["id"], f"m{i}")
        await world.mm.drop_websockets()
        for i in range(3, 6):
            world.mm.post(world.alice["id"], world.dev["id"], f"m{i}")
        await cb.wait_for(6)
        await asyncio.sleep(0)
        assert app.gateway.connection_id == connection
    assert events(cb) == Counter({(f"m{i}", "posted"): 1 for i in range(6)})


# -- a long catch-up is handed to the outbox at the pace of deliveries -------------------------


async def test_a_long_catch_up_holds_at_most_the_outbox_backlog_in_memory(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """Before: every post a catch-up found became a job task at once (an hour of a busy
    server: hundreds of thousands in memory). Now the dispatcher waits for room."""
    config = make_config(world, tmp_path, [hook(cb, "posted")], max_in_flight=1)
    async with running(config):
        world.mm.post(world.alice["id"], world.dev["id"], "before")
        await cb.wait_for(1)
    texts = [f"missed {i}" for i in range(12)]
    for text in texts:
        world.mm.post(world.alice["id"], world.dev["id"], text)
    release = asyncio.Event()

    async def held(req: Any) -> Reply:
        await release.wait()
        return Reply(200, {})

    cb.respond_with(held)
    async with running(config, tuning=replace(FAST, outbox_backlog=3)) as app:
        await wait_until(lambda: "outbox full" in logs.text, what="the outbox full")
        # "before", and the one in flight (max_in_flight 1); the other two wait for the slot.
        await wait_until(lambda: len(cb.requests) == 2, what="the first held delivery")
        assert app.pipeline is not None and app.pipeline.outbox.depth == 3
        release.set()
        await cb.wait_for(13)
        await caught_up(logs)
    # Each once (posts made in the same millisecond may be caught up in either order).
    got = Counter(parse_qs(r.body.decode())["text"][0] for r in cb.requests)
    assert got == Counter(["before", *texts])
