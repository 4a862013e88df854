"""match --explain: one line per webhook saying why it fires or what stopped it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import regex

from sidecar.cli import main
from sidecar.config import WebhookConfig
from sidecar.explain import explain
from sidecar.models import Channel, EventName, Post, Team, User

BOT_ID = "sidecarbot"
TEAM = Team("team1", "someteam")
PUBLIC = Channel("chanpub", "team1", "O", "town-square")
PRIVATE = Channel("chanpriv", "team1", "P", "secret")
ALICE = User("alice-id", "alice")
BOT = User("otherbot-id", "otherbot", is_bot=True)


def hook(**kw: Any) -> WebhookConfig:
    return WebhookConfig(index=0, name="h", callback_urls=("http://127.0.0.1/x",), token="t", **kw)


def ctx(
    message: str = "#build now",
    *,
    channel: Channel = PUBLIC,
    team: Team | None = TEAM,
    actor: User = ALICE,
    event: EventName = "posted",
    **post_kw: Any,
) -> Any:
    from sidecar.rules import Context

    post = Post(
        id="post1",
        channel_id=channel.id,
        create_at=1000,
        message=message,
        user_id=actor.id,
        **post_kw,
    )
    return Context(event, post, channel, team, actor, None)


WORDS = {"trigger_words": ("#build",)}


@pytest.mark.parametrize(
    ("webhook_kw", "context_kw", "reason"),
    [
        (WORDS, {}, "matches: trigger word '#build'"),
        (
            {"trigger_regex": regex.compile(r"bu(?P<x>i)ld")},
            {},
            "matches: trigger_regex found 'build'",
        ),
        ({"channels": ("town-square",)}, {}, "matches: no trigger set, every message"),
        (
            {**WORDS, "events": frozenset({"post_edited"})},
            {},
            "event posted not listened to (events ['post_edited'])",
        ),
        (WORDS, {"actor": User(BOT_ID, "sidecar", is_bot=True)}, "never fires: the sidecar's own"),
        (WORDS, {"props": {"from_webhook": "true"}}, "never fires: a webhook post"),
        (WORDS, {"type": "system_join_channel"}, "never fires: a system message"),
        (WORDS, {"type": "burn_on_read"}, "never fires: a burn-on-read post"),
        (
            {**WORDS, "team": "otherteam"},
            {},
            "other team: the channel is in 'someteam', the webhook's team is 'otherteam'",
        ),
        (
            {**WORDS, "channels": ("dev",)},
            {},
            "channel 'town-square' not in channels ['dev']",
        ),
        (
            WORDS,
            {"channel": PRIVATE},
            "channel type private excluded (channel_types omitted: public only)",
        ),
        (
            {**WORDS, "channel_types": frozenset({"P"})},
            {},
            "channel type public excluded (channel_types ['private'])",
        ),
        ({**WORDS, "users": ("bob",)}, {}, "user @alice not in users ['bob']"),
        ({**WORDS, "exclude_users": ("alice",)}, {}, "user @alice filtered (exclude_users)"),
        ({**WORDS, "ignore_bots": True}, {"actor": BOT}, "bot ignored (ignore_bots = true)"),
        (
            {"trigger_words": ("#deploy",), "trigger_when": 1},
            {},
            "no trigger word matches the first word '#build' (prefix: ['#deploy'])",
        ),
        (
            {"trigger_regex": regex.compile("deploy")},
            {},
            "trigger_regex 'deploy' not found",
        ),
    ],
)
def test_each_reason(webhook_kw: dict[str, Any], context_kw: dict[str, Any], reason: str) -> None:
    verdict = explain(hook(**webhook_kw), ctx(**context_kw), bot_user_id=BOT_ID)
    assert verdict.reason.startswith(reason), verdict.reason
    assert (verdict.match is not None) is reason.startswith("matches")


CONFIG = """
[mattermost]
url = "http://127.0.0.1:1"
token = "abcdefgh"

[[webhook]]
name = "build"
team = "x"
trigger_words = ["#build"]
callback_urls = ["http://127.0.0.1:1/h"]
token = "zmigewsanbbsdf59xnmduzypjc"

[[webhook]]
name = "dev-only"
team = "x"
channels = ["dev"]
callback_urls = ["http://127.0.0.1:1/h"]
token = "zmigewsanbbsdf59xnmduzypjc"
"""


def test_cli_explain_uses_the_webhooks_own_team(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    args = ["match", "-c", str(path), "--channel", "town-square", "--text", "#build now"]
    assert main([*args, "--explain"]) == 0
    out = capsys.readouterr().out
    assert "webhook 'build' [team x]: matches: trigger word '#build'" in out
    assert "webhook 'dev-only' [team x]: channel 'town-square' not in channels ['dev']" in out
    assert "1 webhook(s) match" in out
    assert "team_domain=x&" in out  # the request is built in the webhook's own team
    # --team still wins, and then the team is the reason.
    assert main([*args, "--explain", "--team", "y"]) == 0
    out = capsys.readouterr().out
    assert "webhook 'build': other team: the channel is in 'y', the webhook's team is 'x'" in out
    assert "no webhook matches" in out
