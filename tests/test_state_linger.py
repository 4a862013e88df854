"""SQLite state: how held writes and lone writes are committed (on the loop or by the writer).

What both backends share (a write nobody waits on rides in the next transaction, or is
committed after ``LINGER``, or at close) is tested in ``test_state.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fakes import numbered_job

from harness import wait_until
from sidecar import state as state_mod
from sidecar.state import DB_NAME, Job, Snapshot, State


async def started_with_one_job(tmp_path: Path) -> State:
    """A running State whose outbox holds job 1 (committed)."""
    state = State(tmp_path)
    state.open()
    state.start_writer()
    await state.record([job(1)], "chan", 1001, ["post1"], 1001)
    return state


async def reread(tmp_path: Path) -> Snapshot:
    """What the next start reads from the file (that State closed again: an unclosed
    connection is a ResourceWarning on 3.13, raised in whichever test the GC runs)."""
    again = State(tmp_path)
    snapshot = again.open()
    await again.close()
    return snapshot


def job(n: int) -> Job:
    return numbered_job(n, body=b"text=x", content_type="application/x-www-form-urlencoded")


async def test_held_writes_go_to_the_writer_when_the_file_is_locked_at_the_linger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_mod, "LINGER", 0.01)
    state = await started_with_one_job(tmp_path)
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # `mm-sidecar redeliver` writing when the timer fires
    finished = state.finish_job("msg_1/0")
    # The timer found the file locked and handed the held write to the writer thread.
    await wait_until(lambda: state._queued == 1, what="the hand-over to the writer")
    assert not finished.done()  # the writer waits for the lock; the loop did not
    other.execute("COMMIT")
    other.close()
    await finished
    await state.close()
    assert (await reread(tmp_path)).jobs == []


async def test_a_lone_write_is_committed_on_the_loop_at_once(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.open()
    state.start_writer()
    committed = state.record([job(1)], "chan", 1001, ["post1"], 1001)
    # No hand-off to the writer thread and back: done before the loop runs again.
    assert committed.done() and state.commits == 1
    await state.close()
    assert [j.id for j in (await reread(tmp_path)).jobs] == ["msg_1/0"]


async def test_a_lock_held_elsewhere_is_waited_for_by_the_writer_not_the_loop(
    tmp_path: Path,
) -> None:
    state = State(tmp_path)
    state.open()
    state.start_writer()
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # what `mm-sidecar redeliver` does while it writes
    committed = state.record([job(1)], "chan", 1001, ["post1"], 1001)
    assert not committed.done()  # refused at once on the loop, queued for the writer
    other.execute("COMMIT")
    other.close()
    await committed
    assert state.commits == 1
    await state.close()
    assert [j.id for j in (await reread(tmp_path)).jobs] == ["msg_1/0"]


async def test_a_checkpoint_follows_commits_and_none_is_due_while_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_mod, "CHECKPOINT_EVERY", 0.01)
    state = await started_with_one_job(tmp_path)
    await wait_until(lambda: state.checkpoints == 1, what="the checkpoint after a commit")
    # Idle: nothing asks for another one, so the thread waits for a commit (no timer).
    assert not state._committed.is_set()
    await state.finish_job("msg_1/0")  # committed after the linger
    await wait_until(lambda: state.checkpoints == 2, what="the checkpoint after the next commit")
    await state.close()
    assert (await reread(tmp_path)).jobs == []


async def test_pruning_is_the_writer_threads_even_alone(tmp_path: Path) -> None:
    """A prune deletes the oldest share of the processed keys (~0.4 s for 60,000 of 420,000):
    committed by the writer thread (SQLite lets go of the GIL), never on the loop, even as a
    lone write with the writer idle; the loop's reading goes on meanwhile."""
    state = await started_with_one_job(tmp_path)
    try:
        assert state._queued == state._written == 0  # job 1: a lone write, on the loop
        await state.prune_seen(1002)
        assert state._written == 1  # counted by the writer thread once it committed
    finally:
        await state.close()
    assert (await reread(tmp_path)).seen == {}
