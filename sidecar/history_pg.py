"""The delivery history in PostgreSQL (HA): its tables, the writer's insert, queries.

The same rows and behaviour as :mod:`sidecar.history_sqlite`: the tables come with the state
schema's version 2 (``pgstate.MIGRATIONS``), the writer inserts a finished job's row in the
transaction that deletes its outbox row (fenced by the epoch like every write), and
:class:`PgHistory` works on a connection of its own (the CLI's, or the active replica's poller).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import psycopg

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
    from sidecar.pgconn import PgTarget
    from sidecar.state import Job


MIGRATION: Final = [
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq BIGSERIAL UNIQUE,
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
        duration_ms DOUBLE PRECISION NOT NULL,
        error TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL,
        request_headers TEXT NOT NULL,
        request_body BYTEA NOT NULL,
        request_truncated INTEGER NOT NULL,
        response_body BYTEA,
        redelivery_of TEXT,
        redelivered_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries(finished_at)",
    f"CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(webhook) "
    f"WHERE {DEAD_SQL} AND redelivered_at IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_redeliver ON outbox(created_at) WHERE stage = 'redeliver'",
]

_COLUMNS: Final = (
    "id, job_id, webhook, event, post_id, channel_id, root_id, url, webhook_id, content_type, "
    "attempts, outcome, status, duration_ms, error, created_at, finished_at, request_headers, "
    "request_body, request_truncated, response_body, redelivery_of, redelivered_at"
)
_LIST_COLUMNS: Final = (
    _COLUMNS.replace("request_headers,", "'{}',")
    .replace("request_body,", "''::bytea,")
    .replace("response_body,", "NULL::bytea,")
)
INSERT: Final = (
    f"INSERT INTO deliveries ({_COLUMNS}) VALUES ({', '.join(['%s'] * 23)}) "
    "ON CONFLICT (id) DO NOTHING"
)
PRUNE_CHUNK: Final = 2000


async def insert(cur: psycopg.AsyncCursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
    """Write history rows (inside the writer's transaction)."""
    await cur.executemany(INSERT, [_encoded(r) for r in rows])


def _encoded(r: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*r[:11], str(r[11]), *r[12:17], dumps_strings(r[17]), *r[18:])


class PgHistory:
    """The history in the state schema, on a connection of its own (autocommit)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @classmethod
    def connect(cls, target: PgTarget) -> PgHistory:
        """Connect for the CLI or the active replica's poller (never creates the schema)."""
        try:
            conn = psycopg.connect(target.url, **target.kwargs())
        except psycopg.Error as exc:
            raise HistoryError(f"cannot connect to {target.safe_url}: {exc}") from exc
        try:
            for stmt in target.setup_sql():
                conn.execute(stmt.encode())
            found = conn.execute("SELECT to_regclass('deliveries')").fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise HistoryError(f"PostgreSQL at {target.safe_url}: {exc}") from exc
        if found is None or found[0] is None:
            conn.close()
            raise HistoryError(
                f"schema {target.schema!r} at {target.safe_url} has no delivery history yet: "
                "start this version of mm-sidecar once"
            )
        return cls(conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.conn.execute(query.encode(), args).fetchall()]
        except psycopg.Error as exc:
            raise HistoryError(f"delivery history: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------

    def find(self, query: Query) -> list[Delivery]:
        where, args = where_clause(query, "%s")
        limit = " LIMIT %s" if query.limit > 0 else ""
        rows = self._rows(
            f"SELECT {_LIST_COLUMNS} FROM deliveries{where} "
            f"ORDER BY finished_at DESC, seq DESC{limit}",
            (*args, query.limit) if limit else args,
        )
        return [delivery_from_row(r, bodies=False) for r in rows]

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM deliveries WHERE id = %s", (delivery_id,))
        return delivery_from_row(rows[0], bodies=True) if rows else None

    def pending(self) -> list[Job]:
        from sidecar.jobs import job_from_row

        jobs = []
        for r in self._rows(
            "SELECT id, webhook, stage, attempts, job, body, response, created_at, next_at "
            "FROM outbox WHERE stage = %s ORDER BY created_at",
            (REDELIVER_STAGE,),
        ):
            job = job_from_row(r)
            job.stage = "deliver"
            jobs.append(job)
        return jobs

    def pending_nowait(self) -> list[Job] | None:
        return None  # a network round trip: never on the event loop

    def dead_letters(self) -> dict[str, int]:
        rows = self._rows(
            f"SELECT webhook, count(*) FROM deliveries WHERE {DEAD_SQL} "
            "AND redelivered_at IS NULL GROUP BY webhook"
        )
        return {str(w): int(n) for w, n in rows}

    # -- writing ---------------------------------------------------------------------------

    def redeliver(self, deliveries: Iterable[Delivery], now: float) -> list[Queued]:

        results: list[Queued] = []
        try:
            with self.conn.transaction():
                for d in deliveries:
                    if d.request_truncated:
                        results.append(Queued(d, False, "its request body was cut at 64 KiB"))
                        continue
                    job = redelivery_job(d, now)
                    cur = self.conn.execute(
                        "INSERT INTO outbox VALUES (%s, %s, %s, 0, %s, %s, NULL, %s, 0) "
                        "ON CONFLICT (id) DO NOTHING",
                        (job.id, job.webhook, job.stage, job.meta(), job.body, now),
                    )
                    if cur.rowcount == 0:
                        results.append(Queued(d, False, f"job {d.job_id} is already in the outbox"))
                        continue
                    self.conn.execute(
                        "UPDATE deliveries SET redelivered_at = %s WHERE id = %s", (now, d.id)
                    )
                    results.append(Queued(d, True))
        except psycopg.Error as exc:
            raise HistoryError(f"redeliver: {exc}") from exc
        return results

    def prune(self, now: float, retention: Retention) -> int:
        """In chunks, each its own short transaction (autocommit)."""
        day = 86400.0
        deleted = 0
        steps = (
            (f"finished_at < %s AND NOT ({DEAD_SQL})", now - retention.history_days * day),
            (
                "finished_at < %s",
                now - max(retention.dead_letter_days, retention.history_days) * day,
            ),
        )
        for where, before in steps:
            while True:
                n = self._delete(
                    f"SELECT seq FROM deliveries WHERE {where} LIMIT {PRUNE_CHUNK}", (before,)
                )
                deleted += n
                if n < PRUNE_CHUNK:
                    break
        for where in (f"NOT ({DEAD_SQL})", "TRUE"):
            excess = int(self._rows("SELECT count(*) FROM deliveries")[0][0]) - retention.max_rows
            while excess > 0:
                n = min(excess, PRUNE_CHUNK)
                got = self._delete(
                    f"SELECT seq FROM deliveries WHERE {where} ORDER BY finished_at LIMIT {n}", ()
                )
                deleted += got
                excess -= got
                if got < n:
                    break
        return deleted

    def _delete(self, select: str, args: Sequence[Any]) -> int:
        try:
            cur = self.conn.execute(
                f"DELETE FROM deliveries WHERE seq IN ({select})".encode(), args
            )
        except psycopg.Error as exc:
            raise HistoryError(f"delivery history: {exc}") from exc
        return max(cur.rowcount, 0)
