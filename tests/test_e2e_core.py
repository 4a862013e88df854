"""End to end: emulator + recording callback + the real Sidecar, in-process."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

from harness import WEBHOOK_TOKEN, World, drained_after, make_config, running
from sidecar.config import JSON
from sidecar.testing.recorder import CallbackRecorder, Recorded, Reply


def form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}


async def test_public_exact_and_prefix(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    config = make_config(
        world,
        tmp_path,
        [
            {
                "channels": ["town-square"],
                "trigger_words": ["#build"],
                "callback_urls": [cb.url_for("/exact")],
            },
            {
                "trigger_words": ["!dep"],
                "trigger_when": "prefix",
                "callback_urls": [cb.url_for("/prefix")],
            },
        ],
    )
    async with running(config) as app:
        world.mm.post(world.alice["id"], world.town["id"], "#build now")
        world.mm.post(world.alice["id"], world.town["id"], "#building nothing")  # exact: no
        world.mm.post(world.alice["id"], world.dev["id"], "!deploy prod")
        got = await cb.wait_for(2)
        await drained_after(
            app,
            cb,
            lambda: world.mm.post(world.alice["id"], world.town["id"], "#build marker"),
            lambda r: b"marker" in r.body,
        )
    assert len(cb.requests) == 2
    by_path = {r.path: form(r.body) for r in cb.requests}
    assert by_path["/exact"]["trigger_word"] == "#build"
    assert by_path["/exact"]["text"] == "#build now"
    assert by_path["/exact"]["channel_name"] == "town-square"
    assert by_path["/exact"]["user_name"] == "alice"
    assert by_path["/exact"]["team_domain"] == "someteam"
    assert by_path["/exact"]["token"] == WEBHOOK_TOKEN
    assert by_path["/prefix"]["trigger_word"] == "!dep"
    assert by_path["/prefix"]["channel_name"] == "dev"
    assert all(r.headers["Content-Type"] == "application/x-www-form-urlencoded" for r in got)


async def test_json_body_byte_exact_and_reply(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(200, {"text": "built!"}))
    config = make_config(
        world,
        tmp_path,
        [
            {
                "channels": ["town-square"],
                "trigger_words": ["#build"],
                "content_type": JSON,
                "callback_urls": [cb.url_for("/j")],
            }
        ],
    )
    async with running(config):
        post = world.mm.post(
            world.alice["id"],
            world.town["id"],
            "#build <x> & y",
            file_ids=["fileaaaaaaaaaaaaaaaaaaaaaa"],
        )
        [req] = await cb.wait_for(1)
        posts = await world.mm.wait_for_posts(world.town["id"], 2)
    t, ch, al = world.team["id"], world.town["id"], world.alice["id"]
    expected = (
        f'{{"token":"{WEBHOOK_TOKEN}","team_id":"{t}","team_domain":"someteam",'
        f'"channel_id":"{ch}","channel_name":"town-square","timestamp":{post["create_at"]},'
        f'"user_id":"{al}","user_name":"alice","post_id":"{post["id"]}",'
        '"text":"#build \\u003cx\\u003e \\u0026 y","trigger_word":"#build",'
        '"file_ids":"fileaaaaaaaaaaaaaaaaaaaaaa"}'
    )
    assert req.body.decode() == expected
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Accept"] == "application/json"
    assert req.headers["User-Agent"].startswith("mm-sidecar/")
    assert req.headers["webhook-id"].startswith("msg_")
    reply = posts[-1]
    assert reply["message"] == "built!"
    assert reply["user_id"] == world.bot["id"]
    assert reply["props"]["from_webhook"] == "true"
    assert reply["props"]["webhook_display_name"] == "hook0"
    assert reply["root_id"] == ""


async def test_two_webhooks_each_own_trigger_word(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(
        world,
        tmp_path,
        [
            {
                "trigger_words": ["deploy"],
                "trigger_when": "prefix",
                "callback_urls": [cb.url_for("/a")],
            },
            {"trigger_words": ["deployment"], "callback_urls": [cb.url_for("/b")]},
        ],
    )
    async with running(config):
        world.mm.post(world.alice["id"], world.town["id"], "deployment started")
        await cb.wait_for(2)
    words = {r.path: form(r.body)["trigger_word"] for r in cb.requests}
    assert words == {"/a": "deploy", "/b": "deployment"}


async def test_channel_only_fires_on_file_only_post(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(world, tmp_path, [{"channels": ["dev"], "callback_urls": [cb.url_for()]}])
    async with running(config):
        world.mm.post(
            world.alice["id"],
            world.dev["id"],
            "",
            file_ids=["f1aaaaaaaaaaaaaaaaaaaaaaaa", "f2aaaaaaaaaaaaaaaaaaaaaaaa"],
        )
        [req] = await cb.wait_for(1)
    body = form(req.body)
    assert body["text"] == ""
    assert body["trigger_word"] == ""
    assert body["file_ids"] == "f1aaaaaaaaaaaaaaaaaaaaaaaa,f2aaaaaaaaaaaaaaaaaaaaaaaa"


async def test_private_dm_group_with_channel_types(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(
        world,
        tmp_path,
        [
            {
                "trigger_words": ["!ping"],
                "channel_types": ["private", "direct", "group"],
                "callback_urls": [cb.url_for()],
            }
        ],
    )
    async with running(config) as app:
        world.mm.post(world.alice["id"], world.town["id"], "!ping public")  # not listed
        world.mm.post(world.alice["id"], world.secret["id"], "!ping private")
        world.mm.post(world.alice["id"], world.dm["id"], "!ping direct")
        world.mm.post(world.alice["id"], world.group["id"], "!ping group")
        await cb.wait_for(3)
        await drained_after(
            app,
            cb,
            lambda: world.mm.post(world.alice["id"], world.secret["id"], "!ping marker"),
            lambda r: b"marker" in r.body,
        )
    bodies = sorted((form(r.body) for r in cb.requests), key=lambda b: b["text"])
    assert [b["text"] for b in bodies] == ["!ping direct", "!ping group", "!ping private"]
    dm = bodies[0]
    assert dm["team_id"] == "" and dm["team_domain"] == ""
    assert bodies[2]["team_domain"] == "someteam"


async def test_regex_named_groups_extended(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(
        world,
        tmp_path,
        [
            {
                "channels": ["dev"],
                "trigger_regex": r"deploy (?P<app>\w+) to (?P<env>\w+)",
                "extended_payload": True,
                "content_type": JSON,
                "callback_urls": [cb.url_for()],
            }
        ],
    )
    async with running(config):
        world.mm.post(world.alice["id"], world.dev["id"], "please deploy api to prod now")
        [req] = await cb.wait_for(1)
    body = json.loads(req.body)
    assert body["trigger_word"] == "deploy api to prod"
    assert body["matches"] == {"app": "api", "env": "prod"}
    assert body["event"] == "posted"
    assert body["channel_type"] == "O"
    assert list(body)[:12] == [
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "timestamp",
        "user_id",
        "user_name",
        "post_id",
        "text",
        "trigger_word",
        "file_ids",
    ]


async def test_never_fires_on_own_webhook_system_posts(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(world, tmp_path, [{"channels": ["dev"], "callback_urls": [cb.url_for()]}])
    async with running(config) as app:
        world.mm.post(world.bot["id"], world.dev["id"], "the bot's own post")
        world.mm.post(
            world.ci["id"], world.dev["id"], "a webhook post", props={"from_webhook": "true"}
        )
        world.mm.post(
            world.alice["id"], world.dev["id"], "alice joined", type="system_join_channel"
        )
        world.mm.post(world.ci["id"], world.dev["id"], "another bot: fires")
        [req] = await cb.wait_for(1)
        await drained_after(
            app,
            cb,
            lambda: world.mm.post(world.alice["id"], world.dev["id"], "marker"),
            lambda r: b"marker" in r.body,
        )
    assert len(cb.requests) == 1
    assert form(req.body)["text"] == "another bot: fires"


async def test_every_callback_url_gets_full_body(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    urls = [cb.url_for(f"/u{i}") for i in range(3)]
    config = make_config(world, tmp_path, [{"trigger_words": ["go"], "callback_urls": urls}])
    async with running(config):
        world.mm.post(world.alice["id"], world.town["id"], "go team")
        await cb.wait_for(3)
    assert sorted(r.path for r in cb.requests) == ["/u0", "/u1", "/u2"]
    assert len({r.body for r in cb.requests}) == 1
    assert form(cb.requests[0].body)["text"] == "go team"


async def test_slow_callback_does_not_delay_next_message(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(200, {"text": "slow"}, delay=5.0), path="/slow")
    cb.script(Reply(200, {"text": "fast-reply"}), path="/fast")
    config = make_config(
        world,
        tmp_path,
        [
            {"trigger_words": ["slow"], "callback_urls": [cb.url_for("/slow")]},
            {"trigger_words": ["fast"], "callback_urls": [cb.url_for("/fast")]},
        ],
        shutdown_timeout=0.5,
    )
    async with running(config):
        world.mm.post(world.alice["id"], world.town["id"], "slow one")
        await cb.wait_for(1)
        world.mm.post(world.alice["id"], world.town["id"], "fast one")
        await cb.wait_for(2, timeout=3.0)  # well before the slow one answers
        assert [r.path for r in cb.requests] == ["/slow", "/fast"]
        posts = await world.mm.wait_for_posts(world.town["id"], 3, timeout=3.0)
        assert posts[-1]["message"] == "fast-reply"  # the slow reply is still pending


async def test_a_channel_rename_is_followed(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """Edits resolve their channel through the cache; channel_updated invalidates it."""
    config = make_config(
        world,
        tmp_path,
        [
            {"channels": ["releases"], "events": ["post_edited"], "callback_urls": [cb.url_for()]},
            {"trigger_words": ["#marker"], "callback_urls": [cb.url_for("/marker")]},
        ],
    )

    def marker() -> None:
        world.mm.post(world.alice["id"], world.town["id"], "#marker")

    def is_marker(r: Recorded) -> bool:
        return r.path == "/marker"

    async with running(config) as app:
        post = world.mm.post(world.alice["id"], world.dev["id"], "v1")
        world.mm.edit(post["id"], "v1 (edited while the channel is still 'dev')")
        await drained_after(app, cb, marker, is_marker)  # the edit was handled: no request
        assert cb.requests == []
        world.mm.rename_channel(world.dev["id"], "releases")
        await drained_after(app, cb, marker, is_marker)  # channel_updated handled before it
        world.mm.edit(post["id"], "v2")
        [req] = await cb.wait_for(1)
    body = form(req.body)
    assert body["channel_name"] == "releases" and body["text"] == "v2"
