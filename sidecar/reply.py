"""Callback response → the posts to create, with Mattermost's rules for outgoing webhooks.

Pure. Two deliberate fixes over Mattermost: ``response_type: "comment"`` threads under the
triggering post's *root*, and ``priority`` on such a comment is dropped with a warning
instead of losing the reply. Everything else — Slack conversions, props, overrides,
attachments, splitting long text — follows ``server/channels/app/webhook.go``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

from sidecar.config import WebhookConfig
from sidecar.errors import ReplyError as ReplyError
from sidecar.models import Post
from sidecar.payload import go_json

MAX_RESPONSE_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Mattermost's PostPropsMaxUserRunes: props (as JSON) above this split or fail.
PROPS_MAX_RUNES = 800_000 - 40_000


@dataclass(frozen=True, slots=True)
class ReplySettings:
    """The server settings that shape a reply (mirrored in the sidecar's config)."""

    enable_post_username_override: bool
    enable_post_icon_override: bool
    max_post_size: int = 16383


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """Bodies for ``POST /api/v4/posts``, in order, and warnings for the log."""

    posts: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = ()


_JSON_SPACE = " \t\n\r"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")  # what surrogateescape makes of a bad byte


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_response(body: bytes) -> dict[str, Any] | None:
    """Decode a callback's body; None when it asks for no reply (empty, null, ``{}``).

    Like Go's ``json.Decoder``, only the first JSON value is read: trailing bytes are
    ignored, and invalid UTF-8 becomes U+FFFD. Raise ReplyError when the body is not a JSON
    object.
    """
    if len(body) > MAX_RESPONSE_BYTES:
        raise ReplyError(f"response is over {MAX_RESPONSE_BYTES} bytes")
    # Go's decoder takes invalid UTF-8 inside strings as one U+FFFD per bad byte (so a
    # receiver answering in Latin-1 still gets its reply posted); outside strings the
    # replacement character is as invalid as the byte was.
    text = body.decode("utf-8", "surrogateescape")
    if _ESCAPED_BYTE.search(text):
        text = _ESCAPED_BYTE.sub("\ufffd", text)
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    if start == len(text):
        return None
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError) as exc:
        raise ReplyError(f"response is not JSON: {exc}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReplyError(f"response must be a JSON object, got {_kind(value)}")
    if _depth(value) > MAX_DEPTH:
        raise ReplyError(f"response is nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text):
        value = _clean(value)
    return value or None


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _clean(value: Any) -> Any:
    """Lone surrogates become U+FFFD, as Go's decoder does (depth is already bounded)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


_POST_TYPES = frozenset(
    ("", "slack_attachment", "me", "reminder", "add_bot_teams_channels", "burn_on_read")
)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


# --- Slack compatibility -------------------------------------------------------------------

_ANNOUNCEMENTS = (("<!channel>", "@channel"), ("<!here>", "@here"), ("<!all>", "@all"))
_USER_MENTION = re.compile(r"<@([a-zA-Z0-9]+)>")
# Mattermost's linkWithTextRegex, applied to the post's text after the conversions above.
_LINK_WITH_TEXT = re.compile(r"<([^\n<|>]+)\|([^|\n>]+)>")
# model.ParseSlackLinksToMarkdown's laxer rule, for attachment pretext, text and field values:
# the label may hold "|" and newlines.
_SLACK_LINK = re.compile(r"<([^<|]+)\|([^>]+)>")


def mentioned_user_ids(text: str) -> set[str]:
    """User ids written ``<@ID>`` in ``text``, so the caller can look their usernames up."""
    return set(_USER_MENTION.findall(text))


def response_user_ids(response: Mapping[str, Any]) -> set[str]:
    """Every ``<@ID>`` in a response: its text and its attachments' texts and field values."""
    found: set[str] = set()
    fields = _fields(response)
    for text in _texts(fields.get("text"), fields.get("attachments")):
        found |= mentioned_user_ids(text)
    return found


def _texts(text: Any, attachments: Any) -> list[str]:
    texts: list[Any] = [text]
    for att in attachments if isinstance(attachments, list) else ():
        if not isinstance(att, dict):
            continue
        texts += [att.get(k) for k in ("pretext", "text", "title")]
        fields = att.get("fields")
        for fld in fields if isinstance(fields, list) else ():
            if isinstance(fld, dict) and fld.get("value") is not None:
                texts.append(_go_v(fld["value"]))
    return [t for t in texts if isinstance(t, str)]


def _slack_text(text: str, usernames: Mapping[str, str]) -> str:
    for slack, mattermost in _ANNOUNCEMENTS:
        text = text.replace(slack, mattermost)
    return _USER_MENTION.sub(
        lambda m: "@" + usernames[m.group(1)] if m.group(1) in usernames else m.group(0), text
    )


def _links(text: str) -> str:
    return _LINK_WITH_TEXT.sub(r"[\2](\1)", text)


def _attachment_links(text: str) -> str:
    return _SLACK_LINK.sub(r"[\2](\1)", text)


def _go_float(f: float) -> str:
    """``fmt.Sprintf("%v", f)`` for a float64: shortest digits, %e from exponent 6 up."""
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    if math.isinf(f) or math.isnan(f):
        return "NaN" if math.isnan(f) else ("+Inf" if f > 0 else "-Inf")
    sign = "-" if f < 0 else ""
    parts = Decimal(repr(abs(f))).normalize().as_tuple()
    digits = "".join(map(str, parts.digits))
    point = len(digits) + int(parts.exponent)
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _go_v(value: Any) -> str:
    """``fmt.Sprintf("%v", value)`` for a value Go's JSON decoder produced."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            return _go_float(float(value))  # Go decodes every JSON number as float64
        except OverflowError:
            return str(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_v(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_v(value[k])}" for k in sorted(value)) + "]"
    return str(value)


# --- validation ----------------------------------------------------------------------------

_RESPONSE_FIELDS = frozenset(
    {"text", "username", "icon_url", "attachments", "type", "response_type", "props", "priority"}
)
_ATTACHMENT_STRINGS = (
    "fallback",
    "color",
    "pretext",
    "author_name",
    "author_link",
    "author_icon",
    "title",
    "title_link",
    "text",
    "image_url",
    "thumb_url",
    "footer",
    "footer_icon",
)
_PRIORITIES = ("", "urgent", "important")


def _fields(response: Mapping[str, Any]) -> dict[str, Any]:
    # Go's decoder matches struct fields case-insensitively; the last key in the body wins.
    found: dict[str, Any] = {}
    for key, value in response.items():
        name = key if key in _RESPONSE_FIELDS else key.lower()
        if name in _RESPONSE_FIELDS:
            found[name] = value
    return found


def _opt_str(fields: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise ReplyError(f"'{where}{key}' must be a string, got {_kind(value)}")
    return value


def _attachments(value: Any, usernames: Mapping[str, str], warnings: list[str]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReplyError(f"'attachments' must be an array, got {_kind(value)}")
    result: list[Any] = []
    for i, att in enumerate(value):
        where = f"attachments[{i}]"
        if att is None:
            warnings.append(f"{where} is null: dropped")
            continue
        if not isinstance(att, dict):
            raise ReplyError(f"'{where}' must be an object, got {_kind(att)}")
        att = dict(att)
        for key in _ATTACHMENT_STRINGS:
            _opt_str(att, key, where + ".")
        for key in ("pretext", "text", "title"):
            if att.get(key):
                att[key] = _slack_text(att[key], usernames)
        for key in ("pretext", "text"):
            if att.get(key):
                att[key] = _attachment_links(att[key])
        if att.get("fields") is not None:
            att["fields"] = _attachment_fields(att["fields"], where, usernames)
        if att.get("actions") is not None and not isinstance(att["actions"], list):
            raise ReplyError(f"'{where}.actions' must be an array, got {_kind(att['actions'])}")
        result.append(att)
    return result


def _attachment_fields(value: Any, where: str, usernames: Mapping[str, str]) -> list[Any]:
    if not isinstance(value, list):
        raise ReplyError(f"'{where}.fields' must be an array, got {_kind(value)}")
    fields: list[Any] = []
    for j, fld in enumerate(value):
        if fld is None:
            continue
        here = f"{where}.fields[{j}]"
        if not isinstance(fld, dict):
            raise ReplyError(f"'{here}' must be an object, got {_kind(fld)}")
        fld = dict(fld)
        _opt_str(fld, "title", here + ".")
        short = fld.get("short")
        if not (short is None or isinstance(short, bool) or str(short).lower() in _BOOL_WORDS):
            raise ReplyError(f"'{here}.short' must be a boolean, got {_kind(short)}")
        if isinstance(short, str):
            # SlackCompatibleBool: decoded case-insensitively, re-encoded as a JSON boolean.
            fld["short"] = short.lower() == "true"
        if fld.get("value") is not None:
            fld["value"] = _attachment_links(_slack_text(_go_v(fld["value"]), usernames))
        fields.append(fld)
    return fields


_BOOL_WORDS = ("true", "false")


def _priority(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReplyError(f"'priority' must be an object, got {_kind(value)}")
    level = value.get("priority")
    if level is None:
        raise ReplyError("'priority.priority' is required to set a post's priority")
    if not isinstance(level, str) or level not in _PRIORITIES:
        raise ReplyError(f"'priority.priority' must be one of {_PRIORITIES}, got {level!r}")
    result: dict[str, Any] = {"priority": level}
    for key in ("requested_ack", "persistent_notifications"):
        flag = value.get(key)
        if flag is not None and not isinstance(flag, bool):
            raise ReplyError(f"'priority.{key}' must be a boolean, got {_kind(flag)}")
        if flag is not None:
            result[key] = flag
    return result


# --- building ------------------------------------------------------------------------------

_DROPPED_PROPS = frozenset({"from_webhook", "override_username", "override_icon_url"})


def build_reply(
    response: Mapping[str, Any],
    *,
    webhook: WebhookConfig,
    post: Post,
    settings: ReplySettings,
    usernames: Mapping[str, str],
) -> ReplyPlan:
    """The posts a callback's response asks for (none when it has no text or attachments).

    ``post`` is the triggering post; ``usernames`` maps the ids of :func:`response_user_ids`
    to usernames (unknown ids stay as written). Raise ReplyError on an invalid response.
    """
    fields = _fields(response)
    warnings: list[str] = []
    text = _opt_str(fields, "text")
    username = _opt_str(fields, "username") or webhook.username
    icon_url = _opt_str(fields, "icon_url") or webhook.icon_url
    post_type = _opt_str(fields, "type") or ""
    comment = _opt_str(fields, "response_type") == "comment"
    given_props = fields.get("props")
    if given_props is not None and not isinstance(given_props, dict):
        raise ReplyError(f"'props' must be an object, got {_kind(given_props)}")
    attachments = _attachments(fields.get("attachments"), usernames, warnings)
    priority = _priority(fields.get("priority"))
    if text is None and not attachments:
        return ReplyPlan((), tuple(warnings))

    post_type = _post_type(post_type, attachments)
    props = _reply_props(given_props, webhook, settings, username, icon_url)
    base = _base(post, comment, post_type, priority, warnings)
    message = _links(_slack_text(text or "", usernames))
    posts = _split(message, props, attachments, base, settings.max_post_size)
    return ReplyPlan(tuple(posts), tuple(warnings))


def _post_type(post_type: str, attachments: list[Any]) -> str:
    """The reply's type: as given, ``slack_attachment`` for attachments; never system_*."""
    if attachments and not post_type:
        post_type = "slack_attachment"
    # The server's Post.IsValid list minus system_* (which a created post may not have).
    if post_type not in _POST_TYPES and not post_type.startswith("custom_"):
        raise ReplyError(
            f"'type' must be a post type (not system_*) or custom_*, got {post_type!r}"
        )
    return post_type


def _reply_props(
    given: Mapping[str, Any] | None,
    webhook: WebhookConfig,
    settings: ReplySettings,
    username: str | None,
    icon_url: str | None,
) -> dict[str, Any]:
    """The response's props, less those only the server sets, plus the webhook's own."""
    # "attachments" inside props is dropped too: Mattermost only keeps the typed ones.
    props = {
        k: v for k, v in (given or {}).items() if k not in _DROPPED_PROPS and k != "attachments"
    }
    props["webhook_display_name"] = webhook.name
    props["from_webhook"] = "true"
    if settings.enable_post_username_override:
        props["override_username"] = username or "webhook"
    if settings.enable_post_icon_override and icon_url:
        props["override_icon_url"] = icon_url
    return props


def _base(
    post: Post,
    comment: bool,
    post_type: str,
    priority: dict[str, Any] | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The fields every part of the reply shares: channel, thread, type, priority."""
    root_id = (post.root_id or post.id) if comment else ""
    base: dict[str, Any] = {"channel_id": post.channel_id, "root_id": root_id, "type": post_type}
    if priority is not None and root_id:
        warnings.append("priority is only allowed on root posts: dropped from the comment")
    elif priority is not None:
        base["metadata"] = {"priority": priority}
    return base


def _split(
    message: str,
    props: dict[str, Any],
    attachments: list[Any],
    base: Mapping[str, Any],
    max_size: int,
) -> list[dict[str, Any]]:
    """Mattermost's splitWebhookPost: cut the text every ``max_size`` runes, attachments last.

    Attachments go on the last part while the props fit in PROPS_MAX_RUNES, then on extra
    parts with no text; a single attachment too big alone has its text truncated.
    """
    if not _surely_fits(props) and _json_size(props) > PROPS_MAX_RUNES:
        raise ReplyError(f"props are over {PROPS_MAX_RUNES} characters as JSON")
    chunks = [message[i : i + max_size] for i in range(0, len(message), max(max_size, 1))]
    posts = [_part(base, chunk, props) for chunk in chunks or [""]]
    if not attachments:
        return posts

    # The size of props with an "attachments" list is computed incrementally: re-encoding
    # the whole list for each attachment would be quadratic in the response size.
    empty_size = _json_size({**props, "attachments": []})
    sizes = [empty_size]  # per part: size of its props with the attachments so far
    counts = [0]
    for att in attachments:
        att_size = _json_size(att)
        while True:
            size = sizes[-1] + att_size + (1 if counts[-1] else 0)
            if size <= PROPS_MAX_RUNES:
                posts[-1]["props"].setdefault("attachments", []).append(att)
                sizes[-1], counts[-1] = size, counts[-1] + 1
                break
            if counts[-1]:
                posts.append(_part(base, "", props))
                sizes.append(empty_size)
                counts.append(0)
                continue
            excess = size - PROPS_MAX_RUNES
            att_text = att.get("text") or ""
            if len(att_text) < excess:
                raise ReplyError(f"an attachment is over {PROPS_MAX_RUNES} characters as JSON")
            cut = {**att, "text": att_text[: len(att_text) - excess]}
            posts[-1]["props"]["attachments"] = [cut]
            sizes[-1], counts[-1] = size - excess, 1
            break
    return posts


def _surely_fits(props: Mapping[str, Any]) -> bool:
    """Whether props of strings only (the usual reply's) are within PROPS_MAX_RUNES as JSON,
    told without encoding them: no character takes more than 6 as JSON (``\\u003c``), and
    strings cannot fail to encode."""
    size = 2
    for key, value in props.items():
        if type(value) is not str:
            return False
        size += 6 * (len(key) + len(value)) + 6  # two quoted strings, a colon, a comma
    return size <= PROPS_MAX_RUNES


def _json_size(value: Any) -> int:
    """Characters of ``value`` as Go encodes it (Go counts runes; so does len)."""
    try:
        return len(go_json(value))
    except (ValueError, TypeError, RecursionError) as exc:
        raise ReplyError(f"the reply cannot be encoded as JSON: {exc}") from None


def _part(base: Mapping[str, Any], message: str, props: Mapping[str, Any]) -> dict[str, Any]:
    part = {**base, "message": message, "props": dict(props)}
    if "metadata" in base:
        part["metadata"] = {"priority": dict(base["metadata"]["priority"])}
    return part
