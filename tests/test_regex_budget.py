"""One regex budget per message across all regex webhooks."""

from __future__ import annotations

import logging

import pytest
import regex

from sidecar.config import WebhookConfig
from sidecar.models import Channel, Post, Team, User
from sidecar.rules import REGEX_BUDGET, REGEX_TIMEOUT, Context, RuleSet

TEAM = Team("team1", "team")
CHANNEL = Channel("chan1", "team1", "O", "dev")
ALICE = User("alice-id", "alice")


def test_many_slow_regexes_share_one_budget_per_message(caplog: pytest.LogCaptureFixture) -> None:
    """Before: each of the 40 searches ran to its own 50 ms timeout (2 s for one message, and
    100 webhooks made it 5 s); now the searches stop when the message's budget is spent."""
    caplog.set_level(logging.WARNING, logger="sidecar")
    hooks = [
        WebhookConfig(
            index=i,
            name=f"regex{i}",
            callback_urls=("http://127.0.0.1/x",),
            token="t",
            trigger_regex=regex.compile(r"^deploy .*.*.*="),
        )
        for i in range(40)
    ]
    message = "deploy =" + "a" * 16_000  # catastrophic backtracking for this pattern
    post = Post(id="post1", channel_id=CHANNEL.id, user_id=ALICE.id, create_at=1, message=message)
    rules = RuleSet(hooks, bot_user_id="bot")
    assert rules.match(Context("posted", post, CHANNEL, TEAM, ALICE)) == []
    gave_up = [r for r in caplog.records if "trigger_regex gave up" in r.getMessage()]
    budget = [r for r in caplog.records if "budget" in r.getMessage()]
    # Each search is cut at REGEX_TIMEOUT or at what is left of the budget: a few, not 40.
    assert 1 <= len(gave_up) <= REGEX_BUDGET / REGEX_TIMEOUT + 1
    assert len(budget) == 1
    assert f"{40 - len(gave_up)} regex webhooks not tried" in budget[0].getMessage()
    assert "post=post1" in budget[0].getMessage()


def test_a_fast_regex_is_unaffected_by_the_budget() -> None:
    hooks = [
        WebhookConfig(
            index=i,
            name=f"regex{i}",
            callback_urls=("http://127.0.0.1/x",),
            token="t",
            trigger_regex=regex.compile(r"^deploy (?P<env>\w+)"),
        )
        for i in range(300)
    ]
    post = Post(id="p", channel_id=CHANNEL.id, user_id=ALICE.id, create_at=1, message="deploy prod")
    matches = RuleSet(hooks, bot_user_id="bot").match(Context("posted", post, CHANNEL, TEAM, ALICE))
    assert len(matches) == 300 and matches[0].groups == {"env": "prod"}
