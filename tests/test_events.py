"""events.parse_frame: raw websocket frames → typed events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.events import (
    MAX_FRAME_BYTES,
    ChannelUpdated,
    FrameError,
    Hello,
    Posted,
    PostEdited,
    ReactionAdded,
    UserUpdated,
    parse_frame,
)
from sidecar.models import Reaction

VECTORS = Path(__file__).parent / "vectors"


def golden_frame() -> dict[str, Any]:
    vector = json.loads((VECTORS / "posted-event-and-payloads.json").read_text())
    frame: dict[str, Any] = vector["frame"]
    return frame


def frame(event: str, data: Any, seq: int | None = 3) -> str:
    obj: dict[str, Any] = {"event": event, "data": data, "broadcast": {}}
    if seq is not None:
        obj["seq"] = seq
    return json.dumps(obj)


POST = {"id": "p1", "channel_id": "c1", "user_id": "u1", "create_at": 5, "message": "hi"}


def test_golden_posted_frame_decodes_the_post_string() -> None:
    result = parse_frame(json.dumps(golden_frame()))
    assert result.seq == 7
    assert result.seq_reply is None
    assert result.event_name == "posted"
    event = result.event
    assert isinstance(event, Posted)
    assert event.channel_type == "O"
    assert event.channel_name == "town-square"
    assert event.team_id == "kwoknj9nwpypzgzy78wkw516qe"
    post = event.post
    assert post.id == "axdygg1957njfe5pu38saikdho"
    assert post.message == "#build   now <please> & thanks"  # Go's \u003c escapes decoded
    assert post.create_at == 1445532266123
    assert post.file_ids == ("fileaaaaaaaaaaaaaaaaaaaaaa", "filebbbbbbbbbbbbbbbbbbbbbb")


def test_bytes_and_str_give_the_same_frame() -> None:
    raw = json.dumps(golden_frame())
    assert parse_frame(raw.encode()) == parse_frame(raw)


def test_hello() -> None:
    result = parse_frame(frame("hello", {"connection_id": "conn1", "server_version": "9.11"}, 0))
    assert result.seq == 0
    assert result.event == Hello(connection_id="conn1", server_version="9.11")


def test_hello_without_connection_id_is_an_error() -> None:
    with pytest.raises(FrameError) as info:
        parse_frame(frame("hello", {"server_version": "9.11"}, 0))
    assert info.value.seq == 0


def test_action_reply_has_no_event() -> None:
    result = parse_frame('{"status":"OK","seq_reply":1}')
    assert (result.seq, result.seq_reply, result.event_name, result.event) == (None, 1, "", None)


def test_unknown_event_is_kept_with_its_seq() -> None:
    result = parse_frame(frame("typing", {"parent_id": ""}, 12))
    assert (result.seq, result.event_name, result.event) == (12, "typing", None)


def test_unknown_event_data_is_not_inspected() -> None:
    assert parse_frame(frame("status_change", "not an object", 4)).event is None


def test_posted_without_channel_type_gives_empty_string() -> None:
    result = parse_frame(frame("posted", {"post": json.dumps(POST)}))
    assert isinstance(result.event, Posted)
    assert (result.event.channel_type, result.event.channel_name, result.event.team_id) == (
        "",
        "",
        "",
    )


def test_post_edited() -> None:
    edited = {**POST, "message": "hi again", "edit_at": 9}
    result = parse_frame(frame("post_edited", {"post": json.dumps(edited)}))
    assert isinstance(result.event, PostEdited)
    assert result.event.post.message == "hi again"
    assert result.event.post.edit_at == 9


def test_reaction_added() -> None:
    reaction = {"user_id": "u2", "post_id": "p1", "emoji_name": "+1", "create_at": 77}
    result = parse_frame(frame("reaction_added", {"reaction": json.dumps(reaction)}))
    assert result.event == ReactionAdded(Reaction("u2", "p1", "+1", 77, ""))


def test_channel_updated_from_json_string() -> None:
    channel = json.dumps({"id": "c9", "name": "x", "type": "P"})
    assert parse_frame(frame("channel_updated", {"channel": channel})).event == ChannelUpdated("c9")


def test_user_updated_from_object() -> None:
    user = {"id": "u9", "username": "bob"}
    assert parse_frame(frame("user_updated", {"user": user})).event == UserUpdated("u9")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",
        b"{not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b'{"seq": "7", "event": "hello"}',
        b'{"seq": true, "event": "hello"}',
        b'{"seq": 1.5, "event": "hello"}',
        b'{"seq_reply": "1"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=[
        "utf8",
        "json",
        "empty",
        "array",
        "string",
        "number",
        "null",
        "seq-str",
        "seq-bool",
        "seq-float",
        "seq_reply-str",
        "deep",
    ],
)
def test_unreadable_frames(raw: bytes) -> None:
    with pytest.raises(FrameError):
        parse_frame(raw)


def test_oversized_frame_bytes_and_str() -> None:
    padding = "x" * MAX_FRAME_BYTES
    raw = json.dumps({"event": "typing", "data": {"pad": padding}, "seq": 1})
    with pytest.raises(FrameError, match="limit"):
        parse_frame(raw)
    with pytest.raises(FrameError, match="limit"):
        parse_frame(raw.encode())


def test_oversized_in_utf8_bytes_though_not_in_characters() -> None:
    # 1.5 M three-byte characters: under the limit in characters, over it in bytes.
    raw = json.dumps({"event": "typing", "data": {"pad": "€" * 1_500_000}}, ensure_ascii=False)
    assert len(raw) < MAX_FRAME_BYTES < len(raw.encode())
    with pytest.raises(FrameError, match="limit"):
        parse_frame(raw)


def test_just_under_the_limit_is_accepted() -> None:
    raw = json.dumps({"event": "typing", "data": {"pad": "x" * (MAX_FRAME_BYTES - 100)}})
    assert parse_frame(raw).event_name == "typing"


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("posted", {"post": "{not json"}),
        ("posted", {"post": json.dumps({"channel_id": "c1"})}),  # no id
        ("posted", {"post": json.dumps({**POST, "create_at": "5"})}),
        ("posted", {"post": json.dumps({**POST, "file_ids": "f1"})}),
        ("posted", {"post": json.dumps([1])}),
        ("posted", {"post": 42}),
        ("posted", {}),
        ("posted", {"post": json.dumps(POST), "channel_type": 1}),
        ("posted", "not an object"),
        ("posted", None),
        ("post_edited", {"post": "null"}),
        ("reaction_added", {"reaction": json.dumps({"user_id": "u"})}),
        ("reaction_added", {"reaction": "[]"}),
        ("channel_updated", {"channel": json.dumps({"name": "x"})}),
        ("user_updated", {"user": "nope"}),
    ],
)
def test_known_event_with_bad_data_keeps_its_seq(event: str, data: Any) -> None:
    with pytest.raises(FrameError) as info:
        parse_frame(frame(event, data, seq=41))
    assert info.value.seq == 41
    assert info.value.event_name == event
    assert str(info.value).startswith(event + ":")


def test_event_name_must_be_a_string() -> None:
    with pytest.raises(FrameError) as info:
        parse_frame('{"event": 5, "seq": 8}')
    assert info.value.seq == 8


def test_post_given_as_object_is_accepted() -> None:
    result = parse_frame(frame("posted", {"post": POST, "channel_type": "D"}))
    assert isinstance(result.event, Posted)
    assert result.event.post.id == "p1"
    assert result.event.channel_type == "D"
