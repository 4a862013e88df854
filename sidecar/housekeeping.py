"""Housekeeping, one task of the pipeline: systemd watchdog pings while healthy, and pruning of
processed keys older than the catch-up window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sidecar.dispatch import Dispatcher
from sidecar.gateway import Gateway
from sidecar.notify import Notifier
from sidecar.runtime import Live

TICK = 30.0  # seconds between two looks, at most (shorter when systemd's watchdog wants it)
RECONNECT_GRACE = 300.0  # seconds of reconnecting still called healthy (the watchdog is fed)
PRUNE_EVERY = 600.0  # seconds between two prunings of the processed keys
PRUNE_MARGIN_MS = 60_000  # processed keys are kept this much longer than the catch-up window


class Housekeeping:
    """Watchdog and pruning; constructing it does no I/O."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        dispatcher: Dispatcher,
        notifier: Notifier,
        live: Live,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway = gateway
        self._dispatcher = dispatcher
        self._notifier = notifier
        self._live = live
        self._clock = clock

    async def run(self) -> None:
        """Until cancelled."""
        interval = self._notifier.watchdog_interval()
        tick = min(interval, TICK) if interval else TICK
        last_connected = last_prune = self._clock()
        while True:
            await asyncio.sleep(tick)
            now = self._clock()
            if self._gateway.connected:
                last_connected = now
            if interval and now - last_connected < RECONNECT_GRACE:
                self._notifier.watchdog()
            if now - last_prune > PRUNE_EVERY:
                last_prune = now
                self.prune()

    def prune(self) -> None:
        """Forget processed keys older than the current catch-up window (server time)."""
        window = int(self._live.runtime.catch_up_window * 1000)
        horizon = self._dispatcher.server_now() - window - PRUNE_MARGIN_MS
        self._dispatcher.prune(horizon)
