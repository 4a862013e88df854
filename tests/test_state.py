"""The SQLite state: one commit per burst, read back after a restart, versioned, never wiped."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sidecar.state import DB_NAME, Job, State, StateError


def job(n: int) -> Job:
    return Job(
        id=f"msg_{n}/0",
        webhook="build",
        url="https://ci.test/hook",
        webhook_id=f"msg_{n}",
        body=b"token=x&text=%23build",
        content_type="application/x-www-form-urlencoded",
        event="posted",
        post_id=f"post{n}",
        channel_id="chan",
        root_id="",
    )


async def test_round_trip_and_burst_in_one_transaction(tmp_path: Path) -> None:
    state = State(tmp_path)
    snap = state.open()
    assert snap.fresh and snap.jobs == [] and snap.cursors == {}
    state.start_writer()
    futures = [state.record([job(i)], "chan", 1000 + i, [f"post{i}"], 1000 + i) for i in range(50)]
    for f in futures:
        await f
    assert state.commits <= 5  # a burst of 50 writes is grouped, not 50 commits
    await state.finish_job("msg_0/0")
    await state.close()

    again = State(tmp_path)
    snap = again.open()
    assert not snap.fresh
    assert snap.cursors == {"chan": 1049}
    assert set(snap.seen) == {f"post{i}" for i in range(50)}
    assert [j.id for j in snap.jobs] == [f"msg_{i}/0" for i in range(1, 50)]
    restored = snap.jobs[0]
    assert restored.body == job(1).body and restored.webhook_id == "msg_1"
    again.start_writer()
    await again.prune_seen(1010)
    await again.close()
    assert len(State(tmp_path).open().seen) == 40


async def test_cursor_never_moves_back(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.open()
    state.start_writer()
    await state.record_position("chan", 2000, ["a"], 2000)
    await state.record_position("chan", 1500, ["b"], 1500)
    await state.close()
    assert State(tmp_path).open().cursors == {"chan": 2000}


def test_corrupt_file_is_an_error_with_a_way_out(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="--reset-state"):
        State(tmp_path).open()
    aside = State.reset(tmp_path)
    assert aside is not None and aside.read_bytes().startswith(b"this is not")  # kept, not wiped
    assert State(tmp_path).open().fresh


async def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    first = State(tmp_path)
    first.open()
    await first.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="schema version 99"):
        State(tmp_path).open()


def test_reset_without_a_file_does_nothing(tmp_path: Path) -> None:
    assert State.reset(tmp_path) is None


def test_wal_mode_and_manual_checkpoints(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.open()
    assert state._conn is not None
    assert state._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert state._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


async def test_next_attempt_time_survives_a_restart(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.open()
    state.start_writer()
    j = job(7)
    await state.add_jobs([j])
    j.attempts, j.next_at = 2, 1234567890.5
    await state.update_job(j)
    await state.close()
    [back] = State(tmp_path).open().jobs
    assert (back.attempts, back.next_at, back.stage) == (2, 1234567890.5, "deliver")
