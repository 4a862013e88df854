"""Processed keys beyond memory, end to end: with a tiny cache (``seen.SEEN_IN_MEMORY``), a
key evicted from memory, or not loaded at a restart, is answered by the state's table."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest

from harness import World, drained_after, make_config, running
from sidecar import seen
from sidecar.testing.recorder import CallbackRecorder, Recorded

CAP = 2


async def test_a_reaction_made_again_fires_once_though_its_key_left_memory(
    world: World, cb: CallbackRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mattermost answers a reaction made again (same user, post, emoji) with a new
    ``reaction_added`` (a new create_at): processed keys de-duplicate it within the window.
    Here its key has left memory (evicted; then, after a restart, not loaded): the table says
    it was processed, so it fires once in all."""
    monkeypatch.setattr(seen, "SEEN_IN_MEMORY", CAP)
    config = make_config(
        world,
        tmp_path,
        [
            {
                "channels": ["dev"],
                "events": ["posted", "reaction_added"],
                "extended_payload": True,
                "callback_urls": [cb.url_for()],
            }
        ],
    )
    target = world.mm.post(world.bob["id"], world.dev["id"], "react to me")  # history

    def marker(text: str) -> tuple[object, object]:
        def post() -> object:
            return world.mm.post(world.bob["id"], world.dev["id"], text)

        def is_marker(r: Recorded) -> bool:
            return text.encode() in r.body

        return post, is_marker

    async with running(config) as app:
        world.mm.react(world.alice["id"], target["id"], "thumbsup")
        await cb.wait_for(1)
        for i in range(2 * CAP):
            # One at a time: a key is evicted once its transaction is committed (a delivery
            # waits for that), at the next record.
            world.mm.post(world.bob["id"], world.dev["id"], f"p{i}")
            await cb.wait_for(2 + i)
        assert app.pipeline is not None
        keys = app.pipeline.dispatcher.progress.seen
        assert len(keys) == CAP and keys.floor > target["create_at"]
        assert not any(":r:" in key for key in keys)  # the reaction's key left memory
        world.mm.react(world.alice["id"], target["id"], "thumbsup")  # again: same key
        await drained_after(app, cb, *marker("marker2"))  # type: ignore[arg-type]
    async with running(config) as app:
        assert app.pipeline is not None
        assert len(app.pipeline.dispatcher.progress.seen) == CAP  # the newest keys only
        world.mm.react(world.alice["id"], target["id"], "thumbsup")  # and again
        await drained_after(app, cb, *marker("marker3"))  # type: ignore[arg-type]
    reactions = [parse_qs(r.body.decode()) for r in cb.requests if b"emoji_name" in r.body]
    assert len(cb.requests) == 1 + 2 * CAP
    assert [(g["emoji_name"][0], g["user_name"][0]) for g in reactions] == [("thumbsup", "alice")]
