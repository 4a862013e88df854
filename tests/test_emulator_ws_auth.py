"""Websocket authentication and the router's answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness import World
from tests.emulator_helpers import anonymous, hello, recv


def challenge(token: str, seq: Any) -> str:
    body: dict[str, Any] = {"action": "authentication_challenge", "data": {"token": token}}
    if seq is not None:
        body["seq"] = seq
    return json.dumps(body)


async def test_session_token_in_query_string_is_401(emulator: World) -> None:
    w = emulator
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(f"{w.ws_url}?access_token={w.bot_token}", ping_interval=None)
    assert refused.value.response.status_code == 401
    url = f"{w.mm.url}/api/v4/users/me?access_token={w.bot_token}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 401
        assert (await resp.json())["id"] == "api.context.token_provided.app_error"
    # A token that is no session is not refused at upgrade: the socket is unauthenticated.
    async with await anonymous(w, access_token="nosuchtokennosuchtokennosu") as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)  # closed after auth_timeout


@pytest.mark.parametrize("seq", [None, 0])
async def test_challenge_without_seq_does_not_authenticate(emulator: World, seq: Any) -> None:
    w = emulator
    async with await anonymous(w) as ws:
        await ws.send(challenge(w.bot_token, seq))
        await ws.send(challenge(w.bot_token, 2))
        first = await recv(ws)
        assert first["event"] == "hello"  # nothing answered the first challenge
        assert await recv(ws) == {"status": "OK", "seq_reply": 2}


async def test_unauthenticated_frames_get_no_reply(emulator: World) -> None:
    w = emulator
    async with await anonymous(w) as ws:
        await ws.send(json.dumps({"seq": 1, "action": "user_typing", "data": {}}))
        await ws.send(json.dumps({"seq": 2, "action": "no_such_action"}))
        await ws.send(challenge(w.bot_token, 3))
        assert (await recv(ws))["event"] == "hello"
        assert await recv(ws) == {"status": "OK", "seq_reply": 3}


async def test_router_answers(emulator: World) -> None:
    w = emulator
    ws, _ = await hello(w)
    async with ws:

        async def ask(body: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps(body))
            return await recv(ws)

        unknown = await ask({"seq": 1, "action": "no_such_action"})
        assert unknown == {
            "status": "FAIL",
            "seq_reply": 1,
            "error": {
                "id": "api.web_socket_router.bad_action.app_error",
                "message": "Unknown WebSocket action.",
                "detailed_error": "",
                "status_code": 500,
            },
        }
        no_seq = await ask({"action": "user_typing", "data": {}})
        assert no_seq["status"] == "FAIL" and "seq_reply" not in no_seq
        assert no_seq["error"]["id"] == "api.web_socket_router.bad_seq.app_error"
        for n, action in enumerate(("user_update_active_status", "posted_notify_ack"), 2):
            assert await ask({"seq": n, "action": action, "data": {}}) == {
                "status": "OK",
                "seq_reply": n,
            }
        statuses = await ask({"seq": 4, "action": "get_statuses"})
        assert statuses["status"] == "OK" and statuses["seq_reply"] == 4
        assert statuses["data"][w.bot["id"]] == "online"
        assert statuses["data"][w.alice["id"]] == "offline"
        by_ids = await ask(
            {"seq": 5, "action": "get_statuses_by_ids", "data": {"user_ids": [w.alice["id"]]}}
        )
        assert by_ids["data"] == {w.alice["id"]: "offline"}
