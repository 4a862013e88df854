"""The emulator's REST API under ``/api/v4`` (reference §5), with Mattermost's permission checks.

Also the middleware every ``/api/v4`` request goes through: call recording, the injected delay
and failures, Mattermost's rate limiter (sidecar.testing.faults), and error bodies
``{id, message, detailed_error, request_id, status_code}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.testing.faults import WEBSOCKET_PATH, RateLimiter
from sidecar.testing.model import ApiError, Post, User, forbidden, go_json, is_valid_id, new_id
from sidecar.testing.websocket import handle_websocket, request_token

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON response encoded as Go does, with exactly ``Content-Type: application/json``."""
    body = (go_json(value) + "\n").encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def error_response(error: ApiError, request_id: str) -> web.Response:
    """The server's JSON error body for ``error``."""
    return json_response(error.body(request_id), error.status)


class RestApi:
    """The ``/api/v4`` routes, bound to one emulator."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.store = emu.store
        self.limiter = RateLimiter()

    def routes(self) -> list[web.RouteDef]:
        """Every route, the catch-all 404 last."""
        api = "/api/v4"
        return [
            web.get(f"{api}/websocket", self.websocket),
            web.get(f"{api}/websocket/", self.websocket),
            web.get(f"{api}/system/ping", self.system_ping),
            web.get(f"{api}/config/client", self.client_config),
            web.get(f"{api}/users/username/{{username}}", self.user_by_name),
            web.post(f"{api}/users/ids", self.users_by_ids),
            web.get(f"{api}/users/{{user_id}}", self.get_user),
            web.get(f"{api}/users/{{user_id}}/teams", self.user_teams),
            web.get(f"{api}/users/{{user_id}}/teams/{{team_id}}/channels", self.user_channels),
            web.get(f"{api}/teams/name/{{name}}", self.team_by_name),
            web.get(f"{api}/teams/{{team_id}}", self.get_team),
            web.get(f"{api}/teams/{{team_id}}/channels/name/{{name}}", self.channel_by_name),
            web.get(f"{api}/channels/{{channel_id}}", self.get_channel),
            web.get(f"{api}/channels/{{channel_id}}/posts", self.channel_posts),
            web.get(f"{api}/channels/{{channel_id}}/members/{{user_id}}", self.channel_member),
            web.post(f"{api}/posts", self.create_post),
            web.get(f"{api}/posts/{{post_id}}", self.get_post),
            web.delete(f"{api}/posts/{{post_id}}", self.delete_post),
            web.put(f"{api}/posts/{{post_id}}/patch", self.patch_post),
            web.post(f"{api}/reactions", self.add_reaction),
            web.route("*", f"{api}/{{tail:.*}}", self.not_found),
        ]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Recording, delay, rate limit, injected failures and error bodies for /api/v4."""
        path = request.path
        if not path.startswith("/api/v4/"):
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
                request.remote or "",
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
                return answer
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

    # -- helpers ----------------------------------------------------------------------------

    def session(self, request: web.Request) -> User:
        """The user behind the request's token, or 401."""
        user_id = self.store.tokens.get(request_token(request) or "\0")
        if user_id is None:
            raise ApiError(
                401,
                "api.context.session_expired.app_error",
                "Invalid or expired session, please login again.",
            )
        return self.store.users[user_id]

    @staticmethod
    def param_id(request: web.Request, name: str) -> str:
        value = request.match_info[name]
        if not is_valid_id(value):
            raise ApiError(
                400, "api.context.invalid_url_param.app_error", f"Invalid or missing {name}."
            )
        return value

    def user_param(self, request: web.Request, me: User) -> str:
        """``{user_id}`` in a path, where ``me`` means the session's user."""
        if request.match_info["user_id"] == "me":
            return me.id
        return self.param_id(request, "user_id")

    async def body(self, request: web.Request) -> dict[str, Any]:
        try:
            value = json.loads(await request.read() or b"null")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid body.")
        return value

    def post_list(self, order: list[str], posts: dict[str, Post]) -> web.Response:
        return json_response(
            {
                "order": order,
                "posts": {pid: self.store.post_json(p) for pid, p in posts.items()},
                "next_post_id": "",
                "prev_post_id": "",
                "has_next": False,
                "first_inaccessible_post_time": 0,
            }
        )

    # -- handlers ---------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """``GET /websocket``: see sidecar.testing.websocket."""
        return await handle_websocket(self.emu, request)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Any other path: the server's JSON 404."""
        raise ApiError(404, "api.context.404.app_error", "Sorry, we could not find the page.")

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

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}`` (``me`` allowed)."""
        me = self.session(request)
        return json_response(self.store.user(self.user_param(request, me)).to_json())

    async def users_by_ids(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/ids``: a JSON array of ids in, the users found out (unknown ids are
        left out; an empty or non-array body is a 400)."""
        self.session(request)
        try:
            ids = json.loads(await request.read() or b"null")
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid user_ids.")
        users = self.store.users
        return json_response([users[i].to_json() for i in dict.fromkeys(ids) if i in users])

    async def user_by_name(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/username/{name}``."""
        self.session(request)
        user = self.store.user_by_name(request.match_info["username"])
        if user is None:
            raise ApiError(404, "app.user.get_by_username.app_error", "Unable to find user.")
        return json_response(user.to_json())

    async def user_teams(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}/teams``: only one's own teams."""
        me = self.session(request)
        if self.user_param(request, me) != me.id:
            raise forbidden()
        teams = [t.to_json() for t in self.store.teams.values() if me.id in t.members]
        return json_response(teams)

    async def user_channels(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}/teams/{team_id}/channels``: the user's channels of that team plus
        their direct and group channels (the server's query takes ``TeamId = '' OR …``)."""
        me = self.session(request)
        if self.user_param(request, me) != me.id:
            raise forbidden()
        team = self.store.team(self.param_id(request, "team_id"))
        if me.id not in team.members:
            raise forbidden()
        channels = [
            c
            for c in self.store.channels.values()
            if me.id in c.members and c.team_id in (team.id, "")
        ]
        channels.sort(key=lambda c: c.display_name)
        return json_response([c.to_json() for c in channels])

    async def get_team(self, request: web.Request) -> web.StreamResponse:
        """``GET /teams/{id}``: members only (teams are not open to all by default)."""
        me = self.session(request)
        team = self.store.team(self.param_id(request, "team_id"))
        if me.id not in team.members:
            raise forbidden()
        return json_response(team.to_json())

    async def team_by_name(self, request: web.Request) -> web.StreamResponse:
        """``GET /teams/name/{name}``."""
        me = self.session(request)
        team = self.store.team_by_name(request.match_info["name"])
        if team is None:
            raise ApiError(404, "app.team.get_by_name.missing.app_error", "Unable to find team.")
        if me.id not in team.members:
            raise forbidden()
        return json_response(team.to_json())

    async def channel_by_name(self, request: web.Request) -> web.StreamResponse:
        """``GET /teams/{team_id}/channels/name/{name}``; a private channel one cannot read is
        reported as missing, as the server does."""
        me = self.session(request)
        team = self.store.team(self.param_id(request, "team_id"))
        channel = self.store.channel_by_name(team.id, request.match_info["name"])
        if channel is not None and channel.type == "O" and me.id not in team.members:
            raise forbidden()
        if channel is None or not self.store.can_read_channel(me.id, channel):
            raise ApiError(
                404, "app.channel.get_by_name.missing.app_error", "Channel does not exist."
            )
        return json_response(channel.to_json())

    async def get_channel(self, request: web.Request) -> web.StreamResponse:
        """``GET /channels/{id}``."""
        me = self.session(request)
        channel = self.store.channel(self.param_id(request, "channel_id"))
        if not self.store.can_read_channel(me.id, channel):
            raise forbidden()
        return json_response(channel.to_json())

    async def channel_member(self, request: web.Request) -> web.StreamResponse:
        """``GET /channels/{id}/members/{user_id}``."""
        me = self.session(request)
        channel = self.store.channel(self.param_id(request, "channel_id"))
        user_id = self.user_param(request, me)
        if not self.store.can_read_channel(me.id, channel):
            raise forbidden()
        if user_id not in channel.members:
            raise ApiError(
                404, "app.channel.get_member.missing.app_error", "No channel member found."
            )
        member = {"channel_id": channel.id, "user_id": user_id, "roles": "channel_user"}
        return json_response(member)

    async def channel_posts(self, request: web.Request) -> web.StreamResponse:
        """``GET /channels/{id}/posts`` with ``since`` (ms) or ``page``/``per_page``."""
        me = self.session(request)
        channel = self.store.channel(self.param_id(request, "channel_id"))
        if not self.store.can_read_channel(me.id, channel):
            raise forbidden()
        try:
            since = int(request.query.get("since", "0") or 0)
            page = int(request.query.get("page", "0"))
            per_page = min(int(request.query.get("per_page", "60")), 200)
        except ValueError:
            raise ApiError(
                400, "api.context.invalid_url_param.app_error", "Invalid URL parameter."
            ) from None
        if since > 0:
            return self.post_list(*self.store.posts_since(channel.id, since))
        return self.post_list(*self.store.posts_page(channel.id, page, per_page))

    async def create_post(self, request: web.Request) -> web.StreamResponse:
        """``POST /posts`` → 201; see Store.create_post for the server's checks."""
        me = self.session(request)
        body = await self.body(request)
        metadata, props, file_ids = body.get("metadata"), body.get("props"), body.get("file_ids")
        priority = metadata.get("priority") if isinstance(metadata, dict) else None
        props = props if isinstance(props, dict) else {}
        file_ids = file_ids if isinstance(file_ids, list) else []
        set_online = request.query.get("set_online", "true").lower() not in ("false", "0")
        post = self.emu.create_post(
            me.id,
            str(body.get("channel_id", "")),
            str(body.get("message", "")),
            root_id=str(body.get("root_id", "") or ""),
            props=props,
            file_ids=[str(f) for f in file_ids],
            type=str(body.get("type", "") or ""),
            pending_post_id=str(body.get("pending_post_id", "") or ""),
            priority=priority if isinstance(priority, dict) else None,
            integration=me.is_bot,
            set_online=set_online,
        )
        return json_response(self.store.post_json(post), 201)

    async def get_post(self, request: web.Request) -> web.StreamResponse:
        """``GET /posts/{id}``: deleted posts are not found."""
        me = self.session(request)
        post = self.store.post(self.param_id(request, "post_id"))
        if post.delete_at:
            raise ApiError(404, "app.post.get.app_error", "Unable to get the post.")
        if not self.store.can_read_channel(me.id, self.store.channels[post.channel_id]):
            raise forbidden()
        return json_response(self.store.post_json(post))

    async def patch_post(self, request: web.Request) -> web.StreamResponse:
        """``PUT /posts/{id}/patch``: one's own posts; emits ``post_edited``."""
        me = self.session(request)
        post_id = self.param_id(request, "post_id")
        body = await self.body(request)
        post = self.store.posts.get(post_id)
        if post is None or post.delete_at or post.user_id != me.id:
            raise forbidden()
        message = body.get("message")
        props = body.get("props")
        edited = self.emu.edit(
            post_id,
            message if isinstance(message, str) else post.message,
            props=props if isinstance(props, dict) else None,
        )
        return json_response(edited)

    async def delete_post(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /posts/{id}``: one's own posts; emits ``post_deleted``."""
        me = self.session(request)
        post = self.store.post(self.param_id(request, "post_id"))
        if post.user_id != me.id:
            raise forbidden()
        self.emu.delete(post.id, deleted_by=me.id)
        return json_response({"status": "OK"})

    async def add_reaction(self, request: web.Request) -> web.StreamResponse:
        """``POST /reactions`` with ``{user_id, post_id, emoji_name}``; emits ``reaction_added``."""
        me = self.session(request)
        body = await self.body(request)
        if body.get("user_id") != me.id:
            raise forbidden()
        post = self.store.post(str(body.get("post_id", "")))
        if me.id not in self.store.channels[post.channel_id].members:
            raise forbidden()
        reaction = self.emu.react(me.id, post.id, str(body.get("emoji_name", "")))
        return json_response(reaction)


def _bool(value: Any) -> str:
    return "true" if value else "false"
