"""Unit tests where catch-up bugs lived: the server clock, the seq check, catch-up of given
channels from a given position (the path a join will use)."""

from __future__ import annotations

import asyncio
import email.utils
from typing import Any

import pytest
from test_catchup_property import CHANNELS, TEAM, World, post_id_of

import sidecar.mattermost
from sidecar.gateway import Desync, Gateway
from sidecar.mattermost import RestClient

NOW = 1_800_000_000_000  # ms, a whole second


def date_header(ms: int) -> str:
    return email.utils.formatdate(ms / 1000, usegmt=True)


@pytest.mark.parametrize(
    ("ours", "server", "expected"),
    [
        (NOW + 300, NOW + 700, NOW + 300),  # agrees within the header's second: our clock
        (NOW + 7_200_000, NOW + 700, NOW),  # two hours ahead: the server's, never ahead of it
        (NOW - 7_200_000, NOW + 700, NOW),  # two hours behind
    ],
)
def test_server_now_from_the_date_header(
    monkeypatch: pytest.MonkeyPatch, ours: int, server: int, expected: int
) -> None:
    monkeypatch.setattr(sidecar.mattermost, "local_now_ms", lambda: ours)
    rest = RestClient("http://mm.example.com", "token")
    assert rest.server_now_ms() == ours  # before any answer
    rest._note_date(date_header(server), sent=ours)
    assert rest.server_now_ms() == expected
    assert rest.server_now_ms() <= server
    rest._note_date("not a date", sent=ours)  # ignored
    assert rest.server_now_ms() == expected


def gateway() -> Gateway:
    async def sink(_item: Any) -> None:
        pass

    return Gateway("http://mm.example.com", "token", sink)


def test_seq_leap_is_a_desync() -> None:
    gw = gateway()
    gw.next_seq = 5
    assert gw._in_order(5) and gw.next_seq == 6
    with pytest.raises(Desync):
        gw._in_order(10**12)
    assert gw.next_seq == 6  # not adopted: later frames are not taken for replays


def test_seq_backwards_is_a_desync_outside_a_replay() -> None:
    gw = gateway()
    gw.next_seq = 5
    with pytest.raises(Desync):
        gw._in_order(3)


def test_resume_replay_may_repeat_until_it_reaches_our_position() -> None:
    gw = gateway()
    gw.next_seq, gw._replaying = 5, True
    assert not gw._in_order(3)  # a duplicate: skipped
    assert not gw._in_order(4)
    assert gw._in_order(5)
    with pytest.raises(Desync):
        gw._in_order(4)  # the replay is over


def test_catch_up_of_one_channel_from_a_position() -> None:
    """The join path: one channel, from a given server time, de-duplicated with the rest."""
    world = World(0, 1)

    async def run() -> None:
        await world.start()
        s = world.server
        s.real += 10
        since = s.now()
        s.real += 10
        mine = s.post(CHANNELS[0], "alice", 0)
        other = s.post(CHANNELS[1], "alice", 0)
        assert world.dispatcher is not None
        await world.dispatcher.catch_up(channels=[(CHANNELS[0], TEAM)], since=since)
        assert world.outbox.ids == [post_id_of(mine)]
        await world.dispatcher.catch_up(channels=[(CHANNELS[0], TEAM)], since=since)
        await world.dispatcher.catch_up()  # the usual catch-up finds only the other one
        assert world.outbox.ids == [post_id_of(mine), post_id_of(other)]

    asyncio.run(run())


def test_a_cursor_older_than_the_start_is_raised_to_it() -> None:
    """A state file where an edit or a reaction wrote cursor 0 (before the fix) replays no
    history after the upgrade."""
    world = World(0, 2)
    world.server.post(CHANNELS[0], "alice", 0)  # history
    world.server.real += 1000
    world.state.start = world.server.now()
    world.state.cursors = {CHANNELS[0].id: 0}

    async def run() -> None:
        world.dispatcher = world.new_dispatcher()
        await world.dispatcher.gap()
        assert world.outbox.ids == []
        fresh = world.server.post(CHANNELS[0], "alice", 0)
        await world.dispatcher.gap()
        assert world.outbox.ids == [post_id_of(fresh)]

    asyncio.run(run())
