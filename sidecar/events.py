"""Raw websocket frame → typed event.

Pure: no I/O. The server sends posts and reactions inside ``data`` as JSON *strings*
(Go-encoded), so they are decoded here, once, and refused the same way as REST objects
(:class:`~sidecar.models.ObjectError` becomes :class:`FrameError`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.errors import FrameError as FrameError
from sidecar.errors import ObjectError
from sidecar.models import Post, Reaction

MAX_FRAME_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Hello:
    """First event on every connection; a new ``connection_id`` means resume failed."""

    connection_id: str
    server_version: str


@dataclass(frozen=True, slots=True)
class Posted:
    """A new post. ``channel_type`` is O/P/D/G, or "" when the server left it out."""

    post: Post
    channel_type: str
    channel_name: str
    team_id: str


@dataclass(frozen=True, slots=True)
class PostEdited:
    """A post's message (or props) changed; ``post`` is the post as edited."""

    post: Post


@dataclass(frozen=True, slots=True)
class ReactionAdded:
    """Someone added an emoji reaction to a post."""

    reaction: Reaction


@dataclass(frozen=True, slots=True)
class ChannelUpdated:
    """A channel changed (name, type, …): cached channel data is stale."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class UserUpdated:
    """A user changed (username, …): cached user data is stale."""

    user_id: str


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """``channel_converted`` / ``channel_restored`` (broadcast to the team): the channel may
    now be a public channel that the bot should join."""

    channel_id: str
    event_name: str


@dataclass(frozen=True, slots=True)
class MemberAdded:
    """``user_added`` (to a channel's members) or ``added_to_team`` (``channel_id`` "")."""

    user_id: str
    team_id: str
    channel_id: str


Event = (
    Hello
    | Posted
    | PostEdited
    | ReactionAdded
    | ChannelUpdated
    | UserUpdated
    | ChannelOpened
    | MemberAdded
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One websocket message.

    ``event`` is None for events the sidecar does not use and for replies to client
    actions (those carry ``seq_reply`` and no ``seq``).
    """

    seq: int | None
    seq_reply: int | None
    event_name: str
    event: Event | None


def parse_frame(raw: str | bytes) -> Frame:
    """Decode one websocket message; raise FrameError (with ``.seq`` when known) if invalid."""
    size = len(raw) if isinstance(raw, bytes) else _utf8_len(raw)
    if size > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text)
    except UnicodeDecodeError as exc:
        raise FrameError(f"frame is not UTF-8: {exc.reason}") from None
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and the int-digits limit.
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"frame must be a JSON object, got {type(obj).__name__}")

    seq = _opt_int(obj, "seq", None)
    seq_reply = _opt_int(obj, "seq_reply", seq)
    name = obj.get("event")
    if name is None:
        return Frame(seq=seq, seq_reply=seq_reply, event_name="", event=None)
    if not isinstance(name, str):
        raise FrameError("'event' must be a string", seq=seq)
    decoder = _DECODERS.get(name)
    if decoder is None:
        return Frame(seq=seq, seq_reply=seq_reply, event_name=name, event=None)
    data = obj.get("data")
    if not isinstance(data, dict):
        raise FrameError(f"{name}: 'data' must be an object", seq=seq, event_name=name)
    if name == "user_added":
        # The channel is named only in the broadcast.
        broadcast = obj.get("broadcast")
        channel_id = broadcast.get("channel_id") if isinstance(broadcast, dict) else None
        data = {**data, "channel_id": channel_id if isinstance(channel_id, str) else ""}
    try:
        event = decoder(data)
    except (ObjectError, _DataError) as exc:
        raise FrameError(f"{name}: {exc}", seq=seq, event_name=name) from None
    return Frame(seq=seq, seq_reply=seq_reply, event_name=name, event=event)


class _DataError(ValueError):
    pass


def _utf8_len(text: str) -> int:
    # Encoding is only worth it when the frame might be over the limit.
    if len(text) * 4 <= MAX_FRAME_BYTES:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _opt_int(obj: Mapping[str, Any], key: str, seq: int | None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FrameError(f"{key!r} must be an integer, got {type(value).__name__}", seq=seq)
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _DataError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _embedded(data: Mapping[str, Any], key: str) -> Any:
    """An object the server embeds as a JSON string (or, leniently, as an object)."""
    value = data.get(key)
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise _DataError(f"{key!r} must be a JSON string, got {type(value).__name__}")
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise _DataError(f"{key!r} is not valid JSON") from None


def _id_of(data: Mapping[str, Any], key: str) -> str:
    obj = _embedded(data, key)
    if not isinstance(obj, dict):
        raise _DataError(f"{key!r} must be an object")
    ident = obj.get("id")
    if not isinstance(ident, str) or not ident:
        raise _DataError(f"{key}.id must be a non-empty string")
    return ident


def _hello(data: Mapping[str, Any]) -> Hello:
    connection_id = _str(data, "connection_id")
    if not connection_id:
        raise _DataError("'connection_id' is missing")
    return Hello(connection_id=connection_id, server_version=_str(data, "server_version"))


def _posted(data: Mapping[str, Any]) -> Posted:
    return Posted(
        post=Post.from_dict(_embedded(data, "post")),
        channel_type=_str(data, "channel_type"),
        channel_name=_str(data, "channel_name"),
        team_id=_str(data, "team_id"),
    )


def _post_edited(data: Mapping[str, Any]) -> PostEdited:
    return PostEdited(post=Post.from_dict(_embedded(data, "post")))


def _reaction_added(data: Mapping[str, Any]) -> ReactionAdded:
    return ReactionAdded(reaction=Reaction.from_dict(_embedded(data, "reaction")))


def _channel_updated(data: Mapping[str, Any]) -> ChannelUpdated:
    return ChannelUpdated(channel_id=_id_of(data, "channel"))


def _user_updated(data: Mapping[str, Any]) -> UserUpdated:
    # The server sends the (sanitised) user as an object here, not as a string.
    return UserUpdated(user_id=_id_of(data, "user"))


def _channel_converted(data: Mapping[str, Any]) -> ChannelOpened:
    return ChannelOpened(channel_id=_required(data, "channel_id"), event_name="channel_converted")


def _channel_restored(data: Mapping[str, Any]) -> ChannelOpened:
    return ChannelOpened(channel_id=_required(data, "channel_id"), event_name="channel_restored")


def _member_added(data: Mapping[str, Any]) -> MemberAdded:
    return MemberAdded(
        user_id=_required(data, "user_id"),
        team_id=_str(data, "team_id"),
        channel_id=_str(data, "channel_id"),
    )


def _required(data: Mapping[str, Any], key: str) -> str:
    value = _str(data, key)
    if not value:
        raise _DataError(f"{key!r} is missing")
    return value


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "channel_converted": _channel_converted,
    "channel_restored": _channel_restored,
    "user_added": _member_added,
    "added_to_team": _member_added,
    "hello": _hello,
    "posted": _posted,
    "post_edited": _post_edited,
    "reaction_added": _reaction_added,
    "channel_updated": _channel_updated,
    "user_updated": _user_updated,
}
