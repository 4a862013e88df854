"""join.py's pure choices, and the websocket events that wake the joiner."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.config import WebhookConfig
from sidecar.events import ChannelOpened, MemberAdded, parse_frame
from sidecar.join import catch_up_from, channels_to_join, covers_public, teams_in_scope
from sidecar.models import Channel, Team
from sidecar.rules import RuleSet

T1, T2 = Team("t1", "one"), Team("t2", "two")


def hook(**kw: Any) -> WebhookConfig:
    return WebhookConfig(index=0, name="h", callback_urls=("http://x/",), token="t", **kw)


def chan(cid: str, type: str = "O", *, team: str = "t1", **kw: Any) -> Channel:
    return Channel(cid, team, type, cid, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "covers"),
    [
        ({}, True),
        ({"channels": ("dev",)}, True),
        ({"channel_types": frozenset({"O", "P"})}, True),
        ({"channel_types": frozenset({"P", "D"})}, False),
    ],
)
def test_covers_public(kw: dict[str, Any], covers: bool) -> None:
    assert covers_public(hook(**kw)) is covers


def test_teams_in_scope() -> None:
    mine = [T1, T2]
    assert teams_in_scope([hook(team="one")], mine) == ([T1], [])
    assert teams_in_scope([hook(team="t2")], mine) == ([T2], [])
    assert teams_in_scope([hook()], mine) == ([T1, T2], [])
    assert teams_in_scope([hook(team="three"), hook(team="one")], mine) == ([T1], ["three"])
    private_only = hook(team="two", channel_types=frozenset({"P"}))
    assert teams_in_scope([private_only], mine) == ([], [])


def test_channels_to_join() -> None:
    listed = [
        chan("a"),
        chan("b"),
        chan("archived", delete_at=5),
        chan("priv", "P"),
        chan("member"),
        chan("refused"),
    ]
    rules = RuleSet([hook(team="one", trigger_words=("#x",))], bot_user_id="bot")
    got = channels_to_join(rules, T1, listed, {"member"}, {"refused"})
    assert [c.id for c in got] == ["a", "b"]
    # A webhook that names channels only causes those to be joined.
    named = RuleSet([hook(team="one", channels=("b",))], bot_user_id="bot")
    assert [c.id for c in channels_to_join(named, T1, listed, set())] == ["b"]
    # Another team's webhook: nothing here.
    other = RuleSet([hook(team="two", trigger_words=("#x",))], bot_user_id="bot")
    assert channels_to_join(other, T1, listed, set()) == []


@pytest.mark.parametrize(
    ("create_at", "floor", "expected"),
    [
        (95_000, 0, 95_000),  # created within the window: from its creation
        (10_000, 0, 40_000),  # older: from the window's start (now 100 s - 60 s)
        (95_000, 97_000, 97_000),  # processing began later (first start): no history
    ],
)
def test_catch_up_from(create_at: int, floor: int, expected: int) -> None:
    channel = chan("c", create_at=create_at)
    assert catch_up_from(channel, now=100_000, window=60, floor=floor) == expected


def frame(event: str, data: dict[str, Any], **broadcast: str) -> str:
    return json.dumps({"event": event, "data": data, "broadcast": broadcast, "seq": 3})


def test_events_that_wake_the_joiner() -> None:
    assert parse_frame(frame("channel_converted", {"channel_id": "c1"}, team_id="t1")).event == (
        ChannelOpened("c1", "channel_converted")
    )
    assert parse_frame(frame("channel_restored", {"channel_id": "c1"})).event == (
        ChannelOpened("c1", "channel_restored")
    )
    # user_added names the channel only in the broadcast.
    added = frame("user_added", {"user_id": "u1", "team_id": "t1"}, channel_id="c9")
    assert parse_frame(added).event == MemberAdded("u1", "t1", "c9")
    to_team = frame("added_to_team", {"user_id": "u1", "team_id": "t1"}, user_id="u1")
    assert parse_frame(to_team).event == MemberAdded("u1", "t1", "")
