"""End to end: every reply rule of Mattermost's outgoing webhooks through a running Sidecar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from harness import World, make_config, running, wait_until
from sidecar.testing.recorder import CallbackRecorder, Reply


async def exchange(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    reply: Reply | list[Reply],
    *,
    message: str = "!go",
    root_id: str = "",
    expect_posts: int = 1,
    hook: dict[str, Any] | None = None,
    **sidecar: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Post once, answer with ``reply``; return the trigger post and the reply posts."""
    replies = reply if isinstance(reply, list) else [reply]
    cb.script(*replies)
    config = make_config(
        world,
        tmp_path,
        [{"trigger_words": ["!go"], "callback_urls": [cb.url_for()], **(hook or {})}],
        **sidecar,
    )
    channel = world.town["id"]
    async with running(config) as app:
        before = len(world.mm.posts_in(channel))
        trigger = world.mm.post(world.alice["id"], channel, message, root_id=root_id)
        await cb.wait_for(1)
        if expect_posts:
            await world.mm.wait_for_posts(channel, before + 1 + expect_posts)
        # The job is finished (reply posted, or decided against) once the outbox is empty.
        await wait_until(
            lambda: app.pipeline is not None and app.pipeline.outbox.depth == 0, what="drain"
        )
    posts = [p for p in world.mm.posts_in(channel)[before:] if p["id"] != trigger["id"]]
    assert len(posts) == expect_posts, [p["message"][:40] for p in posts]
    return trigger, posts


async def test_comment_on_a_reply_threads_under_the_root(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    root = world.mm.post(world.bob["id"], world.town["id"], "a thread")
    trigger, [reply] = await exchange(
        world,
        cb,
        tmp_path,
        Reply(200, {"text": "in thread", "response_type": "comment"}),
        root_id=root["id"],
    )
    assert trigger["root_id"] == root["id"]
    assert reply["root_id"] == root["id"]  # Mattermost would use trigger["id"] and get 400


async def test_comment_on_a_root_post(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    trigger, [reply] = await exchange(
        world, cb, tmp_path, Reply(200, {"text": "threaded", "response_type": "comment"})
    )
    assert reply["root_id"] == trigger["id"]


async def test_overrides_on(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    _, [reply] = await exchange(
        world,
        cb,
        tmp_path,
        Reply(200, {"text": "hi", "username": "ci", "icon_url": "https://x.test/i.png"}),
        enable_post_username_override=True,
        enable_post_icon_override=True,
    )
    assert reply["props"]["override_username"] == "ci"
    assert reply["props"]["override_icon_url"] == "https://x.test/i.png"


async def test_overrides_default_username_webhook(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    _, [reply] = await exchange(
        world, cb, tmp_path, Reply(200, {"text": "hi"}), enable_post_username_override=True
    )
    assert reply["props"]["override_username"] == "webhook"
    assert "override_icon_url" not in reply["props"]


async def test_webhook_defaults_used_when_response_has_none(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    _, [reply] = await exchange(
        world,
        cb,
        tmp_path,
        Reply(200, {"text": "hi"}),
        hook={"username": "hookname", "icon_url": "https://x.test/h.png"},
        enable_post_username_override=True,
        enable_post_icon_override=True,
    )
    assert reply["props"]["override_username"] == "hookname"
    assert reply["props"]["override_icon_url"] == "https://x.test/h.png"


async def test_overrides_off(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    _, [reply] = await exchange(
        world,
        cb,
        tmp_path,
        Reply(200, {"text": "hi", "username": "ci", "icon_url": "https://x.test/i.png"}),
    )
    assert "override_username" not in reply["props"]
    assert "override_icon_url" not in reply["props"]
    assert reply["props"]["from_webhook"] == "true"


async def test_reserved_props_dropped(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    _, [reply] = await exchange(
        world,
        cb,
        tmp_path,
        Reply(
            200,
            {
                "text": "hi",
                "props": {
                    "from_webhook": "false",
                    "override_username": "evil",
                    "override_icon_url": "https://evil",
                    "webhook_display_name": "x",
                    "keep": "me",
                },
            },
        ),
    )
    props = reply["props"]
    assert props["from_webhook"] == "true"
    assert props["webhook_display_name"] == "hook0"
    assert "override_username" not in props and "override_icon_url" not in props
    assert props["keep"] == "me"


async def test_attachments(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    att = [
        {
            "text": "details",
            "color": "#ff0000",
            "fields": [{"title": "a", "value": "b", "short": True}],
        }
    ]
    _, [reply] = await exchange(world, cb, tmp_path, Reply(200, {"attachments": att}))
    assert reply["type"] == "slack_attachment"
    assert reply["props"]["attachments"][0]["text"] == "details"
    assert reply["message"] == ""


async def test_custom_type_kept_and_system_type_refused(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, [reply] = await exchange(
        world, cb, tmp_path, Reply(200, {"text": "x", "type": "custom_poll"})
    )
    assert reply["type"] == "custom_poll"
    cb.clear()
    _, posts = await exchange(
        world, cb, tmp_path / "2", Reply(200, {"text": "x", "type": "system_join"}), expect_posts=0
    )
    assert posts == []
    assert any(
        "system_join" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )


async def test_priority_on_root_and_dropped_on_comment(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prio = {"priority": "urgent", "requested_ack": True, "persistent_notifications": False}
    _, [reply] = await exchange(world, cb, tmp_path, Reply(200, {"text": "now", "priority": prio}))
    assert reply["metadata"]["priority"]["priority"] == "urgent"
    assert reply["metadata"]["priority"]["requested_ack"] is True
    cb.clear()
    caplog.set_level(logging.WARNING)
    _, [comment] = await exchange(
        world,
        cb,
        tmp_path / "2",
        Reply(200, {"text": "c", "priority": prio, "response_type": "comment"}),
    )
    assert "priority" not in (comment.get("metadata") or {})
    assert any("priority" in r.getMessage() for r in caplog.records)


async def test_priority_without_priority_is_refused(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    _, posts = await exchange(
        world,
        cb,
        tmp_path,
        Reply(200, {"text": "x", "priority": {"requested_ack": True}}),
        expect_posts=0,
    )
    assert posts == []


async def test_long_text_split_into_three_posts(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    text = ("word " * 8000)[:40000]
    _, posts = await exchange(world, cb, tmp_path, Reply(200, {"text": text}), expect_posts=3)
    assert all(len(p["message"]) <= 16383 for p in posts)
    assert "".join(p["message"] for p in posts).replace(" ", "") == text.replace(" ", "")
    assert all(p["props"]["from_webhook"] == "true" for p in posts)


@pytest.mark.parametrize(
    ("reply", "what"),
    [
        (Reply(200, b""), "empty"),
        (Reply(200, b"{not json"), "invalid JSON"),
        (Reply(200, b"null"), "null"),
        (Reply(200, {}), "empty object"),
        (Reply(200, b'{"text": "' + b"a" * (1024 * 1024 + 10) + b'"}'), "oversized"),
    ],
)
async def test_responses_without_reply(
    world: World, cb: CallbackRecorder, tmp_path: Path, reply: Reply, what: str
) -> None:
    _, posts = await exchange(world, cb, tmp_path, reply, expect_posts=0)
    assert posts == [], what


async def test_500_with_text_still_replies(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    _, [reply] = await exchange(
        world, cb, tmp_path, Reply(500, {"text": "it broke but here is a reply"})
    )
    assert reply["message"] == "it broke but here is a reply"


async def test_slack_markup_converted(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    text = f"<!channel> ping <@{world.bob['id']}>, see <https://x.test|the docs>"
    _, [reply] = await exchange(world, cb, tmp_path, Reply(200, {"text": text}))
    assert reply["message"] == "@channel ping @bob, see [the docs](https://x.test)"


async def test_reply_in_dm(world: World, cb: CallbackRecorder, tmp_path: Path) -> None:
    cb.script(Reply(200, {"text": "dm reply"}))
    config = make_config(
        world, tmp_path, [{"channel_types": ["direct"], "callback_urls": [cb.url_for()]}]
    )
    async with running(config):
        world.mm.post(world.alice["id"], world.dm["id"], "hello bot")
        posts = await world.mm.wait_for_posts(world.dm["id"], 2)
    assert posts[-1]["message"] == "dm reply"
    assert posts[-1]["user_id"] == world.bot["id"]
