"""The emulator's public-channel lifecycle and joins (Mattermost 11.6).

* ``GET /teams/{team_id}/channels?page=&per_page=``: the team's live public channels, sorted by
  display name (the server's GetPublicChannelsForTeam), ``per_page`` at most 200 (default 60);
  403 for a user who is not a team member.
* ``POST /channels/{channel_id}/members`` ``{"user_id": …}``: 201 with the ChannelMember.
  Joining oneself to a public channel needs *join public channels* (team members have it;
  :meth:`PublicChannels.refuse_joins` takes it away → 403); adding someone else needs to be a
  member; a private channel only by its members; an archived channel → 400. The server
  publishes ``user_added`` to the channel's members, then posts "<username> joined the
  channel." (``system_join_channel``) as the joining user, or "<added> added to the channel by
  <adder>." (``system_add_to_channel``). Adding a member again changes nothing (201).
* Test controls: a channel created by a user (``channel_created`` to its creator only: team
  members are not told), conversion (``channel_converted`` to the team), archiving
  (``channel_deleted``) and restoring (``channel_restored``, to the team).

Where the reference is silent, the emulator chooses: the archived-channel join answers 400
``api.channel.add_user_to_channel.deleted.app_error``; the conversion's system message is
posted only when the converting user is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.testing.model import ApiError, Channel, forbidden, is_valid_id, now_ms
from sidecar.testing.postlists import page_params
from sidecar.testing.rest import RestApi
from sidecar.testing.rest_base import json_response
from sidecar.testing.rest_users import channel_member
from sidecar.testing.websocket import broadcast

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator


class PublicChannels:
    """Test controls for channel lifecycle and join permissions (``emulator.public``)."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.refused: set[str] = set()  # users without the join-public-channels permission

    def refuse_joins(self, user_id: str, refused: bool = True) -> None:
        """Take away (or give back) the user's permission to join public channels."""
        (self.refused.add if refused else self.refused.discard)(user_id)

    def add_to_team(self, team_id: str, user_id: str) -> None:
        """Add a user to a team; ``added_to_team`` goes to that user."""
        self.emu.store.add_team_member(team_id, user_id)
        data = {"team_id": team_id, "user_id": user_id}
        self.emu.hub.publish("added_to_team", data, broadcast(user_id=user_id), {user_id})

    def create_channel_as(
        self, creator_id: str, team_id: str, name: str, type: str = "O", display_name: str = ""
    ) -> dict[str, Any]:
        """A channel created by a user: only the creator is a member, and only the creator is
        sent ``channel_created`` (the server does not tell the team about a new channel)."""
        store = self.emu.store
        channel = store.add_channel(team_id, name, type, display_name, [creator_id])
        channel.creator_id = creator_id
        data = {"channel_id": channel.id, "team_id": team_id}
        self.emu.hub.publish("channel_created", data, broadcast(user_id=creator_id), {creator_id})
        return channel.to_json()

    def convert(self, channel_id: str, type: str = "O", *, by_user_id: str = "") -> None:
        """Make a channel public (or private); ``channel_converted`` goes to the whole team."""
        channel = self.emu.store.channel(channel_id)
        channel.type = type
        channel.update_at = now_ms()
        if by_user_id:
            kind = "a Public Channel and can be joined by any team member"
            if type == "P":
                kind = "a Private Channel"
            self._system_post(
                by_user_id,
                channel,
                f"This channel has been converted to {kind}.",
                "system_change_chan_privacy",
            )
        self._to_team(channel, "channel_converted", {"channel_id": channel.id})

    def archive(self, channel_id: str) -> None:
        """Archive a channel (members are kept); ``channel_deleted`` goes to the team."""
        channel = self.emu.store.channel(channel_id)
        channel.delete_at = channel.update_at = now_ms()
        data = {"channel_id": channel.id, "delete_at": channel.delete_at}
        self._to_team(channel, "channel_deleted", data)

    def restore(self, channel_id: str) -> None:
        """Unarchive a channel; ``channel_restored`` goes to the team."""
        channel = self.emu.store.channel(channel_id)
        channel.delete_at = 0
        channel.update_at = now_ms()
        self._to_team(channel, "channel_restored", {"channel_id": channel.id})

    def join(self, actor_id: str, channel_id: str, user_id: str) -> dict[str, Any]:
        """``POST /channels/{id}/members`` as ``actor_id``: the server's checks and events."""
        store = self.emu.store
        channel = store.channel(channel_id)
        user = store.user(user_id)
        if channel.type not in ("O", "P"):
            raise ApiError(400, "api.channel.add_user.to.channel.failed.app_error", "Bad type.")
        team = store.team(channel.team_id)
        if actor_id not in team.members or user.id not in team.members:
            raise forbidden()
        if channel.type == "P" or user_id != actor_id:
            if actor_id not in channel.members:
                raise forbidden()
        elif actor_id in self.refused:
            raise forbidden()
        if channel.delete_at:
            raise ApiError(
                400,
                "api.channel.add_user_to_channel.deleted.app_error",
                "The channel has been archived or deleted.",
            )
        member = channel_member(channel, user_id, now_ms())
        if user_id in channel.members:
            return member
        self.emu.add_channel_member(channel.id, user_id)  # publishes user_added
        if user_id == actor_id:
            message = f"{user.username} joined the channel."
            props = {"username": user.username}
            self._system_post(user_id, channel, message, "system_join_channel", props)
        else:
            adder = store.user(actor_id).username
            message = f"{user.username} added to the channel by {adder}."
            props = {
                "userId": actor_id,
                "username": adder,
                "addedUserId": user.id,
                "addedUsername": user.username,
            }
            self._system_post(actor_id, channel, message, "system_add_to_channel", props)
        return member

    def _system_post(
        self,
        user_id: str,
        channel: Channel,
        message: str,
        type: str,
        props: dict[str, Any] | None = None,
    ) -> None:
        self.emu.create_post(
            user_id,
            channel.id,
            message,
            props=props,
            type=type,
            integration=self.emu.store.user(user_id).is_bot,
            check_type=False,
        )

    def _to_team(self, channel: Channel, event: str, data: dict[str, Any]) -> None:
        team = self.emu.store.team(channel.team_id)
        bcast = broadcast(team_id=team.id)
        self.emu.hub.publish(event, data, bcast, set(team.members))


class PublicRoutes:
    """The REST routes of this module, bound to the emulator's RestApi."""

    def __init__(self, rest: RestApi) -> None:
        self.rest = rest

    def routes(self, api: str) -> list[web.RouteDef]:
        """Route definitions, to go before the catch-all."""
        return [
            web.get(f"{api}/teams/{{team_id}}/channels", self.team_channels),
            web.post(f"{api}/channels/{{channel_id}}/members", self.add_member),
        ]

    async def team_channels(self, request: web.Request) -> web.StreamResponse:
        """``GET /teams/{team_id}/channels``: live public channels by display name, paged."""
        me = self.rest.session(request)
        store = self.rest.store
        team = store.team(self.rest.param_id(request, "team_id"))
        if me.id not in team.members:
            raise forbidden()
        page, per_page = page_params(request.query.get("page"), request.query.get("per_page"))
        public = sorted(
            (
                c
                for c in store.channels.values()
                if c.team_id == team.id and c.type == "O" and not c.delete_at
            ),
            key=lambda c: (c.display_name, c.name),
        )
        chosen = public[page * per_page : (page + 1) * per_page]
        return json_response([c.to_json() for c in chosen])

    async def add_member(self, request: web.Request) -> web.StreamResponse:
        """``POST /channels/{channel_id}/members``: see :meth:`PublicChannels.join`."""
        me = self.rest.session(request)
        channel_id = self.rest.param_id(request, "channel_id")
        body = await self.rest.body(request)
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not is_valid_id(user_id):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid user_id.")
        member = self.rest.emu.public.join(me.id, channel_id, user_id)
        return json_response(member, 201)
