"""The delivery history in the SQLite state file: its tables, the writer's insert, queries.

The tables are created (and a version-1 file migrated) by ``state.py`` when it opens the file;
the writer thread calls :func:`insert` inside its batch transaction; :class:`SqliteHistory`
works on a connection of its own (the CLI's, or the daemon poller's), without any lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sidecar.history import (
    DEAD_SQL,
    REDELIVER_STAGE,
    Delivery,
    HistoryError,
    Query,
    Queued,
    Retention,
    delivery_from_row,
    redelivery_job,
    where_clause,
)
from sidecar.payload import dumps_strings

if TYPE_CHECKING:
    from sidecar.state import Job

# Dead letters, in SQL; the partial index below uses the same expression, so queries use it.

SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    webhook TEXT NOT NULL,
    event TEXT NOT NULL,
    post_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    root_id TEXT NOT NULL,
    url TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    duration_ms REAL NOT NULL,
    error TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    request_headers TEXT NOT NULL,
    request_body BLOB NOT NULL,
    request_truncated INTEGER NOT NULL,
    response_body BLOB,
    redelivery_of TEXT,
    redelivered_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries(finished_at);
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(webhook)
    WHERE {DEAD_SQL} AND redelivered_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_redeliver ON outbox(created_at) WHERE stage = 'redeliver';
"""

COLUMNS: Final = (
    "id, job_id, webhook, event, post_id, channel_id, root_id, url, webhook_id, content_type, "
    "attempts, outcome, status, duration_ms, error, created_at, finished_at, request_headers, "
    "request_body, request_truncated, response_body, redelivery_of, redelivered_at"
)
# A listing reads no headers or bodies: empty stand-ins keep the column positions.
_LIST_COLUMNS: Final = (
    COLUMNS.replace("request_headers,", "'{}',")
    .replace("request_body,", "X'',")
    .replace("response_body,", "NULL,")
)
PRUNE_CHUNK: Final = 2000

BUSY_TIMEOUT_MS = 10_000  # how long the CLI and the poller wait for another writer


def insert(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write history rows (inside the caller's transaction)."""
    encoded = [(*r[:17], dumps_strings(r[17]), *r[18:]) for r in rows]
    conn.executemany(
        f"INSERT OR REPLACE INTO deliveries ({COLUMNS}) VALUES ({', '.join('?' * 23)})", encoded
    )


class SqliteHistory:
    """The history in the SQLite state file, on a connection of its own."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def connect(cls, path: Path) -> SqliteHistory:
        """Open an existing state file for the CLI or the daemon's poller (never creates it).

        Takes no lock: the daemon may be running, and WAL lets both read and write.
        """
        if not path.exists():
            raise HistoryError(f"no state file at {path}: the daemon has not run yet")
        try:
            # check_same_thread off: the daemon uses it from asyncio.to_thread (and its loop),
            # one call at a time.
            conn = sqlite3.connect(
                f"file:{path}?mode=rw",
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            # A side connection: a 256 KiB page cache (the writer keeps SQLite's 2 MiB), so the
            # bounded caches of four connections do not add up to 8 MiB (bench/README.md, soak).
            conn.execute("PRAGMA cache_size=-256")
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='deliveries'"
            ).fetchone()
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open {path}: {exc}") from exc
        if found is None:
            conn.close()
            raise HistoryError(
                f"{path} has no delivery history yet: start this version of mm-sidecar once"
            )
        return cls(conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # -- reading ---------------------------------------------------------------------------

    def find(self, query: Query) -> list[Delivery]:
        where, args = where_clause(query, "?")
        sql = (
            f"SELECT {_LIST_COLUMNS} FROM deliveries{where} "
            "ORDER BY finished_at DESC, rowid DESC LIMIT ?"
        )
        rows = self.conn.execute(sql, (*args, query.limit if query.limit > 0 else -1))
        return [delivery_from_row(r, bodies=False) for r in rows]

    def get(self, delivery_id: str) -> Delivery | None:
        row = self.conn.execute(
            f"SELECT {COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        return None if row is None else delivery_from_row(row, bodies=True)

    def pending(self) -> list[Job]:
        from sidecar.jobs import job_from_row

        # The stage as a literal, not a parameter: the query then matches the partial index
        # (outbox_redeliver) when it is prepared, once; with a parameter SQLite prepares it
        # again at every run to see whether the index applies (most of an idle second's work).
        rows = self.conn.execute(
            "SELECT id, webhook, stage, attempts, job, body, response, created_at, next_at "
            f"FROM outbox WHERE stage = '{REDELIVER_STAGE}' ORDER BY created_at"
        )
        jobs = []
        for r in rows:
            job = job_from_row(r)
            job.stage = "deliver"
            jobs.append(job)
        return jobs

    def pending_nowait(self) -> list[Job] | None:
        # A read in WAL never waits for a writer; only rare moments (recovery, a truncating
        # checkpoint at a stop) make it wait: then None, and the caller asks from a thread.
        self.conn.execute("PRAGMA busy_timeout=0")
        try:
            return self.pending()
        except sqlite3.OperationalError:
            return None
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def dead_letters(self) -> dict[str, int]:
        rows = self.conn.execute(
            f"SELECT webhook, count(*) FROM deliveries WHERE {DEAD_SQL} "
            "AND redelivered_at IS NULL GROUP BY webhook"
        )
        return {str(w): int(n) for w, n in rows}

    # -- writing ---------------------------------------------------------------------------

    def redeliver(self, deliveries: Iterable[Delivery], now: float) -> list[Queued]:

        results: list[Queued] = []
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for d in deliveries:
                if d.request_truncated:
                    results.append(Queued(d, False, "its request body was cut at 64 KiB"))
                    continue
                job = redelivery_job(d, now)
                cur = conn.execute(
                    "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, 0, ?, ?, NULL, ?, 0)",
                    (job.id, job.webhook, job.stage, job.meta(), job.body, now),
                )
                if cur.rowcount == 0:
                    results.append(Queued(d, False, f"job {d.job_id} is already in the outbox"))
                    continue
                conn.execute("UPDATE deliveries SET redelivered_at = ? WHERE id = ?", (now, d.id))
                results.append(Queued(d, True))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    def prune(self, now: float, retention: Retention) -> int:
        """In chunks, each its own short transaction, so the writer thread is never held long."""
        day = 86400.0
        deleted = 0
        steps = (
            # Delivered and other non-dead rows after history_days…
            (
                f"finished_at < ? AND NOT ({DEAD_SQL})",
                (now - retention.history_days * day,),
            ),
            # …dead letters after dead_letter_days (never before history_days).
            (
                "finished_at < ?",
                (now - max(retention.dead_letter_days, retention.history_days) * day,),
            ),
        )
        for where, args in steps:
            deleted += self._delete_chunks(where, args)
        total = int(self.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])
        excess = total - retention.max_rows
        if excess > 0:
            # Over the cap: the oldest go, non-dead rows before dead letters.
            deleted += self._delete_oldest(f"NOT ({DEAD_SQL})", excess)
            total = int(self.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])
            if total > retention.max_rows:
                deleted += self._delete_oldest("1", total - retention.max_rows)
        return deleted

    def _delete_chunks(self, where: str, args: tuple[Any, ...]) -> int:
        deleted = 0
        while True:
            cur = self.conn.execute(
                f"DELETE FROM deliveries WHERE rowid IN "
                f"(SELECT rowid FROM deliveries WHERE {where} LIMIT {PRUNE_CHUNK})",
                args,
            )
            deleted += cur.rowcount
            if cur.rowcount < PRUNE_CHUNK:
                return deleted

    def _delete_oldest(self, where: str, count: int) -> int:
        deleted = 0
        while count > 0:
            n = min(count, PRUNE_CHUNK)
            cur = self.conn.execute(
                f"DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM deliveries "
                f"WHERE {where} ORDER BY finished_at LIMIT {n})"
            )
            deleted += cur.rowcount
            count -= n
            if cur.rowcount < n:
                break
        return deleted
