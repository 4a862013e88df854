"""payload: the exact bodies Mattermost sends, headers, webhook ids, Standard Webhooks."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from sidecar.config import FORM, JSON, WebhookConfig
from sidecar.events import Posted, parse_frame
from sidecar.models import Channel, EventName, Post, Reaction, Team, User
from sidecar.payload import (
    MATTERMOST_KEYS,
    build_request,
    go_form,
    go_json,
    sign,
    signature_headers,
    webhook_id,
)
from sidecar.rules import Context, Match, RuleSet

VECTORS = Path(__file__).parent / "vectors"
TOKEN = "zmigewsanbbsdf59xnmduzypjc"
UA = "mm-sidecar/0.1.0"


def hook(**kw: Any) -> WebhookConfig:
    kw.setdefault("trigger_words", ("#build",))
    return WebhookConfig(
        index=0, name="build", callback_urls=("http://127.0.0.1/",), token=TOKEN, **kw
    )


def golden_context() -> tuple[dict[str, Any], Context]:
    vector = json.loads((VECTORS / "posted-event-and-payloads.json").read_text())
    event = parse_frame(json.dumps(vector["frame"])).event
    assert isinstance(event, Posted)
    post = event.post
    channel = Channel(post.channel_id, event.team_id, "O", event.channel_name)
    team = Team(event.team_id, "someteam")
    return vector, Context("posted", post, channel, team, User(post.user_id, "somename"))


@pytest.mark.parametrize(("content_type", "key"), [(JSON, "json_body"), (FORM, "form_body")])
def test_golden_bodies_byte_for_byte(content_type: str, key: str) -> None:
    vector, context = golden_context()
    [match] = RuleSet([hook(content_type=content_type)], bot_user_id="bot").match(context)
    request = build_request(match, context, user_agent=UA)
    assert request.body == vector[key].encode()
    assert request.content_type == content_type


def test_headers() -> None:
    _, context = golden_context()
    request = build_request(Match(hook(content_type=JSON), "#build", {}), context, user_agent=UA)
    assert dict(request.headers) == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": UA,
        "webhook-id": request.webhook_id,
    }
    form = build_request(Match(hook(), "#build", {}), context, user_agent=UA)
    assert form.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form.webhook_id == request.webhook_id  # one post × webhook × event


POST = Post(
    id="post1",
    channel_id="chan1",
    user_id="poster-id",
    create_at=1_700_000_000_999,
    message="deploy web",
    update_at=1_700_000_005_000,
    root_id="root1",
    file_ids=("f1",),
)
PUBLIC = Channel("chan1", "team1", "O", "town-square")
DM = Channel("chandm", "", "D", "a__b")
TEAM = Team("team1", "someteam")
POSTER = User("poster-id", "poster")
REACTOR = User("reactor-id", "reactor")


def context(event: EventName = "posted", post: Post = POST, **kw: Any) -> Context:
    kw.setdefault("channel", PUBLIC)
    kw.setdefault("team", TEAM)
    kw.setdefault("actor", POSTER)
    return Context(event=event, post=post, **kw)


def body(webhook: WebhookConfig, ctx: Context, word: str = "", groups: Any = None) -> bytes:
    return build_request(Match(webhook, word, groups or {}), ctx, user_agent=UA).body


def json_body(webhook: WebhookConfig, ctx: Context, **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(body(webhook, ctx, **kw))
    return result


def form_body(webhook: WebhookConfig, ctx: Context, **kw: Any) -> dict[str, str]:
    return dict(parse_qsl(body(webhook, ctx, **kw).decode(), keep_blank_values=True))


def test_json_has_exactly_mattermosts_keys_in_order() -> None:
    result = json_body(hook(content_type=JSON), context())
    assert tuple(result) == MATTERMOST_KEYS
    assert result["timestamp"] == 1_700_000_000_999
    assert result["file_ids"] == "f1"
    assert result["user_name"] == "poster"


def test_form_has_sorted_keys_and_seconds() -> None:
    raw = body(hook(), context()).decode()
    keys = [pair.split("=")[0] for pair in raw.split("&")]
    assert keys == sorted(MATTERMOST_KEYS)
    assert form_body(hook(), context())["timestamp"] == "1700000000"


def test_direct_message_has_no_team_even_if_one_is_given() -> None:
    ctx = context(channel=DM, team=TEAM)
    result = json_body(hook(content_type=JSON), ctx)
    assert (result["team_id"], result["team_domain"]) == ("", "")
    assert result["channel_name"] == "a__b"


@pytest.mark.parametrize(
    ("event", "post_kw", "reaction", "expected_ms"),
    [
        ("posted", {}, None, 1_700_000_000_999),
        ("post_edited", {"edit_at": 1_700_000_009_000}, None, 1_700_000_009_000),
        ("post_edited", {}, None, 1_700_000_005_000),  # no edit_at: update_at
        (
            "reaction_added",
            {},
            Reaction("reactor-id", "post1", "+1", 1_700_000_042_000),
            1_700_000_042_000,
        ),
        ("reaction_added", {}, Reaction("reactor-id", "post1", "+1", 0), 1_700_000_000_999),
    ],
)
def test_timestamp_per_event(
    event: EventName, post_kw: dict[str, Any], reaction: Reaction | None, expected_ms: int
) -> None:
    post = Post(**{**_post_fields(POST), **post_kw})
    ctx = context(event, post, reaction=reaction)
    assert json_body(hook(content_type=JSON), ctx)["timestamp"] == expected_ms
    assert form_body(hook(), ctx)["timestamp"] == str(expected_ms // 1000)


def _post_fields(post: Post) -> dict[str, Any]:
    return {name: getattr(post, name) for name in Post.__slots__}


def test_reaction_sends_the_reactor() -> None:
    ctx = context(
        "reaction_added", reaction=Reaction("reactor-id", "post1", "+1", 5), actor=REACTOR
    )
    result = json_body(hook(content_type=JSON), ctx)
    assert (result["user_id"], result["user_name"]) == ("reactor-id", "reactor")
    assert result["text"] == "deploy web"


def test_go_json_escaping() -> None:
    text = '<a> & b \u2028\u2029 é 😀 "q" \\ \x01\n\t\x7f'
    encoded = go_json({"text": text})
    assert encoded == (
        '{"text":"\\u003ca\\u003e \\u0026 b \\u2028\\u2029 é 😀 \\"q\\" \\\\ \\u0001\\n\\t\x7f"}'
    )
    assert json.loads(encoded) == {"text": text}


def test_non_ascii_stays_utf8_in_json() -> None:
    post = Post(id="p", channel_id="chan1", user_id="u", create_at=1, message="café ☕")
    raw = body(hook(content_type=JSON), context(post=post))
    assert "café ☕".encode() in raw


def test_lone_surrogates_become_replacement_characters() -> None:
    post = Post(id="p", channel_id="chan1", user_id="u", create_at=1, message="a\ud800b")
    assert json.loads(body(hook(content_type=JSON), context(post=post)))["text"] == "a\ufffdb"
    assert form_body(hook(), context(post=post))["text"] == "a\ufffdb"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a b", "a+b"),
        ("AZaz09-_.~", "AZaz09-_.~"),  # Go's unreserved set
        ("*'()!", "%2A%27%28%29%21"),
        ("+/?&=#,;:@$", "%2B%2F%3F%26%3D%23%2C%3B%3A%40%24"),
        ("é", "%C3%A9"),
        ("\n", "%0A"),
        ("", ""),
    ],
)
def test_form_escaping_matches_go_query_escape(value: str, encoded: str) -> None:
    assert go_form({"k": value}) == f"k={encoded}"


def test_extended_payload_json() -> None:
    webhook = hook(content_type=JSON, extended_payload=True)
    result = json_body(webhook, context(), word="deploy web", groups={"app": "web"})
    assert tuple(result) == (*MATTERMOST_KEYS, "event", "channel_type", "root_id", "matches")
    assert result["event"] == "posted"
    assert result["channel_type"] == "O"
    assert result["root_id"] == "root1"
    assert result["matches"] == {"app": "web"}


def test_extended_payload_json_for_a_reaction() -> None:
    webhook = hook(content_type=JSON, extended_payload=True)
    reaction = Reaction("reactor-id", "post1", "white_check_mark", 7)
    ctx = context("reaction_added", reaction=reaction, actor=REACTOR, channel=DM, team=None)
    result = json_body(webhook, ctx, word="#build")
    assert tuple(result)[12:] == (
        "event",
        "channel_type",
        "root_id",
        "matches",
        "emoji_name",
        "reactor_user_name",
    )
    assert result["event"] == "reaction_added"
    assert result["channel_type"] == "D"
    assert result["matches"] == {}
    assert result["emoji_name"] == "white_check_mark"
    assert result["reactor_user_name"] == "reactor"


def test_extended_payload_form_sorts_every_key() -> None:
    webhook = hook(extended_payload=True)
    raw = body(webhook, context(), word="deploy web", groups={"env": "prod", "app": "web"}).decode()
    keys = [pair.split("=")[0] for pair in raw.split("&")]
    assert keys == sorted(keys)
    assert "matches%5Bapp%5D=web" in raw.split("&")
    pairs = dict(parse_qsl(raw, keep_blank_values=True))
    assert pairs["matches[env]"] == "prod"
    assert pairs["event"] == "posted"
    assert pairs["channel_type"] == "O"
    assert pairs["timestamp"] == "1700000000"
    assert "matches" not in pairs


def test_webhook_id_is_stable_and_distinct() -> None:
    first = webhook_id("post1", "build", "posted")
    assert first == webhook_id("post1", "build", "posted")
    assert re.fullmatch(r"msg_[A-Za-z0-9_-]{24}", first)
    others = {
        webhook_id("post2", "build", "posted"),
        webhook_id("post1", "deploy", "posted"),
        webhook_id("post1", "build", "post_edited", "5"),
        webhook_id("post1", "build", "post_edited", "6"),
        webhook_id("post1", "build", "reaction_added", "u:+1:5"),
        webhook_id("post1", "build", "reaction_added", "u:-1:5"),
        # separators cannot be confused
        webhook_id("post1b", "uild", "posted"),
    }
    assert first not in others
    assert len(others) == 7


def test_request_ids_differ_per_edit_and_reaction() -> None:
    webhook = hook(content_type=JSON)
    edit1 = Post(**{**_post_fields(POST), "edit_at": 10})
    edit2 = Post(**{**_post_fields(POST), "edit_at": 20})
    ids = {
        build_request(Match(webhook, "", {}), ctx, user_agent=UA).webhook_id
        for ctx in (
            context(),
            context("post_edited", edit1),
            context("post_edited", edit2),
            context("reaction_added", reaction=Reaction("r", "post1", "+1", 5), actor=REACTOR),
            context("reaction_added", reaction=Reaction("r", "post1", "tada", 5), actor=REACTOR),
        )
    }
    assert len(ids) == 5
    again = build_request(Match(webhook, "", {}), context("post_edited", edit1), user_agent=UA)
    assert again.webhook_id in ids


def standard_vector() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((VECTORS / "standard-webhooks.json").read_text())
    return result


def test_standard_webhooks_vector() -> None:
    v = standard_vector()
    signature = sign(v["msg_id"], v["timestamp"], v["payload"].encode(), [v["secret"]])
    assert signature == v["expected_signature_header"]
    assert signature != v["must_reject"]


def test_several_secrets_give_several_signatures() -> None:
    v = standard_vector()
    other = "whsec_" + base64.b64encode(b"another secret key").decode()
    signature = sign(v["msg_id"], v["timestamp"], v["payload"].encode(), [v["secret"], other])
    first, second = signature.split(" ")
    assert first == v["expected_signature_header"]
    assert second.startswith("v1,") and second != first


def test_unpadded_secret_is_accepted() -> None:
    v = standard_vector()
    secret = "whsec_" + base64.b64encode(b"sixteen byte key!").decode().rstrip("=")
    padded = "whsec_" + base64.b64encode(b"sixteen byte key!").decode()
    assert sign("m", 1, b"x", [secret]) == sign("m", 1, b"x", [padded])
    assert sign("m", 1, b"x", [secret]) != sign(v["msg_id"], 1, b"x", [v["secret"]])


def test_signature_verifies_with_the_standardwebhooks_library() -> None:
    v = standard_vector()
    _, ctx = golden_context()
    request = build_request(Match(hook(content_type=JSON), "#build", {}), ctx, user_agent=UA)
    now = int(time.time())
    headers = {
        **request.headers,
        **signature_headers(request.webhook_id, now, request.body, [v["secret"]]),
    }
    assert headers["webhook-timestamp"] == str(now)
    verified = Webhook(v["secret"]).verify(request.body, headers)
    assert verified["token"] == TOKEN
    with pytest.raises(WebhookVerificationError):
        Webhook(v["secret"]).verify(request.body + b" ", headers)


def test_no_secrets_no_signature_headers() -> None:
    assert signature_headers("msg_x", 1, b"{}", []) == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=4, max_size=4))
def test_webhook_id_is_the_digest_of_the_json_key_whatever_the_names(parts: list[str]) -> None:
    """The short cut for plain ids and names gives exactly the json.dumps key's digest."""
    post_id, name, event, discriminator = parts
    key = json.dumps([post_id, name, event, discriminator], ensure_ascii=True).encode("ascii")
    digest = hashlib.sha256(key).digest()[:18]
    expected = "msg_" + base64.urlsafe_b64encode(digest).decode("ascii")
    assert webhook_id(post_id, name, event, discriminator) == expected  # type: ignore[arg-type]
