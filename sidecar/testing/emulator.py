"""A Mattermost server in one process, for tests, ``demo`` and people testing their callbacks.

It reproduces what the Mattermost server (11.6) does, as read from its source:
REST under ``/api/v4`` with header, cookie or login sessions (sidecar.testing.rest), the
websocket with hello, send and dead queues, the server's resume rules, the router's client
actions and ping liveness (sidecar.testing.websocket, sidecar.testing.hub), and the
``posted``/``post_edited``/``reaction_added``/``post_deleted``/``channel_updated`` events
shaped byte for byte like the real server's (sidecar.testing.posted).

Use it in-process::

    async with Emulator() as mm:           # binds 127.0.0.1 on a free port
        bot = mm.create_user("sidecar-bot", is_bot=True)
        token = mm.create_token(bot["id"])
        ...
        mm.post(user_id, channel_id, "#build now")     # as that user; emits `posted`
        replies = await mm.wait_for_posts(channel_id, 2)

Test control methods are synchronous and run on the event loop; emitting an event queues it
for every connection of its recipients, live or waiting for a resume. They apply
the server's rules and raise `ApiError` where the server would refuse, except that `post`
accepts any post ``type`` (system messages are made by the server itself) and an explicit
``create_at``.

Choices where the real server is loose or the emulator simplifies:

* ``GET /channels/{id}/posts?since=`` returns the oldest 1000 changed posts by create_at (the
  server's SQL takes 1000 in no stated order); edits leave a deleted copy with
  ``original_id`` (the server's edit history), which ``since`` returns, as the server does;
  a reply moves its root's ``update_at``; a reaction moves the post's ``update_at``.
* Users' JSON omits ``is_bot`` when false (Go's ``omitempty``).
* The websocket follows the server's web_conn.go (sidecar.testing.hub): events are numbered
  when written, wait in a 256-slot send queue while disconnected, and the last 128 written
  stay in the dead queue for a resume. The reaper forgets an inactive connection idle
  ``reap_after`` s (300), checked every ``reap_every`` s (300); idle counts from the
  disconnect. Adding a member posts no system message.
* A thread's followers (``posted``'s ``followers``) are its root's author and its repliers;
  a file is an image when its name (`create_file`) has an image extension.
* The websocket upgrade is not in ``rest_calls``, is not delayed by ``delay_responses``, and
  ``fail_next`` fails it only when ``path_prefix`` names it; the rate limiter counts it.
* Every ``/api/v4`` route not emulated answers 501 ``emulator.not_implemented``.

Run as a process, ``python -m sidecar.testing [--port N] [--seed FILE]`` (the seed format is in
sidecar.testing.seed) serves the same emulator plus a small HTTP control surface under
``/_emulator`` (sidecar.testing.control): ``POST /_emulator/posts``, ``PUT|DELETE
/_emulator/posts/{id}``, ``POST /_emulator/reactions``, ``PATCH /_emulator/settings``,
``POST /_emulator/drop``, ``POST /_emulator/restart``, ``GET /_emulator/state``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from sidecar import compat
from sidecar.testing.control import ControlApi
from sidecar.testing.faults import Failures, FaultInjection
from sidecar.testing.hooks import HookRoutes, OutgoingHooks
from sidecar.testing.hub import (
    DEAD_QUEUE_SIZE,
    REAP_AFTER,
    REAP_EVERY,
    Connection,
    Hub,
    broadcast,
)
from sidecar.testing.model import ApiError, Post, forbidden, go_json, now_ms
from sidecar.testing.posted import publish_posted
from sidecar.testing.public import PublicChannels, PublicRoutes
from sidecar.testing.rest import RestApi
from sidecar.testing.store import Store

log = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict[str, Any] = {
    "EnablePostUsernameOverride": False,
    "EnablePostIconOverride": False,
    "RateLimitEnable": False,
    "RateLimitPerSec": 10,
    "RateLimitMaxBurst": 100,
    "RateLimitVaryByRemoteAddr": True,
    "RateLimitVaryByUser": False,
    "RateLimitVaryByHeader": "",
    "MaxPostSize": 16383,
    "ExperimentalEnableHardenedMode": False,
}


class Emulator(FaultInjection):
    """The emulated Mattermost server; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float = 60.0,
        pong_timeout: float = 100.0,
        auth_timeout: float = 5.0,
        buffer_size: int = DEAD_QUEUE_SIZE,
        reap_after: float = REAP_AFTER,
        reap_every: float = REAP_EVERY,
        settings: dict[str, Any] | None = None,
        server_version: str = "10.5.0",
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.auth_timeout = auth_timeout
        self.server_version = server_version
        self.server_hostname = socket.gethostname() if server_hostname is None else server_hostname
        self.store = Store({**DEFAULT_SETTINGS, **(settings or {})})
        self.hub = Hub(
            dead_size=buffer_size,
            hello_data=self._hello_data,
            reap_after=reap_after,
            reap_every=reap_every,
        )
        self.answer_pings = True
        self.rest_calls: list[tuple[str, str]] = []
        self.response_delay = 0.0
        self.url = ""
        self.failures = Failures()
        # Public channels: creation by a user, conversion, archiving, join permission.
        self.public = PublicChannels(self)
        # Outgoing webhooks (GET /hooks/outgoing) and who may list them.
        self.hooks = OutgoingHooks(self)
        # Tests of hostile REST answers: a response for a request, or None to serve it normally.
        self.intercept: Callable[[web.Request], web.StreamResponse | None] | None = None
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def api_routes(self, rest: RestApi) -> list[web.RouteDef]:
        """Every emulated REST route, in the router's order (the 501 catch-all goes after)."""
        api = "/api/v4"
        return [*PublicRoutes(rest).routes(api), *HookRoutes(rest).routes(api), *rest.routes()]

    async def start(self) -> None:
        """Bind and serve; ``url`` is set afterwards."""
        rest = RestApi(self)
        app = web.Application(middlewares=[rest.middleware])
        app.add_routes(ControlApi(self).routes())
        app.add_routes(self.api_routes(rest))
        app.add_routes(rest.catch_all())  # after every route, whoever added it
        # A handler still running at stop (a scripted delay) is cancelled after 0.1 s.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.hub.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self.url = f"http://{self.host}:{self.port}"
        log.info("Mattermost emulator serving at %s", self.url)

    async def stop(self) -> None:
        """Close every websocket and stop serving."""
        if self._runner is None:
            return
        await self.hub.close()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def settings(self) -> dict[str, Any]:
        """The server settings, live: changes apply to the next request."""
        return self.store.settings

    @settings.setter
    def settings(self, value: Mapping[str, Any]) -> None:
        self.store.settings = {**DEFAULT_SETTINGS, **value}

    @property
    def version_id(self) -> str:
        """What the server sends as ``X-Version-Id`` and in ``hello``'s ``server_version``."""
        digest = hashlib.sha256(go_json(self.settings).encode()).hexdigest()[:32]
        return f"{self.server_version}.{self.server_version}.{digest}.false"

    def _hello_data(self, conn: Connection) -> dict[str, Any]:
        return {
            "connection_id": conn.id,
            "server_hostname": self.server_hostname,
            "server_version": self.version_id,
        }

    @property
    def connections(self) -> int:
        """Live authenticated websockets."""
        return self.hub.live

    # -- users, teams, channels -------------------------------------------------------------

    def create_user(
        self, username: str, *, is_bot: bool = False, password: str | None = None
    ) -> dict[str, Any]:
        """Create a user (or bot); returns its JSON. With ``password`` (not for bots) the
        user can ``POST /users/login``."""
        user = self.store.add_user(username, is_bot=is_bot)
        if password is not None:
            self.store.set_password(user.id, password)
        return user.to_json()

    def create_file(self, name: str) -> str:
        """A file id for an uploaded file named ``name``; ``posted`` marks images by name."""
        return self.store.add_file(name)

    def create_token(self, user_id: str) -> str:
        """A new access token for that user."""
        return self.store.add_token(user_id)

    def create_team(self, name: str, display_name: str = "") -> dict[str, Any]:
        """Create a team; returns its JSON."""
        return self.store.add_team(name, display_name).to_json()

    def add_team_member(self, team_id: str, user_id: str) -> None:
        """Make the user a member of the team."""
        self.store.add_team_member(team_id, user_id)

    def create_channel(
        self,
        team_id: str,
        name: str,
        type: str = "O",
        display_name: str = "",
        members: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Create an open (O) or private (P) channel; members join the team too."""
        return self.store.add_channel(team_id, name, type, display_name, members).to_json()

    def add_channel_member(self, channel_id: str, user_id: str) -> None:
        """Add a member to a channel; emits ``user_added`` to the channel."""
        self.store.add_channel_member(channel_id, user_id)
        channel = self.store.channels[channel_id]
        data = {"team_id": channel.team_id, "user_id": user_id}
        self.hub.publish("user_added", data, broadcast(channel_id=channel.id), channel.members)

    def create_direct_channel(self, user_a: str, user_b: str) -> dict[str, Any]:
        """The direct channel of two users, named ``<uid1>__<uid2>`` (sorted)."""
        return self.store.direct_channel(user_a, user_b).to_json()

    def create_group_channel(self, user_ids: Sequence[str]) -> dict[str, Any]:
        """The group channel of these users (3 to 8)."""
        return self.store.group_channel(user_ids).to_json()

    def rename_channel(
        self, channel_id: str, name: str, *, display_name: str | None = None
    ) -> None:
        """Change a channel's URL name (and display name); emits ``channel_updated``."""
        channel = self.store.channel(channel_id)
        channel.name = name
        if display_name is not None:
            channel.display_name = display_name
        channel.update_at = now_ms()
        data = {"channel": go_json(channel.to_json())}
        self.hub.publish("channel_updated", data, broadcast(channel_id=channel.id), channel.members)

    # -- posts ------------------------------------------------------------------------------

    def post(
        self,
        user_id: str,
        channel_id: str,
        message: str,
        *,
        root_id: str = "",
        props: dict[str, Any] | None = None,
        file_ids: Sequence[str] = (),
        type: str = "",
        create_at: int | None = None,
    ) -> dict[str, Any]:
        """Post as that user (the server's checks apply); emits ``posted``; returns the post."""
        post = self.create_post(
            user_id,
            channel_id,
            message,
            root_id=root_id,
            props=props,
            file_ids=file_ids,
            type=type,
            create_at=create_at,
            integration=self.store.user(user_id).is_bot,
            check_type=False,
        )
        return self.store.post_json(post)

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
        set_online: bool = True,
        check_type: bool = True,
    ) -> Post:
        """The create-post path shared by REST and `post`: store, then emit ``posted``."""
        post, duplicate = self.store.create_post(
            user_id,
            channel_id,
            message,
            root_id=root_id,
            props=props,
            file_ids=file_ids,
            type=type,
            create_at=create_at,
            pending_post_id=pending_post_id,
            priority=priority,
            integration=integration,
            check_type=check_type,
        )
        if not duplicate:
            publish_posted(self.hub, self.store, post, set_online)
            self._notify()
        return post

    def edit(
        self, post_id: str, message: str, *, props: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Edit a post's message; emits ``post_edited``; returns the post."""
        post = self.store.edit_post(post_id, message, props)
        body = self.store.post_json(post)
        channel = self.store.channels[post.channel_id]
        data = {"post": go_json(body)}
        self.hub.publish("post_edited", data, broadcast(channel_id=channel.id), channel.members)
        self._notify()
        return body

    def react(self, user_id: str, post_id: str, emoji_name: str) -> dict[str, Any]:
        """Add a reaction as that user; emits ``reaction_added``; returns the reaction."""
        post = self.store.post(post_id)
        channel = self.store.channels[post.channel_id]
        if user_id not in channel.members:
            raise forbidden()
        reaction = self.store.add_reaction(user_id, post_id, emoji_name).to_json()
        data = {"reaction": go_json(reaction)}
        self.hub.publish("reaction_added", data, broadcast(channel_id=channel.id), channel.members)
        return reaction

    def delete(self, post_id: str, *, deleted_by: str | None = None) -> None:
        """Delete a post (a root takes its replies along); emits ``post_deleted``."""
        existing = self.store.post(post_id)
        post = self.store.delete_post(post_id, deleted_by or existing.user_id)
        channel = self.store.channels[post.channel_id]
        data = {
            "delete_by": deleted_by or post.user_id,
            "post": go_json(self.store.post_json(post)),
        }
        self.hub.publish("post_deleted", data, broadcast(channel_id=channel.id), channel.members)
        self._notify()

    def posts_in(self, channel_id: str) -> list[dict[str, Any]]:
        """Every post of the channel, oldest first (deleted ones too, not edit-history copies)."""
        return [self.store.post_json(p) for p in self.store.channel_posts(channel_id)]

    def get_post(self, post_id: str) -> dict[str, Any]:
        """The post's JSON; `ApiError` 404 when unknown."""
        return self.store.post_json(self.store.post(post_id))

    async def wait_for_posts(
        self, channel_id: str, count: int, *, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until the channel holds at least ``count`` posts; return them all."""
        try:
            async with compat.timeout(timeout):
                while len(self.store.channel_posts(channel_id)) < count:
                    changed = self._changed
                    await changed.wait()
        except asyncio.TimeoutError:
            have = len(self.store.channel_posts(channel_id))
            raise TimeoutError(f"{have} posts in channel, wanted {count}") from None
        return self.posts_in(channel_id)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


__all__ = ["DEFAULT_SETTINGS", "ApiError", "Emulator"]
