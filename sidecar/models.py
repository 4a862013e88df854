"""Mattermost's objects as the sidecar sees them: posts, reactions, users, teams, channels.

Plain frozen values, shared by every stage. Parsing from the server's JSON lives here too,
because a malformed object must be refused the same way whether it came from the websocket
or from REST.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sidecar.errors import ObjectError as ObjectError

EventName = Literal["posted", "post_edited", "reaction_added"]
EVENT_NAMES: tuple[EventName, ...] = ("posted", "post_edited", "reaction_added")

ChannelType = Literal["O", "P", "D", "G"]
CHANNEL_TYPES: dict[str, ChannelType] = {
    "public": "O",
    "private": "P",
    "direct": "D",
    "group": "G",
}


def _str(d: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = d.get(key)
    if value is None:
        if required:
            raise ObjectError(f"missing {key!r}")
        return ""
    if not isinstance(value, str):
        raise ObjectError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ObjectError(f"{key!r} must be an integer, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Post:
    """A post (message) as the server stores it."""

    id: str
    channel_id: str
    user_id: str
    create_at: int
    message: str = ""
    update_at: int = 0
    edit_at: int = 0
    delete_at: int = 0
    root_id: str = ""
    type: str = ""
    props: Mapping[str, Any] = field(default_factory=dict)
    file_ids: tuple[str, ...] = ()
    # metadata.reactions, as REST answers carry them (websocket posts usually do not)
    reactions: tuple[Reaction, ...] = ()

    @classmethod
    def from_dict(cls, d: Any) -> Post:
        """Build a post from the server's JSON object; raise ObjectError on a bad shape."""
        # type(...) is dict first: an ABC check costs ten times as much (two posts per reply).
        if type(d) is not dict and not isinstance(d, Mapping):
            raise ObjectError(f"post must be an object, got {type(d).__name__}")
        props = d.get("props") or {}
        if type(props) is not dict and not isinstance(props, Mapping):
            raise ObjectError("'props' must be an object")
        file_ids = d.get("file_ids") or []
        if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
            raise ObjectError("'file_ids' must be a list of strings")
        get: Callable[..., Any] = d.get
        ident, channel_id, user_id = get("id"), get("channel_id"), get("user_id")
        message, root_id, kind = get("message"), get("root_id"), get("type", "")
        create_at, update_at = get("create_at"), get("update_at")
        edit_at, delete_at = get("edit_at"), get("delete_at")
        # The usual shape, checked at once (every post of the websocket comes this way);
        # anything else goes through the field-by-field checks and their messages.
        if (
            type(ident) is type(channel_id) is type(user_id) is str
            and type(message) is type(root_id) is type(kind) is str
            and type(create_at) is type(update_at) is type(edit_at) is type(delete_at) is int
            and ident
            and channel_id
        ):
            return cls(
                ident,
                channel_id,
                user_id,
                create_at,
                message,
                update_at,
                edit_at,
                delete_at,
                root_id,
                kind,
                dict(props),
                tuple(file_ids),
                _reactions(get("metadata")),
            )
        return cls(
            id=_str(d, "id", required=True),
            channel_id=_str(d, "channel_id", required=True),
            user_id=_str(d, "user_id"),
            create_at=_int(d, "create_at"),
            message=_str(d, "message"),
            update_at=_int(d, "update_at"),
            edit_at=_int(d, "edit_at"),
            delete_at=_int(d, "delete_at"),
            root_id=_str(d, "root_id"),
            type=_str(d, "type"),
            props=dict(props),
            file_ids=tuple(file_ids),
            reactions=_reactions(d.get("metadata")),
        )

    @property
    def is_system(self) -> bool:
        """System messages (joins, header changes, …) never trigger webhooks."""
        return self.type.startswith("system_")

    @property
    def burn_on_read(self) -> bool:
        """Burn-on-read posts (type ``burn_on_read``) never trigger webhooks: the server skips
        them, and their text is only revealed to each reader."""
        return self.type == "burn_on_read"

    @property
    def from_webhook(self) -> bool:
        """Posts made by webhooks (ours or the server's) never trigger webhooks: loop guard."""
        return self.props.get("from_webhook") == "true"

    @property
    def from_bot(self) -> bool:
        """The server marks posts made with a bot token with ``from_bot: "true"``."""
        return self.props.get("from_bot") == "true"


@dataclass(frozen=True, slots=True)
class Reaction:
    """An emoji reaction on a post."""

    user_id: str
    post_id: str
    emoji_name: str
    create_at: int = 0
    channel_id: str = ""

    @classmethod
    def from_dict(cls, d: Any) -> Reaction:
        """Build a reaction from the server's JSON object; raise ObjectError on a bad shape."""
        if not isinstance(d, Mapping):
            raise ObjectError(f"reaction must be an object, got {type(d).__name__}")
        return cls(
            user_id=_str(d, "user_id", required=True),
            post_id=_str(d, "post_id", required=True),
            emoji_name=_str(d, "emoji_name", required=True),
            create_at=_int(d, "create_at"),
            channel_id=_str(d, "channel_id"),
        )


@dataclass(frozen=True, slots=True)
class User:
    """A user account; bots are users with ``is_bot``."""

    id: str
    username: str
    is_bot: bool = False

    @classmethod
    def from_dict(cls, d: Any) -> User:
        """Build a user from the server's JSON object; raise ObjectError on a bad shape."""
        if not isinstance(d, Mapping):
            raise ObjectError(f"user must be an object, got {type(d).__name__}")
        return cls(
            id=_str(d, "id", required=True),
            username=_str(d, "username", required=True),
            is_bot=d.get("is_bot") is True,
        )


@dataclass(frozen=True, slots=True)
class Team:
    """A team; ``name`` is its URL name (Mattermost's ``team_domain``)."""

    id: str
    name: str
    display_name: str = ""

    @classmethod
    def from_dict(cls, d: Any) -> Team:
        """Build a team from the server's JSON object; raise ObjectError on a bad shape."""
        if not isinstance(d, Mapping):
            raise ObjectError(f"team must be an object, got {type(d).__name__}")
        return cls(
            id=_str(d, "id", required=True),
            name=_str(d, "name", required=True),
            display_name=_str(d, "display_name"),
        )


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel; ``type`` is O (public), P (private), D (direct) or G (group)."""

    id: str
    team_id: str
    type: ChannelType
    name: str
    display_name: str = ""
    create_at: int = 0  # ms; a channel joined late is caught up from here (within the window)
    update_at: int = 0
    delete_at: int = 0  # archived when not 0

    @classmethod
    def from_dict(cls, d: Any) -> Channel:
        """Build a channel from the server's JSON object; raise ObjectError on a bad shape."""
        if not isinstance(d, Mapping):
            raise ObjectError(f"channel must be an object, got {type(d).__name__}")
        ctype = _str(d, "type", required=True)
        if ctype not in ("O", "P", "D", "G"):
            raise ObjectError(f"unknown channel type {ctype!r}")
        return cls(
            id=_str(d, "id", required=True),
            team_id=_str(d, "team_id"),
            type=ctype,  # type: ignore[arg-type]
            name=_str(d, "name", required=True),
            display_name=_str(d, "display_name"),
            create_at=_int(d, "create_at"),
            update_at=_int(d, "update_at"),
            delete_at=_int(d, "delete_at"),
        )


def _reactions(metadata: Any) -> tuple[Reaction, ...]:
    """The reactions in a post's metadata; malformed ones are left out (they are extras)."""
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        return ()
    if not isinstance(metadata.get("reactions"), list):
        return ()
    found = []
    for raw in metadata["reactions"]:
        try:
            found.append(Reaction.from_dict(raw))
        except ObjectError:
            continue
    return tuple(found)
