"""The daemon's side of the delivery history: redeliveries, the dead-letter gauge, pruning.

``mm-sidecar redeliver`` (another process, no lock; SQLite in WAL, or PostgreSQL) writes outbox
rows with ``stage = 'redeliver'``. Every ``poll_interval`` seconds this task reads them on a
connection of its own (a SQLite file is asked on the event loop, with a busy timeout of 0: a
read in WAL does not wait for writers, and the hop to a thread cost more than the read; a busy
file and PostgreSQL are asked from a thread, as is every other query here), claims those whose
job is not already queued or running here (through the writer thread, in the same order as every
other write) and hands them to the outbox. A row whose job is still running stays queued and is
looked at again next time, so the same job never runs twice at once. The same poll refreshes
``mm_sidecar_dead_letters`` when this daemon made or took up a dead letter since, and otherwise
every DEAD_REFRESH seconds (another replica's or the CLI's changes; a count over the history is
not worth doing each second); every ``prune_every`` seconds (and once at start) the history is
pruned, in short chunks.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sidecar.health import Metrics
from sidecar.history import HistoryError, HistoryStore, Retention
from sidecar.outbox import Outbox, safe_url
from sidecar.state import Job

if TYPE_CHECKING:
    from sidecar.backend import StateBackend

log = logging.getLogger(__name__)

T = TypeVar("T")

DEAD_REFRESH = 15.0  # seconds between two counts of the dead letters when nothing changed here


async def _in_thread(fn: Callable[[], T], *, dispose: Callable[[T], None] | None = None) -> T:
    """``asyncio.to_thread``, except that a cancellation waits for the thread to be done with
    the connection (closing it under a running query is not safe); what the thread returned
    after all is then given to ``dispose`` (a connection opened meanwhile is closed)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        # (the exception retrieved: the task is being cancelled anyway)
        if not task.cancelled() and task.exception() is None and dispose is not None:
            dispose(task.result())
        raise


class HistoryKeeper:
    """One task of the daemon; constructing it does no I/O."""

    def __init__(
        self,
        *,
        state: StateBackend,
        outbox: Outbox,
        metrics: Metrics,
        retention: Callable[[], Retention],
        poll_interval: float = 1.0,
        prune_every: float = 600.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._outbox = outbox
        self._metrics = metrics
        self._retention = retention
        self._poll_interval = poll_interval
        self._prune_every = prune_every
        self._clock = clock
        self._monotonic = monotonic
        self._dead_seen: set[str] = set()
        self._dead_counted: tuple[float, int] | None = None  # (monotonic time, dead letters made)
        self.polls = 0  # finished polls, for tests to wait on
        self.prunes = 0

    async def run(self) -> None:
        """Poll, refresh and prune until cancelled."""
        store = await _in_thread(self._state.open_history, dispose=lambda opened: opened.close())
        next_prune = time.monotonic()
        try:
            while True:
                try:
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + self._prune_every
                        await self.prune(store)
                    await self.poll(store)
                except (sqlite3.Error, HistoryError) as exc:
                    log.warning("delivery history: %s; trying again shortly", exc)
                await asyncio.sleep(self._poll_interval)
        finally:
            store.close()

    async def prune(self, store: HistoryStore) -> None:
        """Delete what the retention settings no longer keep."""
        retention = self._retention()
        now = self._clock()
        deleted = await _in_thread(lambda: store.prune(now, retention))
        self.prunes += 1
        if deleted:
            log.info(
                "delivery history: pruned %d rows (history_days=%g, dead_letter_days=%g, "
                "history_max_rows=%d)",
                deleted,
                retention.history_days,
                retention.dead_letter_days,
                retention.max_rows,
            )

    async def poll(self, store: HistoryStore) -> None:
        """Take up queued redeliveries; refresh the dead-letter gauge."""

        failures, now = self._outbox.counters.dead_letters, self._monotonic()
        counted = self._dead_counted
        count_dead = counted is None or counted[1] != failures or now - counted[0] >= DEAD_REFRESH

        def read() -> tuple[list[Job], dict[str, int] | None]:
            return store.pending(), store.dead_letters() if count_dead else None

        if count_dead:
            jobs, dead = await _in_thread(read)
        else:
            # A local file answers at once: asked on the loop, since a hop to a thread and
            # back costs more than the read (most of what an idle second cost).
            found, dead = store.pending_nowait(), None
            jobs = found if found is not None else await _in_thread(store.pending)
        if dead is not None:
            self._dead_counted = (now, failures)
            self._set_dead_letters(dead)
        fresh = [j for j in jobs if not self._outbox.running(j.id)]
        if fresh:
            committed = self._state.claim_redeliveries([j.id for j in fresh])
            for job in fresh:
                log.info(
                    "redelivering %s webhook=%s post=%s url=%s webhook-id=%s (job %s)",
                    job.redelivery_of,
                    job.webhook,
                    job.post_id,
                    safe_url(job.url),
                    job.webhook_id,
                    job.id,
                )
            self._metrics.redeliveries.inc(len(fresh))
            self._outbox.submit(fresh, committed)
            self._dead_counted = None  # taken up: count again at the next poll
        self.polls += 1

    def _set_dead_letters(self, dead: dict[str, int]) -> None:
        for webhook in self._dead_seen | set(dead):
            self._metrics.dead_letters.labels(webhook=webhook).set(dead.get(webhook, 0))
        self._dead_seen |= set(dead)
