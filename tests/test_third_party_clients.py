"""Clients no one here wrote, against the emulator: the Python ``mattermostdriver``
and ``mattermostautodriver``, and the official JavaScript ``@mattermost/client`` (installed
from the npm registry into a temporary directory when Node is present)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mattermostautodriver import AsyncTypedDriver
from mattermostdriver import Driver
from mattermostdriver.websocket import Websocket as DriverWebsocket

from harness import World
from sidecar import compat

SCRIPT = Path(__file__).parent / "clients" / "mattermost_client.js"
NPM_PACKAGES = ["@mattermost/client@11.9.0", "@mattermost/types@11.9.0", "ws@8.18.3"]


def port_of(w: World) -> int:
    return int(w.mm.url.rsplit(":", 1)[1])


async def first_posted(events: asyncio.Queue[dict[str, Any]], post_id: str) -> dict[str, Any]:
    """The ``posted`` event of that post (other frames skipped)."""
    async with compat.timeout(10):
        while True:
            event = await events.get()
            if (
                event.get("event") == "posted"
                and json.loads(event["data"]["post"])["id"] == post_id
            ):
                return event


def collector() -> tuple[asyncio.Queue[dict[str, Any]], Callable[[str], Awaitable[None]]]:
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handler(message: str) -> None:
        await events.put(json.loads(message))

    return events, handler


async def test_mattermostdriver_rest_and_websocket(emulator: World) -> None:
    w = emulator
    options = {
        "url": "127.0.0.1",
        "port": port_of(w),
        "scheme": "http",
        "token": w.bot_token,
        "basepath": "/api/v4",
    }
    driver = Driver(options)
    me = await asyncio.to_thread(driver.login)
    assert me["id"] == w.bot["id"]
    teams = await asyncio.to_thread(driver.teams.get_user_teams, "me")
    assert [t["name"] for t in teams] == ["someteam"]
    channel = await asyncio.to_thread(
        driver.channels.get_channel_by_name, w.team["id"], "town-square"
    )
    events, handler = collector()
    socket = DriverWebsocket(driver.options, w.bot_token)
    task = asyncio.create_task(socket.connect(handler))
    try:
        async with compat.timeout(10):
            while (await events.get()).get("event") != "hello":
                pass
        post = await asyncio.to_thread(
            driver.posts.create_post, {"channel_id": channel["id"], "message": "from the driver"}
        )
        event = await first_posted(events, post["id"])
        assert event["data"]["channel_name"] == "town-square"
        listing = await asyncio.to_thread(driver.posts.get_posts_for_channel, channel["id"])
        assert listing["order"] == [post["id"]]
    finally:
        socket.disconnect()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# The library passes ssl=None to aiohttp for ws://, which aiohttp deprecates: not ours to fix.
@pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
async def test_mattermostautodriver_rest_and_websocket(emulator: World) -> None:
    w = emulator
    w.mm.store.set_password(w.alice["id"], "Alice-pass-1")
    options = {
        "url": "127.0.0.1",
        "port": port_of(w),
        "scheme": "http",
        "login_id": "alice",
        "password": "Alice-pass-1",
        "max_retries": 0,
    }
    async with AsyncTypedDriver(options) as driver:
        me = await driver.login()
        assert me["id"] == w.alice["id"]
        teams = await driver.teams.get_teams_for_user("me")
        assert [t["name"] for t in teams] == ["someteam"]
        members = await driver.teams.get_team_members_for_user("me")
        assert [m["team_id"] for m in members] == [w.team["id"]]
        channel = await driver.channels.get_channel_by_name_for_team_name("someteam", "town-square")
        events, handler = collector()
        task = asyncio.create_task(driver.init_websocket(handler))
        try:
            async with compat.timeout(10):
                while (await events.get()).get("event") != "hello":
                    pass
            post = await driver.posts.create_post(channel["id"], "from the autodriver")
            event = await first_posted(events, post["id"])
            assert json.loads(event["data"]["post"])["user_id"] == w.alice["id"]
            thread = await driver.posts.get_post_thread(post["id"])
            assert thread["order"] == [post["id"]]
            before = await driver.posts.get_posts_for_channel(channel["id"], before=post["id"])
            assert before["order"] == [] and before["next_post_id"] == post["id"]
        finally:
            driver.disconnect()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="session")
def mattermost_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with @mattermost/client installed, once per test session."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed: @mattermost/client cannot run")
    where = tmp_path_factory.mktemp("mattermost-js")
    (where / "package.json").write_text('{"private": true}\n', encoding="utf-8")
    ping = subprocess.run(
        [npm, "ping"], cwd=where, capture_output=True, text=True, timeout=60, check=False
    )
    if ping.returncode != 0:
        pytest.skip(f"the npm registry is not reachable: {ping.stderr.strip()[-300:]}")
    install = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--no-save", *NPM_PACKAGES],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    shutil.copy(SCRIPT, where / SCRIPT.name)
    return where


@pytest.mark.timeout(300)  # the first use installs the client from the npm registry
async def test_official_javascript_client(emulator: World, mattermost_js: Path) -> None:
    w = emulator
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node,
        SCRIPT.name,
        w.mm.url,
        w.bot_token,
        "alice",
        cwd=mattermost_js,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["ok"], result
    assert result["me"] == w.bot["id"] and result["teams"] == ["someteam"]
    assert result["channel"] == w.town["id"]
    assert (result["hello_seq"], result["posted_seq"]) == (0, 1)
    assert result["since_order"] == [result["created"]]
    assert result["before_order"] == [result["created"]]
    # Resumed after the drop: the post made while away came on, numbered on, no new hello.
    assert (result["hellos"], result["missed"], result["reconnected"]) == (1, 0, 1)
    assert result["away_seq"] == 3
