"""TOML → frozen dataclasses.

Every error at once, each with its key path (``config.toml: webhook[2].callback_urls[0]: …``);
unknown keys with a did-you-mean; secrets never in ``repr``; regexes compiled here.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from sidecar.compat import tomllib
from sidecar.config_checks import (
    Report,
    Table,
    compile_regex,
    is_network,
    list_size,
    listen_problem,
    secret_ok,
    show,
    url_problem,
)
from sidecar.errors import ConfigError as ConfigError
from sidecar.models import CHANNEL_TYPES, EVENT_NAMES, ChannelType, EventName

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

TOKEN_ENV = "MM_SIDECAR_TOKEN"
#: Name of the systemd credential (``LoadCredential=token:…``) read from $CREDENTIALS_DIRECTORY.
CREDENTIAL_NAME = "token"
ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"

# Every key each table accepts, in the order config.example.toml documents them.
MATTERMOST_KEYS = ("url", "token", "token_file", "verify_tls", "max_post_size")
# fmt: off
SIDECAR_KEYS = (
    "state_dir", "listen", "log_format", "allowed_untrusted_internal_connections",
    "enable_post_username_override", "enable_post_icon_override", "max_in_flight",
    "event_loop", "catch_up_window", "shutdown_timeout", "join_public_channels", "join_interval",
    "history_days", "dead_letter_days", "history_max_rows",
    "state_url", "state_password_file", "state_schema", "lease_check_interval",
)
WEBHOOK_KEYS = (
    "name", "description", "team", "channels", "channel_types", "trigger_words", "trigger_when",
    "trigger_regex", "case_insensitive", "users", "exclude_users", "ignore_bots", "events",
    "callback_urls", "content_type", "token", "token_file", "signing_secret",
    "signing_secret_file", "username", "icon_url", "timeout", "retries", "extended_payload",
)
# fmt: on


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One ``[[webhook]]`` table, validated."""

    index: int  # position in the file, for messages: webhook[index]
    name: str
    callback_urls: tuple[str, ...]
    token: str = field(repr=False)
    description: str = ""
    team: str = ""  # team name or id; "" = every team the bot is in
    channels: tuple[str, ...] = ()  # names or ids; () = every channel the bot is in
    # None = not set in the file: resolved at start-up from the named channels' types.
    channel_types: frozenset[ChannelType] | None = None
    trigger_words: tuple[str, ...] = ()
    trigger_when: int = 0  # 0 exact, 1 prefix (Mattermost's numbers)
    trigger_regex: regex.Pattern[str] | None = None  # compiled by the regex engine
    case_insensitive: bool = False
    users: tuple[str, ...] = ()
    exclude_users: tuple[str, ...] = ()
    ignore_bots: bool = False
    events: frozenset[EventName] = frozenset({"posted"})
    content_type: str = FORM
    signing_secrets: tuple[str, ...] = field(default=(), repr=False)
    username: str = ""
    icon_url: str = ""
    timeout: float = 30.0
    retries: int = 0
    extended_payload: bool = False


@dataclass(frozen=True, slots=True)
class MattermostConfig:
    """The ``[mattermost]`` table."""

    url: str  # without a trailing slash; may include a sub-path
    token: str = field(repr=False)
    verify_tls: bool = True
    max_post_size: int = 16383
    # Where the token came from ("mattermost.token", "MM_SIDECAR_TOKEN", …), for logs.
    token_source: str = ""


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """The ``[sidecar]`` table."""

    state_dir: Path = Path("/var/lib/mm-sidecar")
    listen: str = "127.0.0.1:9181"
    log_format: str = "text"
    allowed_untrusted_internal_connections: tuple[str, ...] = ()
    enable_post_username_override: bool = False
    enable_post_icon_override: bool = False
    max_in_flight: int = 64
    event_loop: str = "asyncio"  # or "uvloop" (the [fast] extra)
    catch_up_window: float = 3600.0
    shutdown_timeout: float = 10.0
    join_public_channels: bool = True
    join_interval: float = 60.0
    history_days: float = 7.0  # delivery history kept (history.py)
    dead_letter_days: float = 30.0  # failed deliveries kept
    history_max_rows: int = 100_000
    # HA (issue 13): "" = SQLite in state_dir; "postgresql://…" = shared state, one active replica.
    state_url: str = ""
    state_password_file: Path | None = None
    state_schema: str = "mm_sidecar"
    lease_check_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated config file."""

    path: Path
    mattermost: MattermostConfig
    sidecar: SidecarConfig
    webhooks: tuple[WebhookConfig, ...]
    warnings: tuple[str, ...] = ()


def new_token() -> str:
    """A new 26-character z-base-32 token from 128 random bits, like Mattermost's ``NewId``."""
    b32 = base64.b32encode(uuid.uuid4().bytes).decode("ascii")
    return b32.translate(_TO_ZBASE32)[:26]


_TO_ZBASE32 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ZBASE32)
_ID_RE = re.compile(f"[{ZBASE32}]{{26}}")


def is_mattermost_id(value: str) -> bool:
    """True when ``value`` has the shape of a Mattermost id or token (26 z-base-32 chars)."""
    return _ID_RE.fullmatch(value) is not None


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    if text.startswith("\ufeff"):
        # tomllib would say "Invalid statement (at line 1, column 1)", which hides the cause.
        raise ConfigError(
            [
                f"{path}:1:1: the file starts with a UTF-8 byte order mark (BOM), which TOML "
                "does not allow: save it as UTF-8 without BOM"
            ]
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_toml_error(path, str(e), text)]) from None
    return parse_config(data, path=path, env=env, file_mode=mode)


def _toml_error(path: Path, message: str, text: str) -> str:
    """tomllib's message as ``file:line:col: invalid TOML: …``, the way editors link it."""
    if message.endswith(" (at end of document)"):
        lines = text.split("\n")
        line, col = len(lines), len(lines[-1]) + 1
        message = message.removesuffix(" (at end of document)")
    elif where := re.search(r" \(at line (\d+), column (\d+)\)$", message):
        line, col = int(where[1]), int(where[2])
        message = message[: where.start()]
    else:
        return f"{path}: invalid TOML: {message}"
    return f"{path}:{line}:{col}: invalid TOML: {message}"


def parse_config(
    data: Mapping[str, Any],
    *,
    path: Path,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    file_mode: int | None = None,
) -> Config:
    """Validate already-parsed TOML; raise ConfigError listing every problem.

    Relative paths (``state_dir``, ``token_file``…) are taken from ``base_dir``, by default the
    config file's directory. ``file_mode`` (the file's ``st_mode``) enables the warning about
    secrets written in a file that other users can read.
    """
    report = Report(str(path), Path(path).parent if base_dir is None else base_dir)
    env = os.environ if env is None else env
    top = Table(report, data, "")
    top.check_keys(("mattermost", "sidecar", "webhook"))
    mm = _mattermost(top.table("mattermost"), env)
    sc = _sidecar(top.table("sidecar"))
    hooks = [_webhook(tbl, i) for i, tbl in top.tables("webhook")]
    if "webhook" not in data:
        report.warn("webhook", "no [[webhook]] tables: the sidecar will forward nothing")
    _check_unique(report, hooks)
    if file_mode is not None and file_mode & 0o044:
        for key, fix in report.inline_secrets:
            report.warn(
                key,
                f"secret written in a file other users can read (mode {file_mode & 0o777:04o});"
                f" use {fix} or chmod 600 the file",
            )
    if report.errors:
        raise ConfigError(report.errors)
    return Config(Path(path), mm, sc, tuple(hooks), tuple(report.warnings))


def webhook_from_dict(
    data: Mapping[str, Any], *, index: int = 0, base_dir: Path = Path("."), label: str = "<dict>"
) -> WebhookConfig:
    """Validate one ``[[webhook]]`` table given as a dict; raise ConfigError on any problem."""
    report = Report(label, base_dir)
    hook = _webhook(Table(report, data, f"webhook[{index}]"), index)
    if report.errors:
        raise ConfigError(report.errors)
    return hook


# --- the tables -------------------------------------------------------------------------------


def _mattermost(t: Table, env: Mapping[str, str]) -> MattermostConfig:
    t.check_keys(MATTERMOST_KEYS)
    url = t.string("url", required=True)
    problem = url_problem(url, allow_query=False) if url else None
    if problem:
        t.error("url", problem)
    token, source = _bot_token(t, env)
    return MattermostConfig(
        url=url.rstrip("/"),
        token=token,
        verify_tls=t.boolean("verify_tls", True),
        max_post_size=t.integer("max_post_size", 16383, lo=1, hi=10_000_000),
        token_source=source,
    )


def _bot_token(t: Table, env: Mapping[str, str]) -> tuple[str, str]:
    """The bot token from, in order: token, token_file, $MM_SIDECAR_TOKEN, systemd credential."""
    before = len(t.report.errors)
    inline = t.string("token")
    file = t.string("token_file")
    if inline and file:
        t.error("token", "set token or token_file, not both")
    if len(t.report.errors) > before:
        return "", ""
    if inline:
        t.report.inline_secrets.append((t.key("token"), "token_file"))
        return _bot_token_checked(t, t.key("token"), inline), t.key("token")
    if file:
        value = t.report.read_file(t.key("token_file"), file)
        return _bot_token_checked(t, t.key("token_file"), value or ""), t.key("token_file")
    if env.get(TOKEN_ENV, "").strip():
        return _bot_token_checked(t, TOKEN_ENV, env[TOKEN_ENV].strip()), TOKEN_ENV
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
    cred = Path(cred_dir, CREDENTIAL_NAME) if cred_dir else None
    if cred is not None and cred.exists():
        label = f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}"
        value = t.report.read_file(label, str(cred))
        return _bot_token_checked(t, label, value or ""), label
    t.error(
        "token",
        f"no bot token: set token, token_file, {TOKEN_ENV} or a systemd credential named"
        f" {CREDENTIAL_NAME!r}",
    )
    return "", ""


def _bot_token_checked(t: Table, label: str, token: str) -> str:
    # The token goes into an Authorization header: anything else would break it, or leak it.
    if token and not all(0x21 <= ord(c) <= 0x7E for c in token):
        t.report.add(label, "must be printable ASCII without spaces")
    return token


def _sidecar(t: Table) -> SidecarConfig:
    t.check_keys(SIDECAR_KEYS)
    d = SidecarConfig()
    state_dir = t.string("state_dir", str(d.state_dir))
    if not state_dir:
        t.error("state_dir", "must not be empty")
    listen = t.string("listen", d.listen)
    if listen and (problem := listen_problem(listen)):
        t.error("listen", f'must be "" or "host:port" (IPv6 as "[::1]:9181"), {problem}')
    key = "allowed_untrusted_internal_connections"
    allowed = t.strings(key, split=True, check=_cidr_problem) or ()
    return SidecarConfig(
        state_dir=t.report.base_dir / os.path.expanduser(state_dir),
        listen=listen,
        log_format=t.choice("log_format", {"text": "text", "json": "json"}, d.log_format),
        allowed_untrusted_internal_connections=allowed,
        enable_post_username_override=t.boolean("enable_post_username_override", False),
        enable_post_icon_override=t.boolean("enable_post_icon_override", False),
        max_in_flight=t.integer("max_in_flight", d.max_in_flight, lo=1, hi=100_000),
        event_loop=_event_loop(t, d),
        catch_up_window=t.number("catch_up_window", d.catch_up_window, lo=0),
        shutdown_timeout=t.number("shutdown_timeout", d.shutdown_timeout, lo=0),
        join_public_channels=t.boolean("join_public_channels", d.join_public_channels),
        join_interval=t.number("join_interval", d.join_interval, lo=1),
        history_days=t.number("history_days", d.history_days, lo=0),
        dead_letter_days=t.number("dead_letter_days", d.dead_letter_days, lo=0),
        history_max_rows=t.integer("history_max_rows", d.history_max_rows, lo=0, hi=100_000_000),
        **_ha_keys(t, d),
    )


def _event_loop(t: Table, d: SidecarConfig) -> str:
    """``event_loop``: "asyncio" (the standard library's) or "uvloop" (installed)."""
    loop = t.choice("event_loop", {"asyncio": "asyncio", "uvloop": "uvloop"}, d.event_loop)
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        t.error("event_loop", "needs uvloop: pip install 'mattermost-webhook-sidecar[fast]'")
    return loop


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _ha_keys(t: Table, d: SidecarConfig) -> dict[str, Any]:
    """``state_url``, ``state_password_file``, ``state_schema``, ``lease_check_interval``."""
    url = t.string("state_url", d.state_url)
    if url and not url.startswith(("postgresql://", "postgres://")):
        t.error("state_url", f'must be "" or "postgresql://user@host/db", got {show(url)}')
    elif url and ":" in url.split("://", 1)[1].partition("@")[0] and "@" in url:
        t.error("state_url", "must not hold the password: use state_password_file")
    elif url and importlib.util.find_spec("psycopg") is None:
        t.error("state_url", "needs psycopg: pip install 'mattermost-webhook-sidecar[postgresql]'")
    file = t.string("state_password_file", "")
    schema = t.string("state_schema", d.state_schema)
    if not _SCHEMA_NAME.fullmatch(schema):
        t.error("state_schema", f"must be a lower-case SQL identifier, got {show(schema)}")
    return {
        "state_url": url,
        "state_password_file": t.report.base_dir / os.path.expanduser(file) if file else None,
        "state_schema": schema,
        "lease_check_interval": t.number(
            "lease_check_interval", d.lease_check_interval, lo=0.1, hi=60
        ),
    }


def _cidr_problem(entry: str) -> str | None:
    # Mattermost takes an entry with a "/" as a CIDR; a typo there would silently allow nothing.
    if "/" in entry and not is_network(entry):
        return f"is neither a host name nor a CIDR network, got {show(entry)}"
    return None


def _webhook(t: Table, index: int) -> WebhookConfig:
    t.check_keys(WEBHOOK_KEYS)
    name = t.string("name", required=True, max_bytes=64)
    description = t.string("description", max_bytes=500)
    # Mattermost stores team names and usernames in lowercase (ids are lowercase too), so
    # "SomeTeam" or "@Alice" would otherwise never match.
    team = t.string("team").lower()
    before = len(t.report.errors)
    channels = tuple(c.removeprefix("~") for c in t.strings("channels") or ())
    ctypes = t.strings("channel_types")
    channel_types = None
    if ctypes is not None:
        channel_types = frozenset(t.choices("channel_types", ctypes, CHANNEL_TYPES))
    trigger_words = t.strings("trigger_words", check=_trigger_word_problem) or ()
    _list_limit(t, "trigger_words", trigger_words)
    regex = _regex(t)
    everything = not trigger_words and regex is None and not channels
    public = channel_types is None or "O" in channel_types
    # Skipped after an error in those keys: the message would only repeat it.
    if everything and public and len(t.report.errors) == before:
        t.error(
            "channels",
            "a webhook without trigger_words or trigger_regex fires on every message, so it"
            ' must name channels (or set channel_types without "public")',
        )
    events = t.strings("events")
    callback_urls = t.strings("callback_urls", required=True, check=url_problem) or ()
    _list_limit(t, "callback_urls", callback_urls)
    return WebhookConfig(
        index=index,
        name=name,
        description=description,
        team=team,
        channels=channels,
        channel_types=channel_types,
        trigger_words=trigger_words,
        trigger_when=t.choice(
            "trigger_when",
            {"exact": 0, "prefix": 1, 0: 0, 1: 1},
            0,
            allowed='"exact", "prefix", 0 or 1',
        ),
        trigger_regex=regex,
        case_insensitive=t.boolean("case_insensitive", False),
        users=tuple(u.removeprefix("@").lower() for u in t.strings("users") or ()),
        exclude_users=tuple(u.removeprefix("@").lower() for u in t.strings("exclude_users") or ()),
        ignore_bots=t.boolean("ignore_bots", False),
        events=frozenset(t.choices("events", events, {e: e for e in EVENT_NAMES}))
        if events is not None
        else frozenset({"posted"}),
        callback_urls=callback_urls,
        content_type=t.choice("content_type", {FORM: FORM, JSON: JSON}, FORM),
        token=_webhook_token(t),
        signing_secrets=_signing_secrets(t),
        username=t.string("username", max_bytes=64),
        icon_url=t.string("icon_url", max_bytes=1024),
        timeout=t.number("timeout", 30.0, lo=0, hi=300, lo_open=True),
        retries=t.integer("retries", 0, lo=0, hi=10),
        extended_payload=t.boolean("extended_payload", False),
    )


def _trigger_word_problem(word: str) -> str | None:
    if any(c.isspace() for c in word):
        return "must not contain whitespace: the first word of a message never does"
    return None


def _list_limit(t: Table, key: str, items: tuple[str, ...]) -> None:
    if (size := list_size(items)) > 1024:
        t.error(key, f"must be at most 1024 bytes written as a list, got {size}")


def _webhook_token(t: Table) -> str:
    before = len(t.report.errors)
    inline = t.string("token")
    file = t.string("token_file")
    if "token" in t.data and "token_file" in t.data:
        t.error("token", "set token or token_file, not both")
    if len(t.report.errors) > before:
        return ""
    label = t.key("token")
    if "token_file" in t.data:
        label = t.key("token_file")
        inline = (t.report.read_file(label, file) or "") if file else ""
    elif "token" in t.data:
        t.report.inline_secrets.append((label, "token_file"))
    else:
        t.error("token", "is required (set token or token_file; `mm-sidecar token` makes one)")
        return ""
    if not inline:
        t.report.add(label, "must not be empty")
    elif len(inline) > 128 or not all(0x20 <= ord(c) <= 0x7E for c in inline):
        t.report.add(label, "must be at most 128 printable ASCII characters")
    elif not is_mattermost_id(inline):
        t.report.warn(label, "not a Mattermost-style token (26 z-base-32 characters)")
    return inline


def _signing_secrets(t: Table) -> tuple[str, ...]:
    if "signing_secret" in t.data and "signing_secret_file" in t.data:
        t.error("signing_secret", "set signing_secret or signing_secret_file, not both")
        return ()
    if "signing_secret_file" in t.data:
        secrets, labels = _secrets_from_file(t)
    else:
        secrets, labels = _inline_secrets(t)
    for secret, label in zip(secrets, labels, strict=True):
        if not secret_ok(secret):
            t.report.add(label, 'must be "whsec_" followed by base64 (the secret is not shown)')
    return secrets


def _secrets_from_file(t: Table) -> tuple[tuple[str, ...], list[str]]:
    """``signing_secret_file``: one secret per line (during a rotation, the old and the new)."""
    label = t.key("signing_secret_file")
    file = t.string("signing_secret_file")
    text = t.report.read_file(label, file) if file else None
    lines = [line.strip() for line in (text or "").splitlines()]
    secrets = tuple(s for s in lines if s)
    labels = [f"{label} line {n + 1}" for n, s in enumerate(lines) if s]
    if text is not None and not secrets:
        t.report.add(label, "file holds no secret")
    return secrets, labels


def _inline_secrets(t: Table) -> tuple[tuple[str, ...], list[str]]:
    """``signing_secret``: a string or an array of strings (noted as inline secrets)."""
    value = t.data.get("signing_secret", "")
    secrets: tuple[str, ...]
    labels: list[str]
    if isinstance(value, list):
        t.strings("signing_secret")
        found = [(i, s) for i, s in enumerate(value) if isinstance(s, str) and s]
        secrets = tuple(s for _, s in found)
        labels = [t.key(f"signing_secret[{i}]") for i, _ in found]
    else:
        one = t.string("signing_secret", expected="a string or an array of strings")
        secrets, labels = ((one,), [t.key("signing_secret")]) if one else ((), [])
    if secrets:
        t.report.inline_secrets.append((t.key("signing_secret"), "signing_secret_file"))
    return secrets, labels


def _regex(t: Table) -> regex.Pattern[str] | None:
    pattern = t.string("trigger_regex")
    if not pattern:
        return None
    compiled, problem = compile_regex(pattern)
    if problem:
        t.error("trigger_regex", problem)
    return compiled


def _check_unique(report: Report, hooks: list[WebhookConfig]) -> None:
    names: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for hook in hooks:
        if hook.name in names:
            report.add(
                f"webhook[{hook.index}].name",
                f"{show(hook.name)} is already used by webhook[{names[hook.name]}]",
            )
        names.setdefault(hook.name, hook.index)
        if hook.token and hook.token in tokens:
            # A receiver may tell hooks apart by token; the value itself is never shown.
            report.warn(
                f"webhook[{hook.index}].token", f"same token as webhook[{tokens[hook.token]}]"
            )
        tokens.setdefault(hook.token, hook.index)
