"""``mm-sidecar import``: the server's outgoing webhooks as ``[[webhook]]`` tables, tokens kept.

Reads ``GET /api/v4/hooks/outgoing`` (paged; ``team_id`` with ``--team``) and writes one
``[[webhook]]`` table per hook that ``mm-sidecar check`` accepts unchanged: the same token,
trigger words, trigger_when, channel (by name), callback URLs, content type, username and
icon, so every receiver keeps verifying. A comment above each table names the hook id and the
cut-over command: while a hook exists both in Mattermost and here, its public-channel posts
reach the receiver twice.

The output holds tokens: a file is created with mode 0600. ``--merge FILE`` appends to an
existing config the hooks it does not have yet (matched by the hook id in the comment, or by
token). The rendering is pure (:func:`render_hooks`); :func:`command` does the I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.compat import tomllib
from sidecar.delivery import USER_AGENT
from sidecar.errors import SidecarError
from sidecar.mattermost import MattermostError, RestClient, Unauthorized

IMPORT_TOKEN_ENV = "MM_SIDECAR_IMPORT_TOKEN"
PER_PAGE = 200
EX_OK, EX_FAIL, EX_CONFIG = 0, 1, 78
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
_HOOK_ID_COMMENT = re.compile(r"^# Mattermost outgoing webhook ([a-z0-9]{26})\b", re.M)
_NEEDS_PERMISSION = (
    "the token's user needs the 'manage own outgoing webhooks' permission, and 'manage "
    "others' outgoing webhooks' to see every hook (a system admin's token has both)"
)


class ImportFailed(SidecarError):
    """The import cannot go on; the message says why. ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EX_FAIL) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ServerHook:
    """One outgoing webhook as the server lists it, with its team's and channel's names."""

    id: str
    token: str
    team: str  # team name (its id when the name could not be read)
    channel: str  # channel name, id, or "" when the hook has no channel
    trigger_words: tuple[str, ...]
    trigger_when: int
    callback_urls: tuple[str, ...]
    display_name: str
    description: str
    content_type: str
    username: str
    icon_url: str


# -- pure --------------------------------------------------------------------------------------


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, except DEL, which TOML wants escaped)."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


def _cut_bytes(text: str, limit: int) -> str:
    return text.encode()[:limit].decode("utf-8", "ignore")


def unique_name(hook: ServerHook, taken: set[str]) -> str:
    """The hook's display name (or ``hook-<id>``), at most 64 bytes, not in ``taken``."""
    base = _cut_bytes(" ".join(hook.display_name.split()), 64) or f"hook-{hook.id[:8]}"
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"-{n}"
        name = _cut_bytes(base, 64 - len(suffix)) + suffix
    taken.add(name)
    return name


def render_hook(hook: ServerHook, name: str) -> str:
    """One commented ``[[webhook]]`` table."""
    lines = [
        f"# Mattermost outgoing webhook {hook.id} (team {hook.team}). Cut over once the sidecar",
        "# runs (until then, its public-channel posts reach the receiver twice):",
        f"#   mmctl webhook delete {hook.id}",
        "[[webhook]]",
        f"name = {toml_string(name)}",
    ]
    if hook.description:
        lines.append(f"description = {toml_string(hook.description)}")
    lines.append(f"team = {toml_string(hook.team)}")
    if hook.channel:
        lines.append(f"channels = {_toml_list([hook.channel])}")
    if hook.trigger_words:
        lines.append(f"trigger_words = {_toml_list(hook.trigger_words)}")
        when = "prefix" if hook.trigger_when == 1 else "exact"
        lines.append(f"trigger_when = {toml_string(when)}")
    lines.append(f"callback_urls = {_toml_list(hook.callback_urls)}")
    # The server sends JSON for exactly this content type and a form for anything else.
    content_type = JSON if hook.content_type == JSON else FORM
    lines.append(f"content_type = {toml_string(content_type)}")
    if hook.username:
        lines.append(f"username = {toml_string(hook.username)}")
    if hook.icon_url:
        lines.append(f"icon_url = {toml_string(hook.icon_url)}")
    lines.append(f"token = {toml_string(hook.token)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Existing:
    """What a config already holds: hook ids (from the import comments), tokens, names."""

    hook_ids: frozenset[str] = frozenset()
    tokens: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()


def existing_in(text: str) -> Existing:
    """Read an existing config for ``--merge`` (raises tomllib.TOMLDecodeError)."""
    data = tomllib.loads(text)
    hooks = data.get("webhook", [])
    hooks = [h for h in hooks if isinstance(h, dict)] if isinstance(hooks, list) else []
    return Existing(
        hook_ids=frozenset(_HOOK_ID_COMMENT.findall(text)),
        tokens=frozenset(h["token"] for h in hooks if isinstance(h.get("token"), str)),
        names=frozenset(h["name"] for h in hooks if isinstance(h.get("name"), str)),
    )


def render_hooks(
    hooks: Sequence[ServerHook], *, url: str, existing: Existing | None = None
) -> tuple[str, int]:
    """The text to write (a whole config, or only new tables when merging) and how many
    hooks it holds."""
    taken = set(existing.names) if existing else set()
    new = [
        h
        for h in hooks
        if existing is None or (h.id not in existing.hook_ids and h.token not in existing.tokens)
    ]
    parts = []
    if existing is None:
        parts.append(
            f"# Outgoing webhooks imported from {url} by mm-sidecar import.\n"
            "# This file holds their tokens: keep it private (mode 0600).\n"
            "\n"
            "[mattermost]\n"
            f"url = {toml_string(url)}\n"
            '# The sidecar\'s bot token: token_file = "…", or MM_SIDECAR_TOKEN.\n'
        )
    parts.extend(render_hook(h, unique_name(h, taken)) for h in new)
    return "\n".join(parts), len(new)


def _hook_from_json(
    d: Mapping[str, Any], teams: Mapping[str, str], channels: Mapping[str, str]
) -> ServerHook:
    def text(key: str) -> str:
        value = d.get(key)
        return value if isinstance(value, str) else ""

    def strings(key: str) -> tuple[str, ...]:
        value = d.get(key)
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    when = d.get("trigger_when")
    channel_id = text("channel_id")
    return ServerHook(
        id=text("id"),
        token=text("token"),
        team=teams.get(text("team_id"), text("team_id")),
        channel=channels.get(channel_id, channel_id),
        trigger_words=strings("trigger_words"),
        trigger_when=when if isinstance(when, int) else 0,
        callback_urls=strings("callback_urls"),
        display_name=text("display_name"),
        description=text("description"),
        content_type=text("content_type"),
        username=text("username"),
        icon_url=text("icon_url"),
    )


# -- I/O ---------------------------------------------------------------------------------------


async def fetch_hooks(
    url: str, token: str, *, team: str = "", verify_tls: bool = True
) -> list[ServerHook]:
    """Every outgoing webhook the token may see (of ``team``, a name or id, when given)."""
    async with RestClient(url, token, verify_tls=verify_tls, user_agent=USER_AGENT) as rest:
        team_id = ""
        if team:
            try:
                found = await rest.call("GET", f"/teams/name/{team}")
            except MattermostError as exc:
                if exc.status != 404 or len(team) != 26:
                    raise
                found = {"id": team}
            team_id = str(found.get("id", "")) if isinstance(found, dict) else ""
        raw: list[dict[str, Any]] = []
        page = 0
        while True:
            params = {"page": str(page), "per_page": str(PER_PAGE)}
            if team_id:
                params["team_id"] = team_id
            data = await rest.call("GET", "/hooks/outgoing", params=params)
            if not isinstance(data, list):
                raise MattermostError("GET /hooks/outgoing: expected a list")
            raw.extend(h for h in data if isinstance(h, dict) and not h.get("delete_at"))
            if len(data) < PER_PAGE:
                break
            page += 1
        teams = await _names(rest, "/teams/", {str(h.get("team_id", "")) for h in raw})
        channels = await _names(rest, "/channels/", {str(h.get("channel_id", "")) for h in raw})
    return [_hook_from_json(h, teams, channels) for h in raw]


async def _names(rest: RestClient, prefix: str, ids: set[str]) -> dict[str, str]:
    """id → name for each id the token may read (the others keep their id: config takes it)."""
    names: dict[str, str] = {}
    for ident in sorted(i for i in ids if i):
        try:
            data = await rest.call("GET", prefix + ident)
        except Unauthorized:
            raise
        except MattermostError:
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            names[ident] = data["name"]
    return names


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ImportFailed(f"cannot read --token-file: {exc.strerror}", EX_CONFIG) from None
    else:
        token = os.environ.get(IMPORT_TOKEN_ENV, "").strip()
    if not token:
        raise ImportFailed(f"no token: pass --token-file FILE or set {IMPORT_TOKEN_ENV}", EX_CONFIG)
    return token


def _write_private(path: str, text: str, *, append: bool = False) -> None:
    """Write ``text``; a new file gets mode 0600 (it holds tokens)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if not append:
            os.fchmod(f.fileno(), 0o600)
        f.write(text)


def command(args: argparse.Namespace) -> int:
    """``mm-sidecar import``."""
    try:
        return _command(args)
    except ImportFailed as exc:
        print(f"import: {exc}", file=sys.stderr)
        return exc.code


def _command(args: argparse.Namespace) -> int:
    token = _read_token(args)
    url = args.url.rstrip("/")
    existing: Existing | None = None
    old_text = ""
    if args.merge:
        try:
            old_text = Path(args.merge).read_text(encoding="utf-8")
            existing = existing_in(old_text)
        except OSError as exc:
            raise ImportFailed(f"cannot read {args.merge}: {exc.strerror}", EX_CONFIG) from None
        except tomllib.TOMLDecodeError as exc:
            raise ImportFailed(f"{args.merge}: invalid TOML: {exc}", EX_CONFIG) from None
    try:
        hooks = asyncio.run(fetch_hooks(url, token, team=args.team))
    except Unauthorized as exc:
        raise ImportFailed(f"the token was rejected: {exc}", EX_CONFIG) from None
    except MattermostError as exc:
        if exc.status == 403:
            raise ImportFailed(f"{exc}: {_NEEDS_PERMISSION}") from None
        raise ImportFailed(str(exc)) from None
    text, count = render_hooks(hooks, url=url, existing=existing)
    skipped = len(hooks) - count
    if args.merge and not args.output:
        if count:
            separator = "" if old_text.endswith("\n\n") or not old_text else "\n"
            if old_text and not old_text.endswith("\n"):
                separator = "\n\n"
            _write_private(args.merge, separator + text, append=True)
        if stat.S_IMODE(os.stat(args.merge).st_mode) & 0o077:
            print(
                f"warning: {args.merge} is readable by other users and holds tokens",
                file=sys.stderr,
            )
        where = args.merge
    elif args.output:
        if args.merge:
            text = old_text.rstrip("\n") + "\n\n" + text
        _write_private(args.output, text)
        where = args.output
    else:
        sys.stdout.write(text)
        where = "stdout"
    print(
        f"import: {count} outgoing webhook(s) written to {where}"
        + (f", {skipped} already there" if skipped else "")
        + "; a token without 'manage others' outgoing webhooks' sees only its own user's hooks",
        file=sys.stderr,
    )
    return EX_OK
