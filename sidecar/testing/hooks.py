"""The emulator's outgoing webhooks: the server's list endpoint and the built-in's request body.

* ``GET /hooks/outgoing?team_id=&channel_id=&page=&per_page=`` (Mattermost 11.6): everyone's hooks
  for a user with *manage others' outgoing webhooks*, the user's own with *manage own outgoing
  webhooks*, else 403. ``per_page`` at most 200 (default 60), in creation order. JSON keys in
  the server's order: ``id, token, create_at, update_at, delete_at, creator_id, channel_id,
  team_id, trigger_words, trigger_when, callback_urls, display_name, description,
  content_type, username, icon_url``. Deleted hooks are not listed.
* :func:`builtin_request`: the body Mattermost's own outgoing webhook would send for a post
  (Mattermost 11.6), written here independently of ``sidecar.payload`` so that a test can
  compare the sidecar's request with it byte for byte.

Permissions are granted per user with :meth:`OutgoingHooks.grant` (the emulator has no roles):
``"others"`` (a system admin's), ``"own"``, or ``""`` (none: 403).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.testing.model import ApiError, Post, forbidden, go_json, new_id, now_ms
from sidecar.testing.postlists import page_params
from sidecar.testing.rest import RestApi
from sidecar.testing.rest_base import json_response

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
_GO_SPACE += "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


@dataclass(slots=True)
class OutgoingHook:
    """A stored outgoing webhook (model.OutgoingWebhook)."""

    id: str
    token: str
    create_at: int
    creator_id: str
    team_id: str
    channel_id: str = ""
    trigger_words: list[str] = field(default_factory=list)
    trigger_when: int = 0
    callback_urls: list[str] = field(default_factory=list)
    display_name: str = ""
    description: str = ""
    content_type: str = FORM
    username: str = ""
    icon_url: str = ""
    delete_at: int = 0

    def to_json(self) -> dict[str, Any]:
        """The hook as ``GET /hooks/outgoing`` lists it."""
        return {
            "id": self.id,
            "token": self.token,
            "create_at": self.create_at,
            "update_at": self.create_at,
            "delete_at": self.delete_at,
            "creator_id": self.creator_id,
            "channel_id": self.channel_id,
            "team_id": self.team_id,
            "trigger_words": list(self.trigger_words),
            "trigger_when": self.trigger_when,
            "callback_urls": list(self.callback_urls),
            "display_name": self.display_name,
            "description": self.description,
            "content_type": self.content_type,
            "username": self.username,
            "icon_url": self.icon_url,
        }


class OutgoingHooks:
    """The server's outgoing webhooks and who may list them (``emulator.hooks``)."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.hooks: dict[str, OutgoingHook] = {}
        self.permissions: dict[str, str] = {}  # user id → "own" | "others"

    def grant(self, user_id: str, level: str) -> None:
        """``"others"``: list everyone's hooks; ``"own"``: one's own; ``""``: none (403)."""
        if level not in ("", "own", "others"):
            raise ValueError(level)
        self.permissions[user_id] = level

    def create(
        self,
        creator_id: str,
        team_id: str,
        *,
        channel_id: str = "",
        trigger_words: Sequence[str] = (),
        trigger_when: int = 0,
        callback_urls: Sequence[str] = (),
        display_name: str = "",
        description: str = "",
        content_type: str = FORM,
        username: str = "",
        icon_url: str = "",
    ) -> dict[str, Any]:
        """Create an outgoing webhook with the server's basic checks; returns its JSON."""
        store = self.emu.store
        store.user(creator_id)
        store.team(team_id)
        if channel_id and store.channel(channel_id).type != "O":
            raise ApiError(
                403, "api.webhook.create_outgoing.not_open.app_error", "Not a public channel."
            )
        if not channel_id and not trigger_words:
            raise ApiError(
                400,
                "api.webhook.create_outgoing.triggers.app_error",
                "Either trigger_words or channel_id must be set.",
            )
        if not callback_urls:
            raise ApiError(400, "model.outgoing_hook.is_valid.callback.app_error", "No URL.")
        hook = OutgoingHook(
            id=new_id(),
            token=new_id(),
            create_at=now_ms(),
            creator_id=creator_id,
            team_id=team_id,
            channel_id=channel_id,
            trigger_words=list(trigger_words),
            trigger_when=trigger_when,
            callback_urls=list(callback_urls),
            display_name=display_name,
            description=description,
            content_type=content_type,
            username=username,
            icon_url=icon_url,
        )
        self.hooks[hook.id] = hook
        return hook.to_json()

    def visible(self, user_id: str, team_id: str, channel_id: str) -> list[OutgoingHook]:
        """The hooks ``user_id`` may list, filtered; 403 without any permission."""
        level = self.permissions.get(user_id, "")
        if not level:
            raise forbidden()
        return [
            h
            for h in self.hooks.values()
            if not h.delete_at
            and (level == "others" or h.creator_id == user_id)
            and (not team_id or h.team_id == team_id)
            and (not channel_id or h.channel_id == channel_id)
        ]


class HookRoutes:
    """``GET /hooks/outgoing``, bound to the emulator's RestApi."""

    def __init__(self, rest: RestApi) -> None:
        self.rest = rest

    def routes(self, api: str) -> list[web.RouteDef]:
        """Route definitions, to go before the catch-all."""
        return [web.get(f"{api}/hooks/outgoing", self.list_hooks)]

    async def list_hooks(self, request: web.Request) -> web.StreamResponse:
        """The hooks the session may see, one page of them."""
        me = self.rest.session(request)
        page, per_page = page_params(request.query.get("page"), request.query.get("per_page"))
        hooks = self.rest.emu.hooks.visible(
            me.id, request.query.get("team_id", ""), request.query.get("channel_id", "")
        )
        chosen = hooks[page * per_page : (page + 1) * per_page]
        return json_response([h.to_json() for h in chosen])


def _first_word(text: str) -> str:
    for word in text.translate({ord(c): " " for c in _GO_SPACE}).split(" "):
        if word:
            return word
    return ""


def builtin_trigger_word(hook: OutgoingHook, message: str) -> str | None:
    """The trigger word the built-in sends for ``message`` (None: the hook does not fire)."""
    if not hook.trigger_words:
        return ""
    word = _first_word(message)
    for trigger in hook.trigger_words:
        if word == trigger or (hook.trigger_when == 1 and word.startswith(trigger)):
            return trigger
    return None


def builtin_request(emu: Emulator, hook: OutgoingHook, post: Post) -> tuple[str, bytes]:
    """(Content-Type, body) of the built-in outgoing webhook's request for ``post``."""
    store = emu.store
    channel = store.channel(post.channel_id)
    team = store.team(channel.team_id)
    user = store.user(post.user_id)
    trigger = builtin_trigger_word(hook, post.message)
    if trigger is None:
        raise ValueError("the hook does not fire for this post")
    fields: dict[str, Any] = {
        "token": hook.token,
        "team_id": team.id,
        "team_domain": team.name,
        "channel_id": channel.id,
        "channel_name": channel.name,
        "timestamp": post.create_at,
        "user_id": user.id,
        "user_name": user.username,
        "post_id": post.id,
        "text": post.message,
        "trigger_word": trigger,
        "file_ids": ",".join(post.file_ids),
    }
    if hook.content_type == JSON:
        return JSON, go_json(fields).encode()
    fields["timestamp"] = post.create_at // 1000
    pairs = sorted((k, str(v)) for k, v in fields.items())
    return FORM, urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote_plus).encode()
