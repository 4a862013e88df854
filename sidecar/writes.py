"""The state writer's commands: what a write is, and how a burst of them becomes one transaction.

Each public write of a backend (``State``, ``PgState``) queues one frozen command; the writer
folds the commands queued while the previous commit ran into a :class:`Rows` with
:func:`Rows.apply` (a ``match`` on the command's type, checked by mypy), then each backend
writes the rows with its own SQL (``state.write_sqlite``, ``pgstate._write``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.jobs import Job


@dataclass(frozen=True, slots=True)
class AddJobs:
    """New deliveries, recorded before they are sent."""

    jobs: tuple[Job, ...]


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """A job's new stage, attempt count, response and next attempt time."""

    job_id: str
    stage: str
    attempts: int
    response: bytes | None
    next_at: float

    @classmethod
    def of(cls, job: Job) -> UpdateJob:
        return cls(job.id, job.stage, job.attempts, job.response, job.next_at)


@dataclass(frozen=True, slots=True)
class FinishJob:
    """A finished job: its outbox row deleted, its history row (``history.entry``) added."""

    job_id: str
    entry: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """Outbox rows queued by ``mm-sidecar redeliver``, taken by this daemon."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecordPosition:
    """A channel's cursor advanced to ``create_at``; ``keys`` processed (as of ``at`` ms)."""

    channel_id: str
    create_at: int
    keys: tuple[str, ...]
    at: int


@dataclass(frozen=True, slots=True)
class Record:
    """``AddJobs`` and ``RecordPosition`` in one transaction (see ``State.record``)."""

    jobs: AddJobs
    position: RecordPosition


@dataclass(frozen=True, slots=True)
class RecordStart:
    """Where processing began (server ms): the cursor of every channel without its own."""

    position: int


@dataclass(frozen=True, slots=True)
class PruneSeen:
    """Forget processed keys older than ``older_than`` (ms)."""

    older_than: int


Command = (
    AddJobs | UpdateJob | FinishJob | Claim | RecordPosition | Record | RecordStart | PruneSeen
)


def record_position(
    channel_id: str, create_at: int, keys: Sequence[str], at: int
) -> RecordPosition:
    return RecordPosition(channel_id, create_at, tuple(keys), at)


def record(
    jobs: Sequence[Job], channel_id: str, create_at: int, keys: Sequence[str], at: int
) -> Record:
    return Record(AddJobs(tuple(jobs)), record_position(channel_id, create_at, keys, at))


class Rows:
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
        self.start: int | None = None
        self.prune: int | None = None

    @classmethod
    def of(cls, commands: Sequence[Command]) -> Rows:
        rows = cls()
        for command in commands:
            rows.apply(command)
        return rows

    def apply(self, command: Command) -> None:
        """Fold one command into the transaction."""
        if isinstance(command, AddJobs):
            self.add_jobs(command.jobs)
        elif isinstance(command, UpdateJob):
            self.updates.append(
                (command.stage, command.attempts, command.response, command.next_at, command.job_id)
            )
        elif isinstance(command, FinishJob):
            self.finished.append((command.job_id,))
            if command.entry is not None:
                self.history.append(command.entry)
        elif isinstance(command, Claim):
            self.claimed.extend((i,) for i in command.job_ids)
        elif isinstance(command, RecordPosition):
            self._position(command)
        elif isinstance(command, Record):
            self.add_jobs(command.jobs.jobs)
            self._position(command.position)
        elif isinstance(command, RecordStart):
            self.start = command.position
        else:
            self.prune = command.older_than

    def add_jobs(self, jobs: Sequence[Job]) -> None:
        self.jobs.extend(job_row(j) for j in jobs)

    def _position(self, command: RecordPosition) -> None:
        channel_id, create_at = command.channel_id, command.create_at
        self.cursors[channel_id] = max(create_at, self.cursors.get(channel_id, create_at))
        self.seen.extend((k, command.at) for k in command.keys)


def job_row(j: Job) -> tuple[Any, ...]:
    """A job as its outbox row."""
    return (
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


class CommandWriter:
    """The state's write methods, one command each (both backends queue them the same way:
    ``_submit`` hands a command to the backend's writer and returns the future of its commit)."""

    def _submit(self, command: Command) -> asyncio.Future[None]:
        raise NotImplementedError

    def add_jobs(self, jobs: Sequence[Job]) -> asyncio.Future[None]:
        """Record new deliveries (before they are sent)."""
        return self._submit(AddJobs(tuple(jobs)))

    def update_job(self, job: Job) -> asyncio.Future[None]:
        """Record a job's new stage, attempt count, response and next attempt time."""
        return self._submit(UpdateJob.of(job))

    def finish_job(self, job_id: str, entry: tuple[Any, ...] | None = None) -> asyncio.Future[None]:
        """Remove a finished job and add its history row (``history.entry``) in one transaction."""
        return self._submit(FinishJob(job_id, entry))

    def claim_redeliveries(self, job_ids: Sequence[str]) -> asyncio.Future[None]:
        """Mark outbox rows queued by ``redeliver`` as taken by this daemon (or replica)."""
        return self._submit(Claim(tuple(job_ids)))

    def record_position(
        self, channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]:
        """Advance a channel's cursor to ``create_at`` and remember ``keys`` (as of ``at`` ms)."""
        return self._submit(record_position(channel_id, create_at, keys, at))

    def record(
        self, jobs: Sequence[Job], channel_id: str, create_at: int, keys: Sequence[str], at: int
    ) -> asyncio.Future[None]:
        """`add_jobs` and `record_position` in one transaction.

        A crash then leaves either both (the outbox resumes the jobs, the post is not matched
        again) or neither (catch-up finds the post again): never a post marked processed
        whose deliveries were lost, nor jobs that a catch-up would queue a second time.
        """
        return self._submit(record(jobs, channel_id, create_at, keys, at))

    def record_start(self, position: int) -> asyncio.Future[None]:
        """Save where processing began (server ms): the cursor of channels without one."""
        return self._submit(RecordStart(position))

    def prune_seen(self, older_than: int) -> asyncio.Future[None]:
        """Forget processed keys older than ``older_than`` (ms)."""
        return self._submit(PruneSeen(older_than))
