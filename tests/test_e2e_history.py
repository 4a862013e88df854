"""Delivery history, dead letters and redelivery, end to end.

The daemon runs in-process against the emulator; ``mm-sidecar deliveries`` and
``mm-sidecar redeliver`` run as real subprocesses on the same state file, as an operator would
run them beside a running (or stopped) daemon. The redelivery tests run on both state backends:
SQLite in ``state_dir``, and PostgreSQL (``state_url``, HA: the one replica is the active one).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import run_cli

from harness import WEBHOOK_TOKEN, World, make_config, running, wait_until
from sidecar.app import Sidecar
from sidecar.config import load_config
from sidecar.history import DELIVERED, FAILED, Query, entry
from sidecar.history_sqlite import SqliteHistory
from sidecar.state import DB_NAME, Job, State
from sidecar.testing.recorder import CallbackRecorder, Reply

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    """ "" (SQLite in state_dir), or the URL of a fresh PostgreSQL database (HA)."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("pg_url")
    return url


async def active(app: Sidecar) -> None:
    """With HA, wait until the replica holds the lease and its websocket is up."""
    if app.ha is not None:
        await wait_until(lambda: app.readiness() == (True, "active"), what="active replica")
    else:
        await wait_until(lambda: app.gateway.connected, what="websocket connected")


def write_config(
    tmp_path: Path, world: World, cb: CallbackRecorder, *, state_url: str = ""
) -> Path:
    path = tmp_path / "config.toml"
    ha = f'state_url = "{state_url}"\nlease_check_interval = 0.2\n' if state_url else ""
    path.write_text(
        f"""
[mattermost]
url = "{world.mm.url}"
token = "{world.bot_token}"

[sidecar]
{ha}state_dir = "{tmp_path / "state"}"
listen = ""
allowed_untrusted_internal_connections = ["127.0.0.1", "localhost"]

[[webhook]]
name = "build"
token = "{WEBHOOK_TOKEN}"
channels = ["dev"]
callback_urls = ["{cb.url_for()}"]
retries = 1
"""
    )
    return path


async def cli(*args: str) -> tuple[int, str, str]:
    """``python -m sidecar ARGS`` as a separate process."""
    return await run_cli(*args)


async def listed(path: Path, *extra: str) -> list[dict[str, Any]]:
    code, out, err = await cli("deliveries", "-c", str(path), "--json", *extra)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def dead_letters(app: Sidecar) -> float | None:
    return app.metrics.registry.get_sample_value("mm_sidecar_dead_letters", {"webhook": "build"})


async def fail_once(world: World, cb: CallbackRecorder, app: Sidecar) -> None:
    """A post whose delivery fails twice with 500 (retries = 1): one dead letter."""
    cb.respond_with(lambda _: Reply(500, "receiver down"))
    world.mm.post(world.alice["id"], world.dev["id"], "deploy now")
    await cb.wait_for(2, timeout=15)
    assert app.pipeline is not None
    await wait_until(
        lambda: app.pipeline is not None and app.pipeline.outbox.depth == 0, what="job done"
    )


async def test_dead_letter_redelivered_to_the_running_daemon(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    state_url: str,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    path = write_config(tmp_path, world, cb, state_url=state_url)
    async with running(load_config(path)) as app:
        await active(app)
        await fail_once(world, cb, app)
        first, second = cb.requests
        [dead] = await listed(path, "--failed")
        assert (dead["outcome"], dead["status"], dead["attempts"]) == ("failed", 500, 2)
        assert dead["webhook"] == "build" and dead["webhook_id"] == first.headers["webhook-id"]
        assert dead["post_id"] == world.mm.posts_in(world.dev["id"])[0]["id"]
        assert "request_body" not in dead and "response_body" not in dead
        # the error line names the id to pass to `redeliver`
        failed_lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(f"id={dead['id']}" in m and "redeliver" in m for m in failed_lines)
        await wait_until(lambda: dead_letters(app) == 1, what="dead-letter gauge")
        # a final 500 counts as failed, not delivered (the reply from its body is still tried)
        value = app.metrics.registry.get_sample_value
        assert value("mm_sidecar_deliveries_total", {"webhook": "build", "outcome": "failed"}) == 1
        assert (
            value("mm_sidecar_deliveries_total", {"webhook": "build", "outcome": "delivered"})
            is None
        )

        cb.respond_with(lambda _: Reply(200, {"text": "deployed"}))
        code, out, err = await cli("redeliver", "-c", str(path), dead["id"])
        assert code == 0, err
        assert f"queued {dead['id']}" in out
        # picked up by the running daemon, no restart: within 2 s of the command
        requests = await cb.wait_for(3, timeout=2.0)
        again = requests[2]
        assert again.body == first.body == second.body
        assert again.headers["webhook-id"] == first.headers["webhook-id"]
        posts = await world.mm.wait_for_posts(world.dev["id"], 2)
        assert [p["message"] for p in posts] == ["deploy now", "deployed"]
        await wait_until(
            lambda: app.pipeline is not None and app.pipeline.outbox.depth == 0, what="done"
        )
        await wait_until(lambda: dead_letters(app) == 0, what="dead-letter gauge back to 0")
        redeliveries = app.metrics.registry.get_sample_value("mm_sidecar_redeliveries_total")
        assert redeliveries == 1
    newest, old = await listed(path)
    assert (newest["outcome"], newest["status"], newest["redelivery_of"]) == (
        "delivered",
        200,
        dead["id"],
    )
    assert newest["webhook_id"] == dead["webhook_id"] and newest["id"] != dead["id"]
    assert old["id"] == dead["id"] and old["redelivered_at"] is not None
    assert len(cb.requests) == 3


async def test_redeliver_while_stopped_is_sent_at_the_next_start(
    world: World, cb: CallbackRecorder, tmp_path: Path, state_url: str
) -> None:
    path = write_config(tmp_path, world, cb, state_url=state_url)
    async with running(load_config(path)) as app:
        await active(app)
        await fail_once(world, cb, app)
    first = cb.requests[0]
    [dead] = await listed(path, "--failed")

    code, out, err = await cli("redeliver", "-c", str(path), "--failed", "--webhook", "build")
    assert code == 0, err
    assert f"queued {dead['id']}" in out and "1 delivery(ies) queued" in out
    # queued once: asking again while it waits in the outbox queues nothing more
    code, out, err = await cli("redeliver", "-c", str(path), dead["id"])
    assert code == 1 and "already in the outbox" in err
    code, out, err = await cli("redeliver", "-c", str(path), "--failed")
    assert code == 0 and "0 delivery(ies) queued" in out  # it is no longer a pending dead letter

    cb.respond_with(lambda _: Reply(200, {"text": "deployed"}))
    async with running(load_config(path)) as app:
        requests = await cb.wait_for(3, timeout=10)
        assert requests[2].body == first.body
        assert requests[2].headers["webhook-id"] == first.headers["webhook-id"]
        posts = await world.mm.wait_for_posts(world.dev["id"], 2)
        assert [p["message"] for p in posts] == ["deploy now", "deployed"]
        await wait_until(
            lambda: app.pipeline is not None and app.pipeline.outbox.depth == 0, what="done"
        )
    newest = (await listed(path))[0]
    assert (newest["outcome"], newest["redelivery_of"]) == ("delivered", dead["id"])
    assert len(cb.requests) == 3


async def test_show_redacts_secrets_unless_asked(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    path = write_config(tmp_path, world, cb)
    path.write_text(
        path.read_text() + 'signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n'
    )
    async with running(load_config(path)) as app:
        await fail_once(world, cb, app)
    signature = cb.requests[1].headers["webhook-signature"]
    [dead] = await listed(path, "--failed")
    code, hidden, err = await cli("deliveries", "-c", str(path), "show", dead["id"])
    assert code == 0, err
    assert WEBHOOK_TOKEN not in hidden and "token=***" in hidden
    assert signature not in hidden and "webhook-signature: ***" in hidden
    assert "receiver down" in hidden and "text=deploy+now" in hidden
    code, shown, err = await cli(
        "deliveries", "-c", str(path), "show", dead["id"], "--show-secrets"
    )
    assert code == 0, err
    assert f"token={WEBHOOK_TOKEN}" in shown and f"webhook-signature: {signature}" in shown
    code, _, err = await cli("deliveries", "-c", str(path), "show", "nosuchid")
    assert code == 1 and "no delivery nosuchid" in err


def old_job(n: int) -> Job:
    return Job(
        id=f"old{n}/0",
        webhook="build",
        url="http://127.0.0.1:1/hook",
        webhook_id=f"old{n}",
        body=b"text=old",
        content_type="application/x-www-form-urlencoded",
        event="posted",
        post_id=f"p{n}",
        channel_id="c",
        root_id="",
    )


async def test_retention_pruned_by_the_running_daemon(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    path = write_config(tmp_path, world, cb)
    path.write_text(path.read_text().replace('listen = ""', 'listen = ""\nhistory_days = 1'))
    config = load_config(path)
    state = State(config.sidecar.state_dir)
    state.open()
    state.start_writer()
    now = time.time()
    ages = {0: (DELIVERED, 2 * DAY), 1: (DELIVERED, 0.5 * DAY), 2: (FAILED, 2 * DAY)}
    ages[3] = (FAILED, 31 * DAY)
    jobs = [old_job(n) for n in ages]
    await state.add_jobs(jobs)
    for j in jobs:
        outcome, age = ages[int(j.webhook_id[3:])]
        await state.finish_job(
            j.id, entry(j, f"d{j.webhook_id}", outcome, 200, 1.0, "", None, now - age)
        )
    await state.close()

    async with running(config) as app:
        assert app.pipeline is not None
        await wait_until(
            lambda: app.pipeline is not None and app.pipeline.history.prunes >= 1, what="prune"
        )
    store = SqliteHistory.connect(config.sidecar.state_dir / DB_NAME)
    kept = {d.id for d in store.find(Query(limit=0))}
    store.close()
    # delivered after history_days = 1: gone; a dead letter stays for dead_letter_days = 30
    assert kept == {"dold1", "dold2"}


async def test_cli_without_a_state_file_says_so(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    path = write_config(tmp_path, world, cb)
    # the history needs no bot token: a credential only the service can read does not matter
    text = path.read_text().replace(f'token = "{world.bot_token}"', 'token_file = "/nonexistent"')
    path.write_text(text)
    code, _, err = await cli("deliveries", "-c", str(path))
    assert code == 1 and "no state file" in err and str(tmp_path / "state") in err
    code, _, err = await cli("redeliver", "-c", str(path))
    assert code == 1 and "ids or --failed" in err


async def finished(app: Sidecar, count: int) -> list[Any]:
    """The history once ``count`` rows are in it (newest first)."""
    store = SqliteHistory.connect(app.state.path)
    try:
        await wait_until(lambda: len(store.find(Query(limit=0))) >= count, what="history rows")
        return store.find(Query(limit=0))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("answer", "reply_status", "outcome", "error"),
    [
        (Reply(200, {"text": "ok"}), None, "delivered", ""),
        (Reply(200, b""), None, "delivered", ""),  # nothing to post is not a failure
        (Reply(200, "not json"), None, "no_reply", "not JSON"),
        (Reply(200, {"text": "ok"}), 400, "reply_failed", "400"),
        (Reply(404, {"text": "gone"}), None, "delivered", ""),  # a 4xx is the receiver's answer
    ],
)
async def test_outcomes(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    answer: Reply,
    reply_status: int | None,
    outcome: str,
    error: str,
) -> None:
    cb.respond_with(lambda _: answer)
    if reply_status is not None:
        world.mm.fail_next(1, reply_status, method="POST", path_prefix="/posts")
    config = make_config(world, tmp_path, [{"channels": ["dev"], "callback_urls": [cb.url_for()]}])
    async with running(config) as app:
        world.mm.post(world.alice["id"], world.dev["id"], "hello")
        [row] = await finished(app, 1)
    assert (row.outcome, row.status, row.attempts) == (outcome, answer.status, 1)
    assert error in row.error and (error or row.error == "")


async def test_refused_by_the_address_guard_is_a_dead_letter(world: World, tmp_path: Path) -> None:
    config = make_config(
        world, tmp_path, [{"channels": ["dev"], "callback_urls": ["http://10.1.2.3/hook"]}]
    )
    async with running(config) as app:
        world.mm.post(world.alice["id"], world.dev["id"], "hello")
        [row] = await finished(app, 1)
        await wait_until(
            lambda: (
                app.metrics.registry.get_sample_value(
                    "mm_sidecar_dead_letters", {"webhook": "hook0"}
                )
                == 1
            ),
            what="dead-letter gauge",
        )
    assert (row.outcome, row.status, row.dead) == ("refused", None, True)
    assert "address forbidden" in row.error
