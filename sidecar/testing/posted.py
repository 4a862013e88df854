"""The ``posted`` event as the server builds it (Mattermost 11.6; app/notification.go).

The data every recipient gets, plus what the server's broadcast hooks add per connection:
``mentions`` (``["<that recipient>"]``, only in the frame to a mentioned recipient),
``followers`` (likewise, for a thread's followers when the post is a reply) and
``should_ack`` (for sockets opened with ``?posted_ack=true``, on mentions, follows and DMs,
never for one's own posts). ``otherFile`` is ``"true"`` when the post has files, ``image`` too
when one of them is an image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.testing.hub import Connection, Hub, broadcast
from sidecar.testing.model import Post, go_json
from sidecar.testing.store import Store

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".svg")


def sender_name(store: Store, post: Post, channel_type: str) -> str:
    """``sender_name``: the override name when the server shows it, else ``@username``."""
    if post.type.startswith("system_"):
        return "System"
    override = post.props.get("override_username")
    if (
        store.settings.get("EnablePostUsernameOverride")
        and channel_type != "D"
        and post.props.get("from_webhook") == "true"
        and isinstance(override, str)
    ):
        return override
    return f"@{store.users[post.user_id].username}"


def posted_data(store: Store, post: Post, set_online: bool) -> dict[str, Any]:
    """The data every recipient of the post's ``posted`` event gets."""
    channel = store.channels[post.channel_id]
    if channel.type == "D":
        display = f"@{store.users[post.user_id].username}"
    elif channel.type == "G":
        display = ", ".join(sorted(store.users[u].username for u in channel.members))
    else:
        display = channel.display_name
    data: dict[str, Any] = {
        "channel_display_name": display,
        "channel_name": channel.name,
        "channel_type": channel.type,
        "post": go_json(store.post_json(post)),
        "sender_name": sender_name(store, post, channel.type),
        "set_online": set_online,
        "team_id": channel.team_id,
    }
    if post.file_ids:
        data["otherFile"] = "true"
        names = [store.files.get(f, "") for f in post.file_ids]
        if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in names):
            data["image"] = "true"
    return data


def publish_posted(hub: Hub, store: Store, post: Post, set_online: bool) -> None:
    """Queue the post's ``posted`` event, per recipient, for the channel's members."""
    channel = store.channels[post.channel_id]
    mentioned = set(store.mentions(post, channel))
    followers = store.thread_followers(post) & channel.members if post.root_id else set()

    def hook(conn: Connection) -> Mapping[str, Any]:
        extra: dict[str, Any] = {}
        if conn.user_id in mentioned:
            extra["mentions"] = go_json([conn.user_id])
        if conn.user_id in followers:
            extra["followers"] = go_json([conn.user_id])
        sock = conn.socket
        if (
            sock is not None
            and sock.posted_ack
            and conn.user_id != post.user_id
            and (extra or channel.type == "D")
        ):
            extra["should_ack"] = True
        return extra

    data = posted_data(store, post, set_online)
    hub.publish("posted", data, broadcast(channel_id=channel.id), channel.members, hook)
