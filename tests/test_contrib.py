"""The operator files in contrib/ name only metrics that a running sidecar exports.

Both files are read as text (the alert rules' comments skipped, the dashboard as JSON), every
metric name they use is collected, and each must appear in ``/metrics`` of a running sidecar,
so that a renamed metric fails here instead of silencing an alert or blanking a panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from harness import World, make_config, running
from sidecar.testing.recorder import CallbackRecorder

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "contrib" / "prometheus" / "mm-sidecar-alerts.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "mm-sidecar-dashboard.json"
# Ours and the standard process collector's; Prometheus's own `up` is not the sidecar's.
METRIC = re.compile(r"\b((?:mm_sidecar|process|python)_[a-z0-9_]+)")
# What a family of each type is called on the wire.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "summary": ("_sum", "_count", "_created"),
}


def alert_metrics() -> set[str]:
    lines = [ln for ln in ALERTS.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return set(METRIC.findall("\n".join(lines)))


def dashboard_expressions() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def dashboard_metrics() -> set[str]:
    return {name for expr in dashboard_expressions() for name in METRIC.findall(expr)}


def exported(text: str) -> set[str]:
    """Every series name the exposition can hold, sampled yet or not."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_the_files_cover_what_the_issue_asks() -> None:
    alerts, panels = alert_metrics(), dashboard_metrics()
    for name in (
        "mm_sidecar_websocket_connected",
        "mm_sidecar_deliveries_total",
        "mm_sidecar_outbox_depth",
        "mm_sidecar_dead_letters",
    ):
        assert name in alerts, name
    for name in (
        "mm_sidecar_deliveries_total",
        "mm_sidecar_delivery_duration_seconds_bucket",
        "mm_sidecar_outbox_depth",
        "mm_sidecar_websocket_reconnects_total",
        "mm_sidecar_caught_up_posts_total",
    ):
        assert name in panels, name


async def test_every_metric_named_in_contrib_is_exported(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(
        world,
        tmp_path,
        [{"name": "build", "channels": ["dev"], "callback_urls": [cb.url_for()]}],
        listen="127.0.0.1:0",
    )
    async with running(config) as app:
        assert app.health is not None
        url = f"http://127.0.0.1:{app.health.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            text = await response.text()
    names = exported(text)
    assert "mm_sidecar_outbox_depth" in names  # the parse itself worked
    missing = sorted((alert_metrics() | dashboard_metrics()) - names)
    assert missing == [], f"named in contrib/ but not in /metrics: {missing}"
