"""The state writer's typed commands, and the start position kept in ``meta`` on both backends
(older state holds it in a ``""`` cursor row: moved on open)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from fakes import numbered_job
from hypothesis import given, settings
from hypothesis import strategies as st

from pg import Cluster
from sidecar import migrate, writes
from sidecar.jobs import Job, job_from_row
from sidecar.payload import dumps_strings
from sidecar.pgconn import PgTarget
from sidecar.pgstate import PgState
from sidecar.state import DB_NAME, State
from sidecar.statefile import START_KEY
from sidecar.writes import AddJobs, Claim, FinishJob, PruneSeen, RecordStart, Rows, UpdateJob


def job(n: int) -> Job:
    return numbered_job(n, body=b"x", content_type="application/json")


# -- the commands, folded into one transaction's rows -----------------------------------------


def test_a_burst_of_commands_folds_into_one_set_of_rows() -> None:
    j1, j2 = job(1), job(2)
    j1.stage, j1.attempts, j1.response, j1.next_at = "reply", 2, b"{}", 9.5
    rows = Rows.of(
        [
            AddJobs((j2,)),
            writes.record([j1], "chan", 10, ["k1"], 10),
            writes.record_position("chan", 7, ["k2"], 7),  # a cursor never moves back
            writes.record_position("other", 3, [], 3),
            UpdateJob.of(j1),
            FinishJob(j2.id, ("history",)),
            FinishJob("gone"),
            Claim(("r1", "r2")),
            RecordStart(4),
            PruneSeen(2),
        ]
    )
    assert [r[0] for r in rows.jobs] == [j2.id, j1.id]
    assert rows.updates == [("reply", 2, b"{}", 9.5, j1.id)]
    assert rows.cursors == {"chan": 10, "other": 3}
    assert rows.seen == [("k1", 10), ("k2", 7)]
    assert rows.finished == [(j2.id,), ("gone",)]
    assert rows.history == [("history",)]
    assert rows.claimed == [("r1",), ("r2",)]
    assert (rows.start, rows.prune) == (4, 2)


def test_commands_are_frozen_values() -> None:
    """A queued command cannot change under the writer (the caller's lists are copied)."""
    keys = ["k"]
    command = writes.record_position("chan", 1, keys, 1)
    keys.append("later")
    assert command.keys == ("k",)
    with pytest.raises(AttributeError):
        command.create_at = 2  # type: ignore[misc]
    assert command == writes.RecordPosition("chan", 1, ("k",), 1)


async def test_sqlite_writes_each_command_and_reads_it_back(tmp_path: Path) -> None:
    j1, j2 = job(1), job(2)
    state = State(tmp_path)
    state.open()
    state.start_writer()
    await state.record([j1, j2], "chan", 10, ["k1"], 10)
    j1.stage, j1.attempts = "reply", 3
    await state.update_job(j1)
    await state.finish_job(j2.id)
    await state.record_start(5)
    await state.prune_seen(11)
    await state.close()
    again = State(tmp_path)
    snap = again.open()
    await again.close()
    assert snap.cursors == {"chan": 10}
    assert snap.start == 5
    assert snap.seen == {}
    assert [(j.id, j.stage, j.attempts) for j in snap.jobs] == [(j1.id, "reply", 3)]


# -- the start position: in meta, and the legacy "" cursor row moved there -----------------------


async def test_sqlite_keeps_the_start_position_in_meta_not_in_the_cursor_table(
    tmp_path: Path,
) -> None:
    state = State(tmp_path)
    assert state.open().start is None
    state.start_writer()
    await state.record_start(1234)
    await state.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("SELECT * FROM cursor").fetchall() == []
    assert db.execute("SELECT value FROM meta WHERE key=?", (START_KEY,)).fetchall() == [("1234",)]
    db.close()
    again = State(tmp_path)
    snap = again.open()
    await again.close()
    assert (snap.start, snap.cursors, snap.fresh) == (1234, {}, False)


async def test_sqlite_moves_the_legacy_start_row_to_meta(tmp_path: Path) -> None:
    """A file written before: the start position in the cursor row ``""``."""
    state = State(tmp_path)
    state.open()
    await state.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executemany("INSERT INTO cursor VALUES (?, ?)", [("", 1000), ("chan", 2000)])
    db.commit()
    db.close()
    again = State(tmp_path)
    snap = again.open()
    await again.close()
    assert snap.start == 1000
    assert snap.cursors == {"chan": 2000}  # no channel "" any more
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("SELECT channel_id FROM cursor").fetchall() == [("chan",)]
    assert db.execute("SELECT value FROM meta WHERE key=?", (START_KEY,)).fetchall() == [("1000",)]
    db.close()


async def test_pg_keeps_the_start_position_in_meta(pg_cluster: Cluster, pg_url: str) -> None:
    state = PgState(PgTarget(pg_url))
    assert state.open().fresh
    state.start_writer()
    await state.record_start(77)
    await state.close()
    db = pg_url.rsplit("/", 1)[1]
    assert pg_cluster.sql("SELECT count(*) FROM mm_sidecar.cursor", db) == [(0,)]
    snap = PgState(PgTarget(pg_url)).open()
    assert (snap.start, snap.cursors, snap.fresh) == (77, {}, False)  # a standby takes over


async def test_pg_moves_the_legacy_start_row_to_meta(pg_cluster: Cluster, pg_url: str) -> None:
    PgState(PgTarget(pg_url)).open()
    db = pg_url.rsplit("/", 1)[1]
    pg_cluster.sql("INSERT INTO mm_sidecar.cursor VALUES ('', 1000), ('chan', 2000)", db)
    snap = PgState(PgTarget(pg_url)).open()
    assert (snap.start, snap.cursors) == (1000, {"chan": 2000})
    assert pg_cluster.sql("SELECT channel_id FROM mm_sidecar.cursor", db) == [("chan",)]
    start = f"SELECT value FROM mm_sidecar.meta WHERE key = '{START_KEY}'"
    assert pg_cluster.sql(start, db) == [("1000",)]


async def test_state_migrate_carries_the_start_position(tmp_path: Path, pg_url: str) -> None:
    state = State(tmp_path / "a")
    state.open()
    state.start_writer()
    await state.record_start(55)
    await state.close()
    await asyncio.to_thread(migrate.migrate, f"sqlite://{tmp_path / 'a'}", pg_url)
    assert PgState(PgTarget(pg_url)).open().start == 55
    await asyncio.to_thread(migrate.migrate, pg_url, f"sqlite://{tmp_path / 'b'}")
    back = State(tmp_path / "b")
    assert back.open().start == 55
    await back.close()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=8))
def test_dumps_strings_writes_what_json_dumps_writes(obj: dict[str, str]) -> None:
    """The direct assembly for plain strings and the fallback alike (quotes, backslashes,
    control characters and non-ASCII are escaped as json.dumps escapes them)."""
    assert dumps_strings(obj) == json.dumps(obj)


def test_dumps_strings_falls_back_for_values_that_are_not_strings() -> None:
    assert dumps_strings({"a": 1, "b": None}) == '{"a": 1, "b": null}'  # type: ignore[dict-item]


def test_a_job_row_reads_back_as_the_job() -> None:
    job = numbered_job(3)
    job.url = 'http://hook.example/x?q="é"&t=1'  # not plain: the json.dumps way
    for j in (numbered_job(4), job):
        row = writes.job_row(j)
        back = job_from_row(row)
        assert (back.id, back.url, back.webhook_id, back.post_id) == (
            j.id,
            j.url,
            j.webhook_id,
            j.post_id,
        )
