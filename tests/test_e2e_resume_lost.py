"""The daemon against the server's resume when its sequence number is older than the dead
queue (reference §6, issue 12 item 2): a new hello, then the events still queued — the same
posts arrive over the socket *and* through the REST catch-up, and each is delivered once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

from harness import World, make_config, running, wait_until
from sidecar.testing.hub import broadcast
from sidecar.testing.recorder import CallbackRecorder


async def test_too_old_resume_then_queued_posts_are_delivered_once(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    mm = world.mm
    hooks = [{"channels": ["dev"], "callback_urls": [cb.url_for()]}]
    async with running(make_config(world, tmp_path, hooks)) as app:
        first_connection = app.gateway.connection_id
        mm.post(world.alice["id"], world.dev["id"], "live")
        await cb.wait_for(1)
        (conn,) = [c for c in mm.hub.connections.values() if c.user_id == world.bot["id"]]
        # 130 events written and lost on the way: the dead queue moves past the daemon's seq.
        mm.black_hole_websockets()
        typing = {"parent_id": "", "user_id": world.alice["id"]}
        for _ in range(130):
            mm.hub.publish("typing", typing, broadcast(channel_id=world.dev["id"]), {conn.user_id})
        await wait_until(lambda: not conn.pending, what="the lost events written")
        mm.fail_next(1_000_000, 503, path_prefix="/api/v4/websocket")
        await mm.drop_websockets()
        mm.black_hole_websockets(False)
        await wait_until(lambda: not app.gateway.connected, what="disconnected")
        for i in range(5):
            mm.post(world.alice["id"], world.dev["id"], f"away {i}")  # queued for the socket
        mm.clear_failures()
        await wait_until(lambda: app.gateway.connected, what="reconnected")
        await cb.wait_for(6)
        # Events are dispatched in order: once the next post is through, so are the queued
        # ones; leaving `running` drains the outbox, so a duplicate would be counted below.
        mm.post(world.alice["id"], world.dev["id"], "after")
        await cb.wait_for(7)
        renewed = app.gateway.connection_id
        assert renewed not in ("", first_connection)
        # Both paths carried the posts made while away: the socket (after the new hello) ...
        written = [frame for _, frame in mm.hub.connections[renewed].dead]
        assert sum("away 0" in frame for frame in written) == 1
        # ... and the REST catch-up.
        catch_ups = [p for m, p in mm.rest_calls if m == "GET" and p.endswith("/posts")]
        assert catch_ups
    sent = Counter(parse_qs(r.body.decode())["text"][0] for r in cb.requests)
    assert sent == Counter(["live", "after"] + [f"away {i}" for i in range(5)])
