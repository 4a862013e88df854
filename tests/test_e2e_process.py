"""Never lose a message, as a real process: SIGKILL, SIGTERM, SIGHUP, exit codes.

``python -m sidecar run -c FILE`` runs as a subprocess; the emulator and the callback recorder
run in the test's event loop and the daemon reaches them over loopback. Readiness and every
other step are read from the daemon's stderr (one log line per decision).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from daemon import Daemon

from harness import WEBHOOK_TOKEN, World, wait_until
from sidecar.testing.recorder import CallbackRecorder, Recorded, Reply

EX_CONFIG = 78
CONNECTED = "websocket connected"


# -- the daemon as a subprocess ----------------------------------------------------------------


Start = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start daemons; every one still running at the end of the test is SIGKILLed."""
    started: list[Daemon] = []

    async def launch(config: Path, *args: str, ready: str | None = CONNECTED) -> Daemon:
        daemon = await Daemon.start("run", "-c", str(config), *args, stdout=False)
        started.append(daemon)
        if ready:
            await daemon.wait_line(ready)
        return daemon

    try:
        yield launch
    finally:
        for daemon in started:
            await daemon.kill()


# -- the world ---------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON's string syntax
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(type(value))


def write_config(
    path: Path,
    world: World,
    webhooks: Sequence[Mapping[str, Any]],
    *,
    token: str | None = None,
    **sidecar: Any,
) -> Path:
    """Write a config file for the world's server; ``state_dir`` is next to it."""
    lines = [
        "[mattermost]",
        f"url = {_toml(world.mm.url)}",
        f"token = {_toml(token or world.bot_token)}",
        "",
        "[sidecar]",
        f"state_dir = {_toml(str(path.parent / 'state'))}",
        'listen = ""',
        'allowed_untrusted_internal_connections = ["127.0.0.1"]',
    ]
    lines += [f"{k} = {_toml(v)}" for k, v in sidecar.items()]
    for i, hook in enumerate(webhooks):
        lines += ["", "[[webhook]]", f'name = "hook{i}"', f"token = {_toml(WEBHOOK_TOKEN)}"]
        lines += [f"{k} = {_toml(v)}" for k, v in hook.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # secrets inside: no warning about a world-readable file
    return path


def text_of(req: Recorded) -> str:
    return parse_qs(req.body.decode(), keep_blank_values=True)["text"][0]


def post(world: World, message: str) -> dict[str, Any]:
    return world.mm.post(world.alice["id"], world.dev["id"], message)


def messages(world: World) -> list[str]:
    return [p["message"] for p in world.mm.posts_in(world.dev["id"])]


def dev_hook(cb: CallbackRecorder, **extra: Any) -> dict[str, Any]:
    return {"channels": ["dev"], "callback_urls": [cb.url_for()], **extra}


# -- 5. SIGKILL with deliveries in flight ------------------------------------------------------


async def test_sigkill_with_deliveries_in_flight(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    release = asyncio.Event()
    held: set[str] = set()

    async def respond(req: Recorded) -> Reply:
        webhook_id = req.headers["webhook-id"]
        if text_of(req).startswith("job") and webhook_id not in held:
            held.add(webhook_id)
            await release.wait()  # the first attempt never gets an answer
        return Reply(200, {"text": f"re: {text_of(req)}"})

    cb.respond_with(respond)
    config = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb)])
    try:
        first = await start(config)
        await first.wait_line("first start")
        for i in range(3):
            post(world, f"job {i}")
        await cb.wait_for(3)
        first.proc.kill()
        assert await first.wait_exit() == -signal.SIGKILL
        for i in range(2):
            post(world, f"down {i}")  # made while the sidecar is dead: caught up at restart

        second = await start(config)
        await second.wait_line("resuming 3 unfinished deliveries")
        await cb.wait_for(3 + 3 + 2)
        await world.mm.wait_for_posts(world.dev["id"], 5 + 5)
        # SIGTERM drains what is in flight: a duplicate on its way would be counted below.
        second.signal(signal.SIGTERM)
        assert await second.wait_exit() == 0
    finally:
        release.set()
    per_text = Counter(text_of(r) for r in cb.requests)
    assert per_text == Counter({"job 0": 2, "job 1": 2, "job 2": 2, "down 0": 1, "down 1": 1})
    ids: dict[str, set[str]] = {}
    bodies: dict[str, set[bytes]] = {}
    for r in cb.requests:
        ids.setdefault(text_of(r), set()).add(r.headers["webhook-id"])
        bodies.setdefault(text_of(r), set()).add(r.body)
    assert all(len(v) == 1 for v in ids.values())  # the retry has the same webhook-id …
    assert all(len(v) == 1 for v in bodies.values())  # … and the same body
    assert len(set().union(*ids.values())) == 5
    replies = Counter(m for m in messages(world) if m.startswith("re: "))
    assert replies == Counter(f"re: {t}" for t in ["job 0", "job 1", "job 2", "down 0", "down 1"])


async def test_a_retry_after_is_honoured_across_a_restart(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    cb.script(Reply(429, "limit exceeded", headers={"Retry-After": "3"}))
    cb.respond_with(lambda r: Reply(200, {"text": "finally"}))
    config = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb, retries=2)])
    first = await start(config)
    await first.wait_line("first start")
    post(world, "rate limited")
    await first.wait_line("retrying in")
    first.proc.kill()
    assert await first.wait_exit() == -signal.SIGKILL

    second = await start(config)
    await second.wait_line("as scheduled before the restart")
    [one, two] = await cb.wait_for(2, timeout=10)
    await world.mm.wait_for_posts(world.dev["id"], 2)
    assert two.received_at - one.received_at >= 2.9  # the server's Retry-After, not "now"
    assert one.headers["webhook-id"] == two.headers["webhook-id"]
    assert messages(world)[-1] == "finally"


# -- 9. SIGTERM during a slow delivery ---------------------------------------------------------


async def test_sigterm_lets_a_slow_delivery_finish(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    cb.script(Reply(200, {"text": "slow but done"}, delay=1.0))
    config = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb)], shutdown_timeout=8)
    daemon = await start(config)
    post(world, "take your time")
    await cb.wait_for(1)
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    assert daemon.count("1 of 1 in-flight jobs finished, 0 left in the outbox") == 1
    assert messages(world) == ["take your time", "slow but done"]
    assert len(cb.requests) == 1


async def test_sigterm_leaves_a_slower_delivery_in_the_outbox(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    release = asyncio.Event()
    calls = 0

    async def respond(req: Recorded) -> Reply:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()  # slower than shutdown_timeout
        return Reply(200, {"text": "done at last"})

    cb.respond_with(respond)
    config = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb)], shutdown_timeout=0.5)
    try:
        first = await start(config)
        post(world, "very slow")
        await cb.wait_for(1)
        first.signal(signal.SIGTERM)
        assert await first.wait_exit() == 0
        assert first.count("0 of 1 in-flight jobs finished, 1 left in the outbox") == 1
        assert messages(world) == ["very slow"]

        second = await start(config)
        await second.wait_line("resuming 1 unfinished deliveries")
        await world.mm.wait_for_posts(world.dev["id"], 2)
        await second.wait_line("replied webhook=hook0")
        second.signal(signal.SIGTERM)
        assert await second.wait_exit() == 0
    finally:
        release.set()
    assert [text_of(r) for r in cb.requests] == ["very slow", "very slow"]
    assert cb.requests[0].headers["webhook-id"] == cb.requests[1].headers["webhook-id"]
    assert messages(world) == ["very slow", "done at last"]


# -- 10. SIGHUP reload -------------------------------------------------------------------------


async def test_sighup_broken_config_keeps_old_rules_good_config_applies(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    path = tmp_path / "sidecar.toml"
    old = {"trigger_words": ["#old"], "callback_urls": [cb.url_for("/old")]}
    new = {"trigger_words": ["#new"], "callback_urls": [cb.url_for("/new")]}
    write_config(path, world, [old])
    daemon = await start(path)

    write_config(path, world, [{**old, "trigger_when": "sometimes"}])
    daemon.signal(signal.SIGHUP)
    await daemon.wait_line("reload refused: keeping the running config")
    assert daemon.count("webhook[0].trigger_when") >= 1  # the error names its place
    post(world, "#old still works")
    await cb.wait_for(1)

    write_config(path, world, [new])
    daemon.signal(signal.SIGHUP)
    await daemon.wait_line("config reloaded: 1 webhooks")
    post(world, "#old is gone")
    post(world, "#new is here")
    await cb.wait_for(2)
    # SIGTERM drains the outbox: a job of "#old is gone", handled before "#new is here",
    # would be delivered before the exit.
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    assert [(r.path, text_of(r)) for r in cb.requests] == [
        ("/old", "#old still works"),
        ("/new", "#new is here"),
    ]


async def test_the_daemon_on_uvloop_delivers_reloads_and_stops(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    """``event_loop = "uvloop"`` (the ``fast`` extra): the same daemon on libuv's loop, with
    its signal handlers (SIGHUP, SIGTERM), threads (state writer) and subprocess-free I/O."""
    cb.respond_with(lambda req: Reply(200, {"text": f"re: {text_of(req)}"}))
    path = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb)], event_loop="uvloop")
    daemon = await start(path)
    assert daemon.count("event loop: uvloop") == 1
    post(world, "on uvloop")
    await cb.wait_for(1)
    await world.mm.wait_for_posts(world.dev["id"], 2)
    assert messages(world)[-1] == "re: on uvloop"

    write_config(path, world, [dev_hook(cb)], event_loop="asyncio")
    daemon.signal(signal.SIGHUP)
    await daemon.wait_line("reload: [sidecar] event_loop takes effect only after a restart")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    assert [text_of(r) for r in cb.requests] == ["on uvloop"]


# -- 12. an unusable state file ----------------------------------------------------------------


async def test_corrupt_state_exits_78_then_reset_state_starts(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    config = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb)])
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"this is not an SQLite database\n" * 64
    (state / "state.sqlite3").write_bytes(garbage)

    broken = await start(config, ready=None)
    assert await broken.wait_exit() == EX_CONFIG
    assert "--reset-state" in broken.log
    assert (state / "state.sqlite3").read_bytes() == garbage  # never silently wiped

    fixed = await start(config, "--reset-state")
    assert "moved the old state file to" in fixed.log
    [aside] = state.glob("state.sqlite3.reset-*")
    assert aside.read_bytes() == garbage
    await fixed.wait_line("first start")
    post(world, "after the reset")
    await cb.wait_for(1)
    fixed.signal(signal.SIGTERM)
    assert await fixed.wait_exit() == 0
    assert [text_of(r) for r in cb.requests] == ["after the reset"]


# -- 13. a rejected bot token ------------------------------------------------------------------


async def test_rejected_token_at_start_exits_78(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    config = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb)], token="x" * 26)
    daemon = await start(config, ready=None)
    assert await daemon.wait_exit() == EX_CONFIG
    assert daemon.count("the bot token was rejected") == 1
    assert "x" * 26 not in daemon.log
    assert "Unclosed" not in daemon.log  # what start() had opened is closed on the way out


async def test_token_revoked_while_running_exits_78(
    world: World, cb: CallbackRecorder, tmp_path: Path, start: Start
) -> None:
    config = write_config(tmp_path / "sidecar.toml", world, [dev_hook(cb)])
    daemon = await start(config)
    world.mm.auth_timeout = 0.3  # an unauthenticated socket is closed (the server: 5 s)
    del world.mm.store.tokens[world.bot_token]
    await world.mm.drop_websockets()
    assert await daemon.wait_exit() == EX_CONFIG
    assert daemon.count("the bot token was rejected") == 1
    assert "Unclosed" not in daemon.log
    await wait_until(lambda: world.mm.connections == 0, what="no socket left")


async def test_sigterm_while_the_server_is_unreachable_at_start(
    world: World, tmp_path: Path, start: Start
) -> None:
    config = write_config(tmp_path / "sidecar.toml", world, [])
    text = config.read_text().replace(world.mm.url, "http://127.0.0.1:9")  # nothing listens
    config.write_text(text)
    daemon = await start(config, ready="cannot reach Mattermost at start-up")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    assert daemon.count("stopped during start-up") == 1
