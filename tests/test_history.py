"""The delivery history: rows written with finished jobs, queries, retention,
redelivery rows, the schema migration from version 1, and the redaction of ``show``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeOutbox

from sidecar import history
from sidecar.cli import build_parser
from sidecar.deliveries_cli import hide_body_token, show, table
from sidecar.health import Metrics
from sidecar.history import Query, Retention, parse_since
from sidecar.history_sqlite import SqliteHistory
from sidecar.redelivery import DEAD_REFRESH, HistoryKeeper
from sidecar.state import DB_NAME, Job, State

TOKEN = "zmigewsanbbsdf59xnmduzypjc"
DAY = 86400.0


def job(n: int, *, body: bytes | None = None, webhook: str = "build") -> Job:
    return Job(
        id=f"wh{n}/0",
        webhook=webhook,
        url="https://ci.test/hook?key=sekrit",
        webhook_id=f"wh{n}",
        body=body if body is not None else f"channel_id=c&text=n{n}&token={TOKEN}".encode(),
        content_type="application/x-www-form-urlencoded",
        event="posted",
        post_id=f"post{n}",
        channel_id="chan",
        root_id="",
        headers={"Content-Type": "application/x-www-form-urlencoded", "webhook-id": f"wh{n}"},
    )


def entry(j: Job, outcome: str, *, at: float, delivery_id: str = "", status: int = 200) -> Any:
    return history.entry(
        j, delivery_id or f"d-{j.webhook_id}", outcome, status, 12.5, "", b'{"text":"hi"}', at
    )


async def write(tmp_path: Path, rows: list[tuple[Job, Any]]) -> None:
    """Jobs added, then finished with their history rows, through the writer thread."""
    state = State(tmp_path)
    state.open()
    state.start_writer()
    await state.add_jobs([j for j, _ in rows])
    await asyncio.gather(*(state.finish_job(j.id, e) for j, e in rows))
    await state.close()


def store(tmp_path: Path) -> SqliteHistory:
    return SqliteHistory.connect(tmp_path / DB_NAME)


async def test_finished_job_leaves_a_history_row_in_the_same_commit(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.open()
    state.start_writer()
    jobs = [job(i) for i in range(20)]
    await state.add_jobs(jobs)
    before = state.commits
    now = time.time()
    futures = [
        state.finish_job(j.id, entry(j, history.DELIVERED, at=now + i)) for i, j in enumerate(jobs)
    ]
    await asyncio.gather(*futures)
    assert state.commits - before <= 3  # grouped with the outbox deletes, not one commit each
    await state.close()

    h = store(tmp_path)
    rows = h.find(Query(limit=0))
    assert [d.id for d in rows] == [f"d-wh{i}" for i in reversed(range(20))]  # newest first
    assert rows[0].request_body == b"" and rows[0].request_headers == {}  # a listing: no bodies
    full = h.get("d-wh3")
    assert full is not None
    assert full.request_body == jobs[3].body and full.response_body == b'{"text":"hi"}'
    assert full.request_headers["webhook-id"] == "wh3"
    assert (full.outcome, full.status, full.attempts, full.duration_ms) == (
        "delivered",
        200,
        0,
        12.5,
    )
    assert h.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    h.close()


async def test_bodies_cut_at_64_kib_except_a_dead_letters_request(tmp_path: Path) -> None:
    big = b"x" * (history.BODY_LIMIT + 10)
    ok, dead = job(1, body=big), job(2, body=big)
    now = time.time()
    await write(
        tmp_path,
        [(ok, entry(ok, history.DELIVERED, at=now)), (dead, entry(dead, history.FAILED, at=now))],
    )
    h = store(tmp_path)
    kept = h.get("d-wh1")
    assert kept is not None and len(kept.request_body) == history.BODY_LIMIT
    assert kept.request_truncated
    whole = h.get("d-wh2")
    assert whole is not None and whole.request_body == big and not whole.request_truncated
    # a cut body cannot be sent again unchanged: redeliver refuses it, and says why
    results = h.redeliver([kept, whole], now)
    assert [(r.queued, r.reason) for r in results] == [
        (False, "its request body was cut at 64 KiB"),
        (True, ""),
    ]
    h.close()


async def test_queries_filter_failed_webhook_post_since(tmp_path: Path) -> None:
    now = time.time()
    rows = [
        (job(1), entry(job(1), history.DELIVERED, at=now - 7200)),
        (job(2), entry(job(2), history.FAILED, at=now - 60, status=500)),
        (job(3, webhook="deploy"), entry(job(3, webhook="deploy"), history.REFUSED, at=now - 30)),
        (job(4), entry(job(4), history.NO_REPLY, at=now - 10)),
    ]
    await write(tmp_path, rows)
    h = store(tmp_path)

    def ids(**kw: Any) -> list[str]:
        return [d.id for d in h.find(Query(limit=0, **kw))]

    assert ids() == ["d-wh4", "d-wh3", "d-wh2", "d-wh1"]
    assert ids(failed=True) == ["d-wh3", "d-wh2"]  # failed and refused are dead letters
    assert ids(failed=True, webhook="build") == ["d-wh2"]
    assert ids(post_id="post4") == ["d-wh4"]
    assert ids(since=parse_since("1h", now=now)) == ["d-wh4", "d-wh3", "d-wh2"]
    assert [d.id for d in h.find(Query(limit=2))] == ["d-wh4", "d-wh3"]
    assert h.dead_letters() == {"build": 1, "deploy": 1}
    h.close()


def test_parse_since() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("30m", now=10_000.0) == 10_000.0 - 1800
    assert parse_since("1d", now=100_000.0) == 100_000.0 - 86400
    assert parse_since("45", now=100.0) == 55.0
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


async def test_retention_history_days_dead_letter_days_and_max_rows(tmp_path: Path) -> None:
    now = time.time()
    rows = [
        (job(1), entry(job(1), history.DELIVERED, at=now - 8 * DAY)),  # past history_days
        (job(2), entry(job(2), history.DELIVERED, at=now - 6 * DAY)),  # kept
        (job(3), entry(job(3), history.FAILED, at=now - 8 * DAY)),  # a dead letter: kept
        (job(4), entry(job(4), history.FAILED, at=now - 31 * DAY)),  # past dead_letter_days
        (job(5), entry(job(5), history.REPLY_FAILED, at=now - 8 * DAY)),  # not dead: goes
    ]
    await write(tmp_path, rows)
    h = store(tmp_path)
    assert h.prune(now, Retention(7, 30, 100_000)) == 3
    assert {d.id for d in h.find(Query(limit=0))} == {"d-wh2", "d-wh3"}
    h.close()


async def test_max_rows_drops_the_oldest_delivered_before_dead_letters(tmp_path: Path) -> None:
    now = time.time()
    rows = [(job(i), entry(job(i), history.DELIVERED, at=now - 100 + i)) for i in range(6)]
    rows += [(job(10), entry(job(10), history.FAILED, at=now - 500))]  # the oldest of all
    await write(tmp_path, rows)
    h = store(tmp_path)
    assert h.prune(now, Retention(7, 30, 4)) == 3
    assert {d.id for d in h.find(Query(limit=0))} == {"d-wh10", "d-wh3", "d-wh4", "d-wh5"}
    assert h.prune(now, Retention(7, 30, 2)) == 2
    assert {d.id for d in h.find(Query(limit=0))} == {"d-wh10", "d-wh5"}
    assert h.prune(now, Retention(7, 30, 0)) == 2  # dead letters too, once nothing else is left
    assert h.find(Query(limit=0)) == []
    h.close()


async def test_redeliver_queues_same_body_and_webhook_id_once(tmp_path: Path) -> None:
    j = job(1)
    await write(tmp_path, [(j, entry(j, history.FAILED, at=time.time(), status=500))])
    h = store(tmp_path)
    d = h.get("d-wh1")
    assert d is not None
    first = h.redeliver([d], 1000.0)
    again = h.redeliver([d], 1001.0)
    assert [r.queued for r in first] == [True]
    assert [(r.queued, r.reason) for r in again] == [(False, "job wh1/0 is already in the outbox")]
    pending = h.pending()
    assert len(pending) == 1
    queued = pending[0]
    assert (queued.id, queued.body, queued.webhook_id, queued.url) == (j.id, j.body, "wh1", j.url)
    assert (queued.stage, queued.redelivery_of) == ("deliver", "d-wh1")
    assert h.dead_letters() == {}  # redelivered: no longer counted as a dead letter
    h.close()
    # a daemon starting later does not read it as an ordinary unfinished job: the poller claims it
    later = State(tmp_path)
    assert later.open().jobs == []
    await later.close()  # (a connection left to the GC warns on 3.13)


async def test_poller_skips_a_job_running_here_and_takes_it_later(tmp_path: Path) -> None:
    j = job(1)
    await write(tmp_path, [(j, entry(j, history.FAILED, at=time.time(), status=500))])
    h = store(tmp_path)
    d = h.get("d-wh1")
    assert d is not None
    h.redeliver([d], time.time())
    state = State(tmp_path)
    state.open()
    state.start_writer()
    outbox = FakeOutbox({j.id})  # the same job is in flight in the daemon
    metrics = Metrics("test")
    keeper = HistoryKeeper(
        state=state,
        outbox=outbox,  # type: ignore[arg-type]
        metrics=metrics,
        retention=Retention,
    )
    await keeper.poll(h)
    assert outbox.submitted == []  # never the same job twice at once
    assert metrics.registry.get_sample_value("mm_sidecar_redeliveries_total") == 0
    outbox.ids.clear()
    await keeper.poll(h)
    assert [x.id for x in outbox.submitted] == [j.id]
    assert metrics.registry.get_sample_value("mm_sidecar_redeliveries_total") == 1
    await asyncio.gather(*outbox.committed)
    await state.close()
    assert h.pending() == []  # claimed: a later poll does not take it again
    h.close()


async def test_poller_reads_a_local_file_on_the_loop_between_dead_letter_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = job(1)
    await write(tmp_path, [(j, entry(j, history.FAILED, at=time.time(), status=500))])
    h = store(tmp_path)
    state = State(tmp_path)
    state.open()
    state.start_writer()
    outbox = FakeOutbox(set())
    keeper = HistoryKeeper(
        state=state,
        outbox=outbox,  # type: ignore[arg-type]
        metrics=Metrics("test"),
        retention=Retention,
        monotonic=lambda: 0.0,
    )
    await keeper.poll(h)  # the first poll counts the dead letters, in a thread
    threads: list[object] = []
    real_to_thread = asyncio.to_thread
    monkeypatch.setattr(
        asyncio, "to_thread", lambda fn, *a: threads.append(fn) or real_to_thread(fn, *a)
    )
    d = h.get("d-wh1")
    assert d is not None
    h.redeliver([d], time.time())  # what `mm-sidecar redeliver` does meanwhile
    await keeper.poll(h)
    assert [x.id for x in outbox.submitted] == [j.id]  # found without a thread
    assert threads == []
    await asyncio.gather(*outbox.committed)
    await state.close()
    h.close()


async def test_pending_nowait_gives_up_at_once_when_the_file_is_busy(tmp_path: Path) -> None:
    await write(tmp_path, [])  # the file with its tables
    h = store(tmp_path)
    real = h.conn

    class Busy:
        """The connection while a truncating checkpoint holds the file (rare in WAL)."""

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("SELECT"):
                raise sqlite3.OperationalError("database is locked")
            return real.execute(sql, *args)

    h.conn = Busy()  # type: ignore[assignment]
    assert h.pending_nowait() is None  # the poller then asks from a thread
    h.conn = real
    assert real.execute("PRAGMA busy_timeout").fetchone() == (10_000,)  # restored
    assert h.pending_nowait() == []
    h.close()


async def test_poller_sets_the_dead_letter_gauge(tmp_path: Path) -> None:
    now = time.time()
    a, b = job(1), job(2)
    await write(
        tmp_path, [(a, entry(a, history.FAILED, at=now)), (b, entry(b, history.FAILED, at=now))]
    )
    h = store(tmp_path)
    metrics = Metrics("test")
    outbox = FakeOutbox(set())
    ticks = [0.0]
    keeper = HistoryKeeper(
        state=State(tmp_path),
        outbox=outbox,  # type: ignore[arg-type]
        metrics=metrics,
        retention=Retention,
        monotonic=lambda: ticks[0],
    )
    await keeper.poll(h)
    value = metrics.registry.get_sample_value
    assert value("mm_sidecar_dead_letters", {"webhook": "build"}) == 2
    # Changed by another process (the CLI, a replica): counted again after DEAD_REFRESH s,
    # not at every poll (a count over the history each second is not worth it).
    h.conn.execute("UPDATE deliveries SET redelivered_at = 1 WHERE id = 'd-wh1'")
    await keeper.poll(h)
    assert value("mm_sidecar_dead_letters", {"webhook": "build"}) == 2
    ticks[0] += DEAD_REFRESH
    await keeper.poll(h)
    assert value("mm_sidecar_dead_letters", {"webhook": "build"}) == 1
    # A dead letter made here is counted at the next poll.
    h.conn.execute("UPDATE deliveries SET redelivered_at = 1")
    outbox.counters.dead_letters += 1
    await keeper.poll(h)
    assert value("mm_sidecar_dead_letters", {"webhook": "build"}) == 0
    h.close()


async def test_a_keeper_cancelled_while_it_opens_the_history_closes_it() -> None:
    """A term torn down as it begins (HA: the lease lost at once) leaves no connection open:
    the one the thread opened after the cancellation is closed (unclosed, it is a
    ResourceWarning, an error in whichever test the GC then runs)."""
    opening, release = threading.Event(), threading.Event()
    closed: list[bool] = []

    class Opened:
        def close(self) -> None:
            closed.append(True)

    class SlowState:
        def open_history(self) -> Opened:
            opening.set()
            release.wait(10)
            return Opened()

    keeper = HistoryKeeper(
        state=SlowState(),  # type: ignore[arg-type]
        outbox=FakeOutbox(set()),  # type: ignore[arg-type]
        metrics=Metrics("test"),
        retention=Retention,
    )
    task = asyncio.create_task(keeper.run())
    assert await asyncio.to_thread(opening.wait, 10)
    task.cancel()  # while the thread still connects (cancel() cancels the awaited shield now)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]


def v1_file(path: Path) -> None:
    """A state file as version 1 wrote it, with one unfinished job."""
    conn = sqlite3.connect(path / DB_NAME, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE cursor (channel_id TEXT PRIMARY KEY, create_at INTEGER NOT NULL);
        CREATE TABLE seen (key TEXT PRIMARY KEY, at INTEGER NOT NULL);
        CREATE TABLE outbox (id TEXT PRIMARY KEY, webhook TEXT NOT NULL, stage TEXT NOT NULL,
            attempts INTEGER NOT NULL, job TEXT NOT NULL, body BLOB NOT NULL, response BLOB,
            created_at REAL NOT NULL, next_at REAL NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO cursor VALUES ('chan', 1234);
        """
    )
    meta = json.dumps(
        {
            "url": "https://ci.test/hook",
            "webhook_id": "wh9",
            "content_type": "application/json",
            "event": "posted",
            "post_id": "p9",
            "channel_id": "chan",
            "root_id": "",
        }
    )
    conn.execute(
        "INSERT INTO outbox VALUES ('wh9/0', 'build', 'deliver', 1, ?, X'7b7d', NULL, 1.0, 0)",
        (meta,),
    )
    conn.close()


async def test_a_version_1_state_file_is_migrated(tmp_path: Path) -> None:
    v1_file(tmp_path)
    with pytest.raises(history.HistoryError, match="no delivery history yet"):
        store(tmp_path)  # the CLI never upgrades a file itself
    state = State(tmp_path)
    snap = state.open()
    assert snap.cursors == {"chan": 1234}
    assert [(j.id, j.webhook_id, j.attempts, j.redelivery_of) for j in snap.jobs] == [
        ("wh9/0", "wh9", 1, "")
    ]
    state.start_writer()
    j = snap.jobs[0]
    await state.finish_job(j.id, entry(j, history.DELIVERED, at=time.time()))
    await state.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    conn.close()
    h = store(tmp_path)
    assert [d.id for d in h.find(Query())] == ["d-wh9"]
    h.close()


# -- the CLI's rendering -----------------------------------------------------------------------


async def test_show_hides_the_token_and_signatures_unless_asked(tmp_path: Path) -> None:
    form = job(1)
    form.headers = {"webhook-id": "wh1", "webhook-signature": "v1,c2lnbmF0dXJl"}
    body = json.dumps({"channel_id": "c", "token": "a/b+c<d>", "text": "hello"}).encode()
    as_json = job(2, body=body)
    as_json.content_type = "application/json"
    now = time.time()
    await write(
        tmp_path,
        [
            (form, entry(form, history.FAILED, at=now)),
            (as_json, entry(as_json, history.FAILED, at=now)),
        ],
    )
    h = store(tmp_path)
    d1, d2 = h.get("d-wh1"), h.get("d-wh2")
    h.close()
    assert d1 is not None and d2 is not None
    hidden = show(d1, show_secrets=False)
    assert TOKEN not in hidden and "token=***" in hidden
    assert "c2lnbmF0dXJl" not in hidden and "webhook-signature: ***" in hidden
    assert "sekrit" not in hidden  # the URL's query may hold a secret too
    shown = show(d1, show_secrets=True)
    assert TOKEN in shown and "webhook-signature: v1,c2lnbmF0dXJl" in shown and "sekrit" in shown
    json_hidden = show(d2, show_secrets=False)
    assert "a/b+c" not in json_hidden and '"token": "***"' in json_hidden
    assert '"token": "a/b+c<d>"' in show(d2, show_secrets=True)


def test_hide_body_token_without_a_token_leaves_the_body() -> None:
    assert hide_body_token("text=hi", "application/x-www-form-urlencoded") == "text=hi"
    assert hide_body_token("not json", "application/json") == "not json"


def test_table_columns() -> None:
    d = history.Delivery(
        id="abc123",
        job_id="wh1/0",
        webhook="build",
        event="posted",
        post_id="post1",
        channel_id="chan",
        root_id="",
        url="https://ci.test/hook",
        webhook_id="wh1",
        content_type="application/json",
        attempts=2,
        outcome="failed",
        status=500,
        duration_ms=3.2,
        error="status 500",
        created_at=0.0,
        finished_at=0.0,
        redelivered_at=5.0,
    )
    lines = table([d]).splitlines()
    assert lines[0].split() == [
        "time", "id", "webhook", "outcome", "status", "attempts", "duration", "channel", "post",
        "error",
    ]  # fmt: skip
    assert "abc123" in lines[1] and "failed (redelivered)" in lines[1] and "status 500" in lines[1]
    assert table([]).splitlines()[-1] == "(no deliveries)"


def test_cli_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(["deliveries", "-c", "x.toml", "--failed", "--json", "--since", "2h"])
    assert (args.failed, args.json, args.since, args.limit) == (True, True, "2h", 50)
    args = parser.parse_args(["deliveries", "show", "abc", "--show-secrets", "-c", "x.toml"])
    assert args.what == ["show", "abc"] and args.show_secrets
    args = parser.parse_args(["redeliver", "-c", "x.toml", "a", "b"])
    assert args.ids == ["a", "b"] and not args.failed
