"""The emulator's control surface over HTTP, for people running it as a process.

JSON in and out, no token (the emulator binds to localhost); errors use the server's error
body. Users may be named by ``user_id`` or ``username``, channels by ``channel_id`` or by
``channel_name`` plus ``team`` (team name or id).

==========  ==========================  =====================================================
method      path                        what it does
==========  ==========================  =====================================================
GET         /_emulator/state            users (with their tokens), teams, channels (with
                                        members), settings, live websocket count
POST        /_emulator/posts            ``{user, channel, message, root_id?, props?,
                                        file_ids?, type?, create_at?}`` → 201 the post
                                        (emits ``posted``)
PUT         /_emulator/posts/{id}       ``{message}`` → the edited post (``post_edited``)
DELETE      /_emulator/posts/{id}       deletes it (``post_deleted``)
POST        /_emulator/reactions        ``{user, post_id, emoji_name}`` → the reaction
PATCH       /_emulator/settings         ``{Key: value, …}`` → all settings
POST        /_emulator/drop             cuts every websocket; resumes replay
POST        /_emulator/restart          cuts every websocket, forgets connections (new hello)
==========  ==========================  =====================================================
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.testing.model import ApiError, new_id

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: json.dumps(v, indent=1))


class ControlApi:
    """The ``/_emulator`` routes, bound to one emulator."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.store = emu.store

    def routes(self) -> list[web.RouteDef]:
        """Every control route."""
        return [
            web.get("/_emulator/state", self._wrap(self.state)),
            web.post("/_emulator/posts", self._wrap(self.create_post)),
            web.put("/_emulator/posts/{post_id}", self._wrap(self.edit_post)),
            web.delete("/_emulator/posts/{post_id}", self._wrap(self.delete_post)),
            web.post("/_emulator/reactions", self._wrap(self.react)),
            web.patch("/_emulator/settings", self._wrap(self.patch_settings)),
            web.post("/_emulator/drop", self._wrap(self.drop)),
            web.post("/_emulator/restart", self._wrap(self.restart)),
        ]

    def _wrap(self, fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                body: dict[str, Any] = {}
                if request.can_read_body:
                    loaded = json.loads(await request.read() or b"{}")
                    if not isinstance(loaded, dict):
                        raise ValueError("the body must be a JSON object")
                    body = loaded
                result: web.StreamResponse = await fn(request, body)
                return result
            except ApiError as error:
                return _json(error.body(new_id()), error.status)
            except (KeyError, ValueError, TypeError) as error:
                return _json(ApiError(400, "emulator.bad_request", str(error)).body(new_id()), 400)

        return handler

    def _user_id(self, body: dict[str, Any]) -> str:
        if "user_id" in body:
            return str(body["user_id"])
        user = self.store.user_by_name(str(body.get("username", "")))
        if user is None:
            raise ValueError(f"unknown user {body.get('username')!r}")
        return user.id

    def _channel_id(self, body: dict[str, Any]) -> str:
        if "channel_id" in body:
            return str(body["channel_id"])
        team_ref = str(body.get("team", ""))
        team = self.store.teams.get(team_ref) or self.store.team_by_name(team_ref)
        if team is None:
            raise ValueError(f"unknown team {team_ref!r}")
        channel = self.store.channel_by_name(team.id, str(body.get("channel_name", "")))
        if channel is None:
            raise ValueError(f"unknown channel {body.get('channel_name')!r}")
        return channel.id

    async def state(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Everything the emulator holds, minus posts."""
        store = self.store
        tokens: dict[str, list[str]] = {}
        for token, user_id in store.tokens.items():
            tokens.setdefault(user_id, []).append(token)
        users = [{**u.to_json(), "tokens": tokens.get(u.id, [])} for u in store.users.values()]
        channels = [{**c.to_json(), "members": sorted(c.members)} for c in store.channels.values()]
        teams = [{**t.to_json(), "members": sorted(t.members)} for t in store.teams.values()]
        return _json(
            {
                "url": self.emu.url,
                "settings": self.emu.settings,
                "users": users,
                "teams": teams,
                "channels": channels,
                "connections": self.emu.connections,
            }
        )

    async def create_post(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Post as a user."""
        create_at = body.get("create_at")
        post = self.emu.post(
            self._user_id(body),
            self._channel_id(body),
            str(body.get("message", "")),
            root_id=str(body.get("root_id", "")),
            props=dict(body.get("props") or {}),
            file_ids=[str(f) for f in body.get("file_ids") or []],
            type=str(body.get("type", "")),
            create_at=int(create_at) if create_at is not None else None,
        )
        return _json(post, 201)

    async def edit_post(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Edit a post's message."""
        return _json(self.emu.edit(request.match_info["post_id"], str(body["message"])))

    async def delete_post(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Delete a post."""
        self.emu.delete(request.match_info["post_id"])
        return _json({"status": "OK"})

    async def react(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """React to a post as a user."""
        reaction = self.emu.react(
            self._user_id(body), str(body["post_id"]), str(body["emoji_name"])
        )
        return _json(reaction)

    async def patch_settings(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        """Change server settings."""
        unknown = set(body) - set(self.emu.settings)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        self.emu.settings.update(body)
        return _json(self.emu.settings)

    async def drop(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Cut every websocket."""
        await self.emu.drop_websockets()
        return _json({"status": "OK"})

    async def restart(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Cut every websocket and forget connections."""
        await self.emu.restart()
        return _json({"status": "OK"})
