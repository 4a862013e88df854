"""The emulator's REST API under ``/api/v4`` (Mattermost 11.6), with Mattermost's permission
checks: the route table (handlers in sidecar.testing.rest_users and rest_posts) and the
middleware every ``/api/v4`` request goes through: call recording, the injected delay and
failures, Mattermost's rate limiter (sidecar.testing.faults), and error bodies
``{id, message, detailed_error, request_id, status_code}``.

A route the emulator does not implement answers **501** ``emulator.not_implemented`` — never
a real-looking 404 that would make a user blame their own client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.testing.auth import request_token
from sidecar.testing.faults import WEBSOCKET_PATH, RateLimiter
from sidecar.testing.model import ApiError, new_id
from sidecar.testing.rest_base import error_response, json_response
from sidecar.testing.rest_posts import PostRoutes
from sidecar.testing.rest_users import UserRoutes
from sidecar.testing.websocket import handle_websocket

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API = "/api/v4"


class RestApi(UserRoutes, PostRoutes):
    """The ``/api/v4`` routes, bound to one emulator."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.store = emu.store
        self.limiter = RateLimiter()

    def routes(self) -> list[web.RouteDef]:
        """Every emulated route (the 501 catch-all is `catch_all`, registered after these)."""
        api = API
        return [
            web.get(f"{api}/websocket", self.websocket),
            web.get(f"{api}/websocket/", self.websocket),
            web.get(f"{api}/system/ping", self.system_ping),
            web.get(f"{api}/config/client", self.client_config),
            web.post(f"{api}/users/login", self.login),
            web.post(f"{api}/users/usernames", self.users_by_names),
            web.get(f"{api}/users/username/{{username}}", self.user_by_name),
            web.post(f"{api}/users/ids", self.users_by_ids),
            web.get(f"{api}/users/{{user_id}}", self.get_user),
            web.get(f"{api}/users/{{user_id}}/status", self.user_status),
            web.get(f"{api}/users/{{user_id}}/teams", self.user_teams),
            web.get(f"{api}/users/{{user_id}}/teams/members", self.user_team_members),
            web.get(f"{api}/users/{{user_id}}/teams/{{team_id}}/channels", self.user_channels),
            web.get(f"{api}/users/{{user_id}}/channels", self.all_user_channels),
            web.get(f"{api}/teams/name/{{name}}", self.team_by_name),
            web.get(
                f"{api}/teams/name/{{team_name}}/channels/name/{{name}}",
                self.channel_by_team_name,
            ),
            web.get(f"{api}/teams/{{team_id}}", self.get_team),
            web.get(f"{api}/teams/{{team_id}}/channels/name/{{name}}", self.channel_by_name),
            web.post(f"{api}/channels/direct", self.direct_channel),
            web.get(f"{api}/channels/{{channel_id}}", self.get_channel),
            web.get(f"{api}/channels/{{channel_id}}/posts", self.channel_posts),
            web.get(f"{api}/channels/{{channel_id}}/members", self.channel_members),
            web.get(f"{api}/channels/{{channel_id}}/members/{{user_id}}", self.channel_member),
            web.post(f"{api}/posts", self.create_post),
            web.get(f"{api}/posts/{{post_id}}", self.get_post),
            web.delete(f"{api}/posts/{{post_id}}", self.delete_post),
            web.put(f"{api}/posts/{{post_id}}/patch", self.patch_post),
            web.get(f"{api}/posts/{{post_id}}/thread", self.post_thread),
            web.get(f"{api}/posts/{{post_id}}/reactions", self.post_reactions),
            web.post(f"{api}/reactions", self.add_reaction),
        ]

    def catch_all(self) -> list[web.RouteDef]:
        """Every other ``/api/v4`` request: 501 ``emulator.not_implemented``."""
        return [web.route("*", f"{API}/{{tail:.*}}", self.not_implemented)]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Recording, delay, rate limit, injected failures and error bodies for /api/v4."""
        path = request.path
        if not path.startswith(f"{API}/"):
            return await handler(request)
        emu = self.emu
        is_ws = path.rstrip("/") == WEBSOCKET_PATH
        request_id = new_id()
        if not is_ws:
            emu.rest_calls.append((request.method, path))
            if emu.response_delay > 0:
                await asyncio.sleep(emu.response_delay)
        limit_headers: dict[str, str] = {}
        settings = emu.settings
        if settings.get("RateLimitEnable"):
            limited, limit_headers = self.limiter.check(
                self.limit_key(request),
                int(settings.get("RateLimitPerSec", 10)),
                int(settings.get("RateLimitMaxBurst", 100)),
            )
            if limited:
                limit_headers["X-Content-Type-Options"] = "nosniff"
                return web.Response(
                    status=429,
                    body=b"limit exceeded\n",
                    headers={"Content-Type": "text/plain; charset=utf-8", **limit_headers},
                )
        status = emu.failures.take(request.method, path, websocket=is_ws)
        if status is None and not is_ws and emu.intercept is not None:
            answer = emu.intercept(request)
            if answer is not None:
                return answer  # a hostile answer, exactly as the test wrote it
        try:
            if status is not None:
                raise ApiError(status, "emulator.injected_failure", "Injected failure.")
            response = await handler(request)
        except ApiError as error:
            response = error_response(error, request_id)
        if not response.prepared:
            response.headers.update(limit_headers)
            response.headers["X-Request-Id"] = request_id
            response.headers["X-Version-Id"] = emu.version_id
        return response

    def limit_key(self, request: web.Request) -> str:
        """The rate limiter's key (the server's GenerateKey): the token when varying by user
        (the address when there is none), else the address; plus a header's value."""
        settings = self.emu.settings
        by_addr = bool(settings.get("RateLimitVaryByRemoteAddr", True))
        key = ""
        if settings.get("RateLimitVaryByUser"):
            token, _ = request_token(request)
            key = token or (request.remote or "" if by_addr else "")
        elif by_addr:
            key = request.remote or ""
        header = str(settings.get("RateLimitVaryByHeader") or "")
        if header:
            key += request.headers.get(header, "").lower()
        return key

    # -- handlers ---------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """``GET /websocket``: see sidecar.testing.websocket."""
        return await handle_websocket(self.emu, request)

    async def not_implemented(self, request: web.Request) -> web.StreamResponse:
        """Any route the emulator does not have: 501, saying so."""
        raise ApiError(
            501,
            "emulator.not_implemented",
            f"{request.method} {request.path} is not emulated",
            "mm-sidecar's Mattermost emulator implements only the routes its README lists.",
        )

    async def system_ping(self, request: web.Request) -> web.StreamResponse:
        """``GET /system/ping``: no session needed."""
        return json_response({"ActiveSearchBackend": "database", "status": "OK"})

    async def client_config(self, request: web.Request) -> web.StreamResponse:
        """``GET /config/client?format=old``: string values, no session needed."""
        if request.query.get("format") != "old":
            raise ApiError(
                501, "api.config.client.old_format.app_error", "New format not supported yet."
            )
        settings = self.emu.settings
        return json_response(
            {
                "Version": self.emu.server_version,
                "BuildNumber": self.emu.server_version,
                "SiteName": "Mattermost emulator",
                "EnablePostUsernameOverride": _bool(settings["EnablePostUsernameOverride"]),
                "EnablePostIconOverride": _bool(settings["EnablePostIconOverride"]),
            }
        )


def emulated_routes() -> list[str]:
    """``METHOD /api/v4/path`` of every emulated REST route, in the router's order."""
    from sidecar.testing.emulator import Emulator

    emulator = Emulator()
    lines: list[str] = []
    for route in emulator.api_routes(RestApi(emulator)):
        if isinstance(route, web.RouteDef):
            line = f"{route.method} {route.path}"
            if line not in lines and not route.path.endswith("/websocket/"):
                lines.append(line)
    return lines


def _bool(value: Any) -> str:
    return "true" if value else "false"
