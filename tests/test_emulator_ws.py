"""The emulator's websocket against the server's frames and the `posted` vector."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from harness import World, seed
from sidecar.testing.emulator import Emulator
from sidecar.testing.model import new_id

VECTOR = json.loads(
    (Path(__file__).parent / "vectors" / "posted-event-and-payloads.json").read_text()
)


async def connect(world: World, user: str = "sidecar-bot", **query: Any) -> ClientConnection:
    """A websockets client authenticated with the header (no client pings)."""
    url = world.ws_url
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return await websockets.connect(url, additional_headers=world.auth(user), ping_interval=None)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    """The next frame, decoded."""
    frame = await asyncio.wait_for(ws.recv(), 5)
    return json.loads(frame)


async def hello(
    world: World, user: str = "sidecar-bot", **query: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(world, user, **query)
    first = await recv(ws)
    assert first["event"] == "hello"
    return ws, first


async def test_hello_first_with_connection_id(emulator: World) -> None:
    w = emulator
    ws, first = await hello(w)
    async with ws:
        assert first["seq"] == 0
        assert sorted(first["data"]) == ["connection_id", "server_hostname", "server_version"]
        assert len(first["data"]["connection_id"]) == 26
        assert first["data"]["server_version"].startswith("10.5.0.")
        assert first["broadcast"]["user_id"] == w.bot["id"]
        assert w.mm.connections == 1


async def test_posted_frame_has_the_vectors_shape(emulator: World) -> None:
    w = emulator
    ws, _ = await hello(w)
    async with ws:
        files = ["fileaaaaaaaaaaaaaaaaaaaaaa", "filebbbbbbbbbbbbbbbbbbbbbb"]
        w.mm.post(w.alice["id"], w.town["id"], "#build   now <please> & thanks", file_ids=files)
        raw = await asyncio.wait_for(ws.recv(), 5)
    want = VECTOR["frame"]
    frame = json.loads(raw)
    assert list(frame) == list(want)  # event, data, broadcast, seq
    # The server: a post with files adds otherFile (the vector predates it).
    assert frame["data"].pop("otherFile") == "true"
    assert list(frame["data"]) == list(want["data"])
    assert list(frame["broadcast"]) == list(want["broadcast"])
    for key, value in want["data"].items():
        assert type(frame["data"][key]) is type(value), key
    assert frame["broadcast"] == {**want["broadcast"], "channel_id": w.town["id"]}
    assert frame["seq"] == 1
    post, want_post = json.loads(frame["data"]["post"]), json.loads(want["data"]["post"])
    assert post.pop("remote_id") == ""  # the server: always there (the vector predates it)
    assert list(post) == list(want_post)
    assert {k: type(v) for k, v in post.items()} == {k: type(v) for k, v in want_post.items()}
    assert post["message"] == json.loads(want["data"]["post"])["message"]
    assert post["hashtags"] == "#build" and post["file_ids"] == files
    assert "\\\\u003cplease\\\\u003e \\\\u0026" in raw  # Go-escaped inside the post string
    assert frame["data"]["channel_name"] == "town-square"
    assert frame["data"]["channel_display_name"] == "Town Square"
    assert frame["data"]["sender_name"] == "@alice"
    assert frame["data"]["team_id"] == w.team["id"]


async def test_bot_sees_its_own_post_and_non_members_see_nothing(emulator: World) -> None:
    w = emulator
    bot_ws, _ = await hello(w)
    carol_ws, _ = await hello(w, "carol")
    async with bot_ws, carol_ws:
        w.mm.post(w.bot["id"], w.private["id"], "private, bot's own")
        w.mm.post(w.alice["id"], w.town["id"], "town")  # carol is not in town-square either
        carols_room = w.mm.create_channel(w.team["id"], "carols", members=[w.carol["id"]])
        w.mm.post(w.carol["id"], carols_room["id"], "carol's")
        mine = json.loads((await recv(bot_ws))["data"]["post"])
        assert mine["user_id"] == w.bot["id"] and mine["message"] == "private, bot's own"
        assert json.loads((await recv(bot_ws))["data"]["post"])["message"] == "town"
        first_for_carol = await recv(carol_ws)
        assert json.loads(first_for_carol["data"]["post"])["message"] == "carol's"
        assert first_for_carol["seq"] == 1


async def test_direct_message_frame(emulator: World) -> None:
    w = emulator
    ws, _ = await hello(w)
    async with ws:
        w.mm.post(w.alice["id"], w.dm["id"], "psst")
        frame = await recv(ws)
    data = frame["data"]
    assert (data["channel_type"], data["team_id"]) == ("D", "")
    assert data["channel_display_name"] == "@alice"
    assert json.loads(data["mentions"]) == [w.bot["id"]]
    assert data["channel_name"] == "__".join(sorted([w.alice["id"], w.bot["id"]]))


async def test_sender_name_override_needs_the_setting(emulator: World) -> None:
    w = emulator
    ws, _ = await hello(w)
    props = {"from_webhook": "true", "override_username": "ci"}
    async with ws:
        w.mm.post(w.bot["id"], w.town["id"], "a", props=props)
        w.mm.settings["EnablePostUsernameOverride"] = True
        w.mm.post(w.bot["id"], w.town["id"], "b", props=props)
        assert (await recv(ws))["data"]["sender_name"] == "@sidecar-bot"
        assert (await recv(ws))["data"]["sender_name"] == "ci"


async def test_edit_reaction_delete_and_channel_update_frames(emulator: World) -> None:
    w = emulator
    ws, _ = await hello(w)
    async with ws:
        post = w.mm.post(w.alice["id"], w.town["id"], "v1")
        w.mm.edit(post["id"], "v2")
        w.mm.react(w.alice["id"], post["id"], "white_check_mark")
        w.mm.delete(post["id"])
        w.mm.rename_channel(w.town["id"], "plaza")
        frames = [await recv(ws) for _ in range(5)]
    assert [f["event"] for f in frames] == [
        "posted",
        "post_edited",
        "reaction_added",
        "post_deleted",
        "channel_updated",
    ]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    edited = json.loads(frames[1]["data"]["post"])
    assert edited["message"] == "v2" and edited["edit_at"] > 0
    reaction = json.loads(frames[2]["data"]["reaction"])
    assert {k: reaction[k] for k in ("user_id", "post_id", "emoji_name", "channel_id")} == {
        "user_id": w.alice["id"],
        "post_id": post["id"],
        "emoji_name": "white_check_mark",
        "channel_id": w.town["id"],
    }
    assert reaction["create_at"] > 0
    assert json.loads(frames[3]["data"]["post"])["delete_at"] > 0
    assert json.loads(frames[4]["data"]["channel"])["name"] == "plaza"


async def test_sequence_numbers_are_per_connection(emulator: World) -> None:
    w = emulator
    first, _ = await hello(w)
    w.mm.post(w.alice["id"], w.town["id"], "before the second socket")
    second, _ = await hello(w)
    async with first, second:
        assert (await recv(first))["seq"] == 1
        w.mm.post(w.alice["id"], w.town["id"], "both")
        assert (await recv(first))["seq"] == 2
        assert (await recv(second))["seq"] == 1


async def test_resume_replays_exactly_the_missed_events(emulator: World) -> None:
    w = emulator
    ws, first = await hello(w)
    conn_id = first["data"]["connection_id"]
    w.mm.post(w.alice["id"], w.town["id"], "seen")
    assert (await recv(ws))["seq"] == 1
    await w.mm.drop_websockets()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert w.mm.connections == 0
    w.mm.post(w.alice["id"], w.town["id"], "missed 1")
    w.mm.post(w.alice["id"], w.town["id"], "missed 2")
    async with await connect(w, connection_id=conn_id, sequence_number=2) as again:
        replayed = [await recv(again) for _ in range(2)]
        assert [f["seq"] for f in replayed] == [2, 3]
        assert [json.loads(f["data"]["post"])["message"] for f in replayed] == [
            "missed 1",
            "missed 2",
        ]
        w.mm.post(w.alice["id"], w.town["id"], "live")
        nxt = await recv(again)
        assert (nxt["event"], nxt["seq"]) == ("posted", 4)  # no hello in between


async def test_resume_with_nothing_missed_sends_nothing_old(emulator: World) -> None:
    w = emulator
    old, first = await hello(w)
    conn_id = first["data"]["connection_id"]
    await w.mm.drop_websockets()
    await old.close()
    async with await connect(w, connection_id=conn_id, sequence_number=1) as again:
        w.mm.post(w.alice["id"], w.town["id"], "after")
        frame = await recv(again)
        assert (frame["event"], frame["seq"]) == ("posted", 1)


@pytest.mark.parametrize("how", ["unknown id", "restart"])
async def test_resume_that_cannot_replay_gets_a_new_hello(how: str) -> None:
    async with Emulator(buffer_size=4) as mm:
        w = seed(mm)
        old, first = await hello(w)
        conn_id = first["data"]["connection_id"]
        if how == "restart":
            await mm.restart()
        else:
            await mm.drop_websockets()
        await old.close()
        asked = new_id() if how == "unknown id" else conn_id
        again, second = await hello(w, connection_id=asked, sequence_number=1)
        async with again:
            assert second["seq"] == 0
            assert second["data"]["connection_id"] not in (conn_id, asked)
            mm.post(w.alice["id"], w.town["id"], "next")
            assert (await recv(again))["seq"] == 1


async def test_authentication_challenge(emulator: World) -> None:
    w = emulator
    async with websockets.connect(w.ws_url, ping_interval=None) as ws:
        await ws.send(
            json.dumps(
                {"seq": 1, "action": "authentication_challenge", "data": {"token": w.bot_token}}
            )
        )
        first = await recv(ws)
        assert first["event"] == "hello" and first["broadcast"]["user_id"] == w.bot["id"]
        assert await recv(ws) == {"status": "OK", "seq_reply": 1}
        w.mm.post(w.alice["id"], w.town["id"], "hi")
        assert (await recv(ws))["seq"] == 1


async def test_resume_needs_header_auth(emulator: World) -> None:
    w = emulator
    old, first = await hello(w)
    conn_id = first["data"]["connection_id"]
    await w.mm.drop_websockets()
    await old.close()
    url = f"{w.ws_url}?connection_id={conn_id}&sequence_number=1"
    async with websockets.connect(url, ping_interval=None) as again:
        await again.send(
            json.dumps(
                {"seq": 1, "action": "authentication_challenge", "data": {"token": w.bot_token}}
            )
        )
        second = await recv(again)
        assert second["event"] == "hello" and second["data"]["connection_id"] != conn_id


@pytest.mark.parametrize("token", [None, "wrongtokenwrongtokenwrongt"])
async def test_unauthenticated_socket_is_closed_after_auth_timeout(
    emulator: World, token: str | None
) -> None:
    w = emulator
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with websockets.connect(w.ws_url, additional_headers=headers, ping_interval=None) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert w.mm.connections == 0


async def test_bad_challenge_token_closes_the_socket(emulator: World) -> None:
    w = emulator
    async with websockets.connect(w.ws_url, ping_interval=None) as ws:
        await ws.send(
            json.dumps({"seq": 1, "action": "authentication_challenge", "data": {"token": "nope"}})
        )
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)


async def test_server_pings_and_drops_a_client_that_never_pongs(emulator: World) -> None:
    w = emulator
    pings = 0
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(w.ws_url, headers=w.auth(), autoping=False) as ws,
    ):
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type == aiohttp.WSMsgType.PING:
                pings += 1
            elif msg.type != aiohttp.WSMsgType.TEXT:
                break
    assert pings >= 1
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)


async def test_answer_pings_false_kills_a_pinging_client(emulator: World) -> None:
    w = emulator
    ws, _ = await hello(w)
    async with ws:
        await asyncio.wait_for(await ws.ping(), 5)  # answered
    w.mm.answer_pings = False
    async with websockets.connect(
        w.ws_url, additional_headers=w.auth(), ping_interval=0.1, ping_timeout=0.2
    ) as ws:
        assert (await recv(ws))["event"] == "hello"
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)


async def test_client_actions_get_seq_reply(emulator: World) -> None:
    w = emulator
    ws, _ = await hello(w)
    async with ws:
        await ws.send(
            json.dumps({"seq": 5, "action": "user_typing", "data": {"channel_id": w.town["id"]}})
        )
        assert await recv(ws) == {"status": "OK", "seq_reply": 5}
        await ws.send(json.dumps({"seq": 6, "action": "no_such_action"}))
        reply = await recv(ws)
        assert reply["status"] == "FAIL" and reply["seq_reply"] == 6 and "seq" not in reply


async def test_stop_closes_sockets_with_going_away() -> None:
    mm = Emulator()
    await mm.start()
    w = seed(mm)
    ws, _ = await hello(w)
    await mm.stop()
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
