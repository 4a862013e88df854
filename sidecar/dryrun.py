"""``mm-sidecar match``: which webhooks match a made-up post, and the exact request each sends.

The same matching and encoding code as ``run`` (``rules.RuleSet`` and ``payload``); only the
post, channel, team and user are synthetic (stable ids derived from the names, the current
time). Tokens and signatures are shown as ``***`` unless ``--show-secrets``.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from sidecar.config import Config
from sidecar.delivery import USER_AGENT
from sidecar.models import CHANNEL_TYPES, Channel, EventName, Post, Reaction, Team, User
from sidecar.payload import build_request, go_form, go_json, signature_headers
from sidecar.rules import Context, RuleSet

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


def dry_run(config: Config, args: argparse.Namespace) -> str:
    """Render the report printed by ``mm-sidecar match``."""
    event: EventName = args.event
    ctype = CHANNEL_TYPES[args.channel_type]
    team = None
    if ctype in ("O", "P"):
        team_name = args.team or "team"
        team_id = team_name if _looks_like_id(team_name) else synthetic_id("team", team_name)
        team = Team(id=team_id, name=team_name)
    channel_id = args.channel if _looks_like_id(args.channel) else synthetic_id("ch", args.channel)
    channel = Channel(id=channel_id, team_id=team.id if team else "", type=ctype, name=args.channel)
    user = User(id=synthetic_id("user", args.user), username=args.user)
    now = int(time.time() * 1000)
    post = Post(
        id=synthetic_id("post", f"{args.channel}:{args.text}:{now}"),
        channel_id=channel.id,
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
            channel_id=channel.id,
        )
    ctx = Context(event=event, post=post, channel=channel, team=team, actor=user, reaction=reaction)
    matches = RuleSet(config.webhooks, bot_user_id="").match(ctx)
    lines = [
        f"event {event} in {args.channel_type} channel {args.channel!r}"
        + (f" (team {team.name})" if team else "")
        + f" by @{args.user}: {args.text!r}",
    ]
    if not matches:
        lines.append("no webhook matches")
        return "\n".join(lines) + "\n"
    lines.append(f"{len(matches)} webhook(s) match")
    for match in matches:
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
