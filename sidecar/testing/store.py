"""The emulator's posts and reactions, with the server's rules (Mattermost 11.6).

Plain data and validation, no I/O and no events: the emulator calls these methods and turns
what they return into websocket frames. Every refusal raises `ApiError` with the status and
error id the real server answers.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.testing.directory import Directory
from sidecar.testing.model import (
    ApiError,
    Channel,
    Post,
    Reaction,
    forbidden,
    new_id,
    now_ms,
    parse_hashtags,
)

# Props only integrations may set when the server runs in hardened mode (Mattermost 11.6).
RESERVED_PROPS = ("from_webhook", "override_username", "override_icon_url", "webhook_display_name")
# Post.IsValid's list of types, without system_* (refused on the create-post path).
POST_TYPES = ("", "slack_attachment", "me", "reminder", "add_bot_teams_channels", "burn_on_read")
SINCE_LIMIT = 1000
PENDING_POST_TTL = 30.0
_EMOJI_RE = re.compile(r"^[a-zA-Z0-9\-+_]{1,64}$")
_MENTION_RE = re.compile(r"@([a-z0-9.\-_]+)", re.IGNORECASE)


class Store(Directory):
    """Everything the emulated server knows. Synchronous; used from the event loop only."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.posts: dict[str, Post] = {}
        self.reactions: list[Reaction] = []
        self._channel_posts: dict[str, list[str]] = {}
        self._pending: dict[str, tuple[str, float]] = {}
        self._replies: dict[str, list[Post]] = {}
        self._counter = itertools.count()
        self.files: dict[str, str] = {}

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
        hardened = self.settings.get("ExperimentalEnableHardenedMode") and not integration
        if hardened and any(k in props for k in RESERVED_PROPS):
            raise ApiError(
                400, "api.context.invalid_body_param.app_error", "Invalid props for post."
            )
        if priority is not None:
            self._check_priority(priority, root_id)
        if check_type:
            if type.startswith("system_"):
                raise ApiError(400, "api.context.invalid_param.app_error", "Invalid post.type.")
            if type not in POST_TYPES and not type.startswith("custom_"):
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
            self._replies.setdefault(root_id, []).append(post)
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
        # Entries are added in time order with one TTL: the expired ones are at the front.
        while self._pending:
            key, (_, expires) = next(iter(self._pending.items()))
            if expires > now:
                break
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
        targets = [post] if post.root_id else [post, *self._replies.get(post.id, ())]
        for target in targets:
            if not target.delete_at:
                target.delete_at = target.update_at = now
        if post.root_id and post.root_id in self.posts:
            # The server moves the thread root's update_at when one of its replies goes.
            root = self.posts[post.root_id]
            root.update_at = max(root.update_at, now)
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
            r
            for r in self.reactions
            if (r.user_id, r.post_id, r.emoji_name) != (user_id, post_id, emoji_name)
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

    def posts_since(
        self, channel_id: str, since: int, *, collapsed: bool = False
    ) -> tuple[list[str], dict[str, Post]]:
        """``GET /channels/{id}/posts?since=``: see sqlstore GetPostsSince.

        The server takes at most 1000 posts with ``update_at > since`` in no stated order (a
        LIMIT without ORDER BY); we take the oldest 1000 by create_at. Their thread roots join
        ``posts``; ``order`` holds every returned post with ``update_at > since``, newest first.
        With ``collapsed`` (``collapsedThreads=true``): roots only, the newest 1000.
        """
        ids = self._channel_posts.get(channel_id, [])
        changed = sorted(
            (
                self.posts[i]
                for i in ids
                if self.posts[i].update_at > since and not (collapsed and self.posts[i].root_id)
            ),
            key=lambda p: (p.create_at, p.order),
            reverse=collapsed,
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

    def add_file(self, name: str) -> str:
        """A file id for an uploaded file named ``name`` (``posted`` tells images apart)."""
        file_id = new_id()
        self.files[file_id] = name
        return file_id

    def thread_followers(self, post: Post) -> set[str]:
        """Who follows the post's thread: its root's author and everyone who replied."""
        root = self.posts.get(post.root_id or post.id)
        followers = {root.user_id} if root is not None else set()
        followers.update(p.user_id for p in self._replies.get(post.root_id or post.id, ()))
        return followers

    def replies(self, root_id: str) -> list[Post]:
        """Every reply to the root (deleted ones too), in creation order."""
        return list(self._replies.get(root_id, ()))

    def reply_count(self, post: Post) -> int:
        """Live replies in the post's thread."""
        return sum(1 for p in self._replies.get(post.root_id or post.id, ()) if not p.delete_at)

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
        }
        if post.has_reactions:
            d["has_reactions"] = True
        d["remote_id"] = ""
        d["reply_count"] = 0 if post.original_id else self.reply_count(post)
        d["last_reply_at"] = 0
        d["participants"] = None
        d["file_ids"] = list(post.file_ids)  # always present, [] when none
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
