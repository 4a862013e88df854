"""Property tests (hypothesis) for the pure stages: events, rules, payload, reply."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import parse_qsl

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import FORM, JSON, WebhookConfig
from sidecar.events import FrameError, parse_frame
from sidecar.models import Channel, EventName, Post, Reaction, Team, User
from sidecar.payload import MATTERMOST_KEYS, build_request
from sidecar.reply import ReplyError, ReplySettings, build_reply, parse_response
from sidecar.rules import Context, Match, RuleSet, first_word

FAST = settings(max_examples=200, deadline=None, database=None)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)

# --- events --------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=300))
def test_parse_frame_on_arbitrary_bytes_raises_only_frame_error(raw: bytes) -> None:
    with contextlib.suppress(FrameError):
        parse_frame(raw)


EVENT_NAMES = [
    "hello",
    "posted",
    "post_edited",
    "reaction_added",
    "channel_updated",
    "user_updated",
]


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {"event": draw(st.sampled_from([*EVENT_NAMES, "typing"]) | json_values)}
    if draw(st.booleans()):
        frame["seq"] = draw(st.integers(min_value=0) | json_values)
    key = draw(st.sampled_from(["post", "reaction", "channel", "user", "connection_id"]))
    inner = draw(json_values | st.dictionaries(st.sampled_from(list(Post.__slots__)), json_values))
    embedded = json.dumps(inner) if draw(st.booleans()) else inner
    frame["data"] = draw(st.just({key: embedded}) | json_values)
    return frame


@FAST
@given(frames())
def test_parse_frame_on_arbitrary_json_raises_only_frame_error(frame: dict[str, Any]) -> None:
    raw = json.dumps(frame)
    try:
        result = parse_frame(raw)
    except FrameError as exc:
        seq = frame.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and exc.seq is not None:
            assert exc.seq == seq
        return
    assert result.seq == frame.get("seq")


# --- rules: the index agrees with a brute-force matcher ------------------------------------

WORDS = ["#a", "#ab", "#abc", "#A", "ß", "SS", "ss", "x"]
CHANNELS = [
    Channel("c-pub", "t1", "O", "pub"),
    Channel("c-priv", "t1", "P", "priv"),
    Channel("c-dm", "", "D", "u1__u2"),
    Channel("c-gm", "", "G", "gm"),
    Channel("c-pub2", "t2", "O", "pub2"),
]
TEAMS = {"t1": Team("t1", "one"), "t2": Team("t2", "two")}
USERS = [User("u1", "ann"), User("u2", "bob", is_bot=True), User("bot", "sidecar")]
REGEXES = [None, regex.compile(r"a(?P<x>b)?"), regex.compile(r"(?P<w>\w+)$"), regex.compile("zzz")]
EVENTS: list[EventName] = ["posted", "post_edited", "reaction_added"]


@st.composite
def webhooks(draw: st.DrawFn, name: str) -> WebhookConfig:
    channel_keys = [c.id for c in CHANNELS] + [c.name for c in CHANNELS]
    user_keys = [u.id for u in USERS] + [u.username for u in USERS]
    return WebhookConfig(
        index=0,
        name=name,
        callback_urls=("http://127.0.0.1/",),
        token="t",
        team=draw(st.sampled_from(["", "", "t1", "one", "two"])),
        channels=tuple(draw(st.just([]) | st.lists(st.sampled_from(channel_keys), max_size=2))),
        channel_types=draw(st.none() | st.frozensets(st.sampled_from("OPDG"), min_size=1)),
        trigger_words=tuple(draw(st.lists(st.sampled_from(WORDS), max_size=3))),
        trigger_when=draw(st.sampled_from([0, 1])),
        trigger_regex=draw(st.sampled_from(REGEXES)),
        case_insensitive=draw(st.booleans()),
        users=tuple(draw(st.just([]) | st.lists(st.sampled_from(user_keys), max_size=2))),
        exclude_users=tuple(draw(st.just([]) | st.lists(st.sampled_from(user_keys), max_size=1))),
        ignore_bots=draw(st.booleans()),
        events=draw(st.frozensets(st.sampled_from(EVENTS), min_size=1)),
    )


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    channel = draw(st.sampled_from(CHANNELS))
    words = draw(st.lists(st.sampled_from([*WORDS, "#abcd", "b", "ab"]), max_size=3))
    space = draw(st.sampled_from([" ", "\u00a0", "\n", "\t", "\u3000"]))
    message = draw(st.sampled_from(["", " ", "\t"])) + space.join(words)
    actor = draw(st.sampled_from(USERS))
    post = Post(
        id="p",
        channel_id=channel.id,
        user_id=draw(st.sampled_from([actor.id, "u1"])),
        create_at=1,
        message=message,
        props=draw(st.sampled_from([{}, {"from_bot": "true"}, {"from_webhook": "true"}])),
    )
    event = draw(st.sampled_from(EVENTS))
    reaction = Reaction(actor.id, "p", "+1", 2) if event == "reaction_added" else None
    return Context(event, post, channel, TEAMS.get(channel.team_id), actor, reaction)


def brute_force(hooks: list[WebhookConfig], ctx: Context, bot: str) -> list[tuple[Any, ...]]:
    """The rules as written in product.md, one webhook at a time, no index."""
    post, channel, actor = ctx.post, ctx.channel, ctx.actor
    if bot in (post.user_id, actor.id) or post.from_webhook or post.is_system or post.delete_at:
        return []
    word = first_word(post.message)
    result: list[tuple[Any, ...]] = []
    for w in hooks:
        if ctx.event not in w.events:
            continue
        team_keys = (ctx.team.id, ctx.team.name) if ctx.team else ()
        if w.team and channel.type in ("O", "P") and w.team not in team_keys:
            continue
        if w.channels and not ({channel.id, channel.name} & set(w.channels)):
            continue
        types = w.channel_types or ({"O"} if not w.channels else {"O", "P", "D", "G"})
        if channel.type not in types:
            continue
        if w.users and not ({actor.id, actor.username} & set(w.users)):
            continue
        if {actor.id, actor.username} & set(w.exclude_users):
            continue
        if w.ignore_bots and (actor.is_bot or (ctx.event != "reaction_added" and post.from_bot)):
            continue
        fold = str.casefold if w.case_insensitive else str
        hit = [
            t
            for t in w.trigger_words
            if word
            and (fold(word) == fold(t) or (w.trigger_when == 1 and fold(word).startswith(fold(t))))
        ]
        if hit:
            result.append((w.name, hit[0], {}))
        elif w.trigger_regex is not None:
            m = w.trigger_regex.search(post.message)
            if m:
                groups = {k: v for k, v in m.groupdict().items() if v is not None}
                result.append((w.name, m.group(0), groups))
        elif not w.trigger_words:
            result.append((w.name, "", {}))
    return result


@FAST
@given(
    st.integers(min_value=0, max_value=8).flatmap(
        lambda n: st.tuples(*[webhooks(f"w{i}") for i in range(n)])
    ),
    contexts(),
)
def test_index_agrees_with_brute_force(hooks: tuple[WebhookConfig, ...], ctx: Context) -> None:
    rules = RuleSet(hooks, bot_user_id="bot")
    got = [(m.webhook.name, m.trigger_word, dict(m.groups)) for m in rules.match(ctx)]
    assert got == brute_force(list(hooks), ctx, "bot")


# --- payload: both encodings round-trip ----------------------------------------------------

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=26)


@FAST
@given(
    message=st.text(max_size=60),
    channel_name=st.text(max_size=20),
    username=st.text(max_size=20),
    trigger=st.text(max_size=20),
    file_ids=st.lists(ids, max_size=3),
    create_at=st.integers(min_value=0, max_value=2**53),
    extended=st.booleans(),
    groups=st.dictionaries(st.from_regex(r"[a-z_]\w{0,5}", fullmatch=True), st.text(max_size=10)),
    ctype=st.sampled_from(["O", "P", "D", "G"]),
)
def test_payload_round_trips(
    message: str,
    channel_name: str,
    username: str,
    trigger: str,
    file_ids: list[str],
    create_at: int,
    extended: bool,
    groups: dict[str, str],
    ctype: str,
) -> None:
    post = Post("pid", "cid", "uid", create_at, message, root_id="rid", file_ids=tuple(file_ids))
    channel = Channel("cid", "tid", ctype, channel_name)  # type: ignore[arg-type]
    team = Team("tid", "team name") if ctype in "OP" else None
    ctx = Context("posted", post, channel, team, User("uid", username))
    expected = {
        "token": "tok",
        "team_id": "tid" if team else "",
        "team_domain": "team name" if team else "",
        "channel_id": "cid",
        "channel_name": channel_name,
        "timestamp": create_at,
        "user_id": "uid",
        "user_name": username,
        "post_id": "pid",
        "text": message,
        "trigger_word": trigger,
        "file_ids": ",".join(file_ids),
    }
    if extended:
        expected |= {"event": "posted", "channel_type": ctype, "root_id": "rid", "matches": groups}

    def request(content_type: str) -> bytes:
        webhook = WebhookConfig(
            index=0,
            name="n",
            callback_urls=("http://127.0.0.1/",),
            token="tok",
            content_type=content_type,
            extended_payload=extended,
        )
        return build_request(Match(webhook, trigger, groups), ctx, user_agent="ua").body

    decoded = json.loads(request(JSON))
    assert decoded == expected
    assert list(decoded)[:12] == list(MATTERMOST_KEYS)

    form = parse_qsl(request(FORM).decode("ascii"), keep_blank_values=True, strict_parsing=False)
    flat = {k: str(v) for k, v in expected.items() if k != "matches"}
    flat["timestamp"] = str(create_at // 1000)
    if extended:
        flat |= {f"matches[{k}]": v for k, v in groups.items()}
    assert dict(form) == flat
    assert len(form) == len(flat)
    if not extended:
        assert set(decoded) == set(MATTERMOST_KEYS)
        assert {k for k, _ in form} == set(MATTERMOST_KEYS)


# --- reply: only ReplyError ------------------------------------------------------------------

RESPONSE_KEYS = [
    "text",
    "username",
    "icon_url",
    "attachments",
    "type",
    "response_type",
    "props",
    "priority",
]
field_like = st.dictionaries(st.sampled_from(["title", "value", "short"]), json_scalars)
attachment_like = st.dictionaries(
    st.sampled_from(["text", "pretext", "title", "fields", "actions", "color"]),
    json_scalars | st.lists(field_like | st.none() | json_scalars, max_size=3),
    max_size=4,
)
maybe_str = st.text(max_size=12) | json_scalars
well_formed = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=30) | st.just("<@abc> <!here> <http://x|y>") | json_scalars,
        "username": maybe_str,
        "icon_url": maybe_str,
        "type": st.sampled_from(["", "slack_attachment", "custom_x", "system_x"]) | json_scalars,
        "response_type": st.sampled_from(["comment", "in_channel"]) | json_scalars,
        "props": st.dictionaries(st.text(max_size=20), json_values, max_size=4) | json_scalars,
        "attachments": st.lists(attachment_like | st.none(), max_size=3) | json_scalars,
        "priority": st.fixed_dictionaries(
            {},
            optional={
                "priority": st.sampled_from(["", "urgent", "important", "x"]) | json_scalars,
                "requested_ack": st.booleans() | json_scalars,
            },
        )
        | json_scalars,
    },
)
valid_attachment = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=20),
        "title": st.text(max_size=10),
        "fields": st.lists(
            st.fixed_dictionaries({"title": st.text(max_size=5), "value": json_values}), max_size=3
        ),
    },
)
valid = st.fixed_dictionaries(
    {"text": st.text(max_size=30)},
    optional={
        "username": st.text(max_size=12),
        "icon_url": st.text(max_size=12),
        "type": st.sampled_from(["", "slack_attachment", "custom_x"]),
        "response_type": st.sampled_from(["comment", "in_channel"]),
        "props": st.dictionaries(st.text(max_size=20), json_values, max_size=4),
        "attachments": st.lists(valid_attachment | st.none(), max_size=3),
        "priority": st.fixed_dictionaries(
            {"priority": st.sampled_from(["", "urgent", "important"])},
            optional={"requested_ack": st.booleans()},
        ),
    },
)
responses = (
    valid
    | well_formed
    | st.dictionaries(
        st.sampled_from(RESPONSE_KEYS) | st.text(max_size=6),
        json_values
        | st.lists(attachment_like | st.none() | json_scalars, max_size=3)
        | st.dictionaries(st.sampled_from(["priority", "requested_ack"]), json_scalars),
        max_size=5,
    )
)


@FAST
@given(responses, st.booleans(), st.booleans())
def test_build_reply_raises_only_reply_error(
    response: dict[str, Any], user: bool, icon: bool
) -> None:
    webhook = WebhookConfig(index=0, name="n", callback_urls=("http://127.0.0.1/",), token="t")
    post = Post("pid", "cid", "uid", 1, "m", root_id="")
    settings_ = ReplySettings(user, icon, max_post_size=10)
    try:
        plan = build_reply(response, webhook=webhook, post=post, settings=settings_, usernames={})
    except ReplyError:
        return
    text_keys = [k for k in response if k.lower() == "text"]
    if text_keys == ["text"] and isinstance(response["text"], str):
        assert plan.posts  # a text, even empty, always makes a post
    for p in plan.posts:
        assert p["props"]["from_webhook"] == "true"
        assert p["props"]["webhook_display_name"] == "n"
        assert len(p["message"]) <= 10
        json.dumps(p)  # each post is sendable as JSON


@FAST
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_response_returns_an_object_or_none_or_raises_reply_error(body: bytes) -> None:
    try:
        result = parse_response(body)
    except ReplyError:
        return
    assert result is None or (isinstance(result, dict) and result)
