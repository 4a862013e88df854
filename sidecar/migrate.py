"""``mm-sidecar state migrate --from URL --to URL [--force]``: move durable state between backends.

Cursors, processed posts, unfinished jobs (stage, attempts, next attempt time, response), the
delivery history and the redeliveries queued by ``mm-sidecar redeliver`` are copied as they are,
so an admin going from one node (SQLite) to HA (PostgreSQL), or back, neither replays nor loses
anything: the jobs resume with the same ``webhook-id``. The target is written in one
transaction; one that already holds state is refused unless ``--force``, which replaces it. Stop
the daemon first: the source is read as it is on disk.

URLs: ``sqlite:///path`` (the state file, or the ``state_dir`` holding ``state.sqlite3``) and
``postgresql://user@host:port/db`` (password from ``$PGPASSWORD`` or the systemd credential
``state_password``; never in the URL in examples).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import MigrateError as MigrateError
from sidecar.history_sqlite import COLUMNS as HISTORY_COLUMNS
from sidecar.pgconn import DEFAULT_SCHEMA, is_postgres_url, redact_url
from sidecar.state import DB_NAME, Snapshot, State, StateError
from sidecar.statefile import START_KEY
from sidecar.writes import job_row

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Counts:
    cursors: int
    seen: int
    jobs: int
    history: int = 0

    @classmethod
    def of(cls, snap: Snapshot, extra: Extra | None = None) -> Counts:
        history = len(extra.history) if extra else 0
        return cls(len(snap.cursors), len(snap.seen), len(snap.jobs), history)

    def __str__(self) -> str:
        return (
            f"{self.cursors} cursors, {self.seen} processed posts, {self.jobs} unfinished jobs, "
            f"{self.history} history rows"
        )


@dataclass(frozen=True, slots=True)
class Extra:
    """What a snapshot leaves out: history rows and queued redeliveries (raw rows)."""

    history: list[tuple[Any, ...]]
    queued: list[tuple[Any, ...]]


_OUTBOX_COLUMNS = "id, webhook, stage, attempts, job, body, response, created_at, next_at"
_HISTORY_SELECT = f"SELECT {HISTORY_COLUMNS} FROM deliveries ORDER BY finished_at"
_QUEUED_SELECT = f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE stage = 'redeliver'"


def read_extra(url: str, schema: str) -> Extra:
    """The history rows and queued redeliveries at ``url`` (which exists). Blocking."""
    if is_postgres_url(url):
        from sidecar.pgconn import PgTarget, read_password
        from sidecar.pgstate import PgState

        target = PgTarget(url, schema=schema, password=read_password(None))
        conn = PgState(target).connect_sync()
        try:
            conn.execute(target.setup_sql()[-1].encode())
            history = [tuple(r) for r in conn.execute(_HISTORY_SELECT.encode()).fetchall()]
            queued = [tuple(r) for r in conn.execute(_QUEUED_SELECT.encode()).fetchall()]
        finally:
            conn.close()
        return Extra(history, queued)
    db = sqlite3.connect(f"file:{_sqlite_dir(url) / DB_NAME}?mode=ro", uri=True)
    try:
        history = [tuple(r) for r in db.execute(_HISTORY_SELECT)]
        queued = [tuple(r) for r in db.execute(_QUEUED_SELECT)]
    finally:
        db.close()
    return Extra(history, queued)


def _sqlite_dir(url: str) -> Path:
    path = Path(url.removeprefix("sqlite://"))
    return path.parent if path.name == DB_NAME or path.suffix else path


def _check_url(url: str) -> None:
    if not (url.startswith("sqlite:///") or is_postgres_url(url)):
        raise MigrateError(f"{redact_url(url)}: expected sqlite:///path or postgresql://…")


def read(url: str, schema: str) -> Snapshot:
    """The state at ``url`` (which must exist). Blocking."""
    _check_url(url)
    if is_postgres_url(url):
        from sidecar.pgconn import PgTarget, read_password
        from sidecar.pgstate import PgState

        return PgState(PgTarget(url, schema=schema, password=read_password(None))).open()
    state_dir = _sqlite_dir(url)
    if not (state_dir / DB_NAME).is_file():
        raise MigrateError(f"no state file at {state_dir / DB_NAME}")
    return _open_sqlite(state_dir)


def _open_sqlite(state_dir: Path) -> Snapshot:
    state = State(state_dir)
    try:
        return state.open()
    finally:
        asyncio.run(state.close())  # no writer was started: this closes the file


def write(
    url: str, schema: str, snap: Snapshot, *, force: bool, extra: Extra | None = None
) -> None:
    """Replace the state at ``url`` by ``snap`` (and ``extra``) in one transaction. Blocking."""
    _check_url(url)
    extra = extra or Extra([], [])
    jobs = [job_row(j) for j in snap.jobs] + extra.queued
    if is_postgres_url(url):
        from sidecar.pgconn import PgTarget, read_password
        from sidecar.pgstate import PgState, replace_all

        target = PgState(PgTarget(url, schema=schema, password=read_password(None)))
        _refuse_unless_empty(url, target.open(), force)
        conn = target.connect_sync()
        try:
            replace_all(conn, schema, snap.cursors, snap.seen, jobs, extra.history, snap.start)
        finally:
            conn.close()
        return
    state_dir = _sqlite_dir(url)
    _refuse_unless_empty(url, _open_sqlite(state_dir), force)
    db = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        for table in ("cursor", "seen", "outbox", "deliveries"):
            db.execute(f"DELETE FROM {table}")
        db.execute("DELETE FROM meta WHERE key = ?", (START_KEY,))
        if snap.start is not None:
            db.execute("INSERT INTO meta VALUES (?, ?)", (START_KEY, str(snap.start)))
        db.executemany("INSERT INTO cursor VALUES (?, ?)", list(snap.cursors.items()))
        db.executemany("INSERT INTO seen VALUES (?, ?)", list(snap.seen.items()))
        db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", jobs)
        db.executemany(
            f"INSERT INTO deliveries ({HISTORY_COLUMNS}) VALUES ({', '.join('?' * 23)})",
            extra.history,
        )
        db.execute("COMMIT")
    finally:
        db.close()


def _refuse_unless_empty(url: str, snap: Snapshot, force: bool) -> None:
    if (snap.cursors or snap.seen or snap.jobs or snap.start is not None) and not force:
        raise MigrateError(
            f"{redact_url(url)} already holds state ({Counts.of(snap)}); --force replaces it"
        )


def migrate(src: str, dst: str, *, force: bool = False, schema: str = DEFAULT_SCHEMA) -> Counts:
    """Copy the state at ``src`` to ``dst``; return what was copied. Blocking."""
    if src == dst:
        raise MigrateError("--from and --to are the same")
    snap = read(src, schema)
    extra = read_extra(src, schema)
    if snap.fresh and not (snap.cursors or snap.seen or snap.jobs or extra.history or extra.queued):
        where = f" (schema {schema})" if is_postgres_url(src) else ""
        raise MigrateError(f"{redact_url(src)}{where} holds no mm-sidecar state")
    write(dst, schema, snap, force=force, extra=extra)
    return Counts.of(snap, extra)


# -- the command line (called from cli.py) ----------------------------------------------------


def add_parser(sub: Any) -> None:
    """Add ``state migrate`` to the ``mm-sidecar`` subcommands."""
    p = sub.add_parser("state", help="durable state: move it between backends")
    state_sub = p.add_subparsers(dest="state_command", required=True)
    m = state_sub.add_parser(
        "migrate", help="copy cursors, processed posts and unfinished jobs to another backend"
    )
    m.add_argument("--from", dest="src", required=True, help="sqlite:///path or postgresql://…")
    m.add_argument("--to", dest="dst", required=True, help="sqlite:///path or postgresql://…")
    m.add_argument("--force", action="store_true", help="replace state the target already holds")
    m.add_argument(
        "--schema", default=DEFAULT_SCHEMA, help="PostgreSQL schema (state_schema; both sides)"
    )
    m.set_defaults(fn=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Exit 0 when copied, 1 when refused or failed (the message on stderr)."""
    import sys

    try:
        counts = migrate(args.src, args.dst, force=args.force, schema=args.schema)
    except (MigrateError, StateError, OSError, sqlite3.Error) as exc:
        print(f"state migrate: {exc}", file=sys.stderr)
        return 1
    print(f"state migrate: copied {counts} to {redact_url(args.dst)}")
    return 0
