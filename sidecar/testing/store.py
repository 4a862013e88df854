"""The emulator's in-memory Mattermost: users, tokens, teams, channels, posts, reactions.

Plain data plus Mattermost's own validation rules (reference §3, §5), with no I/O and no
events: the emulator calls these methods and turns what they return into websocket frames.
Every rule that rejects something raises `ApiError` with the status and error id the real
server answers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
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
# Props only integrations may set when the server runs in hardened mode (reference §3).
RESERVED_PROPS = ("from_webhook", "override_username", "override_icon_url", "webhook_display_name")
SINCE_LIMIT = 1000
PENDING_POST_TTL = 30.0
_ID_RE = re.compile(r"^[a-z0-9]{26}$")
_EMOJI_RE = re.compile(r"^[a-zA-Z0-9\-+_]{1,64}$")
_MENTION_RE = re.compile(r"@([a-z0-9.\-_]+)", re.IGNORECASE)
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


@dataclass(slots=True)
class User:
    """A user account; bots are users with ``is_bot``."""

    id: str
    username: str
    is_bot: bool
    create_at: int

    def to_json(self) -> dict[str, Any]:
        """The user as ``GET /users/{id}`` returns it (``is_bot`` is omitted when false)."""
        d: dict[str, Any] = {
            "id": self.id,
            "create_at": self.create_at,
            "update_at": self.create_at,
            "delete_at": 0,
            "username": self.username,
            "auth_data": "",
            "auth_service": "",
            "email": f"{self.username}@example.com",
            "nickname": "",
            "first_name": "",
            "last_name": "",
            "position": "",
            "roles": "system_user",
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

    def to_json(self) -> dict[str, Any]:
        """The channel as ``GET /channels/{id}`` returns it."""
        return {
            "id": self.id,
            "create_at": self.create_at,
            "update_at": self.update_at,
            "delete_at": 0,
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


class Store:
    """Everything the emulated server knows. Synchronous; used from the event loop only."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.users: dict[str, User] = {}
        self.tokens: dict[str, str] = {}
        self.teams: dict[str, Team] = {}
        self.channels: dict[str, Channel] = {}
        self.posts: dict[str, Post] = {}
        self.reactions: list[Reaction] = []
        self._channel_posts: dict[str, list[str]] = {}
        self._pending: dict[str, tuple[str, float]] = {}
        self._counter = itertools.count()

    # -- users, teams, channels -------------------------------------------------------------

    def add_user(self, username: str, *, is_bot: bool = False) -> User:
        """Create a user; usernames are lower-cased like the server does."""
        name = username.lower()
        if not re.match(r"^[a-z][a-z0-9.\-_]{2,63}$", name):
            raise ApiError(400, "model.user.is_valid.username.app_error", "Invalid username.")
        if self.user_by_name(name) is not None:
            raise ApiError(
                400, "app.user.save.username_exists.app_error", "That username already exists."
            )
        user = User(new_id(), name, is_bot, now_ms())
        self.users[user.id] = user
        return user

    def add_token(self, user_id: str) -> str:
        """A new access token for the user."""
        self.user(user_id)
        token = new_id()
        self.tokens[token] = user_id
        return token

    def user(self, user_id: str) -> User:
        """The user, or 404."""
        try:
            return self.users[user_id]
        except KeyError:
            raise ApiError(
                404, "app.user.missing_account.const", "Unable to find the user."
            ) from None

    def user_by_name(self, username: str) -> User | None:
        """The user with that username (case-insensitive), if any."""
        name = username.lower()
        return next((u for u in self.users.values() if u.username == name), None)

    def add_team(self, name: str, display_name: str = "") -> Team:
        """Create a team."""
        if self.team_by_name(name) is not None:
            raise ApiError(400, "store.sql_team.save_team.existing.app_error", "Team exists.")
        team = Team(new_id(), name, display_name or name, now_ms())
        self.teams[team.id] = team
        return team

    def team(self, team_id: str) -> Team:
        """The team, or 404."""
        try:
            return self.teams[team_id]
        except KeyError:
            raise ApiError(404, "app.team.get.find.app_error", "Unable to find team.") from None

    def team_by_name(self, name: str) -> Team | None:
        """The team with that URL name, if any."""
        return next((t for t in self.teams.values() if t.name == name), None)

    def add_team_member(self, team_id: str, user_id: str) -> None:
        """Make the user a member of the team."""
        self.user(user_id)
        self.team(team_id).members.add(user_id)

    def add_channel(
        self, team_id: str, name: str, type: str, display_name: str, members: Iterable[str]
    ) -> Channel:
        """Create an open (O) or private (P) channel in a team."""
        if type not in ("O", "P"):
            raise ValueError("team channels are of type O or P; use direct/group channels")
        self.team(team_id)
        if self.channel_by_name(team_id, name) is not None:
            raise ApiError(
                400, "store.sql_channel.save_channel.exists.app_error", "Channel exists."
            )
        display = display_name or name.replace("-", " ").replace("_", " ").title()
        now = now_ms()
        channel = Channel(new_id(), team_id, type, name, display, now, now)
        self.channels[channel.id] = channel
        for user_id in members:
            self.add_channel_member(channel.id, user_id)
        return channel

    def channel(self, channel_id: str) -> Channel:
        """The channel, or 404."""
        try:
            return self.channels[channel_id]
        except KeyError:
            raise ApiError(
                404, "app.channel.get.existing.app_error", "Unable to find the existing channel."
            ) from None

    def channel_by_name(self, team_id: str, name: str) -> Channel | None:
        """The team's channel with that URL name, if any."""
        return next(
            (c for c in self.channels.values() if c.team_id == team_id and c.name == name), None
        )

    def add_channel_member(self, channel_id: str, user_id: str) -> None:
        """Add a member; for team channels the user joins the team too, as the server requires."""
        channel = self.channel(channel_id)
        self.user(user_id)
        if channel.team_id:
            self.teams[channel.team_id].members.add(user_id)
        channel.members.add(user_id)

    def direct_channel(self, user_a: str, user_b: str) -> Channel:
        """The direct channel between two users, created on first use."""
        self.user(user_a)
        self.user(user_b)
        name = "__".join(sorted((user_a, user_b)))
        found = next((c for c in self.channels.values() if c.type == "D" and c.name == name), None)
        if found is not None:
            return found
        now = now_ms()
        channel = Channel(new_id(), "", "D", name, "", now, now, creator_id=user_a)
        channel.members = {user_a, user_b}
        self.channels[channel.id] = channel
        return channel

    def group_channel(self, user_ids: Iterable[str]) -> Channel:
        """The group channel of 3 to 8 users, created on first use; named like the server."""
        ids = sorted(set(user_ids))
        if not 3 <= len(ids) <= 8:
            raise ApiError(
                400, "api.channel.create_group.bad_size.app_error", "3 to 8 users needed."
            )
        users = [self.user(uid) for uid in ids]
        name = hashlib.sha1("".join(ids).encode()).hexdigest()
        found = next((c for c in self.channels.values() if c.type == "G" and c.name == name), None)
        if found is not None:
            return found
        display = ", ".join(sorted(u.username for u in users))
        now = now_ms()
        channel = Channel(new_id(), "", "G", name, display, now, now, creator_id=ids[0])
        channel.members = set(ids)
        self.channels[channel.id] = channel
        return channel

    def can_read_channel(self, user_id: str, channel: Channel) -> bool:
        """Members read any channel; team members also read the team's open channels."""
        if user_id in channel.members:
            return True
        return channel.type == "O" and user_id in self.teams[channel.team_id].members

    # -- posts ------------------------------------------------------------------------------

    def post(self, post_id: str) -> Post:
        """The post (deleted ones too), or 404."""
        post = self.posts.get(post_id)
        if post is None:
            raise ApiError(404, "app.post.get.app_error", "Unable to get the post.")
        return post

    def check_message(self, message: str) -> None:
        """400 when the message is longer than the server's maximum, counted in runes."""
        if len(message) > int(self.settings["MaxPostSize"]):
            raise ApiError(400, "model.post.is_valid.message_length.app_error", "Invalid Message.")

    def create_post(
        self,
        user_id: str,
        channel_id: str,
        message: str,
        *,
        root_id: str = "",
        props: Mapping[str, Any] | None = None,
        file_ids: Iterable[str] = (),
        type: str = "",
        create_at: int | None = None,
        pending_post_id: str = "",
        priority: Mapping[str, Any] | None = None,
        integration: bool = False,
        check_type: bool = True,
    ) -> tuple[Post, bool]:
        """Create a post as the user, with the server's checks; returns (post, was_duplicate)."""
        user = self.user(user_id)
        channel = self.channels.get(channel_id)
        if channel is None or user_id not in channel.members:
            raise forbidden()
        props = dict(props or {})
        if self.settings.get("ExperimentalEnableHardenedMode") and not integration:
            if any(k in props for k in RESERVED_PROPS):
                raise ApiError(
                    400, "api.context.invalid_body_param.app_error", "Invalid props for post."
                )
        if priority is not None:
            self._check_priority(priority, root_id)
        if check_type:
            if type.startswith("system_"):
                raise ApiError(400, "api.context.invalid_param.app_error", "Invalid post.type.")
            if type not in ("", "slack_attachment") and not type.startswith("custom_"):
                raise ApiError(400, "model.post.is_valid.type.app_error", "Invalid type.")
        duplicate = self._pending_duplicate(pending_post_id)
        if duplicate is not None:
            return duplicate, True
        if root_id:
            self._check_root(root_id, channel_id)
        self.check_message(message)
        if user.is_bot:
            props["from_bot"] = "true"
        now = now_ms() if create_at is None else create_at
        post = Post(
            id=new_id(),
            channel_id=channel_id,
            user_id=user_id,
            create_at=now,
            update_at=now,
            message=message,
            root_id=root_id,
            type=type,
            props=props,
            file_ids=list(file_ids),
            pending_post_id=pending_post_id,
            order=next(self._counter),
        )
        if priority is not None:
            post.metadata["priority"] = dict(priority)
        self.posts[post.id] = post
        self._channel_posts.setdefault(channel_id, []).append(post.id)
        if root_id:
            # The server stamps a thread's root with its latest reply's time.
            root = self.posts[root_id]
            root.update_at = max(root.update_at, now)
        channel.last_post_at = max(channel.last_post_at, now)
        channel.total_msg_count += 1
        if pending_post_id:
            self._pending[pending_post_id] = (post.id, time.monotonic() + PENDING_POST_TTL)
        return post, False

    def _check_priority(self, priority: Mapping[str, Any], root_id: str) -> None:
        if root_id:
            raise ApiError(
                400,
                "api.post.post_priority.priority_post_only_allowed_for_root_post.request_error",
                "Post priority is only allowed for root posts.",
            )
        if priority.get("priority") not in ("", "important", "urgent"):
            raise ApiError(
                400,
                "api.post.post_priority.invalid_priority.request_error",
                "Invalid post priority.",
            )

    def _pending_duplicate(self, pending_post_id: str) -> Post | None:
        if not pending_post_id:
            return None
        now = time.monotonic()
        for key in [k for k, (_, exp) in self._pending.items() if exp <= now]:
            del self._pending[key]
        seen = self._pending.get(pending_post_id)
        return self.posts[seen[0]] if seen else None

    def _check_root(self, root_id: str, channel_id: str) -> None:
        root = self.posts.get(root_id)
        if root is None or root.delete_at or root.root_id:
            raise ApiError(
                400, "api.post.create_post.root_id.app_error", "Invalid RootId parameter."
            )
        if root.channel_id != channel_id:
            raise ApiError(
                400,
                "api.post.create_post.channel_root_id.app_error",
                "Invalid ChannelId for RootId parameter.",
            )

    def edit_post(self, post_id: str, message: str, props: Mapping[str, Any] | None = None) -> Post:
        """Edit a post's text (and props); the server keeps the old text as a deleted copy."""
        post = self.post(post_id)
        if post.delete_at:
            raise forbidden()
        self.check_message(message)
        now = max(now_ms(), post.update_at)
        # Mattermost's edit history: the old version becomes a deleted post with original_id.
        old = Post(
            id=new_id(),
            channel_id=post.channel_id,
            user_id=post.user_id,
            create_at=post.create_at,
            message=post.message,
            root_id=post.root_id,
            type=post.type,
            props=dict(post.props),
            file_ids=list(post.file_ids),
            update_at=now,
            edit_at=post.edit_at,
            delete_at=now,
            original_id=post.id,
            order=next(self._counter),
        )
        self.posts[old.id] = old
        self._channel_posts[post.channel_id].append(old.id)
        post.message = message
        if props is not None:
            post.props = dict(props)
        post.edit_at = post.update_at = now
        if post.root_id:
            root = self.posts[post.root_id]
            root.update_at = max(root.update_at, now)
        return post

    def delete_post(self, post_id: str, deleted_by: str) -> Post:
        """Delete a post; deleting a root deletes its replies too, silently (as the server)."""
        post = self.post(post_id)
        now = max(now_ms(), post.update_at)
        targets = [post] if post.root_id else [p for p in self.posts.values() if p.root_id == post.id]
        if not post.root_id:
            targets.append(post)
        for target in targets:
            if not target.delete_at:
                target.delete_at = target.update_at = now
        post.props["deleteBy"] = deleted_by
        return post

    def add_reaction(self, user_id: str, post_id: str, emoji_name: str) -> Reaction:
        """Add a reaction; the post is marked as reacted-to and its update_at moves."""
        post = self.post(post_id)
        if post.delete_at:
            raise ApiError(404, "app.post.get.app_error", "Unable to get the post.")
        if not _EMOJI_RE.match(emoji_name):
            raise ApiError(400, "model.reaction.is_valid.emoji_name.app_error", "Invalid emoji.")
        now = max(now_ms(), post.update_at)
        reaction = Reaction(user_id, post_id, emoji_name, now, post.channel_id)
        self.reactions = [
            r for r in self.reactions if (r.user_id, r.post_id, r.emoji_name) != (user_id, post_id, emoji_name)
        ]
        self.reactions.append(reaction)
        post.has_reactions = True
        post.update_at = now
        return reaction

    def channel_posts(self, channel_id: str) -> list[Post]:
        """Every post of the channel except edit-history copies, in creation order."""
        ids = self._channel_posts.get(channel_id, [])
        posts = [self.posts[i] for i in ids if not self.posts[i].original_id]
        return sorted(posts, key=lambda p: (p.create_at, p.order))

    def posts_since(self, channel_id: str, since: int) -> tuple[list[str], dict[str, Post]]:
        """``GET /channels/{id}/posts?since=``: see sqlstore GetPostsSince.

        The server takes at most 1000 posts with ``update_at > since`` in no stated order (a
        LIMIT without ORDER BY); we take the oldest 1000 by create_at. Their thread roots join
        ``posts``; ``order`` holds every returned post with ``update_at > since``, newest first.
        """
        ids = self._channel_posts.get(channel_id, [])
        changed = sorted(
            (self.posts[i] for i in ids if self.posts[i].update_at > since),
            key=lambda p: (p.create_at, p.order),
        )[:SINCE_LIMIT]
        found = {p.id: p for p in changed}
        for p in changed:
            if p.root_id and p.root_id in self.posts:
                found.setdefault(p.root_id, self.posts[p.root_id])
        listed = sorted(
            (p for p in found.values() if p.update_at > since),
            key=lambda p: (p.create_at, p.order),
            reverse=True,
        )
        return [p.id for p in listed], found

    def posts_page(
        self, channel_id: str, page: int, per_page: int
    ) -> tuple[list[str], dict[str, Post]]:
        """``GET /channels/{id}/posts`` without ``since``: a page of live posts, newest first."""
        live = [p for p in self.channel_posts(channel_id) if not p.delete_at]
        live.reverse()
        chosen = live[page * per_page : (page + 1) * per_page]
        found = {p.id: p for p in chosen}
        for p in chosen:
            if p.root_id and p.root_id in self.posts:
                found.setdefault(p.root_id, self.posts[p.root_id])
        return [p.id for p in chosen], found

    def reply_count(self, post: Post) -> int:
        """Live replies in the post's thread."""
        root = post.root_id or post.id
        return sum(1 for p in self.posts.values() if p.root_id == root and not p.delete_at)

    def post_json(self, post: Post) -> dict[str, Any]:
        """The post as REST returns it and websocket events carry it (the vector's key order)."""
        d: dict[str, Any] = {
            "id": post.id,
            "create_at": post.create_at,
            "update_at": post.update_at,
            "edit_at": post.edit_at,
            "delete_at": post.delete_at,
            "is_pinned": False,
            "user_id": post.user_id,
            "channel_id": post.channel_id,
            "root_id": post.root_id,
            "original_id": post.original_id,
            "message": post.message,
            "type": post.type,
            "props": dict(post.props),
            "hashtags": parse_hashtags(post.message),
            "pending_post_id": post.pending_post_id,
            "reply_count": 0 if post.original_id else self.reply_count(post),
            "last_reply_at": 0,
            "participants": None,
        }
        if post.file_ids:
            d["file_ids"] = list(post.file_ids)
        if post.has_reactions:
            d["has_reactions"] = True
        metadata = dict(post.metadata)
        if post.has_reactions:
            metadata["reactions"] = [r.to_json() for r in self.reactions if r.post_id == post.id]
        d["metadata"] = metadata
        return d

    def mentions(self, post: Post, channel: Channel) -> list[str]:
        """User ids the post mentions among the channel's members, sender excluded."""
        found: set[str] = set()
        if channel.type == "D":
            found |= channel.members
        for match in _MENTION_RE.finditer(post.message):
            word = match.group(1).lower()
            if word in ("channel", "all"):
                found |= channel.members
                continue
            for candidate in (word, word.rstrip(".-_")):
                user = self.user_by_name(candidate)
                if user is not None and user.id in channel.members:
                    found.add(user.id)
                    break
        found.discard(post.user_id)
        return sorted(found)
