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
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHECKPOINT_EVERY = 1.0  # seconds between WAL checkpoints
DB_NAME = "state.sqlite3"

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


class StateError(Exception):
    """The state file cannot be used; the message says what to do."""


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

    def meta(self) -> str:
        return json.dumps(
            {
                "url": self.url,
                "webhook_id": self.webhook_id,
                "content_type": self.content_type,
                "event": self.event,
                "post_id": self.post_id,
                "channel_id": self.channel_id,
                "root_id": self.root_id,
            }
        )


@dataclass(slots=True)
class Snapshot:
    """What a start-up reads back: cursors, recent keys, unfinished jobs."""

    fresh: bool
    cursors: dict[str, int]
    seen: dict[str, int]
    jobs: list[Job]


class State:
    """The SQLite file under ``state_dir`` and its writer thread."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...], asyncio.Future[None]] | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def reset(state_dir: Path) -> Path | None:
        """Move an existing state file aside (never deleted); return where it went."""
        path = state_dir / DB_NAME
        if not path.exists():
            return None
        aside = path.with_name(f"{DB_NAME}.reset-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(aside)
        for suffix in ("-wal", "-shm"):
            extra = path.with_name(DB_NAME + suffix)
            if extra.exists():
                extra.rename(aside.with_name(aside.name + suffix))
        return aside

    def open(self) -> Snapshot:
        """Open (or create) the file, check its schema, read it back. Blocking: call in a thread."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state_dir {self.path.parent}: {exc}") from exc
        fresh = not self.path.exists()
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (the only fsyncs in WAL + NORMAL) run in their own thread: done by
            # the writer at a commit, they would hold every delivery waiting for that commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise StateError(
                    f"{self.path}: schema version {row[0]}, this mm-sidecar knows "
                    f"{SCHEMA_VERSION}; run with --reset-state to move it aside and start afresh"
                )
            cursors = dict(conn.execute("SELECT channel_id, create_at FROM cursor").fetchall())
            seen = dict(conn.execute("SELECT key, at FROM seen").fetchall())
            jobs = [
                _job_from_row(r)
                for r in conn.execute(
                    "SELECT id, webhook, stage, attempts, job, body, response, created_at, next_at "
                    "FROM outbox ORDER BY created_at"
                )
            ]
        except StateError:
            _close(conn)  # a refused file is not left open
            raise
        except sqlite3.DatabaseError as exc:
            _close(conn)
            raise StateError(
                f"state file {self.path} is unreadable ({exc}); "
                "run with --reset-state to move it aside and start afresh"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            _close(conn)
            raise StateError(
                f"state file {self.path} holds a malformed outbox row ({exc}); "
                "run with --reset-state to move it aside and start afresh"
            ) from exc
        self._conn = conn
        return Snapshot(fresh=fresh, cursors=cursors, seen=seen, jobs=jobs)

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

    # -- writes (each returns a future resolved after commit) ------------------------------

    def _submit(self, op: str, *args: Any) -> asyncio.Future[None]:
        if self._loop is None:
            raise RuntimeError("state writer not started")
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((op, args, future))
        return future

    def add_jobs(self, jobs: Sequence[Job]) -> asyncio.Future[None]:
        """Record new deliveries (before they are sent)."""
        return self._submit("add_jobs", list(jobs))

    def update_job(self, job: Job) -> asyncio.Future[None]:
        """Record a job's new stage, attempt count, response and next attempt time."""
        return self._submit(
            "update_job", job.id, job.stage, job.attempts, job.response, job.next_at
        )

    def finish_job(self, job_id: str) -> asyncio.Future[None]:
        """Remove a finished job."""
        return self._submit("finish_job", job_id)

    def processed(
        self, channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]:
        """Advance a channel's cursor to ``create_at`` and remember ``keys`` (as of ``at`` ms)."""
        return self._submit("processed", channel_id, create_at, list(keys), at)

    def record(
        self, jobs: Sequence[Job], channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]:
        """`add_jobs` and `processed` in one transaction.

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
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY):
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
            error: BaseException | None = None
            try:
                rows = _Rows()
                for op, args, _ in items:
                    getattr(rows, op)(*args)
                conn.execute("BEGIN")
                rows.write(conn)
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException as exc:  # the failure is handed to every waiter
                error = exc
                log.error("state write failed: %s", exc)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # One wake-up of the event loop per transaction, not one per write.
            loop.call_soon_threadsafe(_resolve, [f for _, _, f in items], error)


class _Rows:
    """The writes of one transaction, grouped by statement so each runs once (executemany).

    Safe to reorder: inserts come before the deletes that may follow them in the same burst,
    and a cursor only ever moves forward.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, ...]] = []
        self.updates: list[tuple[Any, ...]] = []
        self.finished: list[tuple[str]] = []
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

    def finish_job(self, job_id: str) -> None:
        self.finished.append((job_id,))

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
        if self.finished:
            conn.executemany("DELETE FROM outbox WHERE id=?", self.finished)
        if self.prune is not None:
            conn.execute("DELETE FROM seen WHERE at < ?", (self.prune,))


def _close(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        conn.close()


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(StateError(f"state write failed: {error}"))


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
    )
