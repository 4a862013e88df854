"""The state: one commit per burst, read back after a restart, versioned, never wiped.

The behaviour tests run against both backends (SQLite in state_dir, PostgreSQL in its schema);
the file-specific ones (corrupt file, WAL, reset) against SQLite only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import numbered_job

from sidecar import state as state_mod
from sidecar.backend import StateBackend
from sidecar.state import DB_NAME, Job, Snapshot, State, StateError

Factory = Callable[[], StateBackend]


async def reopen(make_state: Factory) -> Snapshot:
    """What a restart reads back (the store closed again afterwards)."""
    state = make_state()
    try:
        return state.open()
    finally:
        await state.close()


def job(n: int) -> Job:
    return numbered_job(
        n, body=b"token=x&text=%23build", content_type="application/x-www-form-urlencoded"
    )


async def test_round_trip_and_burst_in_one_transaction(make_state: Factory) -> None:
    state = make_state()
    snap = state.open()
    assert snap.fresh and snap.jobs == [] and snap.cursors == {}
    state.start_writer()
    futures = [state.record([job(i)], "chan", 1000 + i, [f"post{i}"], 1000 + i) for i in range(50)]
    for f in futures:
        await f
    assert state.commits <= 5  # a burst of 50 writes is grouped, not 50 commits
    await state.finish_job("msg_0/0")
    await state.close()

    again = make_state()
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
    assert len((await reopen(make_state)).seen) == 40


async def started_with_one_job(make_state: Factory) -> StateBackend:
    """A running backend whose outbox holds job 1 (committed)."""
    state = make_state()
    state.open()
    state.start_writer()
    await state.record([job(1)], "chan", 1001, ["post1"], 1001)
    return state


async def test_writes_nobody_waits_on_ride_in_the_next_transaction(
    make_state: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished job, a cursor moved past a post that fired nothing: held for up to LINGER
    and committed with the next write that someone waits on (a lone post: one commit, one
    round trip to PostgreSQL, not three)."""
    monkeypatch.setattr(state_mod, "LINGER", 3600.0)  # only the next write can carry them
    state = await started_with_one_job(make_state)
    assert state.commits == 1
    finished = state.finish_job("msg_1/0")
    skipped = state.record_position("chan", 1002, [], 1002)
    # Both are held on the loop: nothing was handed to the writer.
    assert state._queue.qsize() == 0  # type: ignore[attr-defined]
    assert not finished.done() and not skipped.done()
    await state.record([job(3)], "chan", 1003, ["post3"], 1003)
    assert finished.done() and skipped.done()
    assert state.commits == 2  # the next event's transaction carried both
    await state.close()
    snap = await reopen(make_state)
    assert [j.id for j in snap.jobs] == ["msg_3/0"] and snap.cursors == {"chan": 1003}


async def test_a_held_write_alone_is_committed_after_the_linger(
    make_state: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_mod, "LINGER", 0.01)
    state = await started_with_one_job(make_state)
    await state.finish_job("msg_1/0")  # no other write follows: the timer commits it
    assert state.commits == 2
    if isinstance(state, State):  # on the loop, as a lone write: never handed to the writer
        assert state._queued == 0
    await state.close()
    assert (await reopen(make_state)).jobs == []


async def test_close_commits_what_is_held(
    make_state: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_mod, "LINGER", 3600.0)
    state = await started_with_one_job(make_state)
    finished = state.finish_job("msg_1/0")
    await state.close()
    assert finished.done() and finished.exception() is None
    assert (await reopen(make_state)).jobs == []


async def test_cursor_never_moves_back(make_state: Factory) -> None:
    state = make_state()
    state.open()
    state.start_writer()
    await state.record_position("chan", 2000, ["a"], 2000)
    await state.record_position("chan", 1500, ["b"], 1500)
    await state.close()
    assert (await reopen(make_state)).cursors == {"chan": 2000}


def test_corrupt_file_is_an_error_with_a_way_out(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="--reset-state"):
        State(tmp_path).open()
    aside = State.reset(tmp_path)
    assert aside is not None and aside.read_bytes().startswith(b"this is not")  # kept, not wiped
    assert opened(tmp_path).fresh


def opened(state_dir: Path) -> Snapshot:
    """Open the SQLite state and close it again (no connection left for the GC to warn on)."""
    state = State(state_dir)
    try:
        return state.open()
    finally:
        asyncio.run(state.close())


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
    state._conn.close()


async def test_next_attempt_time_survives_a_restart(make_state: Factory) -> None:
    state = make_state()
    state.open()
    state.start_writer()
    j = job(7)
    await state.add_jobs([j])
    j.attempts, j.next_at = 2, 1234567890.5
    await state.update_job(j)
    await state.close()
    [back] = (await reopen(make_state)).jobs
    assert (back.attempts, back.next_at, back.stage) == (2, 1234567890.5, "deliver")


async def test_reply_stage_and_response_survive_a_restart(make_state: Factory) -> None:
    state = make_state()
    state.open()
    state.start_writer()
    j = job(8)
    await state.add_jobs([j])
    j.stage, j.attempts, j.response = "reply", 1, b'{"text": "done \\u00e9"}\x00'
    await state.update_job(j)
    gone = job(9)
    # Added and finished in the same burst: the delete follows the insert.
    await asyncio.gather(state.add_jobs([gone]), state.finish_job(gone.id))
    await state.close()
    snap = await reopen(make_state)
    assert [(b.id, b.stage, b.attempts, b.response) for b in snap.jobs] == [
        (j.id, "reply", 1, b'{"text": "done \\u00e9"}\x00')
    ]
    assert not snap.fresh


async def test_the_last_update_of_a_burst_wins(make_state: Factory) -> None:
    state = make_state()
    state.open()
    state.start_writer()
    j = job(5)
    await state.add_jobs([j])
    updates = []
    for attempts in (1, 2, 3):  # queued together: one transaction
        j.attempts, j.next_at = attempts, 100.0 + attempts
        updates.append(state.update_job(j))
    await asyncio.gather(*updates, state.record_position("chan", 10, ["k", "k"], 10))
    await state.close()
    snap = await reopen(make_state)
    assert [(b.attempts, b.next_at) for b in snap.jobs] == [(3, 103.0)]
    assert snap.seen == {"k": 10}
