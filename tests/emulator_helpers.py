"""Helpers shared by the emulator's tests: REST calls and websocket clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection

from harness import World

ERROR_KEYS = ["id", "message", "detailed_error", "request_id", "status_code"]


async def call(
    world: World,
    method: str,
    path: str,
    *,
    user: str | None = "sidecar-bot",
    body: Any = None,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One REST call (``path`` under the emulator); returns (status, JSON or text, response)."""
    hdrs = dict(world.auth(user)) if user else {}
    hdrs.update(headers or {})
    async with (
        aiohttp.ClientSession(cookies=cookies) as session,
        session.request(method, world.mm.url + path, json=body, headers=hdrs) as resp,
    ):
        text = await resp.text()
        data = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, data, resp


async def connect(world: World, user: str = "sidecar-bot", **query: Any) -> ClientConnection:
    """A websockets client authenticated with the header (no client pings)."""
    url = world.ws_url
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return await websockets.connect(url, additional_headers=world.auth(user), ping_interval=None)


async def anonymous(world: World, **query: Any) -> ClientConnection:
    """A websockets client with no token."""
    url = world.ws_url
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return await websockets.connect(url, ping_interval=None)


async def raw(ws: ClientConnection) -> str:
    """The next frame as the server wrote it."""
    frame = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(frame, str)
    return frame


async def recv(ws: ClientConnection) -> dict[str, Any]:
    """The next frame, decoded."""
    decoded = json.loads(await raw(ws))
    assert isinstance(decoded, dict)
    return decoded


async def hello(
    world: World, user: str = "sidecar-bot", **query: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """A connected socket and its hello frame."""
    ws = await connect(world, user, **query)
    first = await recv(ws)
    assert first["event"] == "hello", first
    return ws, first


def message(frame: dict[str, Any]) -> str:
    """The message of a ``posted`` frame."""
    assert frame["event"] == "posted", frame
    text = json.loads(frame["data"]["post"])["message"]
    assert isinstance(text, str)
    return text


async def dropped(world: World, ws: ClientConnection) -> None:
    """Cut every socket from the server side and wait until the client saw it."""
    await world.mm.drop_websockets()
    await ws.close()
