"""The daemon against server behaviour the emulator reproduces, as the server behaves."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from harness import World, make_config, running, wait_until
from sidecar.mattermost import MattermostError, RestClient
from sidecar.testing.hub import broadcast
from sidecar.testing.model import new_id
from sidecar.testing.recorder import CallbackRecorder


def texts(cb: CallbackRecorder) -> Counter[str]:
    return Counter(parse_qs(r.body.decode())["text"][0] for r in cb.requests)


async def test_too_old_resume_then_queued_posts_are_delivered_once(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """Item 2: a resume older than the dead queue gets a new hello, then the events still
    queued: the same posts come over the socket *and* the REST catch-up; each goes out once."""
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
    assert texts(cb) == Counter(["live", "after"] + [f"away {i}" for i in range(5)])


async def test_catch_up_with_a_team_where_the_bot_has_no_channel(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """Item 8: ``GET /users/me/teams/{id}/channels`` is 404 for a team where the bot is in no
    channel; the catch-up must still cover the bot's other teams."""
    mm = world.mm
    # The daemon runs as ci-bot: no direct or group channel (those would be listed for any
    # team), a member of dev, and of a second team where it is in no channel.
    as_ci = replace(world, bot=world.ci, tokens={**world.tokens, "sidecar-bot": world.ci_token})
    empty = mm.create_team("emptyteam", "Empty Team")
    mm.add_team_member(empty["id"], world.ci["id"])
    hooks = [{"channels": ["dev"], "callback_urls": [cb.url_for()]}]
    async with running(make_config(as_ci, tmp_path, hooks)) as app:
        mm.post(world.alice["id"], world.dev["id"], "live")
        await cb.wait_for(1)
        mm.fail_next(1_000_000, 503, path_prefix="/api/v4/websocket")
        await mm.restart()  # a new hello when it comes back: a REST catch-up
        await wait_until(lambda: not app.gateway.connected, what="disconnected")
        for i in range(3):
            mm.post(world.alice["id"], world.dev["id"], f"while down {i}")
        mm.clear_failures()
        await cb.wait_for(4)
    assert texts(cb) == Counter(["live"] + [f"while down {i}" for i in range(3)])


async def test_rest_client_reads_the_no_channels_404_as_an_empty_list(world: World) -> None:
    """Item 8, where the bug lived: RestClient.my_channels."""
    mm = world.mm
    empty = mm.create_team("emptyteam", "Empty Team")
    mm.add_team_member(empty["id"], world.ci["id"])
    rest = RestClient(mm.url, world.ci_token)
    await rest.start()
    try:
        assert await rest.my_channels(empty["id"]) == []
        assert {c.name for c in await rest.my_channels(world.team["id"])} == {
            "town-square",
            "dev",
            "secret",
        }
        with pytest.raises(MattermostError) as refused:  # other 404s still raise
            await rest.my_channels(new_id())
        assert refused.value.status == 404
    finally:
        await rest.close()
