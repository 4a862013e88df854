"""Unit tests of the gateway against a scripted websocket server (no Mattermost emulator).

Each connection the gateway opens is answered by the next script: a list of frames to send,
then the server closes. The test waits on the items the gateway hands to its sink.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from sidecar.events import Posted
from sidecar.gateway import Connected, Gateway, Item, Link, Status


def frame(event: str, data: Any, seq: int | None) -> str:
    obj: dict[str, Any] = {"event": event, "data": data, "broadcast": {}}
    if seq is not None:
        obj["seq"] = seq
    return json.dumps(obj)


def hello(connection_id: str, seq: int = 0) -> str:
    return frame("hello", {"connection_id": connection_id, "server_version": "10.0.0"}, seq)


def posted(n: int, seq: int) -> str:
    post = {"id": f"p{n}", "channel_id": "c1", "user_id": "u1", "create_at": n, "message": "hi"}
    return frame("posted", {"post": json.dumps(post)}, seq)


class Scripted:
    """A websocket server playing one script per connection; records each request path."""

    def __init__(self, *scripts: list[str]) -> None:
        self.scripts = list(scripts)
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        self.auth.append(ws.request.headers.get("Authorization"))
        script = self.scripts.pop(0) if self.scripts else []
        for raw in script:
            await ws.send(raw)
        if not self.scripts and not script:
            await ws.wait_closed()  # the last connection stays open until the gateway stops


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    server = Scripted()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        server.url = f"http://127.0.0.1:{port}"
        yield server


async def follow(server: Scripted, wanted: int) -> tuple[list[Item], list[Status]]:
    """Run a gateway until it has handed ``wanted`` items to its sink."""
    items: list[Item] = []
    statuses: list[Status] = []
    stop = asyncio.Event()

    async def sink(item: Item) -> None:
        items.append(item)
        if len(items) == wanted:
            stop.set()

    gateway = Gateway(
        server.url, "tok", sink, backoff_base=0.0, backoff_cap=0.0, on_status=statuses.append
    )
    await asyncio.wait_for(gateway.run(stop), timeout=30)
    return items, statuses


async def test_a_dropped_connection_is_resumed_at_the_next_seq(scripted: Scripted) -> None:
    scripted.scripts = [[hello("c1"), posted(1, 1)], [posted(2, 2)], []]
    items, statuses = await follow(scripted, 4)
    assert [type(i) for i in items] == [Connected, Posted, Connected, Posted]
    first, again = items[0], items[2]
    assert isinstance(first, Connected) and first.gap and not first.resumed
    assert isinstance(again, Connected) and again.resumed and not again.gap
    assert scripted.paths[0] == "/api/v4/websocket"
    assert scripted.paths[1] == "/api/v4/websocket?connection_id=c1&sequence_number=2"
    assert scripted.auth[0] == "Bearer tok"
    assert [s.link for s in statuses] == [Link.CONNECTED, Link.RECONNECTING, Link.CONNECTED]
    assert str(statuses[1]) == "reconnecting in 0 s"


async def test_a_seq_leap_reconnects_afresh_and_reports_a_gap(scripted: Scripted) -> None:
    scripted.scripts = [[hello("c1"), posted(1, 1), posted(9, 9)], [hello("c2")], []]
    items, statuses = await follow(scripted, 3)
    assert [type(i) for i in items] == [Connected, Posted, Connected]
    after = items[2]
    assert isinstance(after, Connected) and after.gap and after.connection_id == "c2"
    assert scripted.paths[1] == "/api/v4/websocket"  # not a resume: the stream cannot be trusted
    assert Link.RECONNECTING in [s.link for s in statuses]
