"""The emulator's directory: users, access tokens, teams and channels with their members.

Mattermost's rules for them (names, DM and group channel naming, who may read a channel);
refusals raise `ApiError` with the server's status and error id.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from sidecar.testing.model import ApiError, Channel, Team, User, new_id, now_ms


class Directory:
    """Users, tokens, teams and channels. Synchronous; used from the event loop only."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.users: dict[str, User] = {}
        self.tokens: dict[str, str] = {}
        self.teams: dict[str, Team] = {}
        self.channels: dict[str, Channel] = {}
        self.passwords: dict[str, str] = {}  # by user id
        self.csrf: dict[str, str] = {}  # CSRF token by session token (logins)

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

    def add_token(self, user_id: str, token: str | None = None) -> str:
        """A new access token for the user (``token`` fixes its value, for seed files)."""
        self.user(user_id)
        token = token or new_id()
        if self.tokens.get(token, user_id) != user_id:
            raise ValueError("that token belongs to another user")
        self.tokens[token] = user_id
        return token

    def set_password(self, user_id: str, password: str) -> None:
        """Let the user log in with ``password`` (bots cannot log in with one)."""
        if self.user(user_id).is_bot:
            raise ValueError("bots have no password")
        self.passwords[user_id] = password

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
