"""Never lose a message, in-process: resume, catch-up, retries, liveness, 401.

Every test asserts the exact multiset of callback requests (and of reply posts where a reply
is made): nothing missing, nothing twice unless the test says so, and then with the same
``webhook-id``. Subprocess tests (SIGKILL, SIGTERM, SIGHUP, exit codes) are in
``test_e2e_process.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from harness import FAST, World, drained, drained_after, make_config, running, wait_until
from sidecar.app import Sidecar
from sidecar.mattermost import Unauthorized
from sidecar.resolve import LOOKUP_ATTEMPTS
from sidecar.state import State
from sidecar.testing.emulator import Emulator
from sidecar.testing.model import ApiError, Post
from sidecar.testing.recorder import CallbackRecorder, Recorded, Reply

QUICK_RETRIES = replace(FAST, retry_base=0.02)
CATCH_UP_PATH = re.compile(r"^/api/v4/channels/[a-z0-9]{26}/posts$")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="sidecar")
    yield caplog


def text_of(req: Recorded) -> str:
    return parse_qs(req.body.decode(), keep_blank_values=True)["text"][0]


def texts(cb: CallbackRecorder) -> Counter[str]:
    return Counter(text_of(r) for r in cb.requests)


def catch_up_calls(mm: Emulator) -> int:
    return sum(1 for m, p in mm.rest_calls if m == "GET" and CATCH_UP_PATH.match(p))


def block_websocket(mm: Emulator) -> None:
    """Refuse every websocket upgrade (503) until `unblock`: the sidecar stays disconnected."""
    mm.fail_next(1_000_000, 503, path_prefix="/api/v4/websocket")


def unblock(mm: Emulator) -> None:
    mm.clear_failures()


def poster(world: World, channel: dict[str, Any]) -> Any:
    def post(message: str, **kw: Any) -> dict[str, Any]:
        return world.mm.post(world.alice["id"], channel["id"], message, **kw)

    return post


SENTINEL = "the last post of the test"


async def settle(
    app: Sidecar, world: World, cb: CallbackRecorder, count: int, *, timeout: float = 10.0
) -> None:
    """Wait for ``count`` requests; then for a last post in dev and an empty outbox, so that a
    duplicate would show (``harness.drained_after``)."""
    await cb.wait_for(count, timeout=timeout)
    await drained_after(
        app,
        cb,
        lambda: world.mm.post(world.alice["id"], world.dev["id"], SENTINEL),
        lambda r: text_of(r) == SENTINEL,
        timeout=timeout,
    )


def every_dev_post(cb: CallbackRecorder, **extra: Any) -> dict[str, Any]:
    return {"channels": ["dev"], "callback_urls": [cb.url_for()], **extra}


# -- 1. a dropped websocket resumes: exactly once, no REST catch-up ---------------------------


async def test_drop_mid_stream_resumes_exactly_once(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        connection = app.gateway.connection_id
        for i in range(5):
            post(f"before {i}")  # still in flight (emulator queue / our queue) at the drop
        block_websocket(world.mm)
        await world.mm.drop_websockets()
        await wait_until(lambda: not app.gateway.connected, what="disconnected")
        for i in range(20):
            post(f"down {i}")
        unblock(world.mm)
        await wait_until(lambda: app.gateway.connected, what="reconnected")
        for i in range(5):
            post(f"after {i}")
        await settle(app, world, cb, 30)
        assert app.gateway.connection_id == connection  # resumed, not a new hello
    expected = Counter(
        [f"before {i}" for i in range(5)]
        + [f"down {i}" for i in range(20)]
        + [f"after {i}" for i in range(5)]
    )
    assert texts(cb) == expected
    assert catch_up_calls(world.mm) == 0
    assert "resuming" in logs.text
    assert len({r.headers["webhook-id"] for r in cb.requests}) == 30


# -- 2. a server restart (new hello) is a gap: REST catch-up ----------------------------------


async def test_server_restart_while_posting_catches_up(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        connection = app.gateway.connection_id

        some_posted = asyncio.Event()

        async def fifty() -> None:
            for i in range(50):
                post(f"m{i}")
                if i == 7:
                    some_posted.set()
                await asyncio.sleep(0.004)

        writer = asyncio.create_task(fifty())
        await some_posted.wait()
        await world.mm.restart()  # forgets every connection: the resume gets a new hello
        await writer
        await settle(app, world, cb, 50)
        assert app.gateway.connection_id != connection
    assert texts(cb) == Counter(f"m{i}" for i in range(50))
    assert catch_up_calls(world.mm) >= 1
    assert "resume refused" in logs.text


async def test_restart_with_posts_only_while_down(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """The 50 posts land while the websocket cannot come back: all of them via REST."""
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        post("live")
        await cb.wait_for(1)
        block_websocket(world.mm)
        await world.mm.restart()
        for i in range(50):
            post(f"m{i}")
        assert not app.gateway.connected
        unblock(world.mm)
        await settle(app, world, cb, 51)
    assert texts(cb) == Counter(["live"] + [f"m{i}" for i in range(50)])


# -- 3. more than one page (1000) of posts in one channel during a gap -------------------------


def _newest_first(mm: Emulator) -> Any:
    """posts?since= answering the newest 1000 (the server's SQL has no ORDER BY)."""

    def posts_since(channel_id: str, since: int) -> tuple[list[str], dict[str, Post]]:
        changed = [p for p in mm.store.channel_posts(channel_id) if p.update_at > since]
        chosen = sorted(changed, key=lambda p: (p.create_at, p.order), reverse=True)[:1000]
        return [p.id for p in chosen], {p.id: p for p in chosen}

    return posts_since


def _random_thousand(mm: Emulator) -> Any:
    rng = random.Random(4)

    def posts_since(channel_id: str, since: int) -> tuple[list[str], dict[str, Post]]:
        changed = [p for p in mm.store.channel_posts(channel_id) if p.update_at > since]
        chosen = rng.sample(changed, min(1000, len(changed)))
        chosen.sort(key=lambda p: (p.create_at, p.order), reverse=True)
        return [p.id for p in chosen], {p.id: p for p in chosen}

    return posts_since


@pytest.mark.parametrize("order", ["oldest-first", "newest-first", "random"])
async def test_1500_posts_in_a_gap_page_past_the_limit(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    order: str,
) -> None:
    if order == "newest-first":
        monkeypatch.setattr(world.mm.store, "posts_since", _newest_first(world.mm))
    elif order == "random":
        monkeypatch.setattr(world.mm.store, "posts_since", _random_thousand(world.mm))
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        post("live")
        await cb.wait_for(1)
        block_websocket(world.mm)
        await world.mm.restart()
        for i in range(1500):
            post(f"m{i}")
        unblock(world.mm)
        await settle(app, world, cb, 1501, timeout=30)
    assert texts(cb) == Counter(["live"] + [f"m{i}" for i in range(1500)])


# -- 4. posts older than the window are skipped, and counted ---------------------------------


async def test_posts_older_than_window_are_skipped_and_counted(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """A sidecar that began ten minutes ago (its saved start position) and was stopped since:
    its catch-up reaches back only catch_up_window (60 s) and counts what it skips."""
    post = poster(world, world.dev)
    now = int(time.time() * 1000)
    await save_start_position(tmp_path, now - 600_000)
    config = make_config(world, tmp_path, [every_dev_post(cb)], catch_up_window=60)
    post("too old 1", create_at=now - 300_000)
    post("too old 2", create_at=now - 120_000)
    post("recent", create_at=now - 10_000)
    async with running(config) as app:
        await cb.wait_for(1)
        post("old but live", create_at=now - 600_000)  # live posts fire whatever their stamp
        post("new")
        await settle(app, world, cb, 3)
    assert texts(cb) == Counter(["recent", "old but live", "new"])
    assert "catch-up skipped 2 posts older than catch_up_window (60 s)" in logs.text


async def save_start_position(state_dir: Path, position: int) -> None:
    """A state file as a sidecar first started at ``position`` (ms) leaves it."""
    state = State(state_dir)
    await asyncio.to_thread(state.open)
    state.start_writer()
    await state.record_start(position)
    await state.close()


# -- Mattermost's REST failing meanwhile: wait and try again, never skip ----------------------


async def test_lookup_outage_delays_but_loses_nothing(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    mm = world.mm
    dave = mm.create_user("dave")
    mm.add_team_member(world.team["id"], dave["id"])
    mm.add_channel_member(world.dev["id"], dave["id"])
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config, tuning=QUICK_RETRIES) as app:
        mm.fail_next(LOOKUP_ATTEMPTS + 2, 503, method="GET", path_prefix=f"/users/{dave['id']}")
        mm.post(dave["id"], world.dev["id"], "who am I?")  # dave is not cached yet
        poster(world, world.dev)("next")
        await settle(app, world, cb, 2)
    assert [text_of(r) for r in cb.requests] == ["who am I?", "next"]  # in order, once each


async def test_failed_catch_up_is_tried_again(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config, tuning=QUICK_RETRIES) as app:
        post("live")
        await cb.wait_for(1)
        block_websocket(world.mm)
        await world.mm.restart()
        for i in range(5):
            post(f"m{i}")
        unblock(world.mm)
        world.mm.fail_next(3, 502, method="GET", path_prefix="/users/me/teams")
        await settle(app, world, cb, 6)
    assert texts(cb) == Counter(["live"] + [f"m{i}" for i in range(5)])
    assert logs.text.count("catch-up failed") == 3


# -- 6. callback retries ----------------------------------------------------------------------


async def test_callback_503_twice_then_200_gives_one_reply(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(503), Reply(503), Reply(200, {"text": "third time lucky"}))
    config = make_config(world, tmp_path, [every_dev_post(cb, retries=3)])
    async with running(config) as app:
        poster(world, world.dev)("flaky")
        reqs = await cb.wait_for(3, timeout=15)
        posts = await world.mm.wait_for_posts(world.dev["id"], 2)
        await drained(app)
        posts = world.mm.posts_in(world.dev["id"])
    assert len(cb.requests) == 3
    assert len({r.headers["webhook-id"] for r in reqs}) == 1
    assert len({r.body for r in reqs}) == 1
    assert [p["message"] for p in posts] == ["flaky", "third time lucky"]
    assert posts[1]["props"]["from_webhook"] == "true"
    assert posts[1]["root_id"] == ""


async def test_callback_429_retry_after_is_honoured(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(429, "slow down", headers={"Retry-After": "1"}), Reply(200, {"text": "ok"}))
    config = make_config(world, tmp_path, [every_dev_post(cb, retries=1)])
    async with running(config) as app:
        poster(world, world.dev)("rate limited")
        first, second = await cb.wait_for(2, timeout=15)
        await world.mm.wait_for_posts(world.dev["id"], 2)
        await drained(app)
    assert second.received_at - first.received_at >= 0.98
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert [p["message"] for p in world.mm.posts_in(world.dev["id"])] == ["rate limited", "ok"]


async def test_callback_4xx_is_never_retried(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(400, {"text": "bad request answers still reply"}))
    config = make_config(world, tmp_path, [every_dev_post(cb, retries=3)])
    async with running(config) as app:
        poster(world, world.dev)("refused")
        await world.mm.wait_for_posts(world.dev["id"], 2)
        await drained(app)
    assert len(cb.requests) == 1  # Mattermost does not check the status: the body is the reply
    assert [p["message"] for p in world.mm.posts_in(world.dev["id"])][-1] == (
        "bad request answers still reply"
    )


async def test_retries_exhausted_the_last_answer_is_the_reply(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    cb.script(Reply(500, {"text": "no"}), Reply(502, {"text": "no"}))
    config = make_config(world, tmp_path, [every_dev_post(cb, retries=1)])
    async with running(config) as app:
        poster(world, world.dev)("doomed")
        await cb.wait_for(2, timeout=10)
        # the 502 of the last attempt is an answer like any other: Mattermost replies with it
        await world.mm.wait_for_posts(world.dev["id"], 2)
        await drained(app)
        assert app.pipeline is not None and app.pipeline.outbox.depth == 0
    assert len(cb.requests) == 2
    assert [p["message"] for p in world.mm.posts_in(world.dev["id"])] == ["doomed", "no"]


# -- 7. replies are retried with pending_post_id ----------------------------------------------


async def test_reply_post_500_twice_posted_once(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.default = Reply(200, {"text": "the reply"})
    world.mm.fail_next(2, 500, method="POST", path_prefix="/posts")
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        poster(world, world.dev)("needs a reply")
        await world.mm.wait_for_posts(world.dev["id"], 2, timeout=10)
        await drained(app)
    assert [p["message"] for p in world.mm.posts_in(world.dev["id"])] == [
        "needs a reply",
        "the reply",
    ]
    assert sum(1 for m, p in world.mm.rest_calls if (m, p) == ("POST", "/api/v4/posts")) == 3
    assert len(cb.requests) == 1


async def test_reply_created_but_answer_lost_is_deduplicated(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """The server stored the reply but answered 500 (twice): pending_post_id de-duplicates."""
    cb.default = Reply(200, {"text": "the reply"})
    mm = world.mm
    original = mm.create_post
    lost = {"left": 2}
    pending: list[str] = []

    def create_then_fail(*args: Any, **kwargs: Any) -> Post:
        created = original(*args, **kwargs)
        if not kwargs.get("pending_post_id"):
            return created  # alice's post, not a reply
        pending.append(kwargs["pending_post_id"])
        if lost["left"]:
            lost["left"] -= 1
            raise ApiError(500, "emulator.lost_answer", "Answer lost after commit.")
        return created

    mm.create_post = create_then_fail  # type: ignore[method-assign]
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        poster(world, world.dev)("needs a reply")
        await wait_until(lambda: len(pending) >= 3, what="three reply attempts")
        await drained(app)
    assert [p["message"] for p in mm.posts_in(world.dev["id"])] == ["needs a reply", "the reply"]
    assert len(pending) == 3 and len(set(pending)) == 1


# -- 8. a dead connection is noticed by ping/pong ---------------------------------------------


async def test_unanswered_pings_reconnect_within_bound(
    world: World, cb: CallbackRecorder, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    quick_pings = replace(FAST, ping_interval=0.3, pong_timeout=0.5)
    async with running(config, tuning=quick_pings) as app:
        post("before")
        await cb.wait_for(1)
        world.mm.answer_pings = False
        before = app.gateway.reconnects
        # the bound: one ping interval, one pong timeout, one backoff, with room for a slow CI
        bound = quick_pings.ping_interval + quick_pings.pong_timeout + quick_pings.backoff_cap
        await wait_until(
            lambda: app.gateway.reconnects > before, timeout=bound + 3, what="reconnect"
        )
        world.mm.answer_pings = True
        await wait_until(lambda: app.gateway.connected, what="connected again")
        post("after")
        await settle(app, world, cb, 2)
    assert texts(cb) == Counter(["before", "after"])
    assert "websocket connection lost" in logs.text


# -- 11. the same-millisecond boundary --------------------------------------------------------


async def test_same_millisecond_across_a_gap(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        at = int(time.time() * 1000)  # after the first start: not history
        post("first", create_at=at)
        await cb.wait_for(1)
        block_websocket(world.mm)
        await world.mm.restart()
        post("second", create_at=at)  # same millisecond, never seen live
        unblock(world.mm)
        await settle(app, world, cb, 2)
    assert texts(cb) == Counter(["first", "second"])


async def test_same_millisecond_across_a_sidecar_restart(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        at = int(time.time() * 1000)  # after the first start: not history
        post("first", create_at=at)
        await cb.wait_for(1)
        await drained(app)
    post("second", create_at=at)
    async with running(config) as app:
        await settle(app, world, cb, 2)
    assert texts(cb) == Counter(["first", "second"])


async def test_posts_while_stopped_are_caught_up_even_with_no_history(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """A first run that processed nothing still leaves a position to catch up from."""
    post = poster(world, world.dev)
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config):
        pass
    post("while stopped")
    async with running(config) as app:
        await settle(app, world, cb, 1)
    assert texts(cb) == Counter(["while stopped"])


async def test_first_start_replays_no_history(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    post = poster(world, world.dev)
    post("history")
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config) as app:
        post("now")
        await settle(app, world, cb, 1)
    assert texts(cb) == Counter(["now"])


# -- 13. a rejected token is fatal ------------------------------------------------------------


async def test_websocket_upgrade_401_is_fatal(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    app = Sidecar(config, tuning=FAST)
    world.mm.fail_next(1, 401, path_prefix="/api/v4/websocket")
    async with app:
        with pytest.raises(Unauthorized):
            await asyncio.wait_for(app.serve(asyncio.Event()), 10)


async def test_token_revoked_while_running_is_fatal(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """The server does not refuse a bad token at upgrade: the socket just never says hello."""
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    app = Sidecar(config, tuning=FAST)
    async with app:
        serving = asyncio.create_task(app.serve(asyncio.Event()))
        await wait_until(lambda: app.gateway.connected, what="connected")
        world.mm.auth_timeout = 0.3  # the server closes a socket that never authenticates
        del world.mm.store.tokens[world.bot_token]
        await world.mm.drop_websockets()
        with pytest.raises(Unauthorized):
            await asyncio.wait_for(serving, 15)


async def test_reactions_made_during_a_gap_are_caught_up(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """A reaction moves its post's update_at and REST posts carry their reactions: the reactions
    made while the sidecar was away fire once, those processed before do not fire again."""
    config = make_config(
        world,
        tmp_path,
        [
            {
                "channels": ["dev"],
                "events": ["reaction_added"],
                "extended_payload": True,
                "callback_urls": [cb.url_for()],
            }
        ],
    )
    target = world.mm.post(world.bob["id"], world.dev["id"], "react to me")
    async with running(config):
        world.mm.react(world.alice["id"], target["id"], "thumbsup")
        await cb.wait_for(1)
    world.mm.react(world.bob["id"], target["id"], "tada")  # while the sidecar is stopped
    world.mm.react(world.bot["id"], target["id"], "robot")  # the bot's own: never fires
    async with running(config) as app:
        await cb.wait_for(2)
        # A live reaction after the catch-up: once it is delivered, the robot's would be too.
        await drained_after(
            app,
            cb,
            lambda: world.mm.react(world.alice["id"], target["id"], "white_check_mark"),
            lambda r: b"white_check_mark" in r.body,
        )
    got = [parse_qs(r.body.decode()) for r in cb.requests]
    assert [(g["emoji_name"][0], g["user_name"][0]) for g in got] == [
        ("thumbsup", "alice"),
        ("tada", "bob"),
    ]
    assert all(g["post_id"][0] == target["id"] for g in got)


async def test_start_up_waits_for_an_unreachable_server(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    world.mm.fail_next(3, 503, path_prefix="/users/me")
    config = make_config(world, tmp_path, [every_dev_post(cb)])
    async with running(config):
        world.mm.post(world.alice["id"], world.dev["id"], "after a slow start")
        await cb.wait_for(1)
    retries = [r for r in caplog.records if "cannot reach Mattermost at start-up" in r.getMessage()]
    assert len(retries) == 3
