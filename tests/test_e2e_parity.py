"""Small parity details read from the server: burn-on-read posts never fire; a
reply may have any non-system post type."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from harness import World, make_config, running
from sidecar.testing.recorder import CallbackRecorder, Reply


async def test_burn_on_read_never_fires_and_a_me_reply_is_posted(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(200, {"text": "waves", "type": "me"}))
    hook = {
        "channels": ["town-square"],
        "trigger_words": ["#build"],
        "callback_urls": [cb.url_for()],
    }
    config = make_config(world, tmp_path, [hook])
    mm, town = world.mm, world.town["id"]
    async with running(config):
        mm.post(world.alice["id"], town, "#build secret", type="burn_on_read")
        mm.post(world.alice["id"], town, "#build visible")
        # Posts are processed in order: the second one's request means the first was judged.
        [request] = await cb.wait_for(1)
        posts = await mm.wait_for_posts(town, 3)
    assert parse_qs(request.body.decode())["text"] == ["#build visible"]
    reply = posts[-1]
    assert (reply["type"], reply["message"]) == ("me", "waves")
    assert reply["props"]["from_webhook"] == "true"
