"""Catch-up orchestration: one ``catchup.collect`` over REST, retried until it works, and the
log line that reports it. The dispatcher processes what it found, through the same
de-duplicated path as the websocket's events."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

from sidecar.catchup import CatchUp, SeenCheck, collect
from sidecar.errors import MattermostError, Unauthorized
from sidecar.health import Metrics
from sidecar.mattermost import RestClient
from sidecar.models import Channel, Team
from sidecar.retry import RetryPolicy, retrying
from sidecar.runtime import Runtime

log = logging.getLogger(__name__)


class CatchUpRunner:
    """Constructing it does no I/O."""

    def __init__(self, rest: RestClient, retry: RetryPolicy, metrics: Metrics) -> None:
        self._rest = rest
        self._retry = retry
        self._metrics = metrics

    async def collect(
        self,
        runtime: Runtime,
        *,
        cursors: dict[str, int],
        default: int,
        seen: SeenCheck,
        channels: list[tuple[Channel, Team | None]] | None,
        what: str,
    ) -> CatchUp | None:
        """What the websocket could not tell us, matched against ``runtime``'s rules and
        window; None when the server refused for good (tried again after the next gap).

        A catch-up that fails is tried again (the dispatcher waits: later events must not
        move the cursors past what is still missing), until it works or we stop.
        """

        def collect_now() -> Awaitable[CatchUp]:
            # The window is measured on the server's clock, as are the posts' timestamps.
            window_start = self._rest.server_now_ms() - int(runtime.catch_up_window * 1000)
            return collect(
                self._rest,
                runtime.rules,
                cursors=cursors,
                default_cursor=default,
                window_start=window_start,
                seen=seen,
                channels=channels,
            )

        def failed(exc: MattermostError, _attempts: int, delay: float) -> None:
            log.error("catch-up%s failed: %s; trying again in %.1f s", what, exc, delay)

        try:
            return await retrying(collect_now, self._retry, on_retry=failed)
        except Unauthorized:
            raise
        except MattermostError as exc:
            log.error("catch-up%s failed: %s; tried again after the next gap", what, exc)
            return None

    def report(self, found: CatchUp, runtime: Runtime, what: str, started: float) -> None:
        """Count and log a finished catch-up (``started``: its ``time.monotonic()``)."""
        self._metrics.caught_up_posts.inc(len(found.items))
        if found.skipped_old:
            log.warning(
                "catch-up skipped %d posts older than catch_up_window (%.0f s)",
                found.skipped_old,
                runtime.catch_up_window,
            )
        log.info(
            "caught up%s: %d channels, %d posts fetched, %d processed, %d skipped as too old, "
            "in %.2f s",
            what,
            found.channels,
            found.fetched,
            len(found.items),
            found.skipped_old,
            time.monotonic() - started,
        )
