"""The SQLite state file itself: its directory, lock, schema, migrations and read-back.

``State`` (state.py) owns one of these for the file under ``state_dir`` and runs the writer
on the connection ``open`` returns. Nothing is written to a file that is refused (foreign,
newer, unreadable); the migrations run in one transaction each.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path

from sidecar import history_sqlite
from sidecar.errors import StateError
from sidecar.jobs import Job, Snapshot, job_from_row
from sidecar.seen import newest

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: delivery history (history_sqlite.py); a version-1 file is migrated
DB_NAME = "state.sqlite3"
LOCK_NAME = "state.lock"  # flock'ed by the running daemon (not the database: others may read it)
START_KEY = "start_position"  # the meta row holding where processing began (server ms)
#: The cursor row that held the start position before it moved to ``meta`` (migrated away).
LEGACY_START_ROW = ""

SCHEMA = """
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

_JOBS = (
    "SELECT id, webhook, stage, attempts, job, body, response, created_at, next_at "
    "FROM outbox WHERE stage != 'redeliver' ORDER BY created_at"
)  # rows queued by `redeliver` are claimed by the daemon's poller (redelivery.py)


class StateFile:
    """``state_dir/state.sqlite3``: locked by one daemon, created or migrated, read back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def reset(self) -> Path | None:
        """Move an existing state file aside (never deleted); return where it went.

        Raises StateError when a running daemon holds the state_dir (never from under it).
        """
        path = self.path
        if not path.exists():
            return None
        self.lock()
        try:
            aside = path.with_name(f"{DB_NAME}.reset-{time.strftime('%Y%m%dT%H%M%S')}")
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                extra = path.with_name(DB_NAME + suffix)
                if extra.exists():
                    extra.rename(aside.with_name(aside.name + suffix))
        finally:
            self.unlock()
        return aside

    def open(self, *, seen_limit: int | None = None) -> tuple[sqlite3.Connection, Snapshot]:
        """Lock, open (or create) the file, check its schema, read it back (``seen_limit``:
        only the newest so many processed keys). Blocking."""
        state_dir = self.path.parent
        try:
            if not state_dir.exists():
                state_dir.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise StateError(f"cannot create state_dir {state_dir}: {exc}") from exc
        warn_if_readable(state_dir)
        self.lock()
        try:
            self._create_file()
            return self._connect(seen_limit)
        except BaseException:
            self.unlock()
            raise

    def _create_file(self) -> None:
        try:
            # Owner-only (its -wal and -shm files follow): outbox rows hold webhook tokens.
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            else:
                warn_if_readable(self.path)
        except OSError as exc:
            raise StateError(f"cannot create state file {self.path}: {exc}") from exc

    def _connect(self, seen_limit: int | None) -> tuple[sqlite3.Connection, Snapshot]:
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
            self._migrate(conn, version)
            snapshot = read_snapshot(conn, fresh=not tables, seen_limit=seen_limit)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            explained = self._explain(exc)
            if explained is exc:
                raise
            raise explained from exc
        return conn, snapshot

    def connect_nowait(self) -> sqlite3.Connection:
        """One more connection to the opened file, with the same settings, that never waits
        for another connection's lock (busy timeout 0: it fails at once instead)."""
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=0")
        # A side connection: a 256 KiB page cache (the writer keeps SQLite's 2 MiB), so the
        # bounded caches of four connections do not add up to 8 MiB (bench/README.md, soak).
        conn.execute("PRAGMA cache_size=-256")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def _explain(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.DatabaseError):
            return StateError(
                f"state file {self.path} is unreadable ({exc}); "
                "run with --reset-state to move it aside and start afresh"
            )
        if isinstance(exc, (ValueError, KeyError, TypeError)):
            return StateError(
                f"state file {self.path} holds a malformed outbox row ({exc}); "
                "run with --reset-state to move it aside and start afresh"
            )
        return exc

    def _migrate(self, conn: sqlite3.Connection, version: str) -> None:
        """Create a new file's tables, or bring an older file to SCHEMA_VERSION."""
        if not version:
            _execute_script(conn, SCHEMA + history_sqlite.SCHEMA)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
            return
        if version == "1":
            # 1 → 2 added the history tables; outbox rows are unchanged.
            _execute_script(conn, history_sqlite.SCHEMA)
            conn.execute(
                "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),)
            )
            conn.execute("COMMIT")
            log.info("state file %s: schema upgraded from version 1 to 2", self.path)
        move_legacy_start(conn)

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

    def lock(self) -> None:
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

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """BEGIN and each statement of ``script`` (the caller commits)."""
    conn.execute("BEGIN")
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def move_legacy_start(conn: sqlite3.Connection) -> None:
    """Move the start position from the cursor row ``""`` (older files) to ``meta``.

    The row, when present, was written by a version that knew no other place: it wins over
    a ``meta`` value. One transaction; nothing to do (and nothing written) without the row.
    """
    row = conn.execute(
        "SELECT create_at FROM cursor WHERE channel_id = ?", (LEGACY_START_ROW,)
    ).fetchone()
    if row is None:
        return
    conn.execute("BEGIN")
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (START_KEY, str(row[0])))
    conn.execute("DELETE FROM cursor WHERE channel_id = ?", (LEGACY_START_ROW,))
    conn.execute("COMMIT")
    log.info("state file: start position moved from the cursor table to meta")


def read_snapshot(
    conn: sqlite3.Connection, *, fresh: bool, seen_limit: int | None = None
) -> Snapshot:
    """Cursors, the start position, seen keys (all, or the newest ``seen_limit``) and
    unfinished jobs."""
    cursors = dict(conn.execute("SELECT channel_id, create_at FROM cursor").fetchall())
    if seen_limit is None:
        seen, floor = dict(conn.execute("SELECT key, at FROM seen").fetchall()), 0
    else:
        rows = conn.execute("SELECT key, at FROM seen ORDER BY at DESC LIMIT ?", (seen_limit + 1,))
        seen, floor = newest(rows, seen_limit)
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (START_KEY,)).fetchone()
    jobs: list[Job] = [job_from_row(r) for r in conn.execute(_JOBS)]
    start = None if row is None else int(row[0])
    return Snapshot(
        fresh=fresh, cursors=cursors, seen=seen, jobs=jobs, start=start, seen_floor=floor
    )


def warn_if_readable(path: Path) -> None:
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
