"""Shared fixtures: an emulated Mattermost with a small world, and a callback recorder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import harness
from pg import pg_cluster, pg_url  # noqa: F401  (fixtures: a throw-away PostgreSQL)
from sidecar.testing.emulator import Emulator
from sidecar.testing.recorder import CallbackRecorder


@dataclass
class World:
    """An emulator and what the `emulator` fixture put in it.

    Team "someteam" with alice, bob, carol and the bot "sidecar-bot"; public "town-square"
    (alice, bob, bot — not carol), private "private-room" (alice, bot), a DM alice↔bot.
    Every user has a token.
    """

    mm: Emulator
    team: dict[str, Any]
    alice: dict[str, Any]
    bob: dict[str, Any]
    carol: dict[str, Any]
    bot: dict[str, Any]
    town: dict[str, Any]
    private: dict[str, Any]
    dm: dict[str, Any]
    tokens: dict[str, str]  # by username

    @property
    def bot_token(self) -> str:
        """The bot's access token."""
        return self.tokens["sidecar-bot"]

    @property
    def ws_url(self) -> str:
        """The websocket endpoint."""
        return self.mm.url.replace("http://", "ws://", 1) + "/api/v4/websocket"

    def auth(self, username: str = "sidecar-bot") -> dict[str, str]:
        """An Authorization header for that user."""
        return {"Authorization": f"Bearer {self.tokens[username]}"}


def build_world(mm: Emulator) -> World:
    """Create the standard world on ``mm``."""
    team = mm.create_team("someteam", "Some Team")
    alice = mm.create_user("alice")
    bob = mm.create_user("bob")
    carol = mm.create_user("carol")
    bot = mm.create_user("sidecar-bot", is_bot=True)
    for user in (alice, bob, carol, bot):
        mm.add_team_member(team["id"], user["id"])
    town = mm.create_channel(
        team["id"], "town-square", "O", "Town Square", [alice["id"], bob["id"], bot["id"]]
    )
    private = mm.create_channel(team["id"], "private-room", "P", "", [alice["id"], bot["id"]])
    dm = mm.create_direct_channel(alice["id"], bot["id"])
    tokens = {u["username"]: mm.create_token(u["id"]) for u in (alice, bob, carol, bot)}
    return World(mm, team, alice, bob, carol, bot, town, private, dm, tokens)


@pytest.fixture
async def emulator() -> AsyncIterator[World]:
    """A running emulator (fast pings and timeouts) holding the standard world."""
    async with Emulator(ping_interval=0.2, pong_timeout=1.0, auth_timeout=0.5) as mm:
        yield build_world(mm)


@pytest.fixture
async def recorder() -> AsyncIterator[CallbackRecorder]:
    """A running callback recorder."""
    async with CallbackRecorder() as rec:
        yield rec


@pytest.fixture
async def world() -> AsyncIterator[harness.World]:
    """A running emulator holding the sidecar tests' world (tests/harness.py)."""
    async with Emulator(ping_interval=5.0) as mm:
        yield harness.seed(mm)


@pytest.fixture
async def cb() -> AsyncIterator[CallbackRecorder]:
    """A running callback recorder for the sidecar tests."""
    async with CallbackRecorder() as rec:
        yield rec
