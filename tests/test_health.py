"""Health endpoints and metrics, served by a real server on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sidecar.health import HealthServer, Metrics, parse_listen


class Flag:
    """A readiness callable the test can flip."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "websocket not connected: connection refused"

    def __call__(self) -> tuple[bool, str]:
        return self.ready, self.reason


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Metrics, Flag]]:
    metrics = Metrics("1.2.3")
    flag = Flag()
    server = HealthServer("127.0.0.1:0", metrics, flag)
    await server.start()
    assert server.port != 0
    try:
        yield f"http://127.0.0.1:{server.port}", metrics, flag
    finally:
        await server.stop()


async def test_healthz(served: tuple[str, Metrics, Flag]) -> None:
    base, _, _ = served
    async with aiohttp.ClientSession() as http, http.get(base + "/healthz") as resp:
        assert resp.status == 200
        assert (await resp.text()).strip() == "ok"


async def test_readyz_follows_the_readiness_callable(served: tuple[str, Metrics, Flag]) -> None:
    base, _, flag = served
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.text()).strip() == "websocket not connected: connection refused"
        flag.ready, flag.reason = True, "ready"
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200
            assert (await resp.text()).strip() == "ready"
        flag.reason = "standby"  # with HA, the role is the body of a 200
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200
            assert (await resp.text()).strip() == "standby"
        flag.ready, flag.reason = False, ""
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.text()).strip() == "not ready"


async def test_readyz_when_the_check_raises() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    server = HealthServer("127.0.0.1:0", Metrics("1"), broken)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/readyz"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 503
            assert (await resp.text()).strip() == "readiness check failed"
    finally:
        await server.stop()


async def test_metrics_exposition(served: tuple[str, Metrics, Flag]) -> None:
    base, metrics, _ = served
    metrics.events.labels(event="posted").inc(3)
    metrics.events.labels(event="typing").inc()
    metrics.matches.labels(webhook="build").inc()
    metrics.deliveries.labels(webhook="build", outcome="delivered").inc()
    metrics.delivery_seconds.labels(webhook="build").observe(0.2)
    metrics.replies.labels(outcome="posted").inc()
    metrics.reconnects.inc()
    metrics.gaps.inc()
    metrics.caught_up_posts.inc(5)
    metrics.outbox_depth.set(7)
    metrics.config_reloads.labels(result="ok").inc()
    metrics.retain_webhooks(["build"])
    metrics.connected.set(1)

    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()

    assert value(text, "mm_sidecar_events_received_total", event="posted") == 3
    assert value(text, "mm_sidecar_events_received_total", event="typing") == 1
    # Pre-declared series read 0 before anything happened.
    assert value(text, "mm_sidecar_events_received_total", event="reaction_added") == 0
    assert value(text, "mm_sidecar_replies_total", outcome="failed") == 0
    assert value(text, "mm_sidecar_config_reloads_total", result="error") == 0
    assert value(text, "mm_sidecar_matches_total", webhook="build") == 1
    assert value(text, "mm_sidecar_deliveries_total", webhook="build", outcome="delivered") == 1
    assert value(text, "mm_sidecar_delivery_duration_seconds_count", webhook="build") == 1
    assert value(text, "mm_sidecar_delivery_duration_seconds_sum", webhook="build") == 0.2
    assert (
        value(text, "mm_sidecar_delivery_duration_seconds_bucket", webhook="build", le="0.1") == 0
    )
    assert (
        value(text, "mm_sidecar_delivery_duration_seconds_bucket", webhook="build", le="0.25") == 1
    )
    assert value(text, "mm_sidecar_replies_total", outcome="posted") == 1
    assert value(text, "mm_sidecar_websocket_reconnects_total") == 1
    assert value(text, "mm_sidecar_websocket_gaps_total") == 1
    assert value(text, "mm_sidecar_caught_up_posts_total") == 5
    assert value(text, "mm_sidecar_outbox_depth") == 7
    assert value(text, "mm_sidecar_config_reloads_total", result="ok") == 1
    assert value(text, "mm_sidecar_webhooks") == 1
    assert value(text, "mm_sidecar_websocket_connected") == 1
    build = [s for s in samples(text) if s.name == "mm_sidecar_build_info"]
    assert len(build) == 1
    assert build[0].value == 1
    assert build[0].labels["version"] == "1.2.3"


async def test_metrics_openmetrics_on_request(served: tuple[str, Metrics, Flag]) -> None:
    base, _, _ = served
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).endswith("# EOF\n")


def test_render_and_separate_registries() -> None:
    one, two = Metrics("1"), Metrics("2")
    one.reconnects.inc()
    assert value(one.render().decode(), "mm_sidecar_websocket_reconnects_total") == 1
    assert value(two.render().decode(), "mm_sidecar_websocket_reconnects_total") == 0


def test_retain_webhooks_drops_removed_series() -> None:
    metrics = Metrics("1")
    for name in ("old", "kept"):
        metrics.matches.labels(webhook=name).inc()
        metrics.deliveries.labels(webhook=name, outcome="failed").inc()
        metrics.delivery_seconds.labels(webhook=name).observe(1)
    metrics.retain_webhooks(["kept", "new"])
    text = metrics.render().decode()
    webhooks = {s.labels.get("webhook") for s in samples(text) if "webhook" in s.labels}
    assert webhooks == {"kept"}
    assert value(text, "mm_sidecar_deliveries_total", webhook="kept", outcome="failed") == 1
    assert value(text, "mm_sidecar_webhooks") == 2


async def test_unknown_path_and_method(served: tuple[str, Metrics, Flag]) -> None:
    base, _, _ = served
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/nope") as resp:
            assert resp.status == 404
        async with http.post(base + "/healthz") as resp:
            assert resp.status == 405


async def test_ipv6_loopback() -> None:
    server = HealthServer("[::1]:0", Metrics("1"), lambda: (True, ""))
    try:
        await server.start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://[::1]:{server.port}/healthz") as resp,
        ):
            assert resp.status == 200
    finally:
        await server.stop()


async def test_stop_before_start_is_harmless() -> None:
    await HealthServer("127.0.0.1:0", Metrics("1"), lambda: (True, "")).stop()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9181", ("127.0.0.1", 9181)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9181", ("::1", 9181)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen", ["9181", ":9181", "127.0.0.1:", "127.0.0.1:http", "::1:9181", "[]:1", "h:65536"]
)
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="listen"):
        parse_listen(listen)
