"""Durable state in PostgreSQL, shared by the replicas of an HA install.

The same contract as the SQLite backend (``sidecar.state.State``): ``open`` reads back a
snapshot (blocking, call it in a thread), every write returns a future resolved once its
transaction is committed, and whatever is queued when the writer wakes is committed in one
transaction, so a burst costs one commit. As there, the writes nobody waits on to send
anything (a finished job, the cursor past a post that fired nothing) are held for up
to ``state.LINGER`` s and ride in the next transaction: at an ordinary rate a post then costs
one round trip to the server instead of three. The tables live in their own schema
(``state_schema``), created and migrated by version under an advisory transaction lock, so two
replicas starting together do not race.

Fencing: once the lease sets ``epoch``, each write transaction first reads the leader row
``FOR SHARE`` and is refused (``Fenced``) when the epoch moved on — a deposed replica's late
writes never land, and a takeover's ``UPDATE`` of that row waits for in-flight writers.
A lost connection is retried (the batch is idempotent: inserts ignore duplicates, updates and
deletes set absolute values, a cursor only moves forward) for ``retry_for`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from sidecar import history_pg
from sidecar import state as sqlite_state
from sidecar.backend import Fenced, StateUnavailable
from sidecar.jobs import Snapshot, job_from_row
from sidecar.pgconn import PgTarget
from sidecar.seen import newest
from sidecar.state import LAZY, WRITE_RETRY_FOR, StateError
from sidecar.statefile import LEGACY_START_ROW, START_KEY
from sidecar.writes import Command, CommandWriter, Rows

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: delivery history (history_pg.py), as the SQLite file's version 2
RETRY_FOR = WRITE_RETRY_FOR  # seconds a batch is retried (as SQLite's) before exit 1

# Each version's statements, applied in order to bring a schema from version-1 to version.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE IF NOT EXISTS cursor "
        "(channel_id TEXT PRIMARY KEY, create_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at BIGINT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS outbox (
            id TEXT PRIMARY KEY,
            webhook TEXT NOT NULL,
            stage TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            job TEXT NOT NULL,
            body BYTEA NOT NULL,
            response BYTEA,
            created_at DOUBLE PRECISION NOT NULL,
            next_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS leader (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            epoch BIGINT NOT NULL,
            holder TEXT NOT NULL,
            since TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        "INSERT INTO leader (id, epoch, holder) VALUES (1, 0, '') ON CONFLICT DO NOTHING",
    ],
    2: history_pg.MIGRATION,
}

_EPOCH = "SELECT epoch FROM leader WHERE id = 1 FOR SHARE"


def lock_key(purpose: str, schema: str) -> sql.Composed:
    """A bigint advisory-lock key for ``purpose`` in ``schema`` (two installs in one database
    sharing nothing but the server do not collide)."""
    return sql.SQL("hashtextextended({}, 0)").format(sql.Literal(f"mm_sidecar:{purpose}:{schema}"))


def migrate(conn: psycopg.Connection[Any], schema: str) -> int:
    """Create or migrate the schema; return the version found before (0: none). One transaction."""
    ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute(
            sql.SQL("SELECT pg_advisory_xact_lock({})").format(lock_key("migrate", schema))
        )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StateError(
                f"PostgreSQL schema {schema!r}: schema version {found}, this mm-sidecar knows "
                f"{SCHEMA_VERSION}; upgrade mm-sidecar (every replica) or use another state_schema"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[version]:
                conn.execute(stmt.encode())
            log.info("state schema %s migrated to version %d", schema, version)
        conn.execute(
            "INSERT INTO meta VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        if found:
            move_legacy_start(conn)
    return found


def move_legacy_start(conn: psycopg.Connection[Any]) -> None:
    """Move the start position from the cursor row ``""`` (older schemas) to ``meta``, in the
    caller's transaction (the row, when present, wins: only an older version writes it)."""
    row = conn.execute(
        "DELETE FROM cursor WHERE channel_id = %s RETURNING create_at", (LEGACY_START_ROW,)
    ).fetchone()
    if row is not None:
        conn.execute(
            "INSERT INTO meta VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (START_KEY, str(row[0])),
        )
        log.info("state schema: start position moved from the cursor table to meta")


def read_snapshot(
    conn: psycopg.Connection[Any], fresh: bool, seen_limit: int | None = None
) -> Snapshot:
    """Cursors, seen keys (all, or the newest ``seen_limit``) and unfinished jobs, read in one
    repeatable-read transaction."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        cursors = dict(conn.execute("SELECT channel_id, create_at FROM cursor").fetchall())
        if seen_limit is None:
            seen, floor = dict(conn.execute("SELECT key, at FROM seen").fetchall()), 0
        else:
            rows = conn.execute(
                "SELECT key, at FROM seen ORDER BY at DESC LIMIT %s", (seen_limit + 1,)
            ).fetchall()
            seen, floor = newest(rows, seen_limit)
        start = conn.execute("SELECT value FROM meta WHERE key = %s", (START_KEY,)).fetchone()
        rows = conn.execute(
            "SELECT id, webhook, stage, attempts, job, body, response, created_at, next_at "
            "FROM outbox WHERE stage != 'redeliver' ORDER BY created_at"
        ).fetchall()  # rows queued by `redeliver` are claimed by the daemon's poller
    finally:
        conn.execute("COMMIT")
    try:
        jobs = [job_from_row(tuple(r)) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"PostgreSQL state holds a malformed outbox row ({exc})") from exc
    position = None if start is None else int(start[0])
    return Snapshot(
        fresh=fresh, cursors=cursors, seen=seen, jobs=jobs, start=position, seen_floor=floor
    )


def replace_all(
    conn: psycopg.Connection[Any],
    schema: str,
    cursors: dict[str, int],
    seen: dict[str, int],
    jobs: list[tuple[Any, ...]],
    history: Sequence[tuple[Any, ...]] = (),
    start: int | None = None,
) -> None:
    """Replace the whole state (``state migrate``): one transaction; the leader row is kept.
    ``history``: raw ``deliveries`` rows (``history_sqlite.COLUMNS``, headers as JSON text)."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("DELETE FROM cursor")
        conn.execute("DELETE FROM seen")
        conn.execute("DELETE FROM outbox")
        conn.execute("DELETE FROM deliveries")
        conn.execute("DELETE FROM meta WHERE key = %s", (START_KEY,))
        if start is not None:
            conn.execute("INSERT INTO meta VALUES (%s, %s)", (START_KEY, str(start)))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO cursor VALUES (%s, %s)", list(cursors.items()))
            cur.executemany("INSERT INTO seen VALUES (%s, %s)", list(seen.items()))
            cur.executemany("INSERT INTO outbox VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", jobs)
            cur.executemany(history_pg.INSERT.encode(), history)


class PgState(CommandWriter):
    """The state in PostgreSQL and its writer task (same interface as ``State``)."""

    def __init__(self, target: PgTarget, *, retry_for: float = RETRY_FOR) -> None:
        self.target = target
        self.commits = 0
        #: Set by the lease on takeover; while None, writes are not fenced (migrate, tests).
        self.epoch: int | None = None
        #: Called once per refused write (the lease then stands down).
        self.on_fenced: Callable[[Fenced], None] | None = None
        #: Called (on the loop) with the StateUnavailable when a batch is finally given up
        #: (as ``State.on_write_failure``: the daemon exits 1 unless it was deposed meanwhile).
        self.on_write_failure: Callable[[BaseException], None] | None = None
        self._retry_for = retry_for
        self._queue: asyncio.Queue[tuple[Command, asyncio.Future[None]] | None]
        self._queue = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._held: list[tuple[Command, asyncio.Future[None]]] = []  # lazy writes (LINGER)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._reader: psycopg.AsyncConnection[Any] | None = None  # seen_among's

    def __repr__(self) -> str:
        return f"PgState({self.target.safe_url}, schema={self.target.schema!r})"

    # -- lifecycle -------------------------------------------------------------------------

    def connect_sync(self) -> psycopg.Connection[Any]:
        """A blocking connection with the session settings applied (no search path yet)."""
        try:
            conn = psycopg.connect(self.target.url, **self.target.kwargs())
        except psycopg.Error as exc:
            raise StateUnavailable(f"cannot connect to {self.target.safe_url}: {exc}") from exc
        try:
            for stmt in self.target.setup_sql()[:-1]:
                conn.execute(stmt.encode())
        except psycopg.Error as exc:
            conn.close()
            raise StateUnavailable(f"PostgreSQL at {self.target.safe_url}: {exc}") from exc
        return conn

    def open(self, *, seen_limit: int | None = None) -> Snapshot:
        """Create or migrate the schema, read the state back (``seen_limit``: only the newest
        so many processed keys). Blocking: call in a thread."""
        conn = self.connect_sync()
        try:
            found = migrate(conn, self.target.schema)
            conn.execute(self.target.setup_sql()[-1].encode())
            # Fresh = nothing ever processed (not "schema just created"): with HA the schema
            # is made by whichever replica starts first, the state by the first active one.
            snap = read_snapshot(conn, fresh=True, seen_limit=seen_limit)
            snap.fresh = found == 0 or not (
                snap.cursors or snap.seen or snap.jobs or snap.start is not None
            )
            return snap
        except psycopg.OperationalError as exc:  # the server went away meanwhile
            raise StateUnavailable(f"PostgreSQL at {self.target.safe_url}: {exc}") from exc
        except psycopg.Error as exc:
            raise StateError(f"PostgreSQL state at {self.target.safe_url}: {exc}") from exc
        finally:
            conn.close()

    def start_writer(self) -> None:
        """Start the writer task; call from the loop that awaits writes."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._writer(), name="mm-sidecar-pgstate")

    async def close(self) -> None:
        """Commit what is queued (and held), stop the writer, close the connection."""
        if self._task is not None:
            self._flush_held()
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        await self._drop()
        await self._drop_reader()

    # -- writes (each returns a future resolved after commit) ------------------------------

    def _submit(self, command: Command) -> asyncio.Future[None]:
        if self._loop is None:
            raise RuntimeError("state writer not started")
        future: asyncio.Future[None] = self._loop.create_future()
        if isinstance(command, LAZY):
            self._held.append((command, future))
            if self._flush_timer is None:
                self._flush_timer = self._loop.call_later(sqlite_state.LINGER, self._flush_held)
            return future
        self._flush_held()  # before this write: the writer keeps the order
        self._queue.put_nowait((command, future))
        return future

    def _flush_held(self) -> None:
        """Hand the held lazy writes to the writer (the linger is over, or a write came that
        someone waits on: they ride in its transaction)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        held, self._held = self._held, []
        for item in held:
            self._queue.put_nowait(item)

    # -- reads ---------------------------------------------------------------------------

    async def seen_among(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the ``seen`` table holds (committed), on a connection of its own
        (the writer's is inside its transactions); a lost connection is retried for
        ``retry_for`` seconds, as the writes are, then StateUnavailable."""
        deadline = time.monotonic() + self._retry_for
        delay = 0.1
        while True:
            try:
                if self._reader is None or self._reader.closed:
                    reader = await psycopg.AsyncConnection.connect(
                        self.target.url, **self.target.kwargs()
                    )
                    self._reader = reader
                    for stmt in self.target.setup_sql():
                        await reader.execute(stmt.encode())
                cur = await self._reader.execute(
                    "SELECT key FROM seen WHERE key = ANY(%s)", (list(keys),)
                )
                return {row[0] for row in await cur.fetchall()}
            except psycopg.OperationalError as exc:
                await self._drop_reader()
                if time.monotonic() + delay > deadline:
                    raise StateUnavailable(f"seen lookup failed: {exc}") from exc
                log.warning("seen lookup: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except psycopg.Error as exc:
                raise StateError(f"seen lookup failed: {exc}") from exc

    async def _drop_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(psycopg.Error):
                await self._reader.close()
            self._reader = None

    def open_history(self) -> history_pg.PgHistory:
        """The history on a connection of its own (the daemon's poller). Blocking."""
        return history_pg.PgHistory.connect(self.target)

    # -- the writer task -------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.target.url, **self.target.kwargs())
            for stmt in self.target.setup_sql():
                await conn.execute(stmt.encode())
            self._conn = conn
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None

    async def _writer(self) -> None:
        stop = False
        while not stop:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = [b for b in batch if b is not None]
            stop = len(items) != len(batch)
            if not items:
                continue
            error: StateError | None = None
            try:
                await self._commit(Rows.of([command for command, _ in items]))
                self.commits += 1
            except StateError as exc:
                error = exc
            except Exception as exc:  # the failure is handed to every waiter
                error = StateUnavailable(f"state write failed: {exc}")
                log.error("state write failed: %s", exc)
            for _, future in items:
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
                        future.exception()  # retrieved: not every write is awaited
            # Given up (not refused by the epoch: on_fenced has said that): exit 1.
            if error is not None and not isinstance(error, Fenced) and self.on_write_failure:
                self.on_write_failure(error)

    async def _commit(self, rows: Rows) -> None:
        """One transaction; lost connections are retried for ``retry_for`` seconds."""
        deadline = time.monotonic() + self._retry_for
        delay = 0.1
        while True:
            try:
                conn = await self._connection()
                # One pipeline: BEGIN, the epoch read (FOR SHARE: a takeover waits for us),
                # the writes, then the epoch is checked before COMMIT (a mismatch rolls back).
                async with conn.pipeline(), conn.transaction():
                    epoch = None if self.epoch is None else await conn.execute(_EPOCH)
                    await _write(conn, rows)
                    if epoch is not None and self.epoch is not None:
                        _check_epoch(await epoch.fetchone(), self.epoch)
                return
            except Fenced as exc:
                log.warning("state write refused: %s", exc)
                if self.on_fenced is not None:
                    self.on_fenced(exc)
                raise
            except psycopg.OperationalError as exc:
                await self._drop()
                if time.monotonic() + delay > deadline:
                    log.error("state write failed: %s", exc)
                    raise StateUnavailable(f"state write failed: {exc}") from exc
                log.warning("state write: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _check_epoch(row: tuple[Any, ...] | None, epoch: int) -> None:
    current = None if row is None else row[0]
    if current != epoch:
        raise Fenced(f"the lease moved to epoch {current}; this replica holds {epoch}")


async def _write(conn: psycopg.AsyncConnection[Any], rows: Rows) -> None:
    """The statements of one burst, in ``Rows``' safe order: one statement per kind, the rows
    passed as arrays (``unnest``), so the server parses and plans each once per burst."""
    cur = conn.cursor()
    if rows.jobs:
        await cur.execute(
            "INSERT INTO outbox SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], "
            "%s::int[], %s::text[], %s::bytea[], %s::bytea[], %s::float8[], %s::float8[]) "
            "ON CONFLICT (id) DO NOTHING",
            _columns(rows.jobs, 9),
        )
    if rows.updates:
        last = {u[4]: u for u in rows.updates}  # the last update of a job wins
        await cur.execute(
            "UPDATE outbox o SET stage = u.stage, attempts = u.attempts, "
            "response = u.response, next_at = u.next_at "
            "FROM unnest(%s::text[], %s::int[], %s::bytea[], %s::float8[], %s::text[]) "
            "AS u(stage, attempts, response, next_at, id) WHERE o.id = u.id",
            _columns(list(last.values()), 5),
        )
    if rows.cursors:
        await cur.execute(
            "INSERT INTO cursor SELECT * FROM unnest(%s::text[], %s::bigint[]) "
            "ON CONFLICT (channel_id) "
            "DO UPDATE SET create_at = greatest(cursor.create_at, excluded.create_at)",
            _columns(list(rows.cursors.items()), 2),
        )
    if rows.seen:
        await cur.execute(
            "INSERT INTO seen SELECT * FROM unnest(%s::text[], %s::bigint[]) "
            "ON CONFLICT (key) DO UPDATE SET at = excluded.at",
            _columns(list(dict(rows.seen).items()), 2),
        )
    if rows.start is not None:
        await cur.execute(
            "INSERT INTO meta VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (START_KEY, str(rows.start)),
        )
    if rows.claimed:
        await cur.execute(
            "UPDATE outbox SET stage = 'deliver' WHERE id = ANY(%s) AND stage = 'redeliver'",
            ([c[0] for c in rows.claimed],),
        )
    if rows.finished:
        await cur.execute("DELETE FROM outbox WHERE id = ANY(%s)", ([f[0] for f in rows.finished],))
    if rows.history:
        await history_pg.insert(cur, rows.history)
    if rows.prune is not None:
        await cur.execute("DELETE FROM seen WHERE at < %s", (rows.prune,))


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Row tuples → one list per column (the arrays of an ``unnest``)."""
    return [[r[i] for r in rows] for i in range(width)]
