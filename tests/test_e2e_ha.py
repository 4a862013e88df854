"""High availability end to end: replicas sharing PostgreSQL, one active, lossless failover.

In-process replicas (the lease session terminated) here; real processes (SIGKILL) below.
Every test asserts the exact set of callback requests: every post reaches the callback, and a
post delivered twice (in flight at the switch) carries the same ``webhook-id`` both times.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import pytest

from harness import FAST, World, make_config, running, wait_until
from pg import Cluster
from sidecar.app import Sidecar
from sidecar.notify import Notifier
from sidecar.statefile import START_KEY
from sidecar.testing.recorder import CallbackRecorder, Recorded
from tcpproxy import TcpProxy
from test_e2e_process import Start, write_config
from test_e2e_process import start as start  # the fixture


def text_of(req: Recorded) -> str:
    return parse_qs(req.body.decode(), keep_blank_values=True)["text"][0]


def check_delivered(cb: CallbackRecorder, expected: set[str]) -> int:
    """Every expected text delivered; repeats only with the same webhook-id. Returns repeats."""
    ids: dict[str, set[str]] = {}
    for r in cb.requests:
        ids.setdefault(text_of(r), set()).add(r.headers["webhook-id"])
    assert set(ids) == expected
    assert all(len(v) == 1 for v in ids.values()), {t: v for t, v in ids.items() if len(v) > 1}
    return len(cb.requests) - len(expected)


def delivered(cb: CallbackRecorder) -> set[str]:
    return {text_of(r) for r in cb.requests}


def roles(apps: Sequence[Sidecar]) -> list[str]:
    return [app.readiness()[1] for app in apps]


async def test_the_standby_takes_over_when_the_active_session_dies(
    world: World, cb: CallbackRecorder, tmp_path: Path, pg_cluster: Cluster, pg_url: str
) -> None:
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    configs = [
        make_config(world, tmp_path / name, [hook], state_url=pg_url, lease_check_interval=0.2)
        for name in ("a", "b")
    ]
    async with running(configs[0]) as a:  # ready as soon as it is a standby
        await wait_until(lambda: roles([a]) == ["active"], what="a active and connected")
        async with running(configs[1]) as b:
            assert roles([a, b]) == ["active", "standby"]
            await wait_until(lambda: b.ha.lease.backend_pid is not None, what="b tries the lease")
            assert b.pipeline is None
            texts = [f"msg {i}" for i in range(40)]
            for text in texts[:20]:
                world.mm.post(world.alice["id"], world.dev["id"], text)
                await asyncio.sleep(0.01)
            pg_cluster.sql(f"SELECT pg_terminate_backend({a.ha.lease.backend_pid})")
            for text in texts[20:]:
                world.mm.post(world.alice["id"], world.dev["id"], text)
                await asyncio.sleep(0.01)
            await wait_until(lambda: delivered(cb) == set(texts), what="every post delivered")
            check_delivered(cb, set(texts))
            await wait_until(lambda: "active" in roles([a, b]), what="an active replica")
            assert sorted(roles([a, b])) == ["active", "standby"]
            takeovers = [
                app.metrics.registry.get_sample_value("mm_sidecar_takeovers_total")
                for app in (a, b)
            ]
            assert sum(t or 0 for t in takeovers) == 2  # a at start, then one takeover
            active = [app.metrics.registry.get_sample_value("mm_sidecar_active") for app in (a, b)]
            assert sorted(active) == [0.0, 1.0]


async def test_sigkill_of_the_active_replica_under_load(
    world: World, cb: CallbackRecorder, tmp_path: Path, pg_url: str, start: Start
) -> None:
    """Two processes, 100 posts/s for 3 s, the active one SIGKILLed at a random moment of the
    first half (a takeover takes about one ``lease_check_interval``, 0.5 s here, so the new
    active catches up the posts of the gap and delivers the later ones live)."""
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    daemons = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        config = write_config(
            tmp_path / name / "sidecar.toml",
            world,
            [hook],
            state_url=pg_url,
            lease_check_interval=0.5,
        )
        daemons.append(await start(config, ready=None))
    for d in daemons:
        await d.wait_line("standby: trying the lease", timeout=20)
    await wait_until(
        lambda: any(d.count("active (epoch 1)") for d in daemons), timeout=20, what="an active"
    )
    a, b = daemons if daemons[0].count("active (epoch 1)") else daemons[::-1]
    await a.wait_line("websocket connected")
    texts = [f"load {i}" for i in range(300)]
    kill_at = random.randrange(30, 150)
    killed_at = 0.0
    for i, text in enumerate(texts):
        if i == kill_at:
            a.proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            before = len(cb.requests)
        world.mm.post(world.alice["id"], world.dev["id"], text)
        await asyncio.sleep(0.01)
    await b.wait_line("active (epoch 2)", timeout=20)
    await wait_until(lambda: delivered(cb) == set(texts), timeout=30, what="every post")
    first_after = next(r.received_at for r in cb.requests[before:])
    repeats = check_delivered(cb, set(texts))
    [line] = [x for x in b.lines if "active (epoch 2)" in x]
    h, m, sec = line.split()[0].split(":")
    day = time.time() - time.time() % 86400  # log stamps are local time of day; TZ is UTC here
    took = day + int(h) * 3600 + int(m) * 60 + float(sec) - killed_at
    print(
        f"failover: kill → takeover {took:.2f} s; → next delivery {first_after - killed_at:.2f} s"
    )
    print(f"killed after post {kill_at}; {repeats} repeated deliveries (same webhook-id)")
    assert await a.wait_exit() == -signal.SIGKILL


async def test_postgresql_restarted_under_load(
    world: World, cb: CallbackRecorder, tmp_path: Path, pg_cluster: Cluster, pg_url: str
) -> None:
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    configs = [
        make_config(world, tmp_path / name, [hook], state_url=pg_url, lease_check_interval=0.2)
        for name in ("a", "b")
    ]
    async with running(configs[0]) as a, running(configs[1]) as b:
        texts = [f"msg {i}" for i in range(40)]
        for text in texts[:20]:
            world.mm.post(world.alice["id"], world.dev["id"], text)
            await asyncio.sleep(0.01)
        restart = asyncio.create_task(asyncio.to_thread(pg_cluster.restart))
        for text in texts[20:]:
            world.mm.post(world.alice["id"], world.dev["id"], text)
            await asyncio.sleep(0.01)
        await restart
        await wait_until(lambda: delivered(cb) == set(texts), timeout=30, what="every post")
        check_delivered(cb, set(texts))
        await wait_until(
            lambda: sorted(roles([a, b])) == ["active", "standby"], timeout=20, what="roles"
        )
        # The restart ended the lease session: the lease was taken again, at a new epoch.
        [(epoch,)] = pg_cluster.sql("SELECT epoch FROM mm_sidecar.leader", pg_url.rsplit("/")[-1])
        assert isinstance(epoch, int) and epoch >= 2


async def test_a_rolling_restart_of_three_replicas_loses_nothing(
    world: World, cb: CallbackRecorder, tmp_path: Path, pg_url: str
) -> None:
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    configs = [
        make_config(world, tmp_path / name, [hook], state_url=pg_url, lease_check_interval=0.2)
        for name in ("a", "b", "c")
    ]
    replicas = [running(c) for c in configs]
    apps = [await r.__aenter__() for r in replicas]
    texts: list[str] = []
    try:
        for i in range(3):
            for _ in range(10):
                texts.append(f"msg {len(texts)}")
                world.mm.post(world.alice["id"], world.dev["id"], texts[-1])
                await asyncio.sleep(0.01)
            await replicas[i].__aexit__(None, None, None)  # SIGTERM-like: drain, release
            replicas[i] = running(configs[i])
            apps[i] = await replicas[i].__aenter__()
            await wait_until(lambda: "active" in roles(apps), timeout=20, what="an active")
            # (a restarted replica is ready once it is a standby: the others go on meanwhile)
        await wait_until(lambda: delivered(cb) == set(texts), timeout=30, what="every post")
        check_delivered(cb, set(texts))
        await wait_until(
            lambda: sorted(roles(apps)) == ["active", "standby", "standby"], what="roles"
        )
    finally:
        for r in replicas:
            await r.__aexit__(None, None, None)


async def test_a_cut_off_active_stops_delivering_and_the_other_takes_over(
    world: World, cb: CallbackRecorder, tmp_path: Path, pg_cluster: Cluster, pg_url: str
) -> None:
    """The active's session is terminated and its reconnects refused (a TCP proxy)."""
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    async with TcpProxy(pg_cluster.port) as proxy:
        via_proxy = pg_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
        config_a = make_config(
            world, tmp_path / "a", [hook], state_url=via_proxy, lease_check_interval=0.2
        )
        config_b = make_config(
            world, tmp_path / "b", [hook], state_url=pg_url, lease_check_interval=0.2
        )
        async with running(config_a) as a:
            await wait_until(lambda: roles([a]) == ["active"], what="a active")
            async with running(config_b) as b:
                texts = [f"msg {i}" for i in range(40)]
                for text in texts[:20]:
                    world.mm.post(world.alice["id"], world.dev["id"], text)
                    await asyncio.sleep(0.01)
                proxy.block()
                assert a.pipeline is not None
                a_pipeline = a.pipeline
                pg_cluster.sql(f"SELECT pg_terminate_backend({a.ha.lease.backend_pid})")
                # It stops reading and delivering: its pipeline torn down (websocket closed,
                # nothing running in its outbox) and dropped.
                await wait_until(
                    lambda: not a.ha.lease.active and a.pipeline is None,
                    timeout=3,
                    what="a to stand down (lease lost, pipeline torn down)",
                )
                assert not a_pipeline.gateway.connected and a_pipeline.outbox.depth == 0
                delivered_by_a = a_pipeline.outbox.counters.delivered
                for text in texts[20:]:
                    world.mm.post(world.alice["id"], world.dev["id"], text)
                    await asyncio.sleep(0.01)
                await wait_until(lambda: roles([b]) == ["active"], timeout=10, what="b active")
                await wait_until(lambda: delivered(cb) == set(texts), timeout=20, what="all")
                check_delivered(cb, set(texts))
                assert a_pipeline.outbox.counters.delivered == delivered_by_a  # none since
                assert roles([a]) == ["standby: PostgreSQL unreachable"]
                assert proxy.refused > 0


def log_time(line: str) -> float:
    """The wall-clock time of a daemon log line (``HH:MM:SS.mmm``, local time, today)."""
    h, m, s = line.split()[0].split(":")
    midnight = time.mktime((*time.localtime()[:3], 0, 0, 0, 0, 0, -1))
    return midnight + int(h) * 3600 + int(m) * 60 + float(s)


@pytest.mark.slow
async def test_failover_times_over_ten_kills(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    pg_url: str,
    start: Start,
    request: pytest.FixtureRequest,
) -> None:
    """Not a pass/fail timing: prints kill → takeover and kill → first new delivery, p50/max.

    A measurement (about 15 s): runs only when asked for, ``pytest -m slow -s``.
    """
    if "slow" not in str(request.config.getoption("-m") or ""):
        pytest.skip("a measurement: run it with pytest -m slow -s")
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(
            write_config(tmp_path / name / "sidecar.toml", world, [hook], state_url=pg_url)
        )
    daemons = [await start(c, ready="standby: trying the lease") for c in configs]
    takeover: list[float] = []
    first_delivery: list[float] = []
    posted: list[str] = []
    for kill in range(10):
        epoch = kill + 1
        await wait_until(
            lambda e=epoch: any(d.count(f"active (epoch {e})") for d in daemons),
            timeout=20,
            what=f"epoch {epoch}",
        )
        i = 0 if daemons[0].count(f"active (epoch {epoch})") else 1
        active, standby = daemons[i], daemons[1 - i]
        await active.wait_line("websocket connected", count=1)
        posted.append(f"before {kill}")
        world.mm.post(world.alice["id"], world.dev["id"], posted[-1])
        await wait_until(lambda p=posted: delivered(cb) >= set(p), what="delivered before kill")
        active.proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        after = []
        while not standby.count(f"active (epoch {epoch + 1})"):
            after.append(f"after {kill}.{len(after)}")
            world.mm.post(world.alice["id"], world.dev["id"], after[-1])
            await asyncio.sleep(0.05)
            assert time.time() - killed_at < 30, standby.log
        posted += after
        await wait_until(lambda p=posted: delivered(cb) >= set(p), timeout=20, what="delivered")
        [line] = [x for x in standby.lines if f"active (epoch {epoch + 1})" in x]
        takeover.append(log_time(line) - killed_at)
        first = min(r.received_at for r in cb.requests if text_of(r) in set(after))
        first_delivery.append(first - killed_at)
        await active.wait_exit()
        daemons[i] = await start(configs[i], ready="standby: trying the lease")
    check_delivered(cb, set(posted))
    for name, values in (
        ("kill → takeover", takeover),
        ("kill → first new delivery", first_delivery),
    ):
        values.sort()
        print(f"{name}: p50 {values[len(values) // 2]:.2f} s, max {values[-1]:.2f} s")


async def test_posts_made_while_no_replica_runs_are_caught_up_after_a_first_start(
    world: World, cb: CallbackRecorder, tmp_path: Path, pg_cluster: Cluster, pg_url: str
) -> None:
    """The first active replica saves its starting position although a standby made the
    schema, so the next one catches up from there (and not from "now")."""
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    configs = [
        make_config(world, tmp_path / name, [hook], state_url=pg_url, lease_check_interval=0.2)
        for name in ("a", "b")
    ]
    db = pg_url.rsplit("/", 1)[1]
    start_saved = f"SELECT count(*) FROM mm_sidecar.meta WHERE key = '{START_KEY}'"
    async with running(configs[0]) as a:
        await wait_until(lambda: roles([a]) == ["active"], what="a active")
        await wait_until(
            lambda: pg_cluster.sql(start_saved, db) == [(1,)],
            what="the starting position saved",
        )
    texts = [f"while down {i}" for i in range(3)]
    for text in texts:
        world.mm.post(world.alice["id"], world.dev["id"], text)
    async with running(configs[1]):
        await wait_until(lambda: delivered(cb) == set(texts), what="the catch-up")
    check_delivered(cb, set(texts))


async def test_roles_are_visible_in_readyz_metrics_and_systemd(
    world: World, tmp_path: Path, pg_url: str
) -> None:
    hook = {"trigger_words": ["x"], "callback_urls": ["http://127.0.0.1:9/"]}
    configs = [
        make_config(
            world,
            tmp_path / name,
            [hook],
            state_url=pg_url,
            lease_check_interval=0.2,
            listen="127.0.0.1:0",
        )
        for name in ("a", "b")
    ]
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    try:
        async with running(configs[0]) as a:
            await wait_until(lambda: roles([a]) == ["active"], what="a active")
            b = Sidecar(configs[1], tuning=FAST, notifier=Notifier({"NOTIFY_SOCKET": path}))
            stop = asyncio.Event()
            async with b:
                task = asyncio.create_task(b.serve(stop))
                await wait_until(lambda: roles([b]) == ["standby"], what="b standby")
                for app, role, active in ((a, "active", 1), (b, "standby", 0)):
                    assert app.health is not None
                    base = f"http://127.0.0.1:{app.health.port}"
                    async with aiohttp.ClientSession() as http:
                        async with http.get(base + "/readyz") as resp:
                            assert (resp.status, (await resp.text()).strip()) == (200, role)
                        async with http.get(base + "/metrics") as resp:
                            text = await resp.text()
                    assert f"mm_sidecar_active {active}.0" in text
                    assert f"mm_sidecar_takeovers_total {active}.0" in text
                stop.set()
                await task
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(receiver.recv(4096).decode())
    finally:
        receiver.close()
    assert got[0].split("\n") == ["READY=1", "STATUS=standby; 1 webhooks"]
    assert got[-1] == "STOPPING=1"


def joined(app: Sidecar) -> float:
    value: float = app.metrics.channel_joins.labels("joined")._value.get()
    return value


async def test_only_the_active_replica_joins_channels_and_polls_redeliveries(
    world: World, cb: CallbackRecorder, tmp_path: Path, pg_cluster: Cluster, pg_url: str
) -> None:
    mm = world.mm
    hook = {"team": "someteam", "trigger_words": ["#build"], "callback_urls": [cb.url_for()]}
    configs = [
        make_config(
            world,
            tmp_path / name,
            [hook],
            state_url=pg_url,
            lease_check_interval=0.2,
            join_interval=1,
        )
        for name in ("a", "b")
    ]
    async with running(configs[0]) as a:
        await wait_until(lambda: roles([a]) == ["active"], what="a active and connected")
        async with running(configs[1]) as b:
            assert roles([a, b]) == ["active", "standby"]
            # A standby builds no pipeline (joiner, history keeper, outbox): it cannot join or
            # claim.
            assert b.pipeline is None
            random = mm.create_channel(world.team["id"], "random", "O", members=[world.alice["id"]])
            await wait_until(lambda: joined(a) == 1, what="the active joined the new channel")
            assert world.bot["id"] in mm.store.channels[random["id"]].members
            assert joined(b) == 0 and b.pipeline is None
            assert a.pipeline is not None
            await wait_until(
                lambda: a.pipeline is not None and a.pipeline.history.polls > 0, what="poll"
            )

            pg_cluster.sql(f"SELECT pg_terminate_backend({a.ha.lease.backend_pid})")
            # A new term begins (epoch 2) on whichever replica takes the lease first: b, or a
            # again once it stood down (both try every lease_check_interval).
            # (a replica says "standby" once the lease is lost, then tears its term down)
            await wait_until(
                lambda: (
                    any(r.ha.lease.active and r.ha.lease.epoch >= 2 for r in (a, b))
                    and sorted(roles([a, b])) == ["active", "standby"]
                    and all(r.pipeline is None for r in (a, b) if not r.ha.lease.active)
                ),
                what="a new active term, the other replica's torn down",
            )
            new, old = (a, b) if a.ha.lease.active else (b, a)
            assert old.pipeline is None
            before_new, before_old = joined(new), joined(old)
            # The new active runs them: it joins the next channel and polls the history.
            late = mm.create_channel(world.team["id"], "late", "O", members=[world.alice["id"]])
            await wait_until(lambda: joined(new) == before_new + 1, what="the late channel joined")
            assert world.bot["id"] in mm.store.channels[late["id"]].members
            assert joined(old) == before_old
            await wait_until(
                lambda: new.pipeline is not None and new.pipeline.history.polls > 0, what="polls"
            )
            mm.post(world.alice["id"], late["id"], "#build after the failover")
            [req] = await cb.wait_for(1)
            assert text_of(req) == "#build after the failover"
