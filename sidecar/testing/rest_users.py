"""The emulated REST routes of users, teams, channels and their members (Mattermost 11.6)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidecar.testing.auth import COOKIE
from sidecar.testing.model import ApiError, Channel, User, forbidden, new_id, now_ms
from sidecar.testing.postlists import page_params
from sidecar.testing.rest_base import RestBase, json_response


def no_channels() -> ApiError:
    """The 404 of a user with no channels in a team."""
    return ApiError(404, "app.channel.get_channels.not_found.app_error", "No channels were found.")


def team_member(team_id: str, user_id: str) -> dict[str, Any]:
    """A TeamMember as the server renders it."""
    return {
        "team_id": team_id,
        "user_id": user_id,
        "roles": "team_user",
        "delete_at": 0,
        "scheme_guest": False,
        "scheme_user": True,
        "scheme_admin": False,
        "explicit_roles": "",
    }


def channel_member(channel: Channel, user_id: str, updated: int = 0) -> dict[str, Any]:
    """A ChannelMember as the server renders it (``updated``: its last change, ms; default the
    channel's creation)."""
    return {
        "channel_id": channel.id,
        "user_id": user_id,
        "roles": "channel_user",
        "last_viewed_at": 0,
        "msg_count": 0,
        "mention_count": 0,
        "mention_count_root": 0,
        "urgent_mention_count": 0,
        "msg_count_root": 0,
        "notify_props": {
            "desktop": "default",
            "email": "default",
            "ignore_channel_mentions": "default",
            "mark_unread": "all",
            "push": "default",
        },
        "last_update_at": updated or channel.create_at,
        "scheme_guest": False,
        "scheme_user": True,
        "scheme_admin": False,
        "explicit_roles": "",
    }


class UserRoutes(RestBase):
    """Handlers under ``/users``, ``/teams`` and ``/channels`` (not their posts)."""

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/login`` ``{login_id, password}``: the user, a ``Token`` and cookies."""
        body = await self.body(request)
        user = self.store.user_by_name(str(body.get("login_id", "")))
        password = body.get("password")
        if user is None or not password or self.store.passwords.get(user.id) != password:
            raise ApiError(
                401,
                "api.user.login.invalid_credentials_email_username",
                "Enter a valid email or username and/or password.",
            )
        token = self.store.add_token(user.id)
        csrf = new_id()
        self.store.csrf[token] = csrf
        response = json_response(user.to_json())
        response.headers["Token"] = token
        response.set_cookie(COOKIE, token, path="/", httponly=True)
        response.set_cookie("MMUSERID", user.id, path="/")
        response.set_cookie("MMCSRF", csrf, path="/")
        return response

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}`` (``me`` allowed)."""
        me = self.session(request)
        return json_response(self.store.user(self.user_param(request, me)).to_json())

    async def user_by_name(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/username/{name}``."""
        self.session(request)
        user = self.store.user_by_name(request.match_info["username"])
        if user is None:
            raise ApiError(404, "app.user.get_by_username.app_error", "Unable to find user.")
        return json_response(user.to_json())

    async def users_by_ids(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/ids``: a JSON array of ids in, the users found out (unknown ids are
        left out; an empty or non-array body is a 400)."""
        self.session(request)
        ids = await self.json_body(request)
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid user_ids.")
        users = self.store.users
        return json_response([users[i].to_json() for i in dict.fromkeys(ids) if i in users])

    async def users_by_names(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/usernames`` ``["name", …]``: the users found, unknown names skipped."""
        self.session(request)
        names = await self.json_body(request)
        if not isinstance(names, list) or not names:
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid usernames.")
        found = (self.store.user_by_name(str(n)) for n in names)
        return json_response([u.to_json() for u in found if u is not None])

    async def user_status(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}/status``: online while the user has a live websocket."""
        me = self.session(request)
        user = self.store.user(self.user_param(request, me))
        online = any(
            c.user_id == user.id and c.socket is not None for c in self.emu.hub.connections.values()
        )
        return json_response(
            {
                "user_id": user.id,
                "status": "online" if online else "offline",
                "manual": False,
                "last_activity_at": now_ms() if online else 0,
            }
        )

    async def user_teams(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}/teams``: only one's own teams."""
        me = self.session(request)
        self.own_user_param(request, me)
        teams = [t.to_json() for t in self.store.teams.values() if me.id in t.members]
        return json_response(teams)

    async def user_team_members(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}/teams/members``: one's team memberships."""
        me = self.session(request)
        self.own_user_param(request, me)
        teams = [t for t in self.store.teams.values() if me.id in t.members]
        return json_response([team_member(t.id, me.id) for t in teams])

    def _member_channels(self, user: User, team_id: str | None) -> list[Channel]:
        channels = [
            c
            for c in self.store.channels.values()
            if user.id in c.members and (team_id is None or c.team_id in (team_id, ""))
        ]
        channels.sort(key=lambda c: (c.display_name, c.name))
        return channels

    async def user_channels(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}/teams/{team_id}/channels``: the user's channels of that team plus
        their direct and group channels (``TeamId = '' OR …``); 404 when there are none."""
        me = self.session(request)
        self.own_user_param(request, me)
        team = self.store.team(self.param_id(request, "team_id"))
        if me.id not in team.members:
            raise forbidden()
        channels = self._member_channels(me, team.id)
        if not channels:
            raise no_channels()
        return json_response([c.to_json() for c in channels])

    async def all_user_channels(self, request: web.Request) -> web.StreamResponse:
        """``GET /users/{id}/channels``: the user's channels in every team, DMs and groups."""
        me = self.session(request)
        self.own_user_param(request, me)
        return json_response([c.to_json() for c in self._member_channels(me, None)])

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

    def _channel_in_team(self, me: User, team_id: str, name: str) -> Channel:
        """A team's channel by name; one the user cannot read is reported missing (as the
        server does), an open one of a team the user is not in is 403."""
        team = self.store.team(team_id)
        channel = self.store.channel_by_name(team.id, name)
        if channel is not None and channel.type == "O" and me.id not in team.members:
            raise forbidden()
        if channel is None or not self.store.can_read_channel(me.id, channel):
            raise ApiError(
                404, "app.channel.get_by_name.missing.app_error", "Channel does not exist."
            )
        return channel

    async def channel_by_name(self, request: web.Request) -> web.StreamResponse:
        """``GET /teams/{team_id}/channels/name/{name}``."""
        me = self.session(request)
        team_id = self.param_id(request, "team_id")
        return json_response(
            self._channel_in_team(me, team_id, request.match_info["name"]).to_json()
        )

    async def channel_by_team_name(self, request: web.Request) -> web.StreamResponse:
        """``GET /teams/name/{team}/channels/name/{name}``."""
        me = self.session(request)
        team = self.store.team_by_name(request.match_info["team_name"])
        if team is None:
            raise ApiError(404, "app.team.get_by_name.missing.app_error", "Unable to find team.")
        channel = self._channel_in_team(me, team.id, request.match_info["name"])
        return json_response(channel.to_json())

    async def get_channel(self, request: web.Request) -> web.StreamResponse:
        """``GET /channels/{id}``."""
        me = self.session(request)
        channel = self.store.channel(self.param_id(request, "channel_id"))
        if not self.store.can_read_channel(me.id, channel):
            raise forbidden()
        return json_response(channel.to_json())

    async def direct_channel(self, request: web.Request) -> web.StreamResponse:
        """``POST /channels/direct`` ``[uid1, uid2]`` → 201 the (possibly existing) DM."""
        me = self.session(request)
        ids = await self.json_body(request)
        if not isinstance(ids, list) or len(ids) != 2 or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid user ids.")
        if me.id not in ids:
            raise forbidden()
        channel = self.store.direct_channel(ids[0], ids[1])
        return json_response(channel.to_json(), 201)

    async def channel_members(self, request: web.Request) -> web.StreamResponse:
        """``GET /channels/{id}/members?page=&per_page=``."""
        me = self.session(request)
        channel = self.store.channel(self.param_id(request, "channel_id"))
        if not self.store.can_read_channel(me.id, channel):
            raise forbidden()
        page, per_page = page_params(request.query.get("page"), request.query.get("per_page"))
        members = sorted(channel.members)[page * per_page : (page + 1) * per_page]
        return json_response([channel_member(channel, u) for u in members])

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
        return json_response(channel_member(channel, user_id))
