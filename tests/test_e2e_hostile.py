"""Hostile input, end to end: each one logged, and the next good message still delivered.

Websocket frames, REST answers and callback responses go through a running Sidecar against
the emulator; config files through ``mm-sidecar check``. The pure parsers are fuzzed and
unit-tested elsewhere (tests/test_events.py, test_reply.py, test_config.py, test_properties.py).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from harness import World, make_config, running, seed, wait_until
from sidecar.cli import EX_CONFIG, main
from sidecar.config import load_config, webhook_from_dict
from sidecar.events import MAX_FRAME_BYTES
from sidecar.mattermost import MAX_BODY_BYTES
from sidecar.models import Channel, Post, User
from sidecar.rules import REGEX_TIMEOUT, Context, RuleSet
from sidecar.testing.emulator import Emulator
from sidecar.testing.model import go_json, new_id, now_ms
from sidecar.testing.recorder import CallbackRecorder, Recorded, Reply
from sidecar.testing.websocket import broadcast


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with Emulator(ping_interval=5.0, settings={"EnablePostUsernameOverride": True}) as mm:
        yield seed(mm)


@pytest.fixture
async def cb() -> AsyncIterator[CallbackRecorder]:
    async with CallbackRecorder(default=Reply(200, b"")) as rec:
        yield rec


def messages(caplog: pytest.LogCaptureFixture, since: int = 0) -> list[str]:
    return [r.getMessage() for r in caplog.records[since:]]


async def logged(caplog: pytest.LogCaptureFixture, needle: str, since: int) -> list[str]:
    """Wait for a log line holding ``needle`` after record ``since``; return all such lines."""

    def found() -> list[str]:
        return [m for m in messages(caplog, since) if needle in m]

    await wait_until(lambda: bool(found()), what=repr(needle))
    return found()


class Good:
    """Posts good messages and waits until each one's callback request arrives."""

    def __init__(self, world: World, cb: CallbackRecorder) -> None:
        self.world = world
        self.cb = cb
        self.sent = 0

    async def check(self, user: dict[str, Any] | None = None) -> None:
        self.sent += 1
        text = f"#good {self.sent}"
        self.world.mm.post((user or self.world.alice)["id"], self.world.town["id"], text)
        await wait_until(
            lambda: any(r.path == "/good" and text_of(r) == text for r in self.cb.requests),
            what=f"delivery of {text!r}",
        )


def text_of(request: Recorded, key: str = "text") -> str:
    """A field (``text``) of a form-encoded callback request."""
    return parse_qs(request.body.decode()).get(key, [""])[0]


# --- websocket frames -------------------------------------------------------------------------


def post_json(world: World, **fields: Any) -> str:
    post = {
        "id": new_id(),
        "create_at": now_ms(),
        "update_at": now_ms(),
        "edit_at": 0,
        "delete_at": 0,
        "user_id": world.alice["id"],
        "channel_id": world.town["id"],
        "root_id": "",
        "message": "#good hostile",
        "type": "",
        "props": {},
        **fields,
    }
    return go_json(post)


async def test_hostile_websocket_frames(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mm = world.mm
    hidden = mm.create_channel(world.team["id"], "hidden", "P", members=[world.alice["id"]])

    def publish(event: str, data: dict[str, Any]) -> Callable[[], None]:
        # A numbered event, as the server would send it, with whatever data.
        bcast = broadcast(channel_id=world.town["id"])
        return lambda: mm.hub.publish(event, data, bcast, {world.bot["id"]})

    def raw(frame: str | bytes) -> Callable[[], None]:
        return lambda: mm.inject_frame(frame)

    cases: list[tuple[Callable[[], None], str]] = [
        (raw("{not json"), "frame is not JSON"),
        (raw(b'\xff\xfe{"event": "posted"}'), "frame is not UTF-8"),
        (raw('["posted", {"post": "x"}]'), "frame must be a JSON object"),
        (raw("[" * 200_000 + "]" * 200_000), "frame is not JSON"),
        (raw('{"seq": ' + "9" * 5000 + "}"), "frame is not JSON"),
        (raw('{"event": "posted", "data": {}, "seq": "12"}'), "'seq' must be an integer"),
        (raw('{"event": 42, "data": {}}'), "'event' must be a string"),
        (raw('{"event": "posted", "data": ["post"]}'), "posted: 'data' must be an object"),
        (publish("posted", {"post": 42}), "'post' must be a JSON string"),
        (publish("posted", {"post": "{this is not json"}), "'post' is not valid JSON"),
        (publish("posted", {"post": post_json(world, id=5)}), "'id' must be a string"),
        (publish("posted", {"post": post_json(world, props="x")}), "'props' must be an object"),
        (publish("posted", {"post": post_json(world), "channel_type": 7}), "'channel_type'"),
        (publish("post_edited", {"post": go_json([1, 2])}), "post must be an object"),
        (publish("reaction_added", {"reaction": go_json({"user_id": 1})}), "'user_id' must be"),
        (publish("channel_updated", {"channel": "{}"}), "channel.id must be a non-empty string"),
        (publish("reaction_removed_in_2031", {"anything": [None, {"x": 1}]}), ""),
        (publish("posted", {"post": post_json(world, channel_id=new_id())}), "lookup failed"),
        (publish("posted", {"post": post_json(world, channel_id=hidden["id"])}), "403"),
        # Over the cap: the client closes the socket (1009) and resumes where it was.
        (raw("x" * (MAX_FRAME_BYTES + 1)), "websocket reconnected; resuming"),
    ]
    config = make_config(
        world, tmp_path, [{"trigger_words": ["#good"], "callback_urls": [cb.url_for("/good")]}]
    )
    good = Good(world, cb)
    async with running(config):
        await good.check()
        for i, (inject, expected) in enumerate(cases):
            before = len(caplog.records)
            inject()
            await good.check()
            logged = messages(caplog)[before:]
            assert any(expected in line for line in logged), (i, expected, logged)
    # The numbered bad frames still counted: no sequence gap was seen, nothing caught up.
    assert not any("seq jumped" in line or "catching up" in line for line in messages(caplog))
    # The two hostile posts that decoded were never delivered; every good one was, once.
    assert len(cb.requests) == good.sent
    skipped = [line for line in messages(caplog) if "skipped posted" in line]
    assert len(skipped) == 2 and "404" in skipped[0], skipped


# --- REST answers -------------------------------------------------------------------------------


class Intercept:
    """Scripted emulator answers by path, each used once; other requests are served normally."""

    def __init__(self, mm: Emulator) -> None:
        self.queued: dict[str, deque[Callable[[], web.Response]]] = {}
        mm.intercept = self

    def add(self, path: str, answer: Callable[[], web.Response]) -> None:
        self.queued.setdefault(path, deque()).append(answer)

    def __call__(self, request: web.Request) -> web.Response | None:
        queue = self.queued.get(request.path)
        return queue.popleft()() if queue else None


HTML = b"<!doctype html><html><head><title>Mattermost</title></head><body>app</body></html>"


async def test_hostile_rest_answers(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mm = world.mm
    users = []
    for i in range(6):
        user = mm.create_user(f"user{i}")
        mm.add_team_member(world.team["id"], user["id"])
        mm.add_channel_member(world.town["id"], user["id"])
        users.append(user)
    intercept = Intercept(mm)
    api = "/api/v4"

    def html(status: int) -> Callable[[], web.Response]:
        return lambda: web.Response(status=status, body=HTML, content_type="text/html")

    def body(data: bytes) -> Callable[[], web.Response]:
        return lambda: web.Response(body=data, content_type="application/json")

    deep = b"[" * 100_000 + b"]" * 100_000
    big = go_json({"id": users[2]["id"], "username": "user2", "nickname": "n" * 2_000_000})
    huge = b'{"id": "' + b"x" * MAX_BODY_BYTES + b'"}'
    # (user who posts, the answer to their lookup, what the log says; None: delivered anyway)
    cases: list[tuple[dict[str, Any], str, Callable[[], web.Response], str | None]] = [
        (users[0], "users", html(200), "answer is not JSON: <!doctype html>"),
        (users[1], "users", html(502), None),  # once: the lookup is retried
        (users[2], "users", body(big.encode()), None),  # big but valid: read in full
        (users[3], "users", body(deep), "answer is not JSON"),
        (users[4], "users", body(huge), f"answer over {MAX_BODY_BYTES} bytes"),
        (users[5], "users", body(b'{"id": 5, "username": ["x"]}'), "bad user from server"),
    ]
    config = make_config(
        world,
        tmp_path,
        [
            {
                "trigger_words": ["#good"],
                "events": ["posted", "post_edited"],
                "callback_urls": [cb.url_for("/good")],
            },
            {"trigger_words": ["#user"], "callback_urls": [cb.url_for("/user")]},
        ],
    )
    good = Good(world, cb)
    async with running(config):
        for user, kind, answer, expected in cases:
            intercept.add(f"{api}/{kind}/{user['id']}", answer)
            before = len(caplog.records)
            post = mm.post(user["id"], world.town["id"], "#user hello")
            await good.check(world.bob)
            if expected is None:
                line = (await logged(caplog, f"delivered webhook=hook1 post={post['id']}", before))[
                    0
                ]
                assert "url=http://127.0.0.1" in line and "/user status=200" in line, line
                continue
            line = (await logged(caplog, post["id"], before))[0]
            assert line.startswith(f"skipped posted post={post['id']}: lookup failed:"), line
            assert expected in line, line

        # A channel answer with wrong types: an edit makes the sidecar look the channel up.
        intercept.add(
            f"{api}/channels/{world.town['id']}",
            body(go_json({"id": world.town["id"], "type": 5, "name": None}).encode()),
        )
        edited = mm.post(world.alice["id"], world.town["id"], "#good first")
        await good.check()
        before = len(caplog.records)
        mm.edit(edited["id"], "#good edited once")
        await logged(caplog, "bad channel from server", before)
        mm.edit(edited["id"], "#good edited twice")  # the bad answer was not cached
        await wait_until(lambda: any(text_of(r) == "#good edited twice" for r in cb.requests))
    assert [r.path for r in cb.requests].count("/user") == 2
    assert not any(text_of(r) == "#good edited once" for r in cb.requests)


# --- callback responses -------------------------------------------------------------------------

MIB = 1024 * 1024
TOO_BIG = b'{"text": "' + b"x" * MIB + b'"}'
WRONG_TYPES = {
    "text": 5,
    "username": 5,
    "icon_url": ["x"],
    "type": 1,
    "response_type": {"comment": True},
    "props": ["from_webhook"],
    "attachments": "an attachment",
    "priority": "urgent",
}
BAD_ATTACHMENTS = [
    ([5], "'attachments[0]' must be an object"),
    ([{"text": 5}], "'attachments[0].text' must be a string"),
    ([{"fields": "x"}], "'attachments[0].fields' must be an array"),
    ([{"fields": [{"short": "maybe"}]}], "'attachments[0].fields[0].short' must be a boolean"),
    ([{"fields": [7]}], "'attachments[0].fields[0]' must be an object"),
    ([{"actions": {"name": "x"}}], "'attachments[0].actions' must be an array"),
]


def response_cases() -> list[tuple[str, Reply, str]]:
    """(case id, the callback's answer, what the outcome line says)."""
    cases = [
        ("over 1 MiB", Reply(200, TOO_BIG), "no reply"),  # see the test below
        (
            "nested",
            Reply(200, b'{"text": "x", "p": ' + b'{"a": ' * 100 + b"1" + b"}" * 101),
            "nested deeper than 64 levels",
        ),
        (
            "very deep",
            Reply(200, b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
            "not JSON",
        ),
        ("not an object", Reply(200, [{"text": "x"}]), "must be a JSON object, got an array"),
        ("system type", Reply(200, {"text": "x", "type": "system_x"}), "got 'system_x'"),
        (
            "priority without priority",
            Reply(200, {"text": "x", "priority": {"requested_ack": True}}),
            "'priority.priority' is required",
        ),
        (
            "bad priority",
            Reply(200, {"text": "x", "priority": {"priority": "URGENT!!"}}),
            "'priority.priority' must be one of",
        ),
    ]
    for field, value in WRONG_TYPES.items():
        cases.append((f"wrong {field}", Reply(200, {"text": "x", field: value}), f"'{field}'"))
    for i, (attachments, expected) in enumerate(BAD_ATTACHMENTS):
        cases.append((f"attachment {i}", Reply(200, {"attachments": attachments}), expected))
    return cases


async def test_hostile_callback_responses(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cb.respond_with(lambda r: Reply(200, {"text": "good reply"}))
    config = make_config(
        world,
        tmp_path,
        [
            {"trigger_words": ["#h"], "callback_urls": [cb.url_for("/h")]},
            {"trigger_words": ["#good"], "callback_urls": [cb.url_for("/good")]},
        ],
        enable_post_username_override=True,
    )
    good = Good(world, cb)
    town = world.town["id"]
    async with running(config):
        for case, reply, expected in response_cases():
            cb.script(reply, path="/h")
            before = len(caplog.records)
            post = world.mm.post(world.alice["id"], town, "#h hostile")
            outcome = await logged(caplog, f"delivered webhook=hook0 post={post['id']} ", before)
            assert len(outcome) == 1 and expected in outcome[0], (case, outcome)
            assert "; no reply webhook=hook0" in outcome[0] or (
                "; reply refused webhook=hook0" in outcome[0]
            )
            replies = len(world.mm.posts_in(town))
            await good.check()
            await world.mm.wait_for_posts(town, replies + 2)  # the good post and its reply
        posts = world.mm.posts_in(town)
    hostile = [p for p in posts if p["user_id"] == world.bot["id"]]
    assert [p["message"] for p in hostile] == ["good reply"] * good.sent


async def test_oversized_callback_response_is_named_in_the_log(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cb.script(Reply(200, TOO_BIG), path="/h")
    config = make_config(
        world, tmp_path, [{"trigger_words": ["#h"], "callback_urls": [cb.url_for("/h")]}]
    )
    async with running(config):
        post = world.mm.post(world.alice["id"], world.town["id"], "#h big")
        mark = f"delivered webhook=hook0 post={post['id']} "
        await wait_until(lambda: any(mark in m for m in messages(caplog)))
    assert any("1 MiB" in m and post["id"] in m for m in messages(caplog)), messages(caplog)


async def test_callback_responses_that_are_mended(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reserved props, null attachments and invalid UTF-8 still make a post, as in Mattermost."""
    caplog.set_level(logging.INFO)
    cb.script(
        Reply(
            200,
            {
                "text": "props",
                "username": "cb-user",
                "icon_url": "http://x/i.png",
                "props": {
                    "from_webhook": "false",
                    "override_username": "evil",
                    "override_icon_url": "http://e/",
                    "webhook_display_name": "spoofed",
                    "attachments": "smuggled",
                    "keep": "yes",
                },
            },
        ),
        Reply(
            200,
            {
                "attachments": [
                    None,
                    {
                        "text": "att",
                        "color": None,
                        "actions": None,
                        "fields": [None, {"title": "t", "value": None}],
                    },
                    None,
                ]
            },
        ),
        Reply(200, b'{"text": "caf\xe9 \xed\xa0\x80 ok", "bad\xff": 1}'),
        path="/h",
    )
    cb.respond_with(lambda r: Reply(200, {"text": "good"}))
    config = make_config(
        world,
        tmp_path,
        [
            {"name": "hook", "trigger_words": ["#h"], "callback_urls": [cb.url_for("/h")]},
            {"trigger_words": ["#good"], "callback_urls": [cb.url_for("/good")]},
        ],
        enable_post_username_override=True,
    )
    town = world.town["id"]
    good = Good(world, cb)

    def mended() -> list[dict[str, Any]]:
        posts = world.mm.posts_in(town)
        return [p for p in posts if p["user_id"] == world.bot["id"] and p["message"] != "good"]

    async def reply(number: int) -> dict[str, Any]:
        await wait_until(lambda: len(mended()) >= number, what=f"mended reply {number}")
        return mended()[number - 1]

    async with running(config):
        for number in (1, 2, 3):
            world.mm.post(world.alice["id"], town, "#h mended")
            await reply(number)
            await good.check()
        replies = mended()
    props, attached, decoded = replies
    assert props["message"] == "props"
    assert props["props"]["from_webhook"] == "true"
    assert props["props"]["override_username"] == "cb-user"  # the response's, not the props'
    assert props["props"]["webhook_display_name"] == "hook"
    assert props["props"]["keep"] == "yes"
    assert "override_icon_url" not in props["props"]  # the icon override is off
    assert "attachments" not in props["props"]
    assert attached["type"] == "slack_attachment"
    [attachment] = attached["props"]["attachments"]
    assert attachment["text"] == "att" and attachment["fields"] == [{"title": "t", "value": None}]
    assert any("attachments[0] is null: dropped" in m for m in messages(caplog))
    # Go's decoder turns each invalid byte into U+FFFD; a receiver that works with Mattermost
    # (say, one answering in Latin-1) must work here too.
    assert decoded["message"] == "caf\ufffd \ufffd\ufffd\ufffd ok"


# --- config files -------------------------------------------------------------------------------

BASE = """
[mattermost]
url = "http://chat.example.com"
token = "zmigewsanbbsdf59xnmduzypjc"
"""
HOOK = """
[[webhook]]
name = "w"
token = "zmigewsanbbsdf59xnmduzypjc"
callback_urls = ["https://ci.example.com/hook"]
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE + '[sidecar]\nmax_in_flight = "lots"\n' + HOOK,
            "sidecar.max_in_flight: expected an integer, got string",
        ),
        (
            BASE + HOOK + 'trigger_words = "#x"\n',
            "webhook[0].trigger_words: expected an array of strings, got string",
        ),
        (
            BASE + HOOK + 'trigger_words = ["#x", 5, {a = 1}]\n',
            "webhook[0].trigger_words[1]: expected a string, got integer",
        ),
        (
            BASE + HOOK + "trigger_words = ['#x']\ntimeout = inf\n",
            "webhook[0].timeout: must be greater than 0 and at most 300, got inf",
        ),
        ("webhook = 5\n" + BASE, "webhook: expected an array of tables ([[webhook]]), got integer"),
        (
            BASE + HOOK + "trigger_regex = '" + "a" * 100_000 + "'\n",
            "webhook[0].trigger_regex: must be at most 1000 characters",
        ),
        (
            BASE + HOOK + "trigger_regex = '" + "(" * 400 + ")" * 400 + "'\n",
            "webhook[0].trigger_regex: invalid regex: pattern is too complex",
        ),
        (
            BASE + HOOK + "trigger_regex = 'a{4294967295}'\n",
            "webhook[0].trigger_regex: invalid regex",
        ),
        (
            BASE + HOOK + "trigger_regex = '(a+)+$'\n",
            "webhook[0].trigger_regex: pattern may backtrack catastrophically",
        ),
        (
            BASE + HOOK + "trigger_regex = '^(\\w+\\s?)*$'\n",
            "webhook[0].trigger_regex: pattern may backtrack catastrophically",
        ),
        (
            BASE + HOOK + "trigger_regex = '(.*a){20}'\n",
            "webhook[0].trigger_regex: pattern may backtrack catastrophically",
        ),
    ],
    ids=[
        "string for int",
        "string for list",
        "mixed list",
        "inf",
        "webhook not tables",
        "huge regex",
        "deep regex",
        "huge repeat",
        "nested plus",
        "words",
        "dot star",
    ],
)
def test_hostile_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    assert main(["check", "-c", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{config}: {expected}" in err, err


@pytest.mark.parametrize("pattern", ["(a|a)*b", "(?:a?){25}a{25}", r"\s*\s*\s*\s*#"])
def test_backtracking_without_nesting_is_bounded(tmp_path: Path, pattern: str) -> None:
    """Patterns the static check cannot see still finish: the regex engine is fast on them and
    every search is bounded by REGEX_TIMEOUT (see the next test)."""
    config = tmp_path / "config.toml"
    config.write_text(BASE + HOOK + f"trigger_regex = '{pattern}'\n")
    hook = load_config(config, env={}).webhooks[0]
    assert hook.trigger_regex is not None
    for text in ("a" * 40, "a" * 300, " " * 300):
        hook.trigger_regex.search(text, timeout=REGEX_TIMEOUT)  # returns, or raises TimeoutError


def test_regex_timeout_skips_the_webhook_and_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow = webhook_from_dict(
        {
            "name": "slow",
            "token": "t" * 26,
            "channels": ["c"],
            "trigger_regex": "^(a|aa)+$",
            "callback_urls": ["https://x.test/"],
        }
    )
    fine = webhook_from_dict(
        {
            "name": "fine",
            "token": "t" * 26,
            "channels": ["c"],
            "trigger_regex": "b$",
            "callback_urls": ["https://x.test/"],
        },
        index=1,
    )
    rules = RuleSet([slow, fine], bot_user_id="bot")
    channel = Channel(id="c" * 26, team_id="", type="O", name="c")
    user = User(id="u" * 26, username="u")
    post = Post(
        id="p" * 26, channel_id=channel.id, user_id=user.id, create_at=1, message="a" * 80 + "b"
    )
    caplog.set_level(logging.WARNING)
    ctx = Context(event="posted", post=post, channel=channel, team=None, actor=user)
    assert [m.webhook.name for m in rules.match(ctx)] == ["fine"]
    assert any("slow" in r.getMessage() and "gave up" in r.getMessage() for r in caplog.records)
