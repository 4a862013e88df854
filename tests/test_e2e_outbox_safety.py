"""The outbox across a webhook rename, and a reply with thousands of mentions, end to end
against the emulator."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from harness import World, make_config, running
from sidecar.mattermost import MattermostError, RestClient
from sidecar.replies import MAX_MENTIONS
from sidecar.testing.recorder import CallbackRecorder, Reply


async def test_pending_job_survives_a_webhook_rename(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the restart dropped the job ("webhook 'hook0' is no longer configured")."""
    caplog.set_level(logging.INFO, logger="sidecar")
    cb.script(Reply(200, {"text": "too late"}, delay=30.0))  # outlasts shutdown_timeout
    hook = {"channels": ["dev"], "callback_urls": [cb.url_for()]}
    before = make_config(world, tmp_path, [hook], shutdown_timeout=0.2)
    async with running(before):
        world.mm.post(world.alice["id"], world.dev["id"], "deploy please")
        await cb.wait_for(1)
    assert "1 left in the outbox" in caplog.text
    cb.script(Reply(200, {"text": "deployed"}))
    after = make_config(world, tmp_path, [{**hook, "name": "deployer"}])
    async with running(after):
        await cb.wait_for(2)
        posts = await world.mm.wait_for_posts(world.dev["id"], 2)
    first, second = cb.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the same job
    assert first.body == second.body
    assert posts[-1]["message"] == "deployed"
    assert "no longer configured" not in caplog.text


async def test_mentions_in_a_reply_are_looked_up_in_one_batch(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """Before: one GET /users/{id} per distinct <@ID>: 5,000 mentions, 5,000 calls."""
    known = [world.alice["id"], world.bob["id"]]
    unknown = [f"{i:026d}" for i in range(5000)]
    text = " ".join(f"<@{i}>" for i in known + unknown)
    cb.script(Reply(200, {"text": text}))
    config = make_config(world, tmp_path, [{"channels": ["dev"], "callback_urls": [cb.url_for()]}])
    async with running(config):
        calls = len(world.mm.rest_calls)
        world.mm.post(world.alice["id"], world.dev["id"], "hi")
        posts = await world.mm.wait_for_posts(world.dev["id"], 2)
    lookups = [(m, p) for m, p in world.mm.rest_calls[calls:] if p.startswith("/api/v4/users/")]
    mentions = [c for c in lookups if c != ("GET", f"/api/v4/users/{world.alice['id']}")]
    assert mentions == [("POST", "/api/v4/users/ids")]
    reply = "".join(p["message"] for p in posts[1:])
    assert reply.startswith("@alice @bob <@")  # the rest beyond the cap stay as written
    assert len(unknown) > MAX_MENTIONS


async def test_users_by_ids_on_the_emulator(world: World) -> None:
    """The emulator's POST /users/ids: an array of ids in, the users found out."""
    async with RestClient(world.mm.url, world.bot_token) as rest:
        users = await rest.users_by_ids([world.bob["id"], "x" * 26, world.alice["id"]])
        assert sorted(u.username for u in users) == ["alice", "bob"]
        assert rest.cached_user(world.bob["id"]) is not None
        with pytest.raises(MattermostError) as refused:
            await rest.users_by_ids([])
        assert refused.value.status == 400
