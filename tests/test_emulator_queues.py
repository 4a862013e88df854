"""Events are numbered when *sent*; a disconnected connection
holds a 256-slot send queue (overflow drops the connection); the dead queue keeps the last 128
sent events for a resume."""

from __future__ import annotations

from harness import World, seed
from sidecar.testing.emulator import Emulator
from sidecar.testing.hub import broadcast
from tests.emulator_helpers import connect, dropped, hello, message, recv


async def test_events_queued_while_disconnected_are_numbered_when_sent() -> None:
    # A dead queue of 4 does not limit what waits in the send queue.
    async with Emulator(buffer_size=4) as mm:
        w = seed(mm)
        ws, first = await hello(w)
        conn_id = first["data"]["connection_id"]
        await dropped(w, ws)
        for i in range(6):
            mm.post(w.alice["id"], w.town["id"], f"queued {i}")
        async with await connect(w, connection_id=conn_id, sequence_number=1) as again:
            frames = [await recv(again) for _ in range(6)]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert [message(f) for f in frames] == [f"queued {i}" for i in range(6)]


async def test_send_queue_holds_256_and_overflow_drops_the_connection(emulator: World) -> None:
    w = emulator
    hub = w.mm.hub
    first_ws, first = await hello(w)
    second_ws, second = await hello(w)
    kept_id, over_id = first["data"]["connection_id"], second["data"]["connection_id"]
    await w.mm.drop_websockets()
    await first_ws.close()
    await second_ws.close()
    for i in range(256):
        hub.publish("typing", {"n": i}, broadcast(), {w.bot["id"]})
    assert {kept_id, over_id} <= set(hub.connections)  # 256 fit
    async with await connect(w, connection_id=kept_id, sequence_number=1) as again:
        frames = [await recv(again) for _ in range(256)]
        assert [f["seq"] for f in frames] == list(range(1, 257))
        hub.publish("typing", {"n": 256}, broadcast(), {w.bot["id"]})  # the 257th
        assert (await recv(again))["seq"] == 257
    assert over_id not in hub.connections  # its queue overflowed: dropped
    async with await connect(w, connection_id=over_id, sequence_number=1) as late:
        renewed = await recv(late)
        assert renewed["event"] == "hello" and renewed["seq"] == 0
        assert renewed["data"]["connection_id"] != over_id
        w.mm.post(w.alice["id"], w.town["id"], "after the overflow")
        nxt = await recv(late)
        assert (nxt["seq"], message(nxt)) == (1, "after the overflow")  # nothing was kept


async def test_dead_queue_keeps_the_last_128_sent_events(emulator: World) -> None:
    w = emulator
    ws, first = await hello(w)
    conn_id = first["data"]["connection_id"]
    for i in range(130):
        w.mm.post(w.alice["id"], w.town["id"], f"live {i}")
    seen = [await recv(ws) for _ in range(130)]
    assert seen[-1]["seq"] == 130
    await dropped(w, ws)
    # Sent: seq 0..130; the dead queue holds the last 128, seq 3..130.
    async with await connect(w, connection_id=conn_id, sequence_number=3) as again:
        replayed = [await recv(again) for _ in range(128)]
        assert [f["seq"] for f in replayed] == list(range(3, 131))
        assert message(replayed[0]) == "live 2"
        await dropped(w, again)
    async with await connect(w, connection_id=conn_id, sequence_number=2) as older:
        renewed = await recv(older)
        assert renewed["event"] == "hello" and renewed["data"]["connection_id"] != conn_id
