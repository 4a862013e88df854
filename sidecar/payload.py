"""Match → the exact request a callback receives: body, headers, Standard Webhooks signature.

Pure. The bodies are byte for byte what Mattermost's Go encoders produce: JSON in
Mattermost's key order with Go's escaping, or a form sorted by key like ``url.Values``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from sidecar.config import JSON
from sidecar.models import EventName
from sidecar.rules import Context, Match

MATTERMOST_KEYS = (
    "token",
    "team_id",
    "team_domain",
    "channel_id",
    "channel_name",
    "timestamp",
    "user_id",
    "user_name",
    "post_id",
    "text",
    "trigger_word",
    "file_ids",
)


@dataclass(frozen=True, slots=True)
class Request:
    """One callback request, the same for every URL and every attempt (signature aside)."""

    webhook_id: str
    body: bytes
    content_type: str
    headers: Mapping[str, str]  # without the signature headers: those depend on the time


_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Go's encoder escapes these for safe embedding in HTML and JavaScript; Python does not.
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def _valid(text: str) -> str:
    """Lone surrogates (from ``\\ud800`` escapes) become U+FFFD, as Go's decoder does."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def go_json(value: Any) -> str:
    """``value`` encoded like Go's ``json.Marshal``: compact, ``<>&`` escaped, UTF-8 kept.

    Dict keys keep their insertion order (Go sorts map keys, but Mattermost's payload is a
    struct whose field order is what we reproduce).
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group(0)], text)
    return _valid(text)


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _query_escape(text: str) -> str:
    # Ids, names and timestamps need no escaping: skip quote_plus for them (hot path).
    if _UNRESERVED.fullmatch(text):
        return text
    # quote_plus with safe="" leaves exactly Go's unreserved set: A-Z a-z 0-9 - _ . ~
    return quote_plus(_valid(text), safe="")


def go_form(fields: Mapping[str, str]) -> str:
    """``fields`` encoded like Go's ``url.Values.Encode``: sorted keys, QueryEscape."""
    plain = _UNRESERVED.fullmatch
    parts = []
    for k, v in sorted(fields.items()):
        # Ids, names and timestamps need no escaping (the hot path: most fields, every post).
        parts.append(f"{k if plain(k) else _query_escape(k)}={v if plain(v) else _query_escape(v)}")
    return "&".join(parts)


#: What json.dumps (ensure_ascii) writes as it is: printable ASCII but ``"`` and ``\\``.
_JSON_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def dumps_strings(obj: Mapping[str, str]) -> str:
    """``json.dumps(obj)`` for an object of strings, put together directly when every key and
    value is plain printable ASCII (ids, URLs, header values: each delivery writes two such
    objects to the state), else by ``json.dumps``."""
    try:
        plain = _JSON_PLAIN.fullmatch("".join(obj) + "".join(obj.values())) is not None
    except TypeError:  # not all strings
        plain = False
    if not plain:
        return json.dumps(obj)
    return "{" + ", ".join([f'"{k}": "{v}"' for k, v in obj.items()]) + "}"


def webhook_id(post_id: str, webhook_name: str, event: EventName, discriminator: str = "") -> str:
    """A ``webhook-id`` that is the same on every attempt and after a restart.

    ``discriminator`` separates distinct events on one post (an edit's time, a reaction's
    reactor and emoji) so receivers de-duplicating by id drop only true repeats.
    """
    parts = (post_id, webhook_name, event, discriminator)
    if _JSON_PLAIN.fullmatch("".join(parts)):  # ids and names: what json.dumps gives, for less
        key = '["' + '", "'.join(parts) + '"]'
    else:
        key = json.dumps(list(parts), ensure_ascii=True)
    digest = hashlib.sha256(key.encode("ascii")).digest()[:18]
    return "msg_" + base64.urlsafe_b64encode(digest).decode("ascii")


def _discriminator(ctx: Context) -> str:
    if ctx.event == "post_edited":
        return str(ctx.post.edit_at or ctx.post.update_at)
    if ctx.event == "reaction_added" and ctx.reaction is not None:
        r = ctx.reaction
        return f"{r.user_id}:{r.emoji_name}:{r.create_at}"
    return ""


def _timestamp_ms(ctx: Context) -> int:
    post = ctx.post
    if ctx.event == "post_edited":
        return post.edit_at or post.update_at or post.create_at
    if ctx.event == "reaction_added" and ctx.reaction is not None:
        return ctx.reaction.create_at or post.create_at
    return post.create_at


def _go_div(n: int, d: int) -> int:
    """Integer division truncating toward zero, like Go's ``/``."""
    q = abs(n) // d
    return q if n >= 0 else -q


def payload_fields(match: Match, ctx: Context) -> dict[str, Any]:
    """The 12 Mattermost fields (timestamp in ms), then the extension fields when enabled."""
    teamed = ctx.channel.type in ("O", "P") and ctx.team is not None
    fields: dict[str, Any] = {
        "token": match.webhook.token,
        "team_id": ctx.team.id if teamed and ctx.team else "",
        "team_domain": ctx.team.name if teamed and ctx.team else "",
        "channel_id": ctx.channel.id,
        "channel_name": ctx.channel.name,
        "timestamp": _timestamp_ms(ctx),
        "user_id": ctx.actor.id,
        "user_name": ctx.actor.username,
        "post_id": ctx.post.id,
        "text": ctx.post.message,
        "trigger_word": match.trigger_word,
        "file_ids": ",".join(ctx.post.file_ids),
    }
    if match.webhook.extended_payload:
        fields["event"] = ctx.event
        fields["channel_type"] = ctx.channel.type
        fields["root_id"] = ctx.post.root_id
        fields["matches"] = dict(match.groups)
        if ctx.event == "reaction_added" and ctx.reaction is not None:
            fields["emoji_name"] = ctx.reaction.emoji_name
            fields["reactor_user_name"] = ctx.actor.username
    return fields


def encode_body(fields: Mapping[str, Any], content_type: str) -> bytes:
    """Encode :func:`payload_fields` output as JSON (ms) or as a form (seconds)."""
    if content_type == JSON:
        return go_json(fields).encode("utf-8")
    flat: dict[str, str] = {}
    for key, value in fields.items():
        if key == "matches":
            for name, group in value.items():
                flat[f"matches[{name}]"] = group
        elif key == "timestamp":
            flat[key] = str(_go_div(value, 1000))
        else:
            flat[key] = value
    return go_form(flat).encode("utf-8")


def request_headers(content_type: str, ident: str, user_agent: str) -> dict[str, str]:
    """The headers of every attempt, the signature aside (it depends on the time)."""
    return {
        "Content-Type": content_type,
        "Accept": "application/json",
        "User-Agent": user_agent,
        "webhook-id": ident,
    }


def build_request(match: Match, ctx: Context, *, user_agent: str) -> Request:
    """The request for one matched webhook (headers without the signature)."""
    webhook = match.webhook
    ident = webhook_id(ctx.post.id, webhook.name, ctx.event, _discriminator(ctx))
    body = encode_body(payload_fields(match, ctx), webhook.content_type)
    headers = request_headers(webhook.content_type, ident, user_agent)
    return Request(webhook_id=ident, body=body, content_type=webhook.content_type, headers=headers)


def _secret_key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def sign(webhook_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """The Standard Webhooks ``webhook-signature`` value: one ``v1,…`` per secret."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        digest = hmac.new(_secret_key(secret), content, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode("ascii"))
    return " ".join(signatures)


def signature_headers(
    webhook_id: str, timestamp: int, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """``webhook-timestamp`` and ``webhook-signature`` for one attempt (empty without secrets)."""
    if not secrets:
        return {}
    return {
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(webhook_id, timestamp, body, secrets),
    }
