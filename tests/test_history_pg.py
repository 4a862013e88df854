"""The delivery history on the PostgreSQL backend (issue 14 on issue 13's backend): rows written
with finished jobs, redelivery queued, left out of the snapshot and claimed by the poller,
retention, the schema migration from version 1, writes that keep failing, `state migrate`."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeOutbox

from pg import Cluster
from sidecar import history, pgstate
from sidecar.backend import StateUnavailable
from sidecar.cli import main
from sidecar.health import Metrics
from sidecar.history import Query, Retention
from sidecar.history_pg import PgHistory
from sidecar.history_sqlite import SqliteHistory
from sidecar.pgconn import PgTarget
from sidecar.pgstate import SCHEMA_VERSION, PgState
from sidecar.redelivery import HistoryKeeper
from sidecar.state import DB_NAME, Job, State

DAY = 86400.0


def job(n: int) -> Job:
    return Job(
        id=f"wh{n}/0",
        webhook="build",
        url="https://ci.test/hook",
        webhook_id=f"wh{n}",
        body=f"text=n{n}&token=tok".encode(),
        content_type="application/x-www-form-urlencoded",
        event="posted",
        post_id=f"post{n}",
        channel_id="chan",
        root_id="",
        headers={"webhook-id": f"wh{n}"},
    )


def entry(j: Job, outcome: str, *, at: float, status: int = 200) -> Any:
    return history.entry(j, f"d-{j.webhook_id}", outcome, status, 3.0, "", b"{}", at)  # type: ignore[arg-type]


async def finished(url: str, rows: list[tuple[Job, Any]]) -> None:
    state = PgState(PgTarget(url))
    await asyncio.to_thread(state.open)
    state.start_writer()
    await state.add_jobs([j for j, _ in rows])
    await asyncio.gather(*(state.finish_job(j.id, e) for j, e in rows))
    await state.close()


async def test_history_written_with_the_finish_then_redelivered_and_claimed(pg_url: str) -> None:
    state = PgState(PgTarget(pg_url))
    await asyncio.to_thread(state.open)
    state.start_writer()
    jobs = [job(i) for i in range(10)]
    await state.add_jobs(jobs)
    before = state.commits
    now = time.time()
    outcomes = [history.FAILED if i == 3 else history.DELIVERED for i in range(10)]
    await asyncio.gather(
        *(
            state.finish_job(j.id, entry(j, o, at=now + i))
            for i, (j, o) in enumerate(zip(jobs, outcomes, strict=True))
        )
    )
    assert state.commits - before <= 3  # grouped with the outbox deletes
    await state.close()

    h = await asyncio.to_thread(PgHistory.connect, PgTarget(pg_url))
    try:
        rows = h.find(Query(limit=0))
        assert [d.id for d in rows] == [f"d-wh{i}" for i in reversed(range(10))]  # newest first
        [dead] = h.find(Query(failed=True))
        assert (dead.id, dead.outcome, dead.status) == ("d-wh3", "failed", 200)
        full = h.get("d-wh3")
        assert full is not None and full.request_body == jobs[3].body
        assert full.request_headers == {"webhook-id": "wh3"}
        assert h.dead_letters() == {"build": 1}
        [queued] = h.redeliver([full], time.time())
        assert queued.queued
        [again] = h.redeliver([full], time.time())
        assert not again.queued and "already in the outbox" in again.reason
        assert [j.id for j in h.pending()] == ["wh3/0"]
        assert h.dead_letters() == {}  # redelivered: no longer a pending dead letter

        # A restart does not resume the queued row as an unfinished job: the poller claims it.
        state = PgState(PgTarget(pg_url))
        snap = await asyncio.to_thread(state.open)
        assert snap.jobs == []
        state.start_writer()
        outbox = FakeOutbox({"wh3/0"})  # the same job still running here
        metrics = Metrics("test")
        keeper = HistoryKeeper(
            state=state,
            outbox=outbox,  # type: ignore[arg-type]
            metrics=metrics,
            retention=Retention,
        )
        await keeper.poll(h)
        assert outbox.submitted == []  # never the same job twice at once
        outbox.ids.clear()
        await keeper.poll(h)
        [claimed] = outbox.submitted
        assert claimed.webhook_id == "wh3" and claimed.body == jobs[3].body
        assert claimed.redelivery_of == "d-wh3" and claimed.stage == "deliver"
        await asyncio.gather(*outbox.committed)
        assert h.pending() == []  # claimed: a later poll does not take it again
        assert metrics.registry.get_sample_value("mm_sidecar_redeliveries_total") == 1
        await state.close()
    finally:
        h.close()


async def test_retention_prunes_old_rows_dead_letters_later(pg_url: str) -> None:
    now = time.time()
    rows = [
        (job(1), entry(job(1), history.DELIVERED, at=now - 10 * DAY)),  # past history_days
        (job(2), entry(job(2), history.FAILED, at=now - 10 * DAY)),  # dead letter: kept
        (job(3), entry(job(3), history.FAILED, at=now - 40 * DAY)),  # past dead_letter_days
        (job(4), entry(job(4), history.DELIVERED, at=now)),
    ]
    await finished(pg_url, rows)
    h = await asyncio.to_thread(PgHistory.connect, PgTarget(pg_url))
    try:
        assert h.prune(now, Retention(7, 30, 100)) == 2
        assert {d.id for d in h.find(Query(limit=0))} == {"d-wh2", "d-wh4"}
        assert h.prune(now, Retention(7, 30, 1)) == 1  # over the cap: non-dead rows go first
        assert [d.id for d in h.find(Query(limit=0))] == ["d-wh2"]
    finally:
        h.close()


def test_a_version_1_schema_is_migrated_and_keeps_its_state(
    pg_cluster: Cluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pg_url.rsplit("/", 1)[1]
    monkeypatch.setattr(pgstate, "SCHEMA_VERSION", 1)  # as issue 13's first release made it
    PgState(PgTarget(pg_url)).open()
    monkeypatch.undo()
    assert pg_cluster.sql("SELECT to_regclass('mm_sidecar.deliveries')::text", db) == [(None,)]
    pg_cluster.sql("INSERT INTO mm_sidecar.cursor VALUES ('chan', 1234)", db)
    snap = PgState(PgTarget(pg_url)).open()
    assert snap.cursors == {"chan": 1234} and not snap.fresh
    assert pg_cluster.sql("SELECT value FROM mm_sidecar.meta WHERE key = 'schema_version'", db) == [
        (str(SCHEMA_VERSION),)
    ]
    assert pg_cluster.sql("SELECT count(*) FROM mm_sidecar.deliveries", db) == [(0,)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_writes_that_keep_failing_end_in_on_write_failure() -> None:
    # Nothing listens there: every attempt fails; after retry_for the daemon is told (exit 1).
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    state = PgState(PgTarget(url), retry_for=0.3)
    failures: list[BaseException] = []
    told = asyncio.Event()
    state.on_write_failure = lambda exc: (failures.append(exc), told.set())  # type: ignore[func-returns-value]
    state.start_writer()
    write = state.record_position("chan", 1, ["a"], 1)
    await asyncio.wait_for(told.wait(), 30)
    with pytest.raises(StateUnavailable):
        await write
    assert isinstance(failures[0], StateUnavailable)
    await state.close()


async def test_state_migrate_carries_the_history_and_queued_redeliveries(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    state = State(tmp_path / "one")
    state.open()
    state.start_writer()
    a, b = job(1), job(2)
    await state.add_jobs([a, b])
    await state.finish_job(a.id, entry(a, history.DELIVERED, at=now))
    await state.finish_job(b.id, entry(b, history.FAILED, at=now + 1))
    await state.close()
    h = SqliteHistory.connect(tmp_path / "one" / DB_NAME)
    dead = h.get("d-wh2")
    assert dead is not None
    h.redeliver([dead], now + 2)
    h.close()

    argv = ["state", "migrate", "--from", f"sqlite://{tmp_path / 'one'}", "--to", pg_url]
    assert await asyncio.to_thread(main, argv) == 0
    assert "2 history rows" in capsys.readouterr().out
    pg = await asyncio.to_thread(PgHistory.connect, PgTarget(pg_url))
    try:
        assert [d.id for d in pg.find(Query(limit=0))] == ["d-wh2", "d-wh1"]
        moved = pg.get("d-wh2")
        assert moved is not None and moved.request_body == b.body
        assert moved.request_headers == {"webhook-id": "wh2"} and moved.redelivered_at == now + 2
        assert [j.id for j in pg.pending()] == ["wh2/0"]  # the queued redelivery came along
    finally:
        pg.close()

    back = tmp_path / "two" / DB_NAME
    argv = ["state", "migrate", "--from", pg_url, "--to", f"sqlite://{back}"]
    assert await asyncio.to_thread(main, argv) == 0
    h = SqliteHistory.connect(back)
    try:
        assert [d.id for d in h.find(Query(limit=0))] == ["d-wh2", "d-wh1"]
        assert [j.id for j in h.pending()] == ["wh2/0"]
    finally:
        h.close()
