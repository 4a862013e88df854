"""Durable state in SQLite: the cursor, the outbox and the recently processed posts.

WAL mode with ``synchronous=NORMAL``: a commit survives a crash of the process (SIGKILL),
not necessarily a power cut, and costs no fsync. All writes go through one writer thread fed
by a queue; whatever is queued when it wakes is committed in one transaction, so a burst of
events costs one commit, and the event loop never waits for the disk. A write returns a future
that resolves once its transaction is committed: a delivery waits for its outbox row to be
committed before it is sent ("written before it is sent"), the websocket reader never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar import history_sqlite, writes
from sidecar.errors import StateError as StateError
from sidecar.errors import StateWriteError as StateWriteError
from sidecar.jobs import Job as Job
from sidecar.jobs import Snapshot as Snapshot
from sidecar.statefile import DB_NAME as DB_NAME
from sidecar.statefile import LOCK_NAME as LOCK_NAME
from sidecar.statefile import SCHEMA_VERSION as SCHEMA_VERSION
from sidecar.statefile import START_KEY, StateFile
from sidecar.writes import Command, CommandWriter, Rows

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 1.0  # seconds between WAL checkpoints (none, and no wake-up, when idle)
# Writes nobody waits on to send anything (a finished job, the cursor past a post that fired
# nothing) are held on the loop for up to this long and ride in the next transaction
# (the next event's): a lone post then costs one commit, not two. A crash in this window
# resumes the job from its outbox row (at least once, as before) or catches the post up again.
LINGER = 0.25
LAZY = (writes.FinishJob, writes.RecordPosition)
# Pruning the processed keys deletes a catch-up window's oldest share of a table keyed by
# random ids (60,000 of 420,000 keys at 100 posts/s: ~0.4 s): always the writer thread's, which
# lets go of the GIL in SQLite, never the loop's (later writes queue behind it meanwhile).
OFF_LOOP = (writes.PruneSeen,)
# A write that comes alone (no other write in the last INLINE_GAP s, nothing queued for the
# writer) is committed on the loop, at once: WAL + synchronous=NORMAL makes a commit a few
# writes into the page cache, no fsync (checkpoints have their own thread), which costs less
# than handing it to the writer thread and being woken up again. Under load the writer
# thread still groups each burst into one transaction. A lock held by another process
# (``mm-sidecar redeliver``) is not waited for on the loop: the writer thread takes over
# (the loop commits on a connection of its own whose busy timeout is 0).
INLINE_GAP = 0.005
WRITE_RETRY_FOR = 60.0  # seconds a failing commit (disk full, I/O error) is retried before exit 1


class State(CommandWriter):
    """The SQLite file under ``state_dir`` and its writer thread."""

    def __init__(self, state_dir: Path, *, write_retry_for: float = WRITE_RETRY_FOR) -> None:
        self.path = state_dir / DB_NAME
        self.write_retry_for = write_retry_for
        # Called (on the loop) with the StateWriteError when a commit is finally given up.
        self.on_write_failure: Callable[[BaseException], None] | None = None
        self._file = StateFile(self.path)
        self._queue: queue.SimpleQueue[tuple[Command, asyncio.Future[None]] | None]
        self._queue = queue.SimpleQueue()
        self._writer_thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop_conn: sqlite3.Connection | None = None  # the loop's, never waits for a lock
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.checkpoints = 0  # WAL checkpoints made (tests wait on it)
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._committed = threading.Event()  # set by a commit, cleared by the checkpoint after it
        self._held: list[tuple[Command, asyncio.Future[None]]] = []
        self._queued = 0  # writes handed to the writer thread (counted on the loop)
        self._written = 0  # … of which it has finished (counted by the writer thread)
        self._last_write = 0.0  # loop time of the last write someone waits on
        self._flush_timer: asyncio.TimerHandle | None = None
        self._held_since = 0.0  # loop time of the oldest held write

    # -- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def reset(state_dir: Path) -> Path | None:
        """Move an existing state file aside (never deleted); return where it went.

        Raises StateError when a running daemon holds the state_dir (never from under it).
        """
        return StateFile(state_dir / DB_NAME).reset()

    def open(self, *, seen_limit: int | None = None) -> Snapshot:
        """Lock, open (or create) the file, check its schema, read it back (``seen_limit``:
        only the newest so many processed keys). Blocking: call in a thread. Nothing is
        written to a file that is refused."""
        self._conn, snapshot = self._file.open(seen_limit=seen_limit)
        return snapshot

    def start_writer(self) -> None:
        """Start the writer and checkpoint threads; call from the loop that awaits writes."""
        self._loop = asyncio.get_running_loop()
        self._loop_conn = self._file.connect_nowait()
        self._writer_thread = threading.Thread(
            target=self._writer, name="mm-sidecar-state", daemon=True
        )
        self._writer_thread.start()
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="mm-sidecar-checkpoint", daemon=True
        )
        self._checkpointer.start()

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close the file."""
        self._flush_held()
        if self._writer_thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer_thread.join)
            self._writer_thread = None
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._committed.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        for conn in (self._loop_conn, self._conn):
            if conn is not None:
                conn.close()
        self._loop_conn = self._conn = None
        self._file.unlock()

    # -- writes (each returns a future resolved after commit) ------------------------------

    def _submit(self, command: Command) -> asyncio.Future[None]:
        if self._loop is None:
            raise RuntimeError("state writer not started")
        future: asyncio.Future[None] = self._loop.create_future()
        if isinstance(command, LAZY):
            if not self._held:
                self._held_since = self._loop.time()
            self._held.append((command, future))
            if self._flush_timer is None:
                self._flush_timer = self._loop.call_later(LINGER, self._linger_over)
            return future
        now = self._loop.time()
        alone, self._last_write = now - self._last_write >= INLINE_GAP, now
        if (
            alone
            and self._queued == self._written
            and not isinstance(command, OFF_LOOP)
            and self._commit_inline((command, future))
        ):
            return future
        self._flush_held()
        self._queued += 1
        self._queue.put((command, future))
        return future

    def _commit_inline(self, item: tuple[Command, asyncio.Future[None]] | None = None) -> bool:
        """Commit the held writes and ``item`` on the loop; False (nothing changed) when that
        fails or would wait for another process's lock: the writer thread then takes them."""
        conn = self._loop_conn
        if conn is None:
            return False
        items = [*self._held] if item is None else [*self._held, item]
        rows = Rows.of([command for command, _ in items])
        try:
            conn.execute("BEGIN")
            write_sqlite(conn, rows)
            conn.execute("COMMIT")
        except Exception:  # the writer thread retries, logs and reports it
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return False
        self._note_commit()
        self._held = []  # the linger timer stays: one per LINGER, not one per write
        _resolve([f for _, f in items], None)
        return True

    def _linger_over(self) -> None:
        """The linger timer: commit what was held for LINGER s (on the loop when the writer
        thread is idle, as a lone write), or wait for what is younger."""
        self._flush_timer = None
        if not self._held:
            return
        assert self._loop is not None
        left = self._held_since + LINGER - self._loop.time()
        if left > 0:
            self._flush_timer = self._loop.call_later(left, self._linger_over)
        elif self._queued != self._written or not self._commit_inline():
            self._flush_held()  # the writer is busy (or the file locked): it takes them

    def _flush_held(self) -> None:
        """Hand the held lazy writes to the writer (they go in before the write that follows)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        held, self._held = self._held, []
        self._queued += len(held)
        for item in held:
            self._queue.put(item)

    # -- reads ---------------------------------------------------------------------------

    async def seen_among(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the ``seen`` table holds (committed). On the loop's own
        connection: a WAL reader waits for no writer, and a primary-key lookup costs less
        than a hand-off to a thread; should it fail (never waits: busy timeout 0), a thread
        asks on a connection of its own."""
        conn = self._loop_conn
        if conn is not None:
            try:
                return _seen_among(conn, keys)
            except sqlite3.Error as exc:
                log.debug("seen lookup on the loop failed (%s); asking from a thread", exc)
        return await asyncio.to_thread(self._seen_among_blocking, list(keys))

    def _seen_among_blocking(self, keys: list[str]) -> set[str]:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            return _seen_among(conn, keys)
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the seen table of {self.path}: {exc}") from exc
        finally:
            conn.close()

    def open_history(self) -> history_sqlite.SqliteHistory:
        """The history on a connection of its own (the daemon's poller). Blocking."""
        return history_sqlite.SqliteHistory.connect(self.path)

    # -- the writer thread -----------------------------------------------------------------

    def _note_commit(self) -> None:
        self.commits += 1
        if not self._committed.is_set():  # once per checkpoint, not per commit
            self._committed.set()

    def _checkpoints(self) -> None:
        """Copy the WAL into the database at most every CHECKPOINT_EVERY s, beside the writer,
        and only after a commit: an idle daemon's thread sleeps until the next one.

        A PASSIVE checkpoint from its own connection never blocks the writer's commits.
        """
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # A side connection: a 256 KiB page cache (the writer keeps SQLite's 2 MiB), so the
        # bounded caches of four connections do not add up to 8 MiB (bench/README.md, soak).
        conn.execute("PRAGMA cache_size=-256")
        try:
            while True:
                self._committed.wait()
                if self._stop_checkpoints.wait(CHECKPOINT_EVERY):
                    break
                self._committed.clear()  # a commit from now on asks for the next one
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.warning("state checkpoint failed: %s", exc)
            # The last one, after the writer's final commit: leave a small WAL behind.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def _writer(self) -> None:
        assert self._conn is not None and self._loop is not None
        conn, loop = self._conn, self._loop
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [b for b in batch if b is not None]
            stop = len(items) != len(batch)
            if not items:
                continue
            rows = Rows.of([command for command, _ in items])
            error = self._commit(conn, rows)
            self._written += len(items)  # only this thread writes it; the loop reads it
            # One wake-up of the event loop per transaction, not one per write.
            loop.call_soon_threadsafe(_resolve, [f for _, f in items], error)
            if error is not None and self.on_write_failure is not None:
                loop.call_soon_threadsafe(self.on_write_failure, error)

    def _commit(self, conn: sqlite3.Connection, rows: Rows) -> StateWriteError | None:
        """Commit, retrying with backoff for up to write_retry_for s (a full disk may be
        freed meanwhile; the websocket keeps its position, later writes queue behind)."""
        deadline = time.monotonic() + self.write_retry_for
        delay = 0.05
        while True:
            try:
                conn.execute("BEGIN")
                write_sqlite(conn, rows)
                conn.execute("COMMIT")
                self._note_commit()
                return None
            except Exception as exc:  # handed to every waiter, after the retries
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if not isinstance(exc, sqlite3.Error) or time.monotonic() + delay > deadline:
                    log.error("state write failed: %s; giving up", exc)
                    return StateWriteError(
                        f"state writes to {self.path} kept failing for "
                        f"{self.write_retry_for:.0f} s: {exc}"
                    )
                log.error("state write failed: %s; retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def write_sqlite(conn: sqlite3.Connection, rows: Rows) -> None:
    """The statements of one burst, in ``Rows``' safe order (executemany per statement)."""
    if rows.jobs:
        conn.executemany(
            "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows.jobs
        )
    if rows.updates:
        conn.executemany(
            "UPDATE outbox SET stage=?, attempts=?, response=?, next_at=? WHERE id=?",
            rows.updates,
        )
    if rows.cursors:
        conn.executemany(
            "INSERT INTO cursor VALUES (?, ?) ON CONFLICT(channel_id) "
            "DO UPDATE SET create_at=max(create_at, excluded.create_at)",
            list(rows.cursors.items()),
        )
    if rows.seen:
        conn.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", rows.seen)
    if rows.start is not None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (START_KEY, str(rows.start)))
    if rows.claimed:
        conn.executemany(
            "UPDATE outbox SET stage='deliver' WHERE id=? AND stage='redeliver'", rows.claimed
        )
    if rows.finished:
        conn.executemany("DELETE FROM outbox WHERE id=?", rows.finished)
    if rows.history:
        history_sqlite.insert(conn, rows.history)
    if rows.prune is not None:
        conn.execute("DELETE FROM seen WHERE at < ?", (rows.prune,))


SEEN_CHUNK = 500  # keys per ``IN (...)`` (SQLite's default limit is 999 variables before 3.32)


def _seen_among(conn: sqlite3.Connection, keys: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(keys), SEEN_CHUNK):
        chunk = keys[i : i + SEEN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT key FROM seen WHERE key IN ({marks})", chunk)
        found.update(row[0] for row in rows)
    return found


def _resolve(futures: list[asyncio.Future[None]], error: StateWriteError | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved: not every write is awaited (on_write_failure is)
