"""rules: first word, trigger words, regexes, scope, the never-fire cases and the index."""

from __future__ import annotations

from typing import Any

import pytest
import regex

from sidecar.config import WebhookConfig
from sidecar.models import Channel, EventName, Post, Reaction, Team, User
from sidecar.rules import Context, RuleSet, _Text, first_word

BOT_ID = "sidecarbot"
TEAM = Team("team1", "someteam")
OTHER_TEAM = Team("team2", "otherteam")
PUBLIC = Channel("chanpub", "team1", "O", "town-square")
PUBLIC2 = Channel("chanpub2", "team1", "O", "off-topic")
PRIVATE = Channel("chanpriv", "team1", "P", "secret")
DM = Channel("chandm", "", "D", "alice-id__carol-id")
GM = Channel("changm", "", "G", "groupname")
ALICE = User("alice-id", "alice")
CAROL = User("carol-id", "carol")
OTHER_BOT = User("otherbot-id", "otherbot", is_bot=True)


def hook(name: str = "h", **kw: Any) -> WebhookConfig:
    return WebhookConfig(index=0, name=name, callback_urls=("http://127.0.0.1/x",), token="t", **kw)


def ctx(
    message: str = "#build",
    *,
    channel: Channel = PUBLIC,
    team: Team | None = TEAM,
    actor: User = ALICE,
    event: EventName = "posted",
    reaction: Reaction | None = None,
    **post_kw: Any,
) -> Context:
    fields: dict[str, Any] = {"user_id": actor.id, **post_kw}
    post = Post(id="post1", channel_id=channel.id, create_at=1000, message=message, **fields)
    if channel.type in ("D", "G"):
        team = None
    return Context(event, post, channel, team, actor, reaction)


def fired(webhooks: list[WebhookConfig], context: Context) -> list[tuple[str, str]]:
    return [
        (m.webhook.name, m.trigger_word)
        for m in RuleSet(webhooks, bot_user_id=BOT_ID).match(context)
    ]


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("#build now", "#build"),
        ("   #build now", "#build"),
        ("\t#build\tnow", "#build"),
        ("#build\nnow", "#build"),
        ("\n\n#build", "#build"),
        ("#build\u00a0now", "#build"),  # NBSP separates in Go
        ("\u3000#build", "#build"),  # ideographic space
        ("#build\u0085now", "#build"),  # NEL
        ("#build\u2009now", "#build"),  # thin space (Zs)
        ("#build\u202fnow", "#build"),
        ("#build\vnow\f", "#build"),
        ("x\r\ny", "x"),
        ("#build\x1cnow", "#build\x1cnow"),  # Python splits on U+001C, Go does not
        ("\u200b#build", "\u200b#build"),  # zero-width space is not white space
        ("#build, now", "#build,"),  # punctuation stays part of the word
        ("", ""),
        (" \t\n\u00a0", ""),
    ],
)
def test_first_word(text: str, word: str) -> None:
    assert first_word(text) == word


@pytest.mark.parametrize(
    ("webhook_kw", "message", "expected"),
    [
        # exact (0): whole first word, case-sensitive
        ({"trigger_words": ("#build",)}, "#build", "#build"),
        ({"trigger_words": ("#build",)}, "#build now", "#build"),
        ({"trigger_words": ("#build",)}, "  #build", "#build"),
        ({"trigger_words": ("#build",)}, "#builder", None),
        ({"trigger_words": ("#build",)}, "#Build", None),
        ({"trigger_words": ("#build",)}, "now #build", None),
        ({"trigger_words": ("#build",)}, "", None),
        # prefix (1)
        ({"trigger_words": ("#build",), "trigger_when": 1}, "#builder go", "#build"),
        ({"trigger_words": ("#build",), "trigger_when": 1}, "#build", "#build"),
        ({"trigger_words": ("#build",), "trigger_when": 1}, "#buil", None),
        ({"trigger_words": ("#build",), "trigger_when": 1}, "x#build", None),
        # case-insensitive: casefold both sides
        ({"trigger_words": ("#build",), "case_insensitive": True}, "#BUILD", "#build"),
        ({"trigger_words": ("straße",), "case_insensitive": True}, "STRASSE", "straße"),
        ({"trigger_words": ("#Bu",), "case_insensitive": True, "trigger_when": 1}, "#bUILD", "#Bu"),
        ({"trigger_words": ("#Bu",), "case_insensitive": True}, "#bUILD", None),
        # the first configured word that matched is sent, not the first word of the post
        ({"trigger_words": ("#b", "#bu"), "trigger_when": 1}, "#build", "#b"),
        ({"trigger_words": ("#bu", "#b"), "trigger_when": 1}, "#build", "#bu"),
        ({"trigger_words": ("#x", "#build", "#build")}, "#build", "#build"),
    ],
)
def test_trigger_words(webhook_kw: dict[str, Any], message: str, expected: str | None) -> None:
    result = fired([hook(**webhook_kw)], ctx(message))
    assert result == ([] if expected is None else [("h", expected)])


def test_regex_named_groups_that_took_part() -> None:
    pattern = regex.compile(r"deploy (?P<app>\w+)(?: to (?P<env>\w+))?")
    rules = RuleSet([hook(trigger_regex=pattern)], bot_user_id=BOT_ID)
    [match] = rules.match(ctx("please deploy web now"))
    assert match.trigger_word == "deploy web"
    assert dict(match.groups) == {"app": "web"}
    [match] = rules.match(ctx("deploy api to prod"))
    assert match.trigger_word == "deploy api to prod"
    assert dict(match.groups) == {"app": "api", "env": "prod"}
    assert rules.match(ctx("nothing here")) == []


def test_trigger_words_take_precedence_over_the_regex() -> None:
    webhook = hook(trigger_words=("#build",), trigger_regex=regex.compile(r"(?P<what>build)"))
    rules = RuleSet([webhook], bot_user_id=BOT_ID)
    [match] = rules.match(ctx("#build the build"))
    assert (match.trigger_word, dict(match.groups)) == ("#build", {})
    [match] = rules.match(ctx("please build it"))
    assert (match.trigger_word, dict(match.groups)) == ("build", {"what": "build"})


def test_each_webhook_gets_its_own_trigger_word() -> None:
    # Mattermost would send both the last matching hook's word.
    webhooks = [
        hook("exact", trigger_words=("#build",)),
        hook("prefix", trigger_words=("#bu",), trigger_when=1),
        hook("regex", trigger_regex=regex.compile(r"now")),
    ]
    assert fired(webhooks, ctx("#build now")) == [
        ("exact", "#build"),
        ("prefix", "#bu"),
        ("regex", "now"),
    ]


def test_channel_only_webhook_fires_on_a_file_only_post() -> None:
    webhook = hook(channels=("town-square",))
    assert fired([webhook], ctx("", file_ids=("file1",))) == [("h", "")]


def test_webhook_with_neither_fires_on_everything_in_scope() -> None:
    webhook = hook(channels=("town-square",))
    assert fired([webhook], ctx("anything at all")) == [("h", "")]
    assert fired([webhook], ctx("anything", channel=PUBLIC2)) == []


def test_trigger_words_and_channel_must_both_hold() -> None:
    webhook = hook(channels=("town-square",), trigger_words=("#build",))
    assert fired([webhook], ctx("#build")) == [("h", "#build")]
    assert fired([webhook], ctx("#build", channel=PUBLIC2)) == []
    assert fired([webhook], ctx("hello")) == []


ALL_TYPES = frozenset({"O", "P", "D", "G"})


@pytest.mark.parametrize(
    ("webhook_kw", "context_kw", "fires"),
    [
        # team by id or by name; limits O and P only
        ({"team": "team1"}, {}, True),
        ({"team": "someteam"}, {}, True),
        ({"team": "otherteam"}, {}, False),
        ({"team": "someteam"}, {"team": OTHER_TEAM}, False),
        ({"team": "someteam", "channel_types": ALL_TYPES}, {"channel": PRIVATE}, True),
        ({"team": "otherteam", "channel_types": ALL_TYPES}, {"channel": PRIVATE}, False),
        ({"team": "otherteam", "channel_types": frozenset({"D"})}, {"channel": DM}, True),
        ({"team": "otherteam", "channel_types": frozenset({"G"})}, {"channel": GM}, True),
        ({"team": "someteam", "channel_types": frozenset({"O"})}, {"channel": DM}, False),
        # channel by id or name
        ({"channels": ("chanpub",)}, {}, True),
        ({"channels": ("town-square",)}, {}, True),
        ({"channels": ("off-topic",)}, {}, False),
        # channel types: default public only
        ({}, {}, True),
        ({}, {"channel": PRIVATE}, False),
        ({}, {"channel": DM}, False),
        ({}, {"channel": GM}, False),
        # explicit types win
        ({"channel_types": frozenset({"P"})}, {"channel": PRIVATE}, True),
        ({"channel_types": frozenset({"P"})}, {}, False),
        ({"channel_types": frozenset({"D", "G"})}, {"channel": DM}, True),
        ({"channel_types": frozenset({"D", "G"})}, {"channel": GM}, True),
        ({"channel_types": frozenset({"O"}), "channels": ("secret",)}, {"channel": PRIVATE}, False),
        # omitted types with named channels: naming a private channel or a DM is enough
        ({"channels": ("secret",)}, {"channel": PRIVATE}, True),
        ({"channels": ("chandm",)}, {"channel": DM}, True),
        # users: id or username
        ({"users": ("alice",)}, {}, True),
        ({"users": ("alice-id",)}, {}, True),
        ({"users": ("carol",)}, {}, False),
        ({"exclude_users": ("alice",)}, {}, False),
        ({"exclude_users": ("alice-id",)}, {}, False),
        ({"exclude_users": ("carol",)}, {}, True),
        ({"users": ("alice",), "exclude_users": ("alice-id",)}, {}, False),
        # bots: let through unless ignore_bots
        ({}, {"actor": OTHER_BOT}, True),
        ({"ignore_bots": True}, {"actor": OTHER_BOT}, False),
        ({"ignore_bots": True}, {"props": {"from_bot": "true"}}, False),
        ({"ignore_bots": True}, {}, True),
    ],
)
def test_scope(webhook_kw: dict[str, Any], context_kw: dict[str, Any], fires: bool) -> None:
    webhook = hook(trigger_words=("#build",), **webhook_kw)
    assert bool(fired([webhook], ctx("#build", **context_kw))) is fires


@pytest.mark.parametrize(
    "context_kw",
    [
        {"actor": User(BOT_ID, "sidecar", is_bot=True)},
        {"props": {"from_webhook": "true"}},
        {"type": "system_join_channel"},
        {"delete_at": 5},
        {"type": "burn_on_read"},
    ],
    ids=["own-bot", "from-webhook", "system", "deleted", "burn-on-read"],
)
def test_never_fires(context_kw: dict[str, Any]) -> None:
    webhooks = [hook(channels=("town-square",)), hook("w", trigger_words=("#build",))]
    assert fired(webhooks, ctx("#build", **context_kw)) == []


def test_never_fires_on_a_reaction_by_the_bot_or_on_the_bots_post() -> None:
    webhook = hook(trigger_words=("#build",), events=frozenset({"reaction_added"}))
    by_bot = Reaction(BOT_ID, "post1", "+1", 5)
    assert (
        fired(
            [webhook],
            ctx(
                "#build",
                actor=User(BOT_ID, "sidecar"),
                event="reaction_added",
                reaction=by_bot,
                user_id="alice-id",
            ),
        )
        == []
    )
    on_bot_post = Reaction("alice-id", "post1", "+1", 5)
    assert (
        fired(
            [webhook], ctx("#build", event="reaction_added", reaction=on_bot_post, user_id=BOT_ID)
        )
        == []
    )


def test_events_filter() -> None:
    posted_only = hook("posted", trigger_words=("#build",))
    edits = hook("edits", trigger_words=("#build",), events=frozenset({"post_edited"}))
    both = hook("both", trigger_words=("#build",), events=frozenset({"posted", "post_edited"}))
    webhooks = [posted_only, edits, both]
    assert fired(webhooks, ctx("#build")) == [("posted", "#build"), ("both", "#build")]
    assert fired(webhooks, ctx("#build", event="post_edited", edit_at=9)) == [
        ("edits", "#build"),
        ("both", "#build"),
    ]
    assert fired(webhooks, ctx("#build", event="reaction_added")) == []


def test_reaction_matches_the_reacted_post_and_filters_on_the_reactor() -> None:
    webhook = hook(
        trigger_words=("#build",),
        users=("carol",),
        events=frozenset({"reaction_added"}),
    )
    reaction = Reaction("carol-id", "post1", "+1", 5)
    # the post is alice's; carol reacts
    by_carol = ctx(
        "#build", actor=CAROL, event="reaction_added", reaction=reaction, user_id="alice-id"
    )
    assert fired([webhook], by_carol) == [("h", "#build")]
    by_alice = ctx("#build", actor=ALICE, event="reaction_added", reaction=reaction)
    assert fired([webhook], by_alice) == []


def test_ignore_bots_on_a_reaction_looks_at_the_reactor() -> None:
    webhook = hook(
        trigger_words=("#build",), ignore_bots=True, events=frozenset({"reaction_added"})
    )
    reaction = Reaction("carol-id", "post1", "+1", 5)
    human_on_bot_post = ctx(
        "#build",
        actor=CAROL,
        event="reaction_added",
        reaction=reaction,
        user_id="otherbot-id",
        props={"from_bot": "true"},
    )
    assert fired([webhook], human_on_bot_post) == [("h", "#build")]
    bot_reacts = ctx(
        "#build", actor=OTHER_BOT, event="reaction_added", reaction=reaction, user_id="alice-id"
    )
    assert fired([webhook], bot_reacts) == []


def test_results_are_in_config_order() -> None:
    webhooks = [
        hook("c", channels=("town-square",)),
        hook("a", trigger_words=("#build",)),
        hook("b", trigger_regex=regex.compile("build")),
        hook("d", trigger_words=("#bu",), trigger_when=1, case_insensitive=True),
    ]
    assert [name for name, _ in fired(webhooks, ctx("#build"))] == ["c", "a", "b", "d"]


def test_listens_for() -> None:
    rules = RuleSet([hook(events=frozenset({"posted", "reaction_added"}))], bot_user_id=BOT_ID)
    assert rules.listens_for("posted")
    assert rules.listens_for("reaction_added")
    assert not rules.listens_for("post_edited")
    assert not RuleSet([], bot_user_id=BOT_ID).listens_for("posted")


@pytest.mark.parametrize(
    ("webhooks", "channel", "team", "expected"),
    [
        ([hook(trigger_words=("#b",))], PUBLIC, TEAM, True),
        ([hook(trigger_words=("#b",))], PRIVATE, TEAM, False),
        ([hook(channels=("secret",))], PRIVATE, TEAM, True),
        ([hook(channels=("chanpriv",))], PUBLIC, TEAM, False),
        ([hook(team="otherteam", trigger_words=("#b",))], PUBLIC, TEAM, False),
        ([hook(channel_types=frozenset({"D"}), team="x")], DM, None, True),
        ([hook(channel_types=frozenset({"D"}))], GM, None, False),
        ([hook(trigger_words=("#b",)), hook(channels=("secret",))], PRIVATE, TEAM, True),
        ([], PUBLIC, TEAM, False),
    ],
)
def test_in_scope(
    webhooks: list[WebhookConfig], channel: Channel, team: Team | None, expected: bool
) -> None:
    assert RuleSet(webhooks, bot_user_id=BOT_ID).in_scope(channel, team) is expected


def test_ten_thousand_webhooks_match_correctly_and_look_at_few_candidates() -> None:
    webhooks = [hook(f"w{i}", trigger_words=(f"#w{i}",)) for i in range(5000)]
    webhooks += [
        hook(f"p{i}", trigger_words=(f"!p{i}-",), trigger_when=1, case_insensitive=True)
        for i in range(5000)
    ]
    rules = RuleSet(webhooks, bot_user_id=BOT_ID)
    assert [m.webhook.name for m in rules.match(ctx("#w4321 go"))] == ["w4321"]
    assert [m.webhook.name for m in rules.match(ctx("!P17-x"))] == ["p17"]
    assert rules.match(ctx("#nothing")) == []
    # The index hands the matcher only the webhooks whose word could match.
    index = rules._indexes["posted"]
    assert index.candidates("!p17-x", PUBLIC, _Text("!p17-x")) == {5017}
    assert index.candidates("#w4321", PUBLIC, _Text("#w4321")) == {4321}


def test_regex_webhooks_are_found_by_a_trigram_of_their_literal() -> None:
    webhooks = [hook(f"r{i}", trigger_regex=regex.compile(rf"\bjob{i}\b")) for i in range(3000)]
    webhooks.append(hook("ci", trigger_regex=regex.compile(r"(?i)deploy-(?P<env>\w+)")))
    webhooks.append(hook("short", trigger_regex=regex.compile(r"x+")))  # no 3-char literal
    rules = RuleSet(webhooks, bot_user_id=BOT_ID)
    assert [m.webhook.name for m in rules.match(ctx("please run job1234 now"))] == ["r1234"]
    [m] = [m for m in rules.match(ctx("DEPLOY-prod now")) if m.webhook.name == "ci"]
    assert m.groups == {"env": "prod"}
    assert [m.webhook.name for m in rules.match(ctx("xx"))] == ["short"]
    # Only the webhooks filed under a trigram of the text are looked at, not all 3,000.
    index = rules._indexes["posted"]
    text = "please run job1234 now"
    found = index.candidates(first_word(text), PUBLIC, _Text(text))
    assert len(found) < 100
    assert 1234 in found and len(webhooks) - 1 in found  # the short one is always looked at


def test_an_unknown_bot_id_blocks_nobody() -> None:
    # The dry run matches before it knows the bot: "" must not match an empty user id.
    rules = RuleSet([hook(trigger_words=("#build",))], bot_user_id="")
    assert [m.trigger_word for m in rules.match(ctx("#build", user_id=""))] == ["#build"]
