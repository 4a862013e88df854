"""End to end: readiness, metrics, sd_notify and the demo, with a real Sidecar."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from daemon import Daemon
from prometheus_client.parser import text_string_to_metric_families

from harness import FAST, World, connected, make_config, running, wait_until
from sidecar.app import Sidecar
from sidecar.notify import Notifier
from sidecar.testing.recorder import CallbackRecorder, Reply


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_readyz_follows_the_websocket(world: World, tmp_path: Path) -> None:
    config = make_config(
        world,
        tmp_path,
        [{"trigger_words": ["x"], "callback_urls": ["http://127.0.0.1:9/"]}],
        listen="127.0.0.1:0",
    )
    app = Sidecar(config, tuning=FAST)
    stop = asyncio.Event()
    async with app:
        assert app.health is not None
        base = f"http://127.0.0.1:{app.health.port}"
        status, text = await get(base + "/readyz")
        assert status == 503 and "websocket" in text  # not serving yet
        assert (await get(base + "/healthz"))[0] == 200
        task = asyncio.create_task(app.serve(stop))
        await wait_until(lambda: app.gateway.connected)
        assert (await get(base + "/readyz"))[0] == 200
        # The server goes away: upgrades now fail, so the socket stays down.
        world.mm.fail_next(10_000, 503, path_prefix="/api/v4/websocket")
        await world.mm.drop_websockets()
        await wait_until(lambda: not app.gateway.connected)
        status, text = await get(base + "/readyz")
        assert status == 503 and "not connected" in text
        world.mm.clear_failures()  # the server is back
        await wait_until(lambda: app.gateway.connected)
        assert (await get(base + "/readyz"))[0] == 200
        stop.set()
        await task


async def test_metrics_count_a_delivery(world: World, tmp_path: Path) -> None:
    async with CallbackRecorder() as cb:
        cb.script(Reply(200, {"text": "ok"}))
        config = make_config(
            world,
            tmp_path,
            [{"name": "build", "trigger_words": ["#build"], "callback_urls": [cb.url_for()]}],
            listen="127.0.0.1:0",
        )
        async with running(config) as app:
            world.mm.post(world.alice["id"], world.town["id"], "#build now")
            await world.mm.wait_for_posts(world.town["id"], 2)
            await wait_until(lambda: app.pipeline is not None and app.pipeline.outbox.depth == 0)
            assert app.health is not None
            status, text = await get(f"http://127.0.0.1:{app.health.port}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[("mm_sidecar_deliveries_total", (("outcome", "delivered"), ("webhook", "build")))]
        == 1
    )
    assert samples[("mm_sidecar_matches_total", (("webhook", "build"),))] == 1
    assert samples[("mm_sidecar_replies_total", (("outcome", "posted"),))] == 1
    assert samples[("mm_sidecar_events_received_total", (("event", "posted"),))] >= 1
    assert any(name == "mm_sidecar_build_info" for name, _ in samples)


async def test_sd_notify_sequence(world: World, tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    config = make_config(
        world, tmp_path, [{"trigger_words": ["x"], "callback_urls": ["http://127.0.0.1:9/"]}]
    )
    app = Sidecar(config, tuning=FAST, notifier=Notifier({"NOTIFY_SOCKET": path}))
    stop = asyncio.Event()
    try:
        async with app:
            task = asyncio.create_task(app.serve(stop))
            await wait_until(lambda: connected(app), what="READY sent")  # (gauge, then READY)
            app.reload(config)
            stop.set()
            await task
        got = []
        while True:
            try:
                got.append(receiver.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        receiver.close()
    kinds = [g.split("\n")[0].split("=")[0] for g in got]
    assert kinds[0] == "STATUS" or kinds[0] == "READY"
    ready = kinds.index("READY")
    assert "connected" in got[ready]
    assert kinds.index("RELOADING") > ready
    assert kinds[kinds.index("RELOADING") + 1] == "READY"
    assert kinds[-1] == "STOPPING"


def test_demo_runs_to_completion() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for step in (
        "→ @alice posts in ~town-square: '#build api'",
        "matched webhook=build",
        "delivered webhook=build",
        "status=200",
        "← reply posted as @ci-bot",
        "in the thread",
        "~ops (private)",
        "a DM with @sidecar-bot",
        "no webhook matched",
        "matched webhook=tickets",
        "trigger='MM-4211'",
    ):
        assert step in out, step


async def test_demo_keep_running_serves_until_sigint() -> None:
    daemon = await Daemon.start("demo", "--keep-running")
    try:
        await daemon.wait_line("post as alice: curl", timeout=30)
        curl = next(line for line in daemon.lines if "post as alice: curl" in line)
        url = curl.split("curl -X POST ")[1].split(" ")[0]
        body = curl.split("-d '")[1].rstrip().rstrip("'")
        async with aiohttp.ClientSession() as s, s.post(url, data=body) as r:
            assert r.status == 201
        await daemon.wait_line("replied webhook=build", timeout=10)
        assert await daemon.stop(signal.SIGINT) == 0
    finally:
        await daemon.kill()


async def test_startup_warns_about_channels_the_bot_cannot_use(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    config = make_config(
        world,
        tmp_path,
        [
            {"channels": ["nowhere"], "callback_urls": ["http://127.0.0.1:9/"]},
            {
                "channels": ["secret"],
                "channel_types": ["public"],
                "trigger_words": ["x"],
                "callback_urls": ["http://127.0.0.1:9/"],
            },
            {"channels": ["town-square"], "callback_urls": ["http://127.0.0.1:9/"]},
        ],
    )
    async with running(config):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("hook0" in m and "not a member of channel 'nowhere'" in m for m in warnings)
    assert any("hook1" in m and "'secret' is of type P" in m for m in warnings)
    assert not any("hook2" in m for m in warnings)
