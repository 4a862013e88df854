"""What the sidecar shows about itself: Prometheus metrics and the health endpoints.

``Metrics`` owns its own registry (never prometheus_client's global one), so two sidecars in
one process, or two tests, count separately. ``HealthServer`` serves ``/healthz`` (the
process answers), ``/readyz`` (the websocket is authenticated and hello arrived; 503 with the
reason otherwise) and ``/metrics`` on ``[sidecar] listen``, loopback by default. Labels carry
webhook names and outcomes only, never a token, URL or secret.
"""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import Callable, Collection
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder

from sidecar.models import EVENT_NAMES

logger = logging.getLogger(__name__)

DELIVERY_OUTCOMES: Final = ("delivered", "failed", "refused", "retried")
REPLY_OUTCOMES: Final = ("posted", "rejected", "failed", "none")
RELOAD_RESULTS: Final = ("ok", "error")

# Callback latencies from a LAN hop up to Mattermost's 30 s timeout.
_DELIVERY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)


class Metrics:
    """Every counter, gauge and histogram the sidecar exports, on a private registry.

    Names start with ``mm_sidecar_``; counters get the ``_total`` suffix on the wire.
    """

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        reg = self.registry
        self.events = Counter(
            "mm_sidecar_events_received",
            "Websocket events received, by event type.",
            ["event"],
            registry=reg,
        )
        self.matches = Counter(
            "mm_sidecar_matches", "Events that matched a webhook.", ["webhook"], registry=reg
        )
        self.deliveries = Counter(
            "mm_sidecar_deliveries",
            "Callback requests by webhook and outcome "
            "(delivered, failed, refused by the address guard, retried).",
            ["webhook", "outcome"],
            registry=reg,
        )
        self.delivery_seconds = Histogram(
            "mm_sidecar_delivery_duration_seconds",
            "Time from sending a callback request to its full response.",
            ["webhook"],
            buckets=_DELIVERY_BUCKETS,
            registry=reg,
        )
        self.replies = Counter(
            "mm_sidecar_replies",
            "Callback responses by what became of the reply (posted, rejected, failed, none).",
            ["outcome"],
            registry=reg,
        )
        self.reconnects = Counter(
            "mm_sidecar_websocket_reconnects", "Websocket reconnect attempts.", registry=reg
        )
        self.gaps = Counter(
            "mm_sidecar_websocket_gaps",
            "Reconnects that could not resume (new connection id), each followed by a catch-up.",
            registry=reg,
        )
        self.caught_up_posts = Counter(
            "mm_sidecar_caught_up_posts", "Posts recovered over REST during catch-up.", registry=reg
        )
        self.channel_joins = Counter(
            "mm_sidecar_channel_joins",
            "Public channels the bot tried to join, by result (joined, refused, failed).",
            ["result"],
            registry=reg,
        )
        self.outbox_depth = Gauge(
            "mm_sidecar_outbox_depth", "Deliveries persisted and not yet finished.", registry=reg
        )
        self.config_reloads = Counter(
            "mm_sidecar_config_reloads",
            "Config reloads (SIGHUP) by result.",
            ["result"],
            registry=reg,
        )
        # -- delivery history (history.py, redelivery.py) --
        self.dead_letters = Gauge(
            "mm_sidecar_dead_letters",
            "Failed deliveries in the history not redelivered yet, by webhook.",
            ["webhook"],
            registry=reg,
        )
        self.redeliveries = Counter(
            "mm_sidecar_redeliveries",
            "Deliveries queued again by `mm-sidecar redeliver` and taken up by this daemon.",
            registry=reg,
        )
        self.webhooks = Gauge("mm_sidecar_webhooks", "Webhooks in the active config.", registry=reg)
        self.connected = Gauge(
            "mm_sidecar_websocket_connected",
            "1 while the websocket is authenticated and hello was received, else 0.",
            registry=reg,
        )
        self.build_info = Info("mm_sidecar_build", "Version of the running sidecar.", registry=reg)
        self.build_info.info({"version": version, "python": platform.python_version()})
        # Resident memory, CPU and open fds answer the first question asked of a daemon that
        # misbehaves; they keep their standard process_* names so stock dashboards work.
        ProcessCollector(registry=reg)
        GCCollector(registry=reg)

        # Series that exist from the start read as 0 instead of being absent, so rate() and
        # alerts work before the first occurrence.
        for event in EVENT_NAMES:
            self.events.labels(event=event)
        for outcome in REPLY_OUTCOMES:
            self.replies.labels(outcome=outcome)
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result=result)

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: ``labels`` takes a lock per call."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def retain_webhooks(self, names: Collection[str]) -> None:
        """Declare the configured webhooks (at start and after a reload).

        Sets ``mm_sidecar_webhooks`` and drops the series of webhooks no longer configured,
        so a renamed webhook does not linger in every scrape until the next restart.
        """
        keep = set(names)
        self._children.clear()  # a removed series must not live on in the cache
        self.webhooks.set(len(keep))
        labelled: tuple[tuple[Counter | Histogram, tuple[str, ...]], ...] = (
            (self.matches, ("webhook",)),
            (self.deliveries, ("webhook", "outcome")),
            (self.delivery_seconds, ("webhook",)),
        )
        for metric, label_names in labelled:
            stale: set[tuple[str, ...]] = set()
            for family in metric.collect():
                for sample in family.samples:
                    if sample.labels.get("webhook", "") not in keep:
                        stale.add(tuple(sample.labels[n] for n in label_names))
            for values in stale:
                metric.remove(*values)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


Readiness = Callable[[], tuple[bool, str]]


class HealthServer:
    """HTTP server for ``/healthz``, ``/readyz`` and ``/metrics``.

    ``listen`` is ``"host:port"`` (IPv6 as ``"[::1]:9181"``; port 0 picks a free port).
    ``readiness`` returns ``(ready, reason)``; the reason is the body of a 503. The
    constructor does no I/O; :meth:`start` binds, :meth:`stop` closes.
    """

    def __init__(self, listen: str, metrics: Metrics, readiness: Readiness) -> None:
        self.host, self.port = parse_listen(listen)
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; afterwards :attr:`port` is the port actually bound."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        # Probes and scrapes every few seconds would drown the decision log.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        logger.info("health and metrics on http://%s/", _join(self.host, self.port))

    async def stop(self) -> None:
        """Close the listening socket and any open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready, reason = self._readiness()
        except Exception:
            logger.exception("readiness check raised")
            ready, reason = False, "readiness check failed"
        if ready:  # "ready"; with HA (state_url), "active" or "standby"
            return web.Response(text=(reason or "ready") + "\n")
        return web.Response(status=503, text=(reason or "not ready") + "\n")

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        # Same content negotiation as prometheus_client's own handler (OpenMetrics when the
        # scraper asks for it). Rendering walks every series; with thousands of webhooks that
        # takes long enough to delay websocket frames, so it runs off the event loop.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``"host:port"`` / ``"[v6]:port"`` into its parts; ValueError when malformed."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 listen address needs brackets, as [::1]:9181, got {listen!r}")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen must be host:port with a port 0-65535, got {listen!r}")
    return host, int(port_text)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
