"""The emulator's data: ids, Go-style JSON, the server's error, and the stored objects.

Each object renders itself as the real server's JSON (key order as Go writes it).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ID_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_B32_TO_ZBASE = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ID_ALPHABET)
_GO_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_ID_RE = re.compile(r"^[a-z0-9]{26}$")
_HASHTAG_RE = re.compile(r"^#[^\W\d_][\w.\-]*[^\W_]$|^#[^\W\d_]$")


def new_id() -> str:
    """A Mattermost id: 26 characters of z-base-32 from 128 random bits (Go's model.NewId)."""
    return base64.b32encode(uuid.uuid4().bytes).decode().rstrip("=").translate(_B32_TO_ZBASE)


def is_valid_id(value: str) -> bool:
    """Whether ``value`` has the shape of a Mattermost id (the server's model.IsValidId)."""
    return bool(_ID_RE.match(value))


def now_ms() -> int:
    """The current time in milliseconds, as Mattermost stores it."""
    return int(time.time() * 1000)


def go_json(value: Any) -> str:
    """JSON as Go's encoder writes it: compact, UTF-8, with ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.translate(_GO_ESCAPES)


def parse_hashtags(message: str) -> str:
    """The post's ``hashtags`` field, close to Go's model.ParseHashtags."""
    tags = []
    for word in message.split():
        word = re.sub(r"^[^\w\s#]+", "", word)
        word = re.sub(r"[^\w\s]+$", "", word)
        word = re.sub(r"^#{2,}", "#", word)
        if _HASHTAG_RE.match(word):
            tags.append(word)
    return " ".join(tags)[:1000]


class ApiError(Exception):
    """A request the real server refuses: HTTP status, Mattermost error id and message."""

    def __init__(self, status: int, error_id: str, message: str, detailed: str = "") -> None:
        super().__init__(f"{status} {error_id}: {message}")
        self.status = status
        self.error_id = error_id
        self.message = message
        self.detailed = detailed

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON error body: ``{id, message, detailed_error, request_id, status_code}``."""
        return {
            "id": self.error_id,
            "message": self.message,
            "detailed_error": self.detailed,
            "request_id": request_id,
            "status_code": self.status,
        }


def forbidden() -> ApiError:
    """The server's answer to a missing permission."""
    return ApiError(
        403, "api.context.permissions.app_error", "You do not have the appropriate permissions."
    )


# A new user's notification settings, as the server's SetDefaultNotifications leaves them.
NOTIFY_PROPS = {
    "channel": "true",
    "comments": "never",
    "desktop": "mention",
    "desktop_sound": "true",
    "desktop_threads": "all",
    "email": "true",
    "email_threads": "all",
    "first_name": "false",
    "mention_keys": "",
    "push": "mention",
    "push_status": "online",
    "push_threads": "all",
}


@dataclass(slots=True)
class User:
    """A user account; bots are users with ``is_bot``."""

    id: str
    username: str
    is_bot: bool
    create_at: int

    def to_json(self) -> dict[str, Any]:
        """The user as ``GET /users/{id}`` returns it (``is_bot`` is omitted when false; every
        user, bots too, has ``notify_props``)."""
        d: dict[str, Any] = {
            "id": self.id,
            "create_at": self.create_at,
            "update_at": self.create_at,
            "delete_at": 0,
            "username": self.username,
            "auth_data": "",
            "auth_service": "",
            "email": f"{self.username}@example.com",
            "email_verified": True,
            "nickname": "",
            "first_name": "",
            "last_name": "",
            "position": "",
            "roles": "system_user",
            "props": {},
            "notify_props": dict(NOTIFY_PROPS),
            "last_password_update": self.create_at,
            "locale": "en",
            "timezone": {
                "automaticTimezone": "",
                "manualTimezone": "",
                "useAutomaticTimezone": "true",
            },
            "disable_welcome_email": False,
        }
        if self.is_bot:
            d["is_bot"] = True
            d["bot_description"] = ""
        return d


@dataclass(slots=True)
class Team:
    """A team; ``name`` is its URL name."""

    id: str
    name: str
    display_name: str
    create_at: int
    members: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        """The team as ``GET /teams/{id}`` returns it."""
        return {
            "id": self.id,
            "create_at": self.create_at,
            "update_at": self.create_at,
            "delete_at": 0,
            "display_name": self.display_name,
            "name": self.name,
            "description": "",
            "email": "",
            "type": "O",
            "company_name": "",
            "allowed_domains": "",
            "invite_id": "",
            "allow_open_invite": False,
            "scheme_id": None,
            "group_constrained": None,
            "policy_id": None,
        }


@dataclass(slots=True)
class Channel:
    """A channel of type O, P, D or G; D and G have no team."""

    id: str
    team_id: str
    type: str
    name: str
    display_name: str
    create_at: int
    update_at: int
    creator_id: str = ""
    members: set[str] = field(default_factory=set)
    last_post_at: int = 0
    total_msg_count: int = 0
    delete_at: int = 0  # archived when not 0

    def to_json(self) -> dict[str, Any]:
        """The channel as ``GET /channels/{id}`` returns it."""
        return {
            "id": self.id,
            "create_at": self.create_at,
            "update_at": self.update_at,
            "delete_at": self.delete_at,
            "team_id": self.team_id,
            "type": self.type,
            "display_name": self.display_name,
            "name": self.name,
            "header": "",
            "purpose": "",
            "last_post_at": self.last_post_at,
            "total_msg_count": self.total_msg_count,
            "extra_update_at": 0,
            "creator_id": self.creator_id,
            "scheme_id": None,
            "props": None,
            "group_constrained": None,
            "shared": None,
            "total_msg_count_root": self.total_msg_count,
            "policy_id": None,
            "last_root_post_at": self.last_post_at,
        }


@dataclass(slots=True)
class Post:
    """A stored post. ``original_id`` is set on the copies an edit leaves behind."""

    id: str
    channel_id: str
    user_id: str
    create_at: int
    message: str
    root_id: str = ""
    type: str = ""
    props: dict[str, Any] = field(default_factory=dict)
    file_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    pending_post_id: str = ""
    update_at: int = 0
    edit_at: int = 0
    delete_at: int = 0
    original_id: str = ""
    has_reactions: bool = False
    order: int = 0


@dataclass(slots=True)
class Reaction:
    """An emoji reaction on a post."""

    user_id: str
    post_id: str
    emoji_name: str
    create_at: int
    channel_id: str

    def to_json(self) -> dict[str, Any]:
        """The reaction as ``POST /reactions`` returns it and ``reaction_added`` carries it."""
        return {
            "user_id": self.user_id,
            "post_id": self.post_id,
            "emoji_name": self.emoji_name,
            "create_at": self.create_at,
            "update_at": self.create_at,
            "delete_at": 0,
            "remote_id": "",
            "channel_id": self.channel_id,
        }
