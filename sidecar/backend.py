"""The state backend protocol: what the daemon needs from durable state, and which one to use.

Two implementations: ``sidecar.state.State`` (SQLite in ``state_dir``, the default) and
``sidecar.pgstate.PgState`` (PostgreSQL, shared by the replicas of an HA install). Both batch
the writes queued while the previous commit ran into one transaction, and each write returns
a future resolved once it is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sidecar.history import HistoryStore
from sidecar.state import Job, Snapshot, State, StateError


class Fenced(StateError):
    """A write refused because another replica took the lease (the epoch moved on)."""


class StateUnavailable(StateError):
    """The shared state cannot be reached (PostgreSQL down or unreachable); try again later."""


class StateBackend(Protocol):
    """Cursors, the start position, seen posts, outbox jobs (attempts, next attempt
    time), the delivery history, schema version.

    A write that keeps failing is retried for ``state.WRITE_RETRY_FOR`` seconds, then every
    waiter gets the error and ``on_write_failure`` is called with it (the daemon exits 1).
    """

    commits: int  # transactions committed so far (tests, bench)
    on_write_failure: Callable[[BaseException], None] | None

    def open(self, *, seen_limit: int | None = None) -> Snapshot:
        """Create or migrate the store and read it back. Blocking: call in a thread.

        ``seen_limit``: read only the newest so many processed keys (the daemon's start;
        ``Snapshot.seen_floor`` says which are surely all there); None: all (``migrate``).
        """
        ...

    def start_writer(self) -> None:
        """Start the writer; call from the loop that awaits the writes."""
        ...

    async def close(self) -> None:
        """Commit what is queued, stop the writer, release the store."""
        ...

    def add_jobs(self, jobs: Sequence[Job]) -> asyncio.Future[None]: ...

    def update_job(self, job: Job) -> asyncio.Future[None]: ...

    def finish_job(self, job_id: str, entry: tuple[Any, ...] | None = None) -> asyncio.Future[None]:
        """Delete a finished job and write its history row, in one transaction."""
        ...

    def claim_redeliveries(self, job_ids: Sequence[str]) -> asyncio.Future[None]:
        """Take outbox rows queued by ``mm-sidecar redeliver`` (stage ``redeliver``)."""
        ...

    def open_history(self) -> HistoryStore:
        """The history on a connection of its own. Blocking: call in a thread."""
        ...

    def record_position(
        self, channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]: ...

    def record(
        self, jobs: Sequence[Job], channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]: ...

    def record_start(self, position: int) -> asyncio.Future[None]:
        """Save where processing began (server ms), in ``meta``: the cursor of channels
        without their own (read back as ``Snapshot.start``)."""
        ...

    def prune_seen(self, older_than: int) -> asyncio.Future[None]: ...

    async def seen_among(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the ``seen`` table holds (committed processed keys); one batched
        lookup, for the keys memory no longer holds (``sidecar.seen``)."""
        ...


def sqlite_backend(state_dir: Path) -> StateBackend:
    """The embedded default: SQLite under ``state_dir``."""
    return State(state_dir)


def postgres_backend(url: str, *, schema: str, password_file: Path | None = None) -> StateBackend:
    """PostgreSQL at ``url`` (tables in ``schema``); needs the ``postgresql`` extra."""
    from sidecar.pgconn import PgTarget, read_password
    from sidecar.pgstate import PgState

    return PgState(PgTarget(url, schema=schema, password=read_password(password_file)))
