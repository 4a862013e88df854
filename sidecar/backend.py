"""The state backend protocol: what the daemon needs from durable state, and which one to use.

Two implementations: ``sidecar.state.State`` (SQLite in ``state_dir``, the default) and
``sidecar.pgstate.PgState`` (PostgreSQL, shared by the replicas of an HA install). Both batch
the writes queued while the previous commit ran into one transaction, and each write returns
a future resolved once it is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sidecar.state import Job, Snapshot, State, StateError


class Fenced(StateError):
    """A write refused because another replica took the lease (the epoch moved on)."""


class StateUnavailable(StateError):
    """The shared state cannot be reached (PostgreSQL down or unreachable); try again later."""


class StateBackend(Protocol):
    """Cursors, seen posts, outbox jobs (attempts, next attempt time), schema version."""

    commits: int  # transactions committed so far (tests, bench)

    def open(self) -> Snapshot:
        """Create or migrate the store and read it back. Blocking: call in a thread."""
        ...

    def start_writer(self) -> None:
        """Start the writer; call from the loop that awaits the writes."""
        ...

    async def close(self) -> None:
        """Commit what is queued, stop the writer, release the store."""
        ...

    def add_jobs(self, jobs: Sequence[Job]) -> asyncio.Future[None]: ...

    def update_job(self, job: Job) -> asyncio.Future[None]: ...

    def finish_job(self, job_id: str) -> asyncio.Future[None]: ...

    def processed(
        self, channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]: ...

    def record(
        self, jobs: Sequence[Job], channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]: ...

    def prune_seen(self, older_than: int) -> asyncio.Future[None]: ...


def sqlite_backend(state_dir: Path) -> StateBackend:
    """The embedded default: SQLite under ``state_dir``."""
    return State(state_dir)


def postgres_backend(url: str, *, schema: str, password_file: Path | None = None) -> StateBackend:
    """PostgreSQL at ``url`` (tables in ``schema``); needs the ``postgresql`` extra."""
    from sidecar.pgconn import PgTarget, read_password
    from sidecar.pgstate import PgState

    return PgState(PgTarget(url, schema=schema, password=read_password(password_file)))
