"""Public channels without hand-made memberships: the bot joins what is in scope.

Mattermost's built-in webhook fires in every public channel of its team; the sidecar joins
those channels, at start, every join_interval and on channel_converted / channel_restored,
and catches a joined channel up so that a post made before the join is still delivered once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from harness import World, make_config, running, wait_until
from sidecar.testing.recorder import CallbackRecorder


def text_of(body: bytes) -> str:
    return parse_qs(body.decode(), keep_blank_values=True)["text"][0]


def team_hook(cb: CallbackRecorder, **kw: Any) -> dict[str, Any]:
    return {"team": "someteam", "trigger_words": ["#build"], "callback_urls": [cb.url_for()], **kw}


def joins(world: World, channel: dict[str, Any]) -> list[tuple[str, str]]:
    path = f"/api/v4/channels/{channel['id']}/members"
    return [c for c in world.mm.rest_calls if c == ("POST", path)]


async def test_fires_in_a_public_channel_the_bot_was_never_added_to(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    mm = world.mm
    random = mm.create_channel(world.team["id"], "random", "O", members=[world.alice["id"]])
    config = make_config(world, tmp_path, [team_hook(cb)])
    async with running(config) as app:
        assert world.bot["id"] in mm.store.channels[random["id"]].members
        mm.post(world.alice["id"], random["id"], "#build now")
        [req] = await cb.wait_for(1)
        assert app.metrics.channel_joins.labels("joined")._value.get() == 1
    assert text_of(req.body) == "#build now"
    assert len(joins(world, random)) == 1
    # The server announced the join in the channel, as the bot, as a system message.
    [message] = [p for p in mm.posts_in(random["id"]) if p["type"] == "system_join_channel"]
    assert message["message"] == "sidecar-bot joined the channel."
    assert message["user_id"] == world.bot["id"]


async def test_a_channel_created_after_start_is_joined_and_caught_up(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    mm = world.mm
    config = make_config(world, tmp_path, [team_hook(cb)], join_interval=1)
    async with running(config) as app:
        # A user creates a channel: the bot is not told (channel_created goes to its creator).
        late = mm.public.create_channel_as(world.alice["id"], world.team["id"], "late")
        mm.post(world.alice["id"], late["id"], "#build before the join")
        mm.post(world.alice["id"], late["id"], "no trigger")
        # The next periodic pass (join_interval = 1 s) joins it and catches it up.
        [early] = await cb.wait_for(1)
        await wait_until(
            lambda: app.pipeline.joins_caught_up >= 1, what="catch-up of the joined channel"
        )
        mm.post(world.alice["id"], late["id"], "#build after the join")
        got = await cb.wait_for(2)
    assert text_of(early.body) == "#build before the join"
    assert [text_of(r.body) for r in got] == ["#build before the join", "#build after the join"]
    assert len(joins(world, late)) == 1


async def test_a_channel_converted_to_public_is_joined_at_once(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    mm = world.mm
    hidden = mm.create_channel(world.team["id"], "hidden", "P", members=[world.alice["id"]])
    config = make_config(world, tmp_path, [team_hook(cb)])  # join_interval: 60 s
    async with running(config) as app:
        mm.post(world.alice["id"], hidden["id"], "#build while private")
        caught_up = app.pipeline.joins_caught_up
        mm.public.convert(hidden["id"], "O", by_user_id=world.alice["id"])
        await wait_until(
            lambda: app.pipeline.joins_caught_up > caught_up, what="join after conversion"
        )
        mm.post(world.alice["id"], hidden["id"], "#build now public")
        got = await cb.wait_for(1)
    # What was said while the channel was private stays private: the catch-up starts at the
    # conversion; the built-in webhook never saw those posts either.
    assert [text_of(r.body) for r in got] == ["#build now public"]
    assert len(joins(world, hidden)) == 1


async def test_a_restored_channel_is_joined_and_a_private_one_never(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    mm = world.mm
    secret = mm.create_channel(world.team["id"], "secret2", "P", members=[world.alice["id"]])
    old = mm.create_channel(world.team["id"], "old", "O", members=[world.alice["id"]])
    mm.public.archive(old["id"])
    hook = team_hook(cb, channel_types=["public", "private"])
    config = make_config(world, tmp_path, [hook])
    async with running(config) as app:
        # Archived: not joined at start.
        assert joins(world, old) == []
        caught_up = app.pipeline.joins_caught_up
        mm.public.restore(old["id"])
        await wait_until(
            lambda: app.pipeline.joins_caught_up > caught_up, what="join after restore"
        )
        mm.post(world.alice["id"], old["id"], "#build restored")
        [req] = await cb.wait_for(1)
        assert app.pipeline is not None
        passes = app.pipeline.joiner.passes
        app.pipeline.joiner.hint_full()
        await wait_until(lambda: app.pipeline is not None and app.pipeline.joiner.passes > passes)
    assert text_of(req.body) == "#build restored"
    # A private channel it was not invited to: never joined, not even asked for.
    assert joins(world, secret) == []
    assert world.bot["id"] not in mm.store.channels[secret["id"]].members


async def test_join_public_channels_false_joins_nothing_and_warns(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mm = world.mm
    for name in ("one", "two"):
        mm.create_channel(world.team["id"], name, "O", members=[world.alice["id"]])
    caplog.set_level(logging.WARNING)
    config = make_config(world, tmp_path, [team_hook(cb)], join_public_channels=False)
    async with running(config):
        pass
    assert not [c for c in mm.rest_calls if c[0] == "POST" and c[1].endswith("/members")]
    warnings = [
        r.getMessage() for r in caplog.records if "join_public_channels is off" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "2 public channels in scope" in warnings[0]


async def test_a_refused_join_is_logged_once_and_counted(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mm = world.mm
    closed = mm.create_channel(world.team["id"], "closed", "O", members=[world.alice["id"]])
    mm.public.refuse_joins(world.bot["id"])
    caplog.set_level(logging.WARNING)
    config = make_config(world, tmp_path, [team_hook(cb)])
    async with running(config) as app:
        assert app.pipeline is not None
        passes = app.pipeline.joiner.passes
        # The channel is named again by a hint: tried again, refused again, not logged again.
        mm.public.restore(closed["id"])
        await wait_until(lambda: app.pipeline is not None and app.pipeline.joiner.passes > passes)
        # The daemon keeps going: a channel it is in still works.
        mm.post(world.alice["id"], world.town["id"], "#build here")
        await cb.wait_for(1)
        refused = app.metrics.channel_joins.labels("refused")._value.get()
    assert refused == 2
    logged = [
        r.getMessage() for r in caplog.records if "cannot join public channel" in r.getMessage()
    ]
    assert len(logged) == 1
    assert "~closed" in logged[0] and "join public channels" in logged[0]


async def test_a_team_the_bot_is_not_in_is_a_start_up_warning(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world.mm.create_team("elsewhere")
    caplog.set_level(logging.WARNING)
    config = make_config(world, tmp_path, [team_hook(cb, team="elsewhere")])
    async with running(config):
        pass
    assert any(
        "team 'elsewhere': the bot is not a member" in r.getMessage() for r in caplog.records
    )


async def test_added_by_a_user_or_to_a_team_is_followed_at_once(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    mm = world.mm
    config = make_config(world, tmp_path, [{**team_hook(cb), "team": ""}])  # every team
    async with running(config) as app:
        # alice creates a channel, posts, then adds the bot herself (before any periodic pass):
        # user_added for the bot → what was posted before is caught up.
        side = mm.public.create_channel_as(world.alice["id"], world.team["id"], "side")
        mm.post(world.alice["id"], side["id"], "#build before the bot")
        mm.public.join(world.alice["id"], side["id"], world.bot["id"])
        [first] = await cb.wait_for(1)
        # The bot is added to another team: its public channels are joined at once.
        other = mm.create_team("second")
        mm.add_team_member(other["id"], world.alice["id"])
        general = mm.create_channel(other["id"], "general", "O", members=[world.alice["id"]])
        caught_up = app.pipeline.joins_caught_up
        mm.public.add_to_team(other["id"], world.bot["id"])
        await wait_until(
            lambda: app.pipeline.joins_caught_up > caught_up, what="join in the new team"
        )
        mm.post(world.alice["id"], general["id"], "#build in the second team")
        got = await cb.wait_for(2)
    assert text_of(first.body) == "#build before the bot"
    assert text_of(got[1].body) == "#build in the second team"
    assert joins(world, side) == []  # added by alice, not joined
    [added] = [p for p in mm.posts_in(side["id"]) if p["type"] == "system_add_to_channel"]
    assert added["message"] == "sidecar-bot added to the channel by alice."
