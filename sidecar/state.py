"""Durable state in SQLite: the cursor, the outbox and the recently processed posts.

WAL mode with ``synchronous=NORMAL``: a commit survives a crash of the process (SIGKILL),
not necessarily a power cut, and costs no fsync (checkpoints, the only fsyncs, have their own
thread). Under load, writes go through one writer thread fed by a queue; whatever is queued
when it wakes is committed in one transaction, so a burst of events costs one commit. A write
that comes alone is committed on the loop at once (a few writes into the page cache: cheaper
than two thread hand-offs), and writes nobody waits on ride in the next transaction. A write
returns a future that resolves once its transaction is committed: a delivery waits for its
outbox row to be committed before it is sent ("written before it is sent"), the websocket
reader never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import history_sqlite
from sidecar.errors import StateError as StateError
from sidecar.errors import StateWriteError as StateWriteError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: delivery history (history_sqlite.py); a version-1 file is migrated
CHECKPOINT_EVERY = 1.0  # seconds between WAL checkpoints (skipped when nothing was committed)
# Writes nobody waits on to send anything (a finished job, the cursor past a post that fired
# nothing, pruning) are held on the loop for up to this long and ride in the next transaction
# (the next event's): a lone post then costs one commit, not two. A crash in this window
# resumes the job from its outbox row (at least once, as before) or catches the post up again.
LINGER = 0.25
# A write that comes alone (no other write in the last INLINE_GAP s, nothing queued for the
# writer) is committed on the loop, at once: WAL + synchronous=NORMAL makes a commit a few
# writes into the page cache, no fsync (checkpoints have their own thread), which costs less
# than handing it to the writer thread and being woken up again. Under load the writer
# thread still groups each burst into one transaction. A lock held by another process
# (``mm-sidecar redeliver``) is not waited for on the loop: the writer thread takes over.
INLINE_GAP = 0.005
BUSY_TIMEOUT_MS = 5000  # sqlite3.connect's default
_LAZY = frozenset({"finish_job", "prune_seen", "processed"})
DB_NAME = "state.sqlite3"
LOCK_NAME = "state.lock"  # flock'ed by the running daemon (not the database: others may read it)
WRITE_RETRY_FOR = 60.0  # seconds a failing commit (disk full, I/O error) is retried before exit 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (channel_id TEXT PRIMARY KEY, create_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    webhook TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    job TEXT NOT NULL,
    body BLOB NOT NULL,
    response BLOB,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL
);
"""


@dataclass(slots=True)
class Job:
    """One delivery (one callback URL of one webhook for one event) and its reply.

    ``stage`` is ``deliver`` until the callback answered, then ``reply`` (with the answer
    kept in ``response``) until the reply is posted; the row is deleted when finished.
    """

    id: str
    webhook: str
    url: str
    webhook_id: str
    body: bytes
    content_type: str
    event: str
    post_id: str
    channel_id: str
    root_id: str
    created_at: float = field(default_factory=time.time)
    stage: str = "deliver"
    attempts: int = 0
    response: bytes | None = None
    next_at: float = 0.0  # wall-clock time of the next attempt after a failure (0: now)
    # -- delivery history (history.py, history_sqlite.py) --
    redelivery_of: str = ""  # the history row this job sends again (kept in the outbox row)
    delivery_id: str = ""  # its own history row, once named (not kept: a restart renames it)
    headers: dict[str, str] | None = None  # the last attempt's request headers (not kept)

    def meta(self) -> str:
        meta = {
            "url": self.url,
            "webhook_id": self.webhook_id,
            "content_type": self.content_type,
            "event": self.event,
            "post_id": self.post_id,
            "channel_id": self.channel_id,
            "root_id": self.root_id,
        }
        if self.redelivery_of:
            meta["redelivery_of"] = self.redelivery_of
        return json.dumps(meta)


@dataclass(slots=True)
class Snapshot:
    """What a start-up reads back: cursors, recent keys, unfinished jobs."""

    fresh: bool
    cursors: dict[str, int]
    seen: dict[str, int]
    jobs: list[Job]


class State:
    """The SQLite file under ``state_dir`` and its writer thread."""

    def __init__(self, state_dir: Path, *, write_retry_for: float = WRITE_RETRY_FOR) -> None:
        self.path = state_dir / DB_NAME
        self.write_retry_for = write_retry_for
        # Called (on the loop) with the StateWriteError when a commit is finally given up.
        self.on_write_failure: Callable[[BaseException], None] | None = None
        self._lock_fd: int | None = None
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...], asyncio.Future[None]] | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._held: list[tuple[str, tuple[Any, ...], asyncio.Future[None]]] = []
        self._queued = 0  # writes handed to the writer thread (counted on the loop)
        self._written = 0  # … of which it has finished (counted by the writer thread)
        self._last_write = 0.0  # loop time of the last write someone waits on
        self._flush_timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def reset(state_dir: Path) -> Path | None:
        """Move an existing state file aside (never deleted); return where it went.

        Raises StateError when a running daemon holds the state_dir (never from under it).
        """
        path = state_dir / DB_NAME
        if not path.exists():
            return None
        holder = State(state_dir)
        holder._lock()
        try:
            aside = path.with_name(f"{DB_NAME}.reset-{time.strftime('%Y%m%dT%H%M%S')}")
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                extra = path.with_name(DB_NAME + suffix)
                if extra.exists():
                    extra.rename(aside.with_name(aside.name + suffix))
        finally:
            holder._unlock()
        return aside

    def open(self) -> Snapshot:
        """Lock, open (or create) the file, check its schema, read it back. Blocking: call in
        a thread. Nothing is written to a file that is refused."""
        state_dir = self.path.parent
        try:
            if not state_dir.exists():
                state_dir.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise StateError(f"cannot create state_dir {state_dir}: {exc}") from exc
        self._warn_if_readable(state_dir)
        self._lock()
        try:
            snapshot = self._open()
        except BaseException:
            self._unlock()
            raise
        return snapshot

    def _open(self) -> Snapshot:
        try:
            # Owner-only (its -wal and -shm files follow): outbox rows hold webhook tokens.
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            else:
                self._warn_if_readable(self.path)
        except OSError as exc:
            raise StateError(f"cannot create state file {self.path}: {exc}") from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # Read first, change nothing: a foreign or newer file is refused untouched.
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            version = self._check_schema(conn, tables) if tables else ""
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (the only fsyncs in WAL + NORMAL) run in their own thread: done by
            # the writer at a commit, they would hold every delivery waiting for that commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            if not tables:
                conn.execute("BEGIN")
                for statement in (_SCHEMA + history_sqlite.SCHEMA).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                conn.execute("COMMIT")
            elif version == "1":
                # 1 → 2 added the history tables; outbox rows are unchanged.
                conn.execute("BEGIN")
                for statement in history_sqlite.SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),)
                )
                conn.execute("COMMIT")
                log.info("state file %s: schema upgraded from version 1 to 2", self.path)
            cursors = dict(conn.execute("SELECT channel_id, create_at FROM cursor").fetchall())
            seen = dict(conn.execute("SELECT key, at FROM seen").fetchall())
            jobs = [
                _job_from_row(r)
                for r in conn.execute(
                    "SELECT id, webhook, stage, attempts, job, body, response, created_at, next_at "
                    "FROM outbox WHERE stage != 'redeliver' ORDER BY created_at"
                )  # rows queued by `redeliver` are claimed by the daemon's poller (redelivery.py)
            ]
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StateError(
                    f"state file {self.path} is unreadable ({exc}); "
                    "run with --reset-state to move it aside and start afresh"
                ) from exc
            if isinstance(exc, (ValueError, KeyError, TypeError)):
                raise StateError(
                    f"state file {self.path} holds a malformed outbox row ({exc}); "
                    "run with --reset-state to move it aside and start afresh"
                ) from exc
            raise
        self._conn = conn
        return Snapshot(fresh=not tables, cursors=cursors, seen=seen, jobs=jobs)

    def _check_schema(self, conn: sqlite3.Connection, tables: set[str]) -> str:
        """The file's schema version, when this mm-sidecar can use (or migrate) it."""
        row = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise StateError(
                f"{self.path} is not an mm-sidecar state file (no schema version); left "
                "untouched: point state_dir elsewhere, or run with --reset-state to move it aside"
            )
        if row[0] not in ("1", str(SCHEMA_VERSION)):
            raise StateError(
                f"{self.path}: schema version {row[0]}, this mm-sidecar knows "
                f"{SCHEMA_VERSION}; run with --reset-state to move it aside and start afresh"
            )
        return str(row[0])

    @staticmethod
    def _warn_if_readable(path: Path) -> None:
        try:
            mode = path.stat().st_mode
        except OSError:
            return
        if mode & 0o077:
            log.warning(
                "%s is readable by others (mode %o): it holds webhook tokens; chmod %s it",
                path,
                mode & 0o777,
                "700" if path.is_dir() else "600",
            )

    def _lock(self) -> None:
        """Take the state_dir's lock: one daemon per state_dir, or both would deliver all."""
        path = self.path.with_name(LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the lock file {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"state_dir {self.path.parent} is in use by another mm-sidecar (pid {holder}); "
                "two daemons on one state_dir would both deliver every event"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def start_writer(self) -> None:
        """Start the writer and checkpoint threads; call from the loop that awaits writes."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="mm-sidecar-state", daemon=True)
        self._thread.start()
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="mm-sidecar-checkpoint", daemon=True
        )
        self._checkpointer.start()

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close the file."""
        self._flush_held()
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._unlock()

    # -- writes (each returns a future resolved after commit) ------------------------------

    def _submit(self, op: str, *args: Any) -> asyncio.Future[None]:
        if self._loop is None:
            raise RuntimeError("state writer not started")
        future: asyncio.Future[None] = self._loop.create_future()
        if op in _LAZY:
            self._held.append((op, args, future))
            if self._flush_timer is None:
                self._flush_timer = self._loop.call_later(LINGER, self._flush_held)
            return future
        now = self._loop.time()
        alone, self._last_write = now - self._last_write >= INLINE_GAP, now
        if alone and self._queued == self._written and self._commit_inline((op, args, future)):
            return future
        self._flush_held()
        self._queued += 1
        self._queue.put((op, args, future))
        return future

    def _commit_inline(self, item: tuple[str, tuple[Any, ...], asyncio.Future[None]]) -> bool:
        """Commit the held writes and ``item`` on the loop; False (nothing changed) when that
        fails or would wait for another process's lock: the writer thread then takes them."""
        conn = self._conn
        if conn is None:
            return False
        items = [*self._held, item]
        rows = _Rows()
        for op, args, _ in items:
            getattr(rows, op)(*args)
        try:
            conn.execute("PRAGMA busy_timeout=0")
            try:
                conn.execute("BEGIN")
                rows.write(conn)
                conn.execute("COMMIT")
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except Exception:  # the writer thread retries, logs and reports it
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return False
        self.commits += 1
        self._held = []
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        _resolve([f for _, _, f in items], None)
        return True

    def _flush_held(self) -> None:
        """Hand the held lazy writes to the writer (they go in before the write that follows)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        held, self._held = self._held, []
        self._queued += len(held)
        for item in held:
            self._queue.put(item)

    def add_jobs(self, jobs: Sequence[Job]) -> asyncio.Future[None]:
        """Record new deliveries (before they are sent)."""
        return self._submit("add_jobs", list(jobs))

    def update_job(self, job: Job) -> asyncio.Future[None]:
        """Record a job's new stage, attempt count, response and next attempt time."""
        return self._submit(
            "update_job", job.id, job.stage, job.attempts, job.response, job.next_at
        )

    def finish_job(self, job_id: str, entry: tuple[Any, ...] | None = None) -> asyncio.Future[None]:
        """Remove a finished job and add its history row (``history.entry``) in one transaction."""
        return self._submit("finish_job", job_id, entry)

    def claim_redeliveries(self, job_ids: Sequence[str]) -> asyncio.Future[None]:
        """Mark outbox rows queued by ``redeliver`` as taken by this daemon."""
        return self._submit("claim", list(job_ids))

    def open_history(self) -> history_sqlite.SqliteHistory:
        """The history on a connection of its own (the daemon's poller). Blocking."""
        return history_sqlite.SqliteHistory.connect(self.path)

    def record_position(
        self, channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]:
        """Advance a channel's cursor to ``create_at`` and remember ``keys`` (as of ``at`` ms)."""
        return self._submit("processed", channel_id, create_at, list(keys), at)

    def record(
        self, jobs: Sequence[Job], channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]:
        """`add_jobs` and `record_position` in one transaction.

        A crash then leaves either both (the outbox resumes the jobs, the post is not matched
        again) or neither (catch-up finds the post again): never a post marked processed
        whose deliveries were lost, nor jobs that a catch-up would queue a second time.
        """
        return self._submit("record", list(jobs), channel_id, create_at, list(keys), at)

    def prune_seen(self, older_than: int) -> asyncio.Future[None]:
        """Forget processed keys older than ``older_than`` (ms)."""
        return self._submit("prune_seen", older_than)

    # -- the writer thread -----------------------------------------------------------------

    def _checkpoints(self) -> None:
        """Copy the WAL into the database every CHECKPOINT_EVERY s, beside the writer.

        A PASSIVE checkpoint from its own connection never blocks the writer's commits.
        """
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        checkpointed = -1
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY):
                if self.commits == checkpointed:
                    continue  # nothing new in the WAL: no work, no disk access
                checkpointed = self.commits
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
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
            rows = _Rows()
            for op, args, _ in items:
                getattr(rows, op)(*args)
            error = self._commit(conn, rows)
            self._written += len(items)  # only this thread writes it; the loop reads it
            # One wake-up of the event loop per transaction, not one per write.
            loop.call_soon_threadsafe(_resolve, [f for _, _, f in items], error)
            if error is not None and self.on_write_failure is not None:
                loop.call_soon_threadsafe(self.on_write_failure, error)

    def _commit(self, conn: sqlite3.Connection, rows: _Rows) -> StateWriteError | None:
        """Commit, retrying with backoff for up to write_retry_for s (a full disk may be
        freed meanwhile; the websocket keeps its position, later writes queue behind)."""
        deadline = time.monotonic() + self.write_retry_for
        delay = 0.05
        while True:
            try:
                conn.execute("BEGIN")
                rows.write(conn)
                conn.execute("COMMIT")
                self.commits += 1
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


class _Rows:
    """The writes of one transaction, grouped by statement so each runs once (executemany).

    Safe to reorder: inserts come before the deletes that may follow them in the same burst,
    and a cursor only ever moves forward.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, ...]] = []
        self.updates: list[tuple[Any, ...]] = []
        self.finished: list[tuple[str]] = []
        self.history: list[tuple[Any, ...]] = []
        self.claimed: list[tuple[str]] = []
        self.cursors: dict[str, int] = {}
        self.seen: list[tuple[str, int]] = []
        self.prune: int | None = None

    def add_jobs(self, jobs: list[Job]) -> None:
        self.jobs.extend(
            (
                j.id,
                j.webhook,
                j.stage,
                j.attempts,
                j.meta(),
                j.body,
                j.response,
                j.created_at,
                j.next_at,
            )
            for j in jobs
        )

    def update_job(
        self, job_id: str, stage: str, attempts: int, response: bytes | None, next_at: float
    ) -> None:
        self.updates.append((stage, attempts, response, next_at, job_id))

    def finish_job(self, job_id: str, entry: tuple[Any, ...] | None) -> None:
        self.finished.append((job_id,))
        if entry is not None:
            self.history.append(entry)

    def claim(self, job_ids: list[str]) -> None:
        self.claimed.extend((i,) for i in job_ids)

    def processed(self, channel_id: str, create_at: int, keys: list[str], at: int) -> None:
        self.cursors[channel_id] = max(create_at, self.cursors.get(channel_id, create_at))
        self.seen.extend((k, at) for k in keys)

    def record(
        self, jobs: list[Job], channel_id: str, create_at: int, keys: list[str], at: int
    ) -> None:
        self.add_jobs(jobs)
        self.processed(channel_id, create_at, keys, at)

    def prune_seen(self, older_than: int) -> None:
        self.prune = older_than

    def write(self, conn: sqlite3.Connection) -> None:
        if self.jobs:
            conn.executemany(
                "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self.jobs
            )
        if self.updates:
            conn.executemany(
                "UPDATE outbox SET stage=?, attempts=?, response=?, next_at=? WHERE id=?",
                self.updates,
            )
        if self.cursors:
            conn.executemany(
                "INSERT INTO cursor VALUES (?, ?) ON CONFLICT(channel_id) "
                "DO UPDATE SET create_at=max(create_at, excluded.create_at)",
                list(self.cursors.items()),
            )
        if self.seen:
            conn.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", self.seen)
        if self.claimed:
            conn.executemany(
                "UPDATE outbox SET stage='deliver' WHERE id=? AND stage='redeliver'", self.claimed
            )
        if self.finished:
            conn.executemany("DELETE FROM outbox WHERE id=?", self.finished)
        if self.history:
            history_sqlite.insert(conn, self.history)
        if self.prune is not None:
            conn.execute("DELETE FROM seen WHERE at < ?", (self.prune,))


def _resolve(futures: list[asyncio.Future[None]], error: StateWriteError | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved: not every write is awaited (on_write_failure is)


def _job_from_row(row: tuple[Any, ...]) -> Job:
    job_id, webhook, stage, attempts, meta, body, response, created_at, next_at = row
    m = json.loads(meta)
    return Job(
        id=job_id,
        webhook=webhook,
        url=m["url"],
        webhook_id=m["webhook_id"],
        body=bytes(body),
        content_type=m["content_type"],
        event=m["event"],
        post_id=m["post_id"],
        channel_id=m["channel_id"],
        root_id=m["root_id"],
        created_at=created_at,
        stage=stage,
        attempts=attempts,
        response=None if response is None else bytes(response),
        next_at=next_at,
        redelivery_of=m.get("redelivery_of", ""),
    )
