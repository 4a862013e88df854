"""``mm-sidecar match``: which webhooks match a made-up post, and the exact request each sends.

The same matching and encoding code as ``run`` (``rules.RuleSet`` and ``payload``); only the
post, channel, team and user are synthetic (stable ids derived from the names, the current
time). Tokens and signatures are shown as ``***`` unless ``--show-secrets``.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from sidecar.config import Config, WebhookConfig
from sidecar.delivery import USER_AGENT
from sidecar.explain import explain
from sidecar.models import CHANNEL_TYPES, Channel, EventName, Post, Reaction, Team, User
from sidecar.payload import build_request, go_form, go_json, signature_headers
from sidecar.rules import Context

ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def synthetic_id(kind: str, name: str) -> str:
    """A stable Mattermost-shaped id (26 z-base-32 characters) for a name."""
    digest = hashlib.sha256(f"{kind}:{name}".encode()).digest()
    return "".join(ZBASE32[b % 32] for b in digest[:26])


def _looks_like_id(value: str) -> bool:
    return len(value) == 26 and value.isalnum() and value.islower()


def hide_token(body: str, token: str) -> str:
    """``body`` with the token shown as ``***`` however the body encodes it.

    A form escapes ``/``, ``+``, ``&``… and JSON escapes ``<>&"``: the raw token alone would
    miss those spellings and print the secret.
    """
    spellings = {token, go_form({"": token})[1:], go_json(token)[1:-1]} - {""}
    for spelling in sorted(spellings, key=len, reverse=True):
        body = body.replace(spelling, "***")
    return body


def _team(name: str) -> Team:
    team_id = name if _looks_like_id(name) else synthetic_id("team", name)
    return Team(id=team_id, name=name)


def dry_run(config: Config, args: argparse.Namespace) -> str:
    """Render the report printed by ``mm-sidecar match`` (and ``--explain``'s lines).

    Without ``--team``, a public or private channel is looked up in each webhook's own team
    (a placeholder team "team" for webhooks that name none), so that a config with
    ``team = "x"`` can be tried without repeating the team on the command line.
    """
    event: EventName = args.event
    ctype = CHANNEL_TYPES[args.channel_type]
    teamed = ctype in ("O", "P")
    channel_id = args.channel if _looks_like_id(args.channel) else synthetic_id("ch", args.channel)
    user = User(id=synthetic_id("user", args.user), username=args.user)
    now = int(time.time() * 1000)
    post = Post(
        id=synthetic_id("post", f"{args.channel}:{args.text}:{now}"),
        channel_id=channel_id,
        user_id=user.id,
        create_at=now,
        update_at=now,
        edit_at=now if event == "post_edited" else 0,
        message=args.text,
    )
    reaction = None
    if event == "reaction_added":
        reaction = Reaction(
            user_id=user.id,
            post_id=post.id,
            emoji_name=args.emoji,
            create_at=now,
            channel_id=channel_id,
        )
    contexts: dict[str, Context] = {}

    def context_for(webhook: WebhookConfig) -> Context:
        team_name = (args.team or webhook.team or "team") if teamed else ""
        ctx = contexts.get(team_name)
        if ctx is None:
            team = _team(team_name) if team_name else None
            channel = Channel(
                id=channel_id, team_id=team.id if team else "", type=ctype, name=args.channel
            )
            ctx = Context(
                event=event, post=post, channel=channel, team=team, actor=user, reaction=reaction
            )
            contexts[team_name] = ctx
        return ctx

    verdicts = [explain(w, context_for(w)) for w in config.webhooks]
    matches = [(v.match, context_for(v.webhook)) for v in verdicts if v.match is not None]
    if not teamed:
        where = ""
    elif args.team:
        where = f" (team {args.team})"
    else:
        where = " (in each webhook's own team)"
    lines = [
        f"event {event} in {args.channel_type} channel {args.channel!r}{where}"
        + f" by @{args.user}: {args.text!r}",
    ]
    if getattr(args, "explain", False):
        for v in verdicts:
            team = context_for(v.webhook).team
            in_team = f" [team {team.name}]" if team is not None and not args.team else ""
            lines.append(f"webhook {v.webhook.name!r}{in_team}: {v.reason}")
    if not matches:
        lines.append("no webhook matches")
        return "\n".join(lines) + "\n"
    lines.append(f"{len(matches)} webhook(s) match")
    for match, ctx in matches:
        w = match.webhook
        request = build_request(match, ctx, user_agent=USER_AGENT)
        headers = dict(request.headers)
        headers.update(
            signature_headers(request.webhook_id, now // 1000, request.body, w.signing_secrets)
        )
        body = request.body.decode("utf-8")
        if not args.show_secrets:
            body = hide_token(body, w.token)
            if "webhook-signature" in headers:
                headers["webhook-signature"] = "***"
        lines.append("")
        lines.append(
            f"webhook {w.name!r}: trigger_word {match.trigger_word!r}"
            + (f", groups {dict(match.groups)}" if match.groups else "")
        )
        for url in w.callback_urls:
            lines.append(f"POST {url}")
            lines.extend(f"{k}: {v}" for k, v in headers.items())
            lines.append("")
            lines.append(body)
    return "\n".join(lines) + "\n"
