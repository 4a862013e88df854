"""reply: callback response → posts, with Mattermost's rules and our two fixes."""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import reply as reply_module
from sidecar.config import WebhookConfig
from sidecar.models import Post
from sidecar.payload import go_json
from sidecar.reply import (
    MAX_RESPONSE_BYTES,
    PROPS_MAX_RUNES,
    ReplyError,
    ReplyPlan,
    ReplySettings,
    build_reply,
    mentioned_user_ids,
    parse_response,
    response_user_ids,
)

ROOT_POST = Post(id="post1", channel_id="chan1", user_id="u1", create_at=1, message="#build")
THREAD_POST = Post(
    id="post2", channel_id="chan1", user_id="u1", create_at=2, message="#build", root_id="post1"
)
OFF = ReplySettings(enable_post_username_override=False, enable_post_icon_override=False)
ON = ReplySettings(enable_post_username_override=True, enable_post_icon_override=True)
USERNAMES = {"abc123": "alice"}


def hook(**kw: Any) -> WebhookConfig:
    return WebhookConfig(
        index=0, name="Build bot", callback_urls=("http://127.0.0.1/",), token="t", **kw
    )


def reply(
    response: dict[str, Any],
    *,
    webhook: WebhookConfig | None = None,
    post: Post = ROOT_POST,
    settings: ReplySettings = OFF,
) -> ReplyPlan:
    return build_reply(
        response, webhook=webhook or hook(), post=post, settings=settings, usernames=USERNAMES
    )


def one(response: dict[str, Any], **kw: Any) -> dict[str, Any]:
    plan = reply(response, **kw)
    assert len(plan.posts) == 1
    return plan.posts[0]


# --- parse_response ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"   \n\t\r ", b"null", b" null ", b"{}", b" {} \n"])
def test_no_reply_bodies(body: bytes) -> None:
    assert parse_response(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"text": "hi"}', {"text": "hi"}),
        (b'  {"text": "hi"}\n', {"text": "hi"}),
        (b'{"text": "hi"} trailing bytes', {"text": "hi"}),  # Go's Decoder reads one value
        (b'{"text": "a\\ud800b"}', {"text": "a\ufffdb"}),  # lone surrogate, as Go decodes it
        (b'{"text": "\\ud83d\\ude00"}', {"text": "😀"}),
        ('{"text": "café"}'.encode(), {"text": "café"}),
        (b'{"a": ' * 64 + b"1" + b"}" * 64, json.loads(b'{"a": ' * 64 + b"1" + b"}" * 64)),
    ],
)
def test_parse_response(body: bytes, expected: dict[str, Any]) -> None:
    assert parse_response(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"text": "hi"',
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b"42",
        b"true",
        b'{"text": NaN}',
        b'{"n": Infinity}',
        b"\xef\xbb\xbf{}",  # a BOM is not JSON (Go refuses it too)
        b'{"a": ' * 65 + b"1" + b"}" * 65,  # 65 levels
        b"[" * 100_000 + b"]" * 100_000,
        b'{"text": "' + b"x" * MAX_RESPONSE_BYTES + b'"}',
    ],
    ids=[
        "garbage",
        "truncated",
        "utf8",
        "array",
        "string",
        "number",
        "bool",
        "nan",
        "infinity",
        "bom",
        "too-deep",
        "very-deep",
        "too-big",
    ],
)
def test_invalid_responses(body: bytes) -> None:
    with pytest.raises(ReplyError):
        parse_response(body)


# --- which responses make a post -------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        {"username": "x"},
        {"text": None},
        {"attachments": []},
        {"attachments": None},
        {"props": {"a": 1}},
        {"response_type": "comment"},
    ],
)
def test_no_post_without_text_or_attachments(response: dict[str, Any]) -> None:
    assert reply(response).posts == ()


def test_empty_text_is_a_post() -> None:
    assert one({"text": ""})["message"] == ""


def test_basic_post() -> None:
    assert one({"text": "done"}) == {
        "channel_id": "chan1",
        "root_id": "",
        "type": "",
        "message": "done",
        "props": {"webhook_display_name": "Build bot", "from_webhook": "true"},
    }


def test_field_names_match_case_insensitively_like_go() -> None:
    assert one({"Text": "hi", "RESPONSE_TYPE": "comment"})["root_id"] == "post1"


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("post", "response_type", "root_id"),
    [
        (ROOT_POST, "comment", "post1"),
        (THREAD_POST, "comment", "post1"),  # the fix: the thread's root, not the reply itself
        (ROOT_POST, "", ""),
        (THREAD_POST, "", ""),
        (THREAD_POST, "in_channel", ""),
    ],
)
def test_root_id(post: Post, response_type: str, root_id: str) -> None:
    assert one({"text": "x", "response_type": response_type}, post=post)["root_id"] == root_id


# --- Slack conversions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!channel> <!here> <!all>", "@channel @here @all"),
        ("hi <@abc123>", "hi @alice"),
        ("hi <@unknown1>", "hi <@unknown1>"),
        ("hi <@bad-id>", "hi <@bad-id>"),
        ("see <https://x.test/a?b=1|the docs>", "see [the docs](https://x.test/a?b=1)"),
        ("<http://a|b> and <http://c|d>", "[b](http://a) and [d](http://c)"),
        ("<http://a|line\nbreak>", "<http://a|line\nbreak>"),
        ("<a|b|c>", "<a|b|c>"),
        ("<http://a>", "<http://a>"),
        ("<<http://a|b>", "<[b](http://a)"),
    ],
)
def test_slack_text(text: str, message: str) -> None:
    assert one({"text": text})["message"] == message


def test_mentioned_user_ids() -> None:
    assert mentioned_user_ids("<@abc123> <@X9> <@bad-id> <@abc123>") == {"abc123", "X9"}


def test_response_user_ids_looks_in_attachments() -> None:
    response = {
        "text": "<@a1>",
        "attachments": [
            None,
            {"pretext": "<@a2>", "text": "<@a3>", "title": "<@a4>", "fields": [{"value": "<@a5>"}]},
        ],
    }
    assert response_user_ids(response) == {"a1", "a2", "a3", "a4", "a5"}
    assert response_user_ids({"text": 5, "attachments": "x"}) == set()


# --- attachments -----------------------------------------------------------------------------


def test_attachments_go_to_props_and_set_the_type() -> None:
    attachment = {
        "fallback": "f",
        "pretext": "<!here> <http://p|pre>",
        "text": "<@abc123> <http://t|text>",
        "title": "<@abc123> <http://l|title>",
        "color": "#ff0000",
        "fields": [
            None,
            {"title": "n", "value": 42, "short": True},
            {"title": "big", "value": 1_000_000},
            {"title": "f", "value": 1.5, "short": "false"},
            {"title": "b", "value": True},
            {"title": "s", "value": "<!channel> <http://v|val>"},
            {"title": "none", "value": None},
            {"title": "obj", "value": {"b": 2, "a": [1, "x"]}},
        ],
    }
    post = one({"attachments": [attachment]})
    assert post["type"] == "slack_attachment"
    assert post["message"] == ""
    [out] = post["props"]["attachments"]
    assert out["pretext"] == "@here [pre](http://p)"
    assert out["text"] == "@alice [text](http://t)"
    assert out["title"] == "@alice <http://l|title>"  # Mattermost converts no links in titles
    assert [f["value"] for f in out["fields"]] == [
        "42",
        "1e+06",
        "1.5",
        "true",
        "@channel [val](http://v)",
        None,
        "map[a:[1 x] b:2]",
    ]
    assert out["color"] == "#ff0000"
    assert attachment["text"] == "<@abc123> <http://t|text>"  # the response is not modified


@pytest.mark.parametrize(
    ("text", "converted"),
    [
        ("<https://ci.example.com/1|build | passed>", "[build | passed](https://ci.example.com/1)"),
        ("<http://a|line\nbreak>", "[line\nbreak](http://a)"),
        ("<http://a\nb|c>", "[c](http://a\nb)"),
        ("<a|b|c>", "[b|c](a)"),
        ("<http://a>", "<http://a>"),
        ("<<http://a|b>", "<[b](http://a)"),
    ],
)
def test_attachment_links_use_mattermosts_lax_rule(text: str, converted: str) -> None:
    # model.ParseSlackLinksToMarkdown: the post's own text keeps the strict rule (above).
    attachment = {"pretext": text, "text": text, "title": text, "fields": [{"value": text}]}
    [out] = one({"attachments": [attachment]})["props"]["attachments"]
    assert out["pretext"] == converted
    assert out["text"] == converted
    assert out["fields"][0]["value"] == converted
    assert out["title"] == text


@pytest.mark.parametrize(
    ("short", "decoded"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
    ],
)
def test_field_short_is_a_boolean_like_mattermosts(short: Any, decoded: bool) -> None:
    post = one({"attachments": [{"fields": [{"title": "t", "value": "v", "short": short}]}]})
    assert post["props"]["attachments"][0]["fields"][0]["short"] is decoded


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0"),
        (-0.0, "-0"),
        (100000, "100000"),
        (123456, "123456"),
        (1234567, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5, "-2.5"),
        (1e21, "1e+21"),
        (12.0, "12"),
    ],
)
def test_field_values_are_formatted_like_go(value: Any, shown: str) -> None:
    post = one({"attachments": [{"fields": [{"value": value}]}]})
    assert post["props"]["attachments"][0]["fields"][0]["value"] == shown


def test_custom_type_is_kept_with_attachments() -> None:
    assert one({"text": "x", "type": "custom_card", "attachments": [{"text": "a"}]})["type"] == (
        "custom_card"
    )


def test_null_attachments_are_dropped_with_a_warning() -> None:
    plan = reply({"text": "x", "attachments": [None, {"text": "a"}, None]})
    assert [a["text"] for a in plan.posts[0]["props"]["attachments"]] == ["a"]
    assert len(plan.warnings) == 2
    assert "attachments[0]" in plan.warnings[0]


def test_only_null_attachments_make_no_post() -> None:
    plan = reply({"attachments": [None]})
    assert plan.posts == ()
    assert plan.warnings


def test_attachments_inside_props_are_dropped() -> None:
    post = one({"text": "x", "props": {"attachments": [{"text": "sneaky"}]}})
    assert "attachments" not in post["props"]
    assert post["type"] == ""


# --- type ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "post_type", ["", "slack_attachment", "custom_x", "me", "reminder", "add_bot_teams_channels"]
)
def test_allowed_types(post_type: str) -> None:
    assert one({"text": "x", "type": post_type})["type"] == post_type


@pytest.mark.parametrize("post_type", ["system_join_channel", "system_generic", "foo", "custom"])
def test_refused_types(post_type: str) -> None:
    with pytest.raises(ReplyError, match="type"):
        reply({"text": "x", "type": post_type})


# --- wrong types name the field ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "field"),
    [
        ({"text": 5}, "'text'"),
        ({"text": "x", "username": 5}, "'username'"),
        ({"text": "x", "icon_url": []}, "'icon_url'"),
        ({"text": "x", "props": []}, "'props'"),
        ({"text": "x", "props": "a"}, "'props'"),
        ({"text": "x", "type": 1}, "'type'"),
        ({"text": "x", "response_type": {}}, "'response_type'"),
        ({"text": "x", "attachments": {}}, "'attachments'"),
        ({"text": "x", "attachments": ["x"]}, "'attachments[0]'"),
        ({"text": "x", "attachments": [{"text": 5}]}, "'attachments[0].text'"),
        ({"text": "x", "attachments": [{}, {"title": []}]}, "'attachments[1].title'"),
        ({"text": "x", "attachments": [{"fields": "x"}]}, "'attachments[0].fields'"),
        ({"text": "x", "attachments": [{"fields": [1]}]}, "'attachments[0].fields[0]'"),
        ({"text": "x", "attachments": [{"fields": [{"short": "maybe"}]}]}, ".short'"),
        ({"text": "x", "attachments": [{"actions": {}}]}, "'attachments[0].actions'"),
        ({"text": "x", "priority": "urgent"}, "'priority'"),
        ({"text": "x", "priority": {}}, "'priority.priority'"),
        ({"text": "x", "priority": {"priority": None}}, "'priority.priority'"),
        ({"text": "x", "priority": {"priority": "high"}}, "'priority.priority'"),
        ({"text": "x", "priority": {"priority": 1}}, "'priority.priority'"),
        ({"text": "x", "priority": {"priority": "", "requested_ack": "yes"}}, "requested_ack"),
        ({"username": 5}, "'username'"),  # checked even when no post would be made
    ],
)
def test_wrong_types_name_the_field(response: dict[str, Any], field: str) -> None:
    with pytest.raises(ReplyError) as info:
        reply(response)
    assert field in str(info.value)


# --- props -----------------------------------------------------------------------------------


def test_props_are_copied_except_the_reserved_ones() -> None:
    props = {
        "card": "**hi**",
        "nested": {"a": [1]},
        "from_webhook": "false",
        "override_username": "evil",
        "override_icon_url": "http://evil",
        "webhook_display_name": "spoof",
    }
    assert one({"text": "x", "props": props})["props"] == {
        "card": "**hi**",
        "nested": {"a": [1]},
        "webhook_display_name": "Build bot",
        "from_webhook": "true",
    }


@pytest.mark.parametrize(
    ("settings", "webhook_kw", "response", "expected"),
    [
        (OFF, {"username": "hookname", "icon_url": "http://i"}, {"username": "r"}, {}),
        (ON, {}, {}, {"override_username": "webhook"}),
        (ON, {"username": "hookname"}, {}, {"override_username": "hookname"}),
        (ON, {"username": "hookname"}, {"username": "resp"}, {"override_username": "resp"}),
        (
            ON,
            {"icon_url": "http://hook/icon"},
            {},
            {"override_username": "webhook", "override_icon_url": "http://hook/icon"},
        ),
        (
            ON,
            {"icon_url": "http://hook/icon"},
            {"icon_url": "http://resp/icon"},
            {"override_username": "webhook", "override_icon_url": "http://resp/icon"},
        ),
        (
            ReplySettings(enable_post_username_override=False, enable_post_icon_override=True),
            {"username": "hookname"},
            {"icon_url": "http://resp/icon"},
            {"override_icon_url": "http://resp/icon"},
        ),
    ],
)
def test_overrides(
    settings: ReplySettings,
    webhook_kw: dict[str, Any],
    response: dict[str, Any],
    expected: dict[str, str],
) -> None:
    post = one({"text": "x", **response}, webhook=hook(**webhook_kw), settings=settings)
    overrides = {k: v for k, v in post["props"].items() if k.startswith("override_")}
    assert overrides == expected


# --- priority --------------------------------------------------------------------------------


def test_priority_on_a_root_post() -> None:
    priority = {"priority": "urgent", "requested_ack": True, "persistent_notifications": False}
    post = one({"text": "x", "priority": priority})
    assert post["metadata"] == {"priority": priority}


def test_priority_keeps_only_the_given_flags() -> None:
    post = one({"text": "x", "priority": {"priority": "important", "requested_ack": None}})
    assert post["metadata"] == {"priority": {"priority": "important"}}


def test_priority_on_a_comment_is_dropped_with_a_warning() -> None:
    plan = reply({"text": "x", "response_type": "comment", "priority": {"priority": "urgent"}})
    assert len(plan.posts) == 1
    assert "metadata" not in plan.posts[0]
    assert plan.posts[0]["root_id"] == "post1"
    assert any("priority" in w for w in plan.warnings)


def test_null_priority_is_no_priority() -> None:
    assert "metadata" not in one({"text": "x", "priority": None})


# --- splitting -------------------------------------------------------------------------------


def test_40000_runes_make_3_posts() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(40_000))
    plan = reply(
        {
            "text": text,
            "response_type": "comment",
            "props": {"k": "v"},
            "attachments": [{"text": "a"}],
        },
        post=THREAD_POST,
    )
    assert [len(p["message"]) for p in plan.posts] == [16383, 16383, 40_000 - 2 * 16383]
    assert "".join(p["message"] for p in plan.posts) == text
    for p in plan.posts:
        assert p["root_id"] == "post1"
        assert p["type"] == "slack_attachment"
        assert p["props"]["k"] == "v"
        assert p["props"]["from_webhook"] == "true"
    assert [("attachments" in p["props"]) for p in plan.posts] == [False, False, True]


def test_split_counts_code_points_not_bytes() -> None:
    text = "😀" * 16383 + "é"
    plan = reply({"text": text})
    assert [p["message"] for p in plan.posts] == ["😀" * 16383, "é"]
    assert [len(p["message"]) for p in reply({"text": "😀" * 16383}).posts] == [16383]


def test_split_uses_the_configured_maximum_and_copies_priority() -> None:
    settings = ReplySettings(False, False, max_post_size=4)
    plan = reply({"text": "abcdefghij", "priority": {"priority": "urgent"}}, settings=settings)
    assert [p["message"] for p in plan.posts] == ["abcd", "efgh", "ij"]
    assert all(p["metadata"] == {"priority": {"priority": "urgent"}} for p in plan.posts)
    assert plan.posts[0]["metadata"] is not plan.posts[1]["metadata"]
    assert [p["message"] for p in reply({"text": "abcdefgh"}, settings=settings).posts] == [
        "abcd",
        "efgh",
    ]


def test_attachments_too_big_for_one_post_spill_onto_extra_posts() -> None:
    big = [{"text": "x" * 300_000}, {"text": "y" * 300_000}, {"text": "z" * 300_000}]
    plan = reply({"text": "hello", "attachments": big})
    assert [p["message"] for p in plan.posts] == ["hello", ""]
    assert [len(p["props"]["attachments"]) for p in plan.posts] == [2, 1]
    assert plan.posts[1]["props"]["attachments"][0]["text"][0] == "z"
    for p in plan.posts:
        assert len(go_json(p["props"])) <= PROPS_MAX_RUNES
        assert p["props"]["webhook_display_name"] == "Build bot"


def test_a_single_attachment_too_big_is_truncated() -> None:
    plan = reply({"attachments": [{"title": "t", "text": "x" * 800_000}]})
    [post] = plan.posts
    [attachment] = post["props"]["attachments"]
    assert 700_000 < len(attachment["text"]) < 800_000
    assert len(go_json(post["props"])) == PROPS_MAX_RUNES


def test_an_attachment_too_big_without_text_is_refused() -> None:
    with pytest.raises(ReplyError, match="attachment"):
        reply({"attachments": [{"title": "t" * 800_000}]})


def test_props_too_big_are_refused() -> None:
    with pytest.raises(ReplyError, match="props"):
        reply({"text": "x", "props": {"big": "x" * PROPS_MAX_RUNES}})


def test_props_over_the_limit_only_once_escaped_are_refused() -> None:
    """Each ``<`` is six characters as Go's JSON (``\\u003c``): counted, not its length."""
    with pytest.raises(ReplyError, match="props"):
        reply({"text": "x", "props": {"big": "<" * (PROPS_MAX_RUNES // 6 + 1)}})
    reply({"text": "x", "props": {"big": "<" * (PROPS_MAX_RUNES // 7)}})


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=5),
    st.integers(min_value=2, max_value=300),
)
def test_props_said_to_fit_without_encoding_do_fit(props: dict[str, str], limit: int) -> None:
    with patch.object(reply_module, "PROPS_MAX_RUNES", limit):
        if reply_module._surely_fits(props):
            assert len(go_json(props)) <= limit
