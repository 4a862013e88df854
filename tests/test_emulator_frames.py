"""Frames byte-shaped as the server writes them, and
the ``posted`` event's per-recipient fields."""

from __future__ import annotations

import json
from typing import Any

from harness import World
from tests.emulator_helpers import connect, hello, raw, recv


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def test_hello_and_posted_are_encoder_lines_plain_broadcasts_are_spaced(
    emulator: World,
) -> None:
    """Item 5."""
    w = emulator
    async with await connect(w) as ws:
        hello_raw = await raw(ws)
        first = json.loads(hello_raw)
        assert first["data"]["server_hostname"] == w.mm.server_hostname != ""
        assert hello_raw == compact(first) + "\n"
        post = w.mm.post(w.alice["id"], w.town["id"], "plain text")
        posted_raw = await raw(ws)
        assert posted_raw.endswith("}\n") and posted_raw == compact(json.loads(posted_raw)) + "\n"
        w.mm.edit(post["id"], "edited")
        edited_raw = await raw(ws)
        edited = json.loads(edited_raw)
        assert edited_raw == (
            f'{{"event": "post_edited", "data": {compact(edited["data"])}, '
            f'"broadcast": {compact(edited["broadcast"])}, "seq": 2}}'
        )
        await ws.send(json.dumps({"seq": 1, "action": "user_typing", "data": {}}))
        assert await raw(ws) == '{"status":"OK","seq_reply":1}\n'


async def test_mentions_only_to_the_mentioned_recipient(emulator: World) -> None:
    """Item 6: ``mentions`` holds just that recipient, in that recipient's frame only."""
    w = emulator
    bot_ws, _ = await hello(w)
    bob_ws, _ = await hello(w, "bob")
    async with bot_ws, bob_ws:
        w.mm.post(w.alice["id"], w.town["id"], "@bob look")
        w.mm.post(w.alice["id"], w.town["id"], "@bob and @sidecar-bot look")
        assert "mentions" not in (await recv(bot_ws))["data"]
        assert json.loads((await recv(bob_ws))["data"]["mentions"]) == [w.bob["id"]]
        assert json.loads((await recv(bot_ws))["data"]["mentions"]) == [w.bot["id"]]
        assert json.loads((await recv(bob_ws))["data"]["mentions"]) == [w.bob["id"]]


async def test_files_followers_and_should_ack(emulator: World) -> None:
    """Item 6: ``otherFile``/``image`` with files; ``followers``; ``should_ack``."""
    w = emulator
    image, text = w.mm.create_file("chart.png"), w.mm.create_file("notes.txt")
    bot_ws, _ = await hello(w, posted_ack="true")
    bob_ws, _ = await hello(w, "bob")
    async with bot_ws, bob_ws:
        w.mm.post(w.alice["id"], w.town["id"], "an image", file_ids=[image, text])
        w.mm.post(w.alice["id"], w.town["id"], "a text", file_ids=[text])
        w.mm.post(w.alice["id"], w.town["id"], "no file")
        with_image, with_text, plain = [(await recv(bot_ws))["data"] for _ in range(3)]
        assert (with_image["otherFile"], with_image["image"]) == ("true", "true")
        assert with_text["otherFile"] == "true" and "image" not in with_text
        assert "otherFile" not in plain and "image" not in plain
        assert "should_ack" not in plain  # no mention, no follow, not a DM
        for _ in range(3):
            await recv(bob_ws)
        root = w.mm.post(w.alice["id"], w.town["id"], "root")
        w.mm.post(w.bob["id"], w.town["id"], "bob replies", root_id=root["id"])
        w.mm.post(w.alice["id"], w.town["id"], "alice replies", root_id=root["id"])
        bob_frames = [(await recv(bob_ws))["data"] for _ in range(3)]
        assert "followers" not in bob_frames[0]  # a root post has no followers
        assert json.loads(bob_frames[2]["followers"]) == [w.bob["id"]]
        bot_frames = [(await recv(bot_ws))["data"] for _ in range(3)]
        assert all("followers" not in f and "should_ack" not in f for f in bot_frames)
        w.mm.post(w.alice["id"], w.dm["id"], "psst")
        assert (await recv(bot_ws))["data"]["should_ack"] is True  # a DM, to a posted_ack socket
        w.mm.post(w.bot["id"], w.dm["id"], "my own")
        assert "should_ack" not in (await recv(bot_ws))["data"]


async def test_post_json_always_has_file_ids_and_remote_id(emulator: World) -> None:
    """Item 6: ``file_ids`` (``[]`` when none) and ``remote_id`` in every post JSON."""
    w = emulator
    async with await connect(w) as ws:
        await recv(ws)
        created = w.mm.post(w.alice["id"], w.town["id"], "no files")
        post = json.loads((await recv(ws))["data"]["post"])
    assert (post["file_ids"], post["remote_id"]) == ([], "")
    assert (created["file_ids"], created["remote_id"]) == ([], "")
