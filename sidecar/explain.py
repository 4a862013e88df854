"""Why a webhook fires or not, for ``mm-sidecar match --explain``.

Pure. The checks are those of ``rules.RuleSet.match``, in its order (event, the never-fire
guards, team, channel, channel type, user filters, the trigger), each turned into one line a
person can act on. The verdict itself always comes from ``RuleSet.match`` on that one
webhook, so the explanation cannot disagree with what ``run`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import WebhookConfig
from sidecar.models import CHANNEL_TYPES
from sidecar.rules import Context, Match, RuleSet, first_word

# O → "public", …: the names the config uses.
_TYPE_NAMES = {code: name for name, code in CHANNEL_TYPES.items()}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One webhook's outcome: its match (None when it does not fire) and why."""

    webhook: WebhookConfig
    match: Match | None
    reason: str


def explain(webhook: WebhookConfig, ctx: Context, *, bot_user_id: str = "") -> Verdict:
    """Whether ``webhook`` fires for ``ctx``, and the first condition that stops it."""
    match = next(iter(RuleSet([webhook], bot_user_id=bot_user_id).match(ctx)), None)
    if match is not None:
        return Verdict(webhook, match, _why_it_fires(webhook, match))
    return Verdict(webhook, None, _why_not(webhook, ctx, bot_user_id))


def _why_it_fires(webhook: WebhookConfig, match: Match) -> str:
    if match.trigger_word and match.trigger_word in webhook.trigger_words:
        return f"matches: trigger word {match.trigger_word!r}"
    if webhook.trigger_regex is not None and (match.trigger_word or match.groups):
        return f"matches: trigger_regex found {match.trigger_word!r}"
    return "matches: no trigger set, every message in its scope fires"


def _why_not(webhook: WebhookConfig, ctx: Context, bot_user_id: str) -> str:
    """The first check, in ``RuleSet.match``'s order, that stops ``webhook``."""
    for check in (_event, _never_fires, _team, _channel, _channel_type, _user):
        reason = check(webhook, ctx, bot_user_id)
        if reason:
            return reason
    return _trigger(webhook, ctx)


def _event(webhook: WebhookConfig, ctx: Context, _bot_user_id: str) -> str:
    if ctx.event not in webhook.events:
        return f"event {ctx.event} not listened to (events {sorted(webhook.events)})"
    return ""


def _never_fires(_webhook: WebhookConfig, ctx: Context, bot_user_id: str) -> str:
    post = ctx.post
    if bot_user_id and bot_user_id in (post.user_id, ctx.actor.id):
        return "never fires: the sidecar's own bot"
    if post.from_webhook:
        return 'never fires: a webhook post (props.from_webhook = "true")'
    if post.is_system:
        return f"never fires: a system message ({post.type})"
    if post.burn_on_read:
        return "never fires: a burn-on-read post"
    if post.delete_at:
        return "never fires: a deleted post"
    return ""


def _team(webhook: WebhookConfig, ctx: Context, _bot_user_id: str) -> str:
    channel, team = ctx.channel, ctx.team
    other_team = team is None or webhook.team not in (team.id, team.name)
    if webhook.team and channel.type in ("O", "P") and other_team:
        where = team.name if team is not None else "no team"
        return f"other team: the channel is in {where!r}, the webhook's team is {webhook.team!r}"
    return ""


def _channel(webhook: WebhookConfig, ctx: Context, _bot_user_id: str) -> str:
    channel, named = ctx.channel, webhook.channels
    if named and channel.id not in named and channel.name not in named:
        return f"channel {channel.name!r} not in channels {list(named)}"
    return ""


def _channel_type(webhook: WebhookConfig, ctx: Context, _bot_user_id: str) -> str:
    channel, types = ctx.channel, webhook.channel_types
    kind = _TYPE_NAMES.get(channel.type, channel.type)
    if types is None and not webhook.channels and channel.type != "O":
        return f"channel type {kind} excluded (channel_types omitted: public only)"
    if types is not None and channel.type not in types:
        names = sorted(_TYPE_NAMES[t] for t in types)
        return f"channel type {kind} excluded (channel_types {names})"
    return ""


def _user(webhook: WebhookConfig, ctx: Context, _bot_user_id: str) -> str:
    actor = ctx.actor
    if webhook.users and actor.id not in webhook.users and actor.username not in webhook.users:
        return f"user @{actor.username} not in users {list(webhook.users)}"
    if actor.id in webhook.exclude_users or actor.username in webhook.exclude_users:
        return f"user @{actor.username} filtered (exclude_users)"
    bot = actor.is_bot or (ctx.event != "reaction_added" and ctx.post.from_bot)
    if webhook.ignore_bots and bot:
        return "bot ignored (ignore_bots = true)"
    return ""


def _trigger(webhook: WebhookConfig, ctx: Context) -> str:
    word = first_word(ctx.post.message)
    parts = []
    if webhook.trigger_words:
        how = "prefix" if webhook.trigger_when == 1 else "exact"
        case = ", case-insensitive" if webhook.case_insensitive else ""
        parts.append(
            f"no trigger word matches the first word {word!r} "
            f"({how}{case}: {list(webhook.trigger_words)})"
        )
    if webhook.trigger_regex is not None:
        parts.append(f"trigger_regex {webhook.trigger_regex.pattern!r} not found")
    return "; ".join(parts) or "does not match"
