"""The server's resume rules."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from harness import World, seed, wait_until
from sidecar.testing.emulator import Emulator
from sidecar.testing.model import new_id
from tests.emulator_helpers import connect, dropped, hello, message, recv


async def test_too_old_gets_a_new_hello_then_the_still_queued_events() -> None:
    """Item 2: older than the dead queue → new hello (new id, seq 0), then what was queued."""
    async with Emulator(buffer_size=4) as mm:
        w = seed(mm)
        ws, first = await hello(w)
        conn_id = first["data"]["connection_id"]
        for i in range(6):
            mm.post(w.alice["id"], w.town["id"], f"seen {i}")
        assert [(await recv(ws))["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
        await dropped(w, ws)  # the dead queue holds seq 3..6
        mm.post(w.alice["id"], w.town["id"], "queued a")
        mm.post(w.alice["id"], w.town["id"], "queued b")
        async with await connect(w, connection_id=conn_id, sequence_number=2) as again:
            renewed = await recv(again)
            assert (renewed["event"], renewed["seq"]) == ("hello", 0)
            assert renewed["data"]["connection_id"] != conn_id
            then = [await recv(again) for _ in range(2)]
            assert [(f["seq"], message(f)) for f in then] == [(1, "queued a"), (2, "queued b")]
            mm.post(w.alice["id"], w.town["id"], "live")
            assert (await recv(again))["seq"] == 3


async def test_sequence_zero_replays_nothing_and_restarts_numbering(emulator: World) -> None:
    """Item 3: ``sequence_number=0`` on a known connection: no replay, no hello, from 0."""
    w = emulator
    ws, first = await hello(w)
    conn_id = first["data"]["connection_id"]
    w.mm.post(w.alice["id"], w.town["id"], "seen")
    assert (await recv(ws))["seq"] == 1
    await dropped(w, ws)
    w.mm.post(w.alice["id"], w.town["id"], "queued")
    async with await connect(w, connection_id=conn_id, sequence_number=0) as again:
        frame = await recv(again)
        assert (frame["seq"], message(frame)) == (0, "queued")
        w.mm.post(w.alice["id"], w.town["id"], "live")
        assert (await recv(again))["seq"] == 1
    assert conn_id in w.mm.hub.connections


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("seq", [None, "", "abc"])
async def test_missing_or_invalid_sequence_number_closes_the_socket(
    emulator: World, known: bool, seq: str | None
) -> None:
    """Item 3: a connection id with a missing/invalid ``sequence_number``: socket closed."""
    w = emulator
    ws, first = await hello(w)
    await dropped(w, ws)
    conn_id = first["data"]["connection_id"] if known else new_id()
    query = (
        {"connection_id": conn_id}
        if seq is None
        else {"connection_id": conn_id, "sequence_number": seq}
    )
    async with await connect(w, **query) as again:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(again.recv(), 5)


async def test_unknown_connection_with_a_valid_sequence_gets_a_new_hello(emulator: World) -> None:
    """Item 3: an unknown id with a valid sequence number → new id and hello."""
    w = emulator
    asked = new_id()
    again, second = await hello(w, connection_id=asked, sequence_number=5)
    async with again:
        assert second["seq"] == 0 and second["data"]["connection_id"] != asked


async def test_resume_while_the_old_socket_is_active_gets_a_new_id(emulator: World) -> None:
    """Item 3: only inactive connections are reused; the old socket goes on."""
    w = emulator
    old, first = await hello(w)
    conn_id = first["data"]["connection_id"]
    again, second = await hello(w, connection_id=conn_id, sequence_number=1)
    async with old, again:
        assert second["seq"] == 0 and second["data"]["connection_id"] != conn_id
        w.mm.post(w.alice["id"], w.town["id"], "both")
        assert [(await recv(old))["seq"], (await recv(again))["seq"]] == [1, 1]


async def test_reaper_forgets_idle_inactive_connections_only() -> None:
    """Item 3: the reaper removes inactive connections idle over ``reap_after``."""
    async with Emulator(reap_after=0.2, reap_every=0.05) as mm:
        w = seed(mm)
        live, _ = await hello(w)
        gone, first = await hello(w)
        conn_id = first["data"]["connection_id"]
        await gone.close()
        await wait_until(lambda: conn_id not in mm.hub.connections, what="the reaper")
        async with live:
            assert mm.connections == 1  # the active one is never reaped
            mm.post(w.alice["id"], w.town["id"], "still here")
            assert message(await recv(live)) == "still here"
        again, second = await hello(w, connection_id=conn_id, sequence_number=1)
        async with again:
            assert second["data"]["connection_id"] != conn_id


def test_reaper_defaults_are_the_servers() -> None:
    """Item 3: 5 minutes idle, checked every 5 minutes."""
    hub = Emulator().hub
    assert (hub.reap_after, hub.reap_every) == (300.0, 300.0)
