"""Active/standby replicas sharing their state in PostgreSQL (``[sidecar] state_url``).

A standby holds no websocket: it makes sure the schema exists, then tries the lease every
``lease_check_interval``. On takeover it reads the shared state (cursors, seen posts, the
outbox), resumes the unfinished jobs (same ``webhook-id``), connects the websocket and catches
up over REST from the shared cursor — the existing catch-up path. While active it checks the
lease as often; a check that fails or takes over 2 s, or a write refused by the epoch, ends
the term at once: the websocket is closed, no new delivery starts (running ones are cancelled;
their outcomes are written only while the epoch holds) and the replica is a standby again.

Visible: ``/readyz`` 200 ``active`` / ``standby`` (503 when PostgreSQL is unreachable, or when
active without a websocket), ``mm_sidecar_active``, ``mm_sidecar_takeovers_total``, systemd
``STATUS=active…`` / ``STATUS=standby…``, one log line per role change with the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from sidecar.backend import StateUnavailable
from sidecar.lease import CHECK_TIMEOUT, Lease
from sidecar.pgstate import PgState

if TYPE_CHECKING:
    from sidecar.app import Sidecar

log = logging.getLogger(__name__)


class HighAvailability:
    """The role loop of one replica. Constructing it does no I/O."""

    def __init__(self, app: Sidecar) -> None:
        assert isinstance(app.state, PgState)
        self.app = app
        self.state: PgState = app.state
        self.lease = Lease(
            self.state.target,
            check_interval=app.boot.sidecar.lease_check_interval,
            check_timeout=CHECK_TIMEOUT,
        )
        reg = app.metrics.registry
        self.active_gauge = Gauge(
            "mm_sidecar_active", "1 while this replica holds the lease.", registry=reg
        )
        self.takeovers = Counter(
            "mm_sidecar_takeovers", "Times this replica became the active one.", registry=reg
        )
        self.reachable = True  # PostgreSQL answered the last attempt
        self.tries = 0  # attempts at the lease so far (tests wait for the first)
        self._schema_ready = False
        self.tries = 0  # finished tries for the lease
        self._announced = False

    # -- roles -------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """``(True, "active")``, ``(True, "standby")``, or 503 with the reason."""
        if self.lease.active:
            if self.app.pipeline is None or not self.app.pipeline.gateway.connected:
                return False, "active: websocket not connected"
            return True, "active"
        if not self.reachable:
            return False, "standby: PostgreSQL unreachable"
        return True, "standby"

    def _status(self, text: str) -> None:
        webhooks = len(self.app.config.webhooks)
        if not self._announced:  # systemd: the service is up, as a standby
            self._announced = True
            self.app.notifier.ready(f"{text}; {webhooks} webhooks")
        else:
            self.app.notifier.status(f"{text}; {webhooks} webhooks")

    async def serve(self, stop: asyncio.Event) -> None:
        """Standby and active terms until ``stop``."""
        try:
            while not stop.is_set():
                if not await self._standby(stop):
                    return
                await self._active(stop)
        finally:
            if not self.app._stopping:  # stopped as a standby: serve_term did not say it
                self.app._stopping = True
                self.app.notifier.stopping()
            await self.lease.close()
            self.active_gauge.set(0)

    async def _standby(self, stop: asyncio.Event) -> bool:
        """Wait for the lease; True once it is ours, False when ``stop`` came first."""
        self.active_gauge.set(0)
        self._status("standby")
        log.info("standby: trying the lease every %g s", self.lease.check_interval)
        interval = self.app.notifier.watchdog_interval()
        while not stop.is_set():
            if interval:
                self.app.notifier.watchdog()  # a standby is healthy
            won = await self._try()
            self.tries += 1  # tests wait on it: a standby has tried (and failed) at least once
            if won:
                return True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.lease.check_interval)
        return False

    async def _try(self) -> bool:
        if not self._schema_ready:
            try:
                await asyncio.to_thread(self.app.open_state)  # creates or migrates the schema
            except StateUnavailable as exc:
                self._unreachable(exc)
                return False
            self._schema_ready = True
        epoch = await self.lease.try_acquire()
        self.tries += 1
        if epoch is None:
            if self.lease.last_error is not None:
                self._unreachable(self.lease.last_error)
            else:
                self.reachable = True
            return False
        self.reachable = True
        return True

    def _unreachable(self, exc: BaseException) -> None:
        if self.reachable:
            log.warning("standby: PostgreSQL unreachable: %s", exc)
        self.reachable = False

    async def _active(self, stop: asyncio.Event) -> None:
        """One active term: from takeover until ``stop`` or the lease is lost."""
        epoch = self.lease.epoch
        self.state.epoch = epoch
        self.state.on_fenced = lambda exc: self.app.depose()
        try:
            snapshot = await asyncio.to_thread(self.app.open_state)
        except StateUnavailable as exc:
            log.warning("took the lease (epoch %s) but cannot read the state: %s", epoch, exc)
            await self.lease.stand_down()
            return
        self.active_gauge.set(1)
        self.takeovers.inc()
        log.info(
            "active (epoch %s): %d cursors, %d unfinished jobs; connecting the websocket",
            epoch,
            len(snapshot.cursors),
            len(snapshot.jobs),
        )
        self._status(f"active (epoch {epoch})")
        await self.app.begin(snapshot)  # a new pipeline for this term; dropped when it ends
        checker = asyncio.create_task(self._check(), name="lease-check")
        try:
            await self.app.serve_term(stop)
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
        if not stop.is_set():
            log.warning("standby (was active at epoch %s): the lease is lost", epoch)
            await self.lease.stand_down()

    async def _check(self) -> None:
        """Check the lease every interval; on loss, depose the active term at once."""
        while True:
            await asyncio.sleep(self.lease.check_interval)
            if not await self.lease.check():
                self.app.depose()
                return
