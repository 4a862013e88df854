"""The config loader: every key, every error with its key path, secrets kept out of sight."""

from __future__ import annotations

import base64
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.compat import tomllib
from sidecar.config import (
    FORM,
    JSON,
    MATTERMOST_KEYS,
    SIDECAR_KEYS,
    WEBHOOK_KEYS,
    ZBASE32,
    Config,
    ConfigError,
    SidecarConfig,
    is_mattermost_id,
    load_config,
    new_token,
    parse_config,
    webhook_from_dict,
)
from sidecar.config_checks import compile_regex, required_literal

ROOT = Path(__file__).resolve().parent.parent
HOOK_TOKEN = "zmigewsanbbsdf59xnmduzypjc"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

# product.md's TOML block, key by key (not read from ../shared at test time).
PRODUCT_KEYS = {
    "mattermost": ["url", "token_file", "verify_tls"],
    "sidecar": [
        "state_dir",
        "listen",
        "log_format",
        "allowed_untrusted_internal_connections",
        "enable_post_username_override",
        "enable_post_icon_override",
        "max_in_flight",
        "catch_up_window",
        "shutdown_timeout",
        "join_public_channels",
        "join_interval",
        "state_url",
        "state_password_file",
        "state_schema",
    ],
    "webhook": [
        "name",
        "description",
        "team",
        "channels",
        "channel_types",
        "trigger_words",
        "trigger_when",
        "trigger_regex",
        "case_insensitive",
        "users",
        "exclude_users",
        "ignore_bots",
        "events",
        "callback_urls",
        "content_type",
        "token",
        "signing_secret",
        "username",
        "icon_url",
        "timeout",
        "retries",
        "extended_payload",
    ],
}

# A valid config as TOML literals per table; cases override keys (None deletes one).
BASE: dict[str, dict[str, str]] = {
    "mattermost": {"url": '"https://chat.example.com"', "token": '"bot-token"'},
    "sidecar": {},
    "webhook": {
        "name": '"build"',
        "trigger_words": '["#build"]',
        "callback_urls": '["https://ci.example.com/hook"]',
        "token": f'"{HOOK_TOKEN}"',
    },
}


def render(changes: dict[str, dict[str, str | None]] | None = None, extra: str = "") -> str:
    """BASE with ``changes`` applied, as TOML text."""
    out = []
    for table, keys in BASE.items():
        merged: dict[str, str | None] = {**keys, **(changes or {}).get(table, {})}
        out.append(f"[[{table}]]" if table == "webhook" else f"[{table}]")
        out += [f"{k} = {v}" for k, v in merged.items() if v is not None]
    return "\n".join(out) + "\n" + extra


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def errors_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    prefix = f"{path}: "
    assert all(e.startswith(prefix) for e in info.value.errors), info.value.errors
    return [e.removeprefix(prefix) for e in info.value.errors]


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


M, S, W = "mattermost", "sidecar", "webhook"
BAD: list[tuple[str, dict[str, dict[str, str | None]], str]] = [
    ("url missing", {M: {"url": None}}, "mattermost.url: is required"),
    (
        "url scheme",
        {M: {"url": '"ftp://x"'}},
        "mattermost.url: must be an http:// or https:// URL, got 'ftp://x'",
    ),
    (
        "url query",
        {M: {"url": '"https://x/?a=1"'}},
        "mattermost.url: must not have a query or fragment, got 'https://x/?a=1'",
    ),
    (
        "verify_tls type",
        {M: {"verify_tls": '"yes"'}},
        "mattermost.verify_tls: expected a boolean (true or false), got string",
    ),
    (
        "max_post_size",
        {M: {"max_post_size": "0"}},
        "mattermost.max_post_size: must be between 1 and 10000000, got 0",
    ),
    (
        "token and token_file",
        {M: {"token_file": '"t"'}},
        "mattermost.token: set token or token_file, not both",
    ),
    (
        "listen no port",
        {S: {"listen": '"localhost"'}},
        'sidecar.listen: must be "" or "host:port" (IPv6 as "[::1]:9181"), got \'localhost\'',
    ),
    (
        "listen v6 unbracketed",
        {S: {"listen": '"::1:9181"'}},
        'sidecar.listen: must be "" or "host:port" (IPv6 as "[::1]:9181"), got \'::1:9181\';'
        " write IPv6 addresses in brackets",
    ),
    (
        "log_format",
        {S: {"log_format": '"xml"'}},
        'sidecar.log_format: must be "text" or "json", got \'xml\'',
    ),
    (
        "event_loop",
        {S: {"event_loop": '"trio"'}},
        'sidecar.event_loop: must be "asyncio" or "uvloop", got \'trio\'',
    ),
    (
        "allowed type",
        {S: {"allowed_untrusted_internal_connections": "5"}},
        "sidecar.allowed_untrusted_internal_connections: expected an array of strings, got integer",
    ),
    (
        "allowed bad cidr",
        {S: {"allowed_untrusted_internal_connections": '"ci.internal, 10.0.0.0/33"'}},
        "sidecar.allowed_untrusted_internal_connections[1]: is neither a host name nor a CIDR"
        " network, got '10.0.0.0/33'",
    ),
    (
        "max_in_flight",
        {S: {"max_in_flight": "0"}},
        "sidecar.max_in_flight: must be between 1 and 100000, got 0",
    ),
    (
        "max_in_flight bool",
        {S: {"max_in_flight": "true"}},
        "sidecar.max_in_flight: expected an integer, got boolean",
    ),
    (
        "catch_up_window",
        {S: {"catch_up_window": "-1"}},
        "sidecar.catch_up_window: must be at least 0, got -1",
    ),
    (
        "shutdown_timeout type",
        {S: {"shutdown_timeout": '"10"'}},
        "sidecar.shutdown_timeout: expected a number, got string",
    ),
    ("state_dir empty", {S: {"state_dir": '""'}}, "sidecar.state_dir: must not be empty"),
    (
        "state_url scheme",
        {S: {"state_url": '"mysql://db/x"'}},
        'sidecar.state_url: must be "" or "postgresql://user@host/db", got \'mysql://db/x\'',
    ),
    (
        "state_url password",
        {S: {"state_url": '"postgresql://u:pw@db/x"'}},
        "sidecar.state_url: must not hold the password: use state_password_file",
    ),
    (
        "state_schema",
        {S: {"state_schema": '"Bad-Name"'}},
        "sidecar.state_schema: must be a lower-case SQL identifier, got 'Bad-Name'",
    ),
    (
        "lease_check_interval",
        {S: {"lease_check_interval": "0"}},
        "sidecar.lease_check_interval: must be at least 0.1 and at most 60, got 0",
    ),
    ("name empty", {W: {"name": '""'}}, "webhook[0].name: must not be empty"),
    ("name missing", {W: {"name": None}}, "webhook[0].name: is required"),
    (
        "name bytes",
        {W: {"name": '"' + "é" * 33 + '"'}},
        "webhook[0].name: must be at most 64 bytes, got 66",
    ),
    (
        "description bytes",
        {W: {"description": '"' + "d" * 501 + '"'}},
        "webhook[0].description: must be at most 500 bytes, got 501",
    ),
    (
        "username bytes",
        {W: {"username": '"' + "u" * 65 + '"'}},
        "webhook[0].username: must be at most 64 bytes, got 65",
    ),
    (
        "icon_url bytes",
        {W: {"icon_url": '"' + "i" * 1025 + '"'}},
        "webhook[0].icon_url: must be at most 1024 bytes, got 1025",
    ),
    (
        "content_type",
        {W: {"content_type": '"application/json; charset=utf-8"'}},
        'webhook[0].content_type: must be "application/x-www-form-urlencoded" or'
        " \"application/json\", got 'application/json; charset=utf-8';"
        " did you mean 'application/json'?",
    ),
    (
        "trigger word empty",
        {W: {"trigger_words": '["", "x"]'}},
        "webhook[0].trigger_words[0]: must not be empty",
    ),
    (
        "trigger word space",
        {W: {"trigger_words": '["x", "a b"]'}},
        "webhook[0].trigger_words[1]: must not contain whitespace: the first word of a message"
        " never does",
    ),
    (
        "trigger words list size",
        {W: {"trigger_words": '["' + "x" * 1100 + '"]'}},
        "webhook[0].trigger_words: must be at most 1024 bytes written as a list, got 1102",
    ),
    (
        "trigger word type",
        {W: {"trigger_words": '"#build"'}},
        "webhook[0].trigger_words: expected an array of strings, got string",
    ),
    (
        "callback_urls empty",
        {W: {"callback_urls": "[]"}},
        "webhook[0].callback_urls: must not be empty",
    ),
    (
        "callback_urls missing",
        {W: {"callback_urls": None}},
        "webhook[0].callback_urls: is required",
    ),
    (
        "callback_url scheme",
        {W: {"callback_urls": '["https://ok.example", "ftp://x"]'}},
        "webhook[0].callback_urls[1]: must be an http:// or https:// URL, got 'ftp://x'",
    ),
    (
        "callback_url host",
        {W: {"callback_urls": '["https://"]'}},
        "webhook[0].callback_urls[0]: must name a host, got 'https://'",
    ),
    (
        "callback_url port",
        {W: {"callback_urls": '["http://h:99999/"]'}},
        "webhook[0].callback_urls[0]: is not a valid URL (Port out of range 0-65535),"
        " got 'http://h:99999/'",
    ),
    (
        "callback_url password masked",
        {W: {"callback_urls": '["gopher://user:hunter2@h/"]'}},
        "webhook[0].callback_urls[0]: must be an http:// or https:// URL,"
        " got 'gopher://user:***@h/'",
    ),
    (
        "callback_url type",
        {W: {"callback_urls": '["https://a", 3]'}},
        "webhook[0].callback_urls[1]: expected a string, got integer",
    ),
    (
        "trigger_when value",
        {W: {"trigger_when": "2"}},
        'webhook[0].trigger_when: must be "exact", "prefix", 0 or 1, got 2',
    ),
    (
        "trigger_when typo",
        {W: {"trigger_when": '"exat"'}},
        'webhook[0].trigger_when: must be "exact", "prefix", 0 or 1, got \'exat\';'
        " did you mean 'exact'?",
    ),
    (
        "trigger_when bool",
        {W: {"trigger_when": "true"}},
        'webhook[0].trigger_when: must be "exact", "prefix", 0 or 1, got true',
    ),
    (
        "trigger_when float",
        {W: {"trigger_when": "1.0"}},
        'webhook[0].trigger_when: must be "exact", "prefix", 0 or 1, got 1.0',
    ),
    (
        "regex invalid",
        {W: {"trigger_regex": "'('"}},
        "webhook[0].trigger_regex: invalid regex: missing ), unterminated subpattern at position 0",
    ),
    (
        "regex nested",
        {W: {"trigger_regex": "'(a+)+$'"}},
        "webhook[0].trigger_regex: pattern may backtrack catastrophically (nested quantifier);"
        " rewrite it",
    ),
    (
        "regex length",
        {W: {"trigger_regex": "'" + "a" * 1001 + "'"}},
        "webhook[0].trigger_regex: must be at most 1000 characters",
    ),
    (
        "channel type",
        {W: {"channel_types": '["public", "dm"]'}},
        'webhook[0].channel_types[1]: must be one of "public", "private", "direct", "group",'
        " got 'dm'",
    ),
    (
        "channel type typo",
        {W: {"channel_types": '["privat"]'}},
        'webhook[0].channel_types[0]: must be one of "public", "private", "direct", "group",'
        " got 'privat'; did you mean 'private'?",
    ),
    (
        "channel types empty",
        {W: {"channel_types": "[]"}},
        "webhook[0].channel_types: must list at least one of public, private, direct, group",
    ),
    (
        "event",
        {W: {"events": '["post_deleted"]'}},
        'webhook[0].events[0]: must be one of "posted", "post_edited", "reaction_added",'
        " got 'post_deleted'; did you mean 'post_edited'?",
    ),
    (
        "events empty",
        {W: {"events": "[]"}},
        "webhook[0].events: must list at least one of posted, post_edited, reaction_added",
    ),
    (
        "users type",
        {W: {"users": '"alice"'}},
        "webhook[0].users: expected an array of strings, got string",
    ),
    (
        "exclude_users item",
        {W: {"exclude_users": "[1]"}},
        "webhook[0].exclude_users[0]: expected a string, got integer",
    ),
    (
        "ignore_bots",
        {W: {"ignore_bots": "1"}},
        "webhook[0].ignore_bots: expected a boolean (true or false), got integer",
    ),
    (
        "case_insensitive",
        {W: {"case_insensitive": '"no"'}},
        "webhook[0].case_insensitive: expected a boolean (true or false), got string",
    ),
    (
        "extended_payload",
        {W: {"extended_payload": "[]"}},
        "webhook[0].extended_payload: expected a boolean (true or false), got array",
    ),
    ("team", {W: {"team": "{ name = 'x' }"}}, "webhook[0].team: expected a string, got table"),
    (
        "timeout zero",
        {W: {"timeout": "0"}},
        "webhook[0].timeout: must be greater than 0 and at most 300, got 0",
    ),
    (
        "timeout big",
        {W: {"timeout": "301"}},
        "webhook[0].timeout: must be greater than 0 and at most 300, got 301",
    ),
    (
        "timeout nan",
        {W: {"timeout": "nan"}},
        "webhook[0].timeout: must be greater than 0 and at most 300, got nan",
    ),
    ("retries", {W: {"retries": "11"}}, "webhook[0].retries: must be between 0 and 10, got 11"),
    (
        "retries float",
        {W: {"retries": "1.5"}},
        "webhook[0].retries: expected an integer, got float",
    ),
    (
        "token missing",
        {W: {"token": None}},
        "webhook[0].token: is required (set token or token_file; `mm-sidecar token` makes one)",
    ),
    ("token empty", {W: {"token": '""'}}, "webhook[0].token: must not be empty"),
    ("token type", {W: {"token": "123"}}, "webhook[0].token: expected a string, got integer"),
    (
        "token not ascii",
        {W: {"token": '"tökén"'}},
        "webhook[0].token: must be at most 128 printable ASCII characters",
    ),
    (
        "token too long",
        {W: {"token": '"' + "t" * 129 + '"'}},
        "webhook[0].token: must be at most 128 printable ASCII characters",
    ),
    (
        "token and token_file",
        {W: {"token_file": '"t"'}},
        "webhook[0].token: set token or token_file, not both",
    ),
    (
        "signing secret prefix",
        {W: {"signing_secret": '"c2VjcmV0"'}},
        'webhook[0].signing_secret: must be "whsec_" followed by base64 (the secret is not shown)',
    ),
    (
        "signing secret base64",
        {W: {"signing_secret": f'["{SECRET}", "whsec_!!"]'}},
        'webhook[0].signing_secret[1]: must be "whsec_" followed by base64'
        " (the secret is not shown)",
    ),
    (
        "signing secret type",
        {W: {"signing_secret": "5"}},
        "webhook[0].signing_secret: expected a string or an array of strings, got integer",
    ),
    (
        "signing secret both",
        {W: {"signing_secret": f'"{SECRET}"', "signing_secret_file": '"s"'}},
        "webhook[0].signing_secret: set signing_secret or signing_secret_file, not both",
    ),
    (
        "no trigger, no channels",
        {W: {"trigger_words": None}},
        "webhook[0].channels: a webhook without trigger_words or trigger_regex fires on every"
        ' message, so it must name channels (or set channel_types without "public")',
    ),
    (
        "no trigger, public listed",
        {W: {"trigger_words": "[]", "channel_types": '["direct", "public"]'}},
        "webhook[0].channels: a webhook without trigger_words or trigger_regex fires on every"
        ' message, so it must name channels (or set channel_types without "public")',
    ),
    (
        "unknown webhook key",
        {W: {"trigger_word": '"x"'}},
        "webhook[0].trigger_word: unknown key; did you mean 'trigger_words'?",
    ),
    (
        "Mattermost's name for name",
        {W: {"display_name": '"x"'}},
        "webhook[0].display_name: unknown key; did you mean 'name'?",
    ),
    ("unknown key, no guess", {S: {"zzz": "1"}}, "sidecar.zzz: unknown key"),
    ("quoted unknown key", {S: {'"a b"': "1"}}, 'sidecar."a b": unknown key'),
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_each_mistake_gives_its_exact_message(
    tmp_path: Path, changes: dict[str, dict[str, str | None]], expected: str
) -> None:
    assert errors_of(tmp_path, render(changes)) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mattermots]\nurl = 1\n", "mattermots: unknown key; did you mean 'mattermost'?"),
        (
            "[webhook]\nname = 'x'\n",
            "webhook: expected an array of tables ([[webhook]]), got table",
        ),
        ("webhook = ['x']\n", "webhook[0]: expected a table, got string"),
        ("mattermost = 3\n", "mattermost: expected a table, got integer"),
    ],
)
def test_top_level_mistakes(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in errors_of(tmp_path, text, env={"MM_SIDECAR_TOKEN": "t"})


def test_five_mistakes_are_reported_at_once(tmp_path: Path) -> None:
    text = render(
        {
            M: {"url": '"ftp://x"'},
            S: {"max_in_flight": "0"},
            W: {"content_type": '"text/plain"', "trigger_when": "2"},
        },
        extra='[[webhook]]\nname = "build"\ncallback_urls = ["https://a"]\n'
        f'token = "{HOOK_TOKEN}"\ntrigger_words = ["x"]\n',
    )
    assert errors_of(tmp_path, text) == [
        "mattermost.url: must be an http:// or https:// URL, got 'ftp://x'",
        "sidecar.max_in_flight: must be between 1 and 100000, got 0",
        'webhook[0].trigger_when: must be "exact", "prefix", 0 or 1, got 2',
        'webhook[0].content_type: must be "application/x-www-form-urlencoded" or'
        " \"application/json\", got 'text/plain'",
        "webhook[1].name: 'build' is already used by webhook[0]",
    ]


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[mattermost]\nurl = 'x'\n[mattermost]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == [f"{path}:3:12: invalid TOML: Cannot declare ('mattermost',) twice"]
    path = write(tmp_path, '[mattermost]\nurl = "https://x\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}:2:17: invalid TOML: Illegal character '\\n'"]


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[mattermost]\nurl = 'https://x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == [
        f"{path}:1:1: the file starts with a UTF-8 byte order mark (BOM), which TOML does not"
        " allow: save it as UTF-8 without BOM"
    ]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", env={})
    assert info.value.errors == [
        f"{tmp_path / 'nope.toml'}: cannot read the config file: No such file or directory"
    ]
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == [f"{path}: not UTF-8 text (byte 5)"]


def test_valid_config_values(tmp_path: Path) -> None:
    (tmp_path / "hook.token").write_text(" abc \n")
    (tmp_path / "secrets").write_text(f"{SECRET}\n\nwhsec_c2Vjb25k\n")
    config = load(
        tmp_path,
        render(
            {
                M: {"url": '"https://chat.example.com/sub/"', "max_post_size": "4000"},
                S: {
                    "state_dir": '"state"',
                    "listen": '"[::1]:0"',
                    "allowed_untrusted_internal_connections": '"ci.internal, 10.0.0.0/8 fd00::/8"',
                    "catch_up_window": "1.5",
                    "state_url": '"postgresql://sidecar@db:5432/mm?sslmode=require"',
                    "state_password_file": '"pg.pw"',
                    "state_schema": '"ha_state"',
                    "lease_check_interval": "0.5",
                },
                W: {
                    "trigger_words": '["#a", "#b"]',
                    "trigger_when": '"prefix"',
                    "trigger_regex": r"'(?P<n>\d+)'",
                    "channels": '["~town-square", "abc"]',
                    "users": '["@alice", "bob"]',
                    "events": '["posted", "reaction_added"]',
                    "content_type": f'"{JSON}"',
                    "token": None,
                    "token_file": '"hook.token"',
                    "signing_secret_file": '"secrets"',
                    "timeout": "2.5",
                    "retries": "10",
                },
            }
        ),
    )
    assert config.mattermost.url == "https://chat.example.com/sub"
    assert config.mattermost.max_post_size == 4000
    assert config.sidecar.state_dir == tmp_path / "state"
    assert config.sidecar.listen == "[::1]:0"
    assert config.sidecar.allowed_untrusted_internal_connections == (
        "ci.internal",
        "10.0.0.0/8",
        "fd00::/8",
    )
    assert config.sidecar.catch_up_window == 1.5
    assert config.sidecar.state_url == "postgresql://sidecar@db:5432/mm?sslmode=require"
    assert config.sidecar.state_password_file == tmp_path / "pg.pw"
    assert (config.sidecar.state_schema, config.sidecar.lease_check_interval) == ("ha_state", 0.5)
    (hook,) = config.webhooks
    assert hook.index == 0
    assert hook.trigger_words == ("#a", "#b")
    assert hook.trigger_when == 1
    assert hook.trigger_regex is not None and hook.trigger_regex.groupindex == {"n": 1}
    assert hook.channels == ("town-square", "abc")
    assert hook.channel_types is None
    assert hook.users == ("alice", "bob")
    assert hook.events == frozenset({"posted", "reaction_added"})
    assert hook.content_type == JSON
    assert hook.token == "abc"
    assert hook.signing_secrets == (SECRET, "whsec_c2Vjb25k")
    assert hook.timeout == 2.5
    assert hook.retries == 10
    # "abc" is not a Mattermost-style token: allowed, with a warning.
    assert config.warnings == (
        f"{tmp_path / 'config.toml'}: webhook[0].token_file: not a Mattermost-style token"
        " (26 z-base-32 characters)",
    )


def test_no_webhooks_is_a_warning(tmp_path: Path) -> None:
    config = load(tmp_path, '[mattermost]\nurl = "http://localhost:8065"\ntoken = "t"\n')
    assert config.webhooks == ()
    assert config.warnings == (
        f"{tmp_path / 'config.toml'}: webhook: no [[webhook]] tables: the sidecar will forward"
        " nothing",
    )


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, render())
    assert config.sidecar == SidecarConfig()
    assert config.mattermost.verify_tls is True
    assert config.mattermost.max_post_size == 16383
    (hook,) = config.webhooks
    assert (hook.trigger_when, hook.content_type, hook.timeout, hook.retries) == (0, FORM, 30, 0)
    assert hook.events == frozenset({"posted"})
    assert hook.channel_types is None
    assert hook.signing_secrets == ()
    assert config.warnings == ()


@pytest.mark.parametrize(("value", "stored"), [('"exact"', 0), ('"prefix"', 1), ("0", 0), ("1", 1)])
def test_trigger_when_values(tmp_path: Path, value: str, stored: int) -> None:
    assert load(tmp_path, render({W: {"trigger_when": value}})).webhooks[0].trigger_when == stored


@pytest.mark.parametrize(
    "listen", ["", "127.0.0.1:9181", "localhost:80", "[::1]:9181", "0.0.0.0:0"]
)
def test_listen_values(tmp_path: Path, listen: str) -> None:
    assert load(tmp_path, render({S: {"listen": f'"{listen}"'}})).sidecar.listen == listen


def test_webhook_without_trigger_is_fine_when_scoped(tmp_path: Path) -> None:
    for changes in (
        {"trigger_words": None, "channels": '["town-square"]'},
        {"trigger_words": None, "channel_types": '["direct", "group"]'},
        {"trigger_words": None, "trigger_regex": "'deploy'"},
    ):
        assert load(tmp_path, render({W: changes})).webhooks[0].trigger_words == ()


# --- the bot token ----------------------------------------------------------------------------


def token_config(tmp_path: Path, mm: dict[str, str | None], env: dict[str, str]) -> Config:
    return load(tmp_path, render({M: {"token": None, **mm}}), env=env)


def test_token_precedence(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("from-credential\n")
    (tmp_path / "tok").write_text("from-file\n")
    env = {"MM_SIDECAR_TOKEN": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    cases: list[tuple[dict[str, str | None], dict[str, str], str, str]] = [
        ({"token": '"inline"'}, env, "inline", "mattermost.token"),
        ({"token_file": '"tok"'}, env, "from-file", "mattermost.token_file"),
        ({"token": '""'}, env, "from-env", "MM_SIDECAR_TOKEN"),
        ({}, {**env, "MM_SIDECAR_TOKEN": " "}, "from-credential", "$CREDENTIALS_DIRECTORY/token"),
        (
            {},
            {"CREDENTIALS_DIRECTORY": str(creds)},
            "from-credential",
            "$CREDENTIALS_DIRECTORY/token",
        ),
    ]
    for mm, case_env, token, source in cases:
        config = token_config(tmp_path, mm, case_env)
        assert (config.mattermost.token, config.mattermost.token_source) == (token, source)


def test_token_from_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("MM_SIDECAR_TOKEN", "env-token")
    path = write(tmp_path, render({M: {"token": None}}))
    assert load_config(path).mattermost.token == "env-token"


@pytest.mark.parametrize(
    ("mm", "env", "expected"),
    [
        (
            {},
            {},
            "mattermost.token: no bot token: set token, token_file, MM_SIDECAR_TOKEN or a"
            " systemd credential named 'token'",
        ),
        (
            {},
            {"CREDENTIALS_DIRECTORY": "/nonexistent"},
            "mattermost.token: no bot token: set token, token_file, MM_SIDECAR_TOKEN or a"
            " systemd credential named 'token'",
        ),
        ({"token": '"has space"'}, {}, "mattermost.token: must be printable ASCII without spaces"),
        ({"token": "1"}, {}, "mattermost.token: expected a string, got integer"),
        (
            {},
            {"MM_SIDECAR_TOKEN": "a b"},
            "MM_SIDECAR_TOKEN: must be printable ASCII without spaces",
        ),
        (
            {"token_file": '"missing"'},
            {},
            "mattermost.token_file: cannot read '{dir}/missing': No such file or directory",
        ),
        ({"token_file": '"empty"'}, {}, "mattermost.token_file: '{dir}/empty' is empty"),
        ({"token_file": '"adir"'}, {}, "mattermost.token_file: '{dir}/adir' is not a regular file"),
    ],
)
def test_token_errors(mm: dict[str, str | None], env: dict[str, str], expected: str) -> None:
    # A short directory: a path over 80 characters is shortened in the message (…), and
    # tmp_path's length depends on the run (pytest-NNN, xdist's popen-gwN).
    with tempfile.TemporaryDirectory(prefix="tok") as name:
        short = Path(name)
        (short / "empty").write_text("\n")
        (short / "adir").mkdir()
        assert errors_of(short, render({M: {"token": None, **mm}}), env) == [
            expected.format(dir=short)
        ]


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_never_in_repr_or_errors(tmp_path: Path) -> None:
    bot, hook = "BOTSECRET0123456789", "HOOKSECRET01234567890123"
    good = load(
        tmp_path,
        render(
            {M: {"token": f'"{bot}"'}, W: {"token": f'"{hook}"', "signing_secret": f'"{SECRET}"'}}
        ),
    )
    shown = repr(good) + str(good) + "".join(good.warnings)
    for secret in (bot, hook, SECRET, SECRET[6:]):
        assert secret not in shown
    # Broken secrets, and secrets under misspelt keys: the errors must not echo them.
    text = render(
        {
            M: {"token": f'"{bot} x"'},
            W: {"token": f'"{hook}\\u00e9"', "signing_secret": f'["{hook}", "whsec_{bot}!"]'},
        },
        extra=f'[[webhook]]\ntokn = "{hook}"\nsigning_secrett = "{SECRET}"\n',
    )
    errors = errors_of(tmp_path, text)
    assert len(errors) >= 6
    for secret in (bot, hook, SECRET):
        assert all(secret not in e for e in errors)


def test_inline_secrets_in_readable_file_warn(tmp_path: Path) -> None:
    text = render({W: {"signing_secret": f'"{SECRET}"'}})
    path = write(tmp_path, text, mode=0o640)
    assert load_config(path, env={}).warnings == tuple(
        f"{path}: {key}: secret written in a file other users can read (mode 0640); use {fix}"
        " or chmod 600 the file"
        for key, fix in [
            ("mattermost.token", "token_file"),
            ("webhook[0].token", "token_file"),
            ("webhook[0].signing_secret", "signing_secret_file"),
        ]
    )
    assert load_config(write(tmp_path, text, mode=0o600), env={}).warnings == ()


def test_duplicate_webhook_tokens_warn_without_the_value(tmp_path: Path) -> None:
    second = '[[webhook]]\nname = "b"\ntrigger_words = ["x"]\ncallback_urls = ["https://a"]\n'
    config = load(tmp_path, render(extra=second + f'token = "{HOOK_TOKEN}"\n'))
    assert config.warnings == (
        f"{tmp_path / 'config.toml'}: webhook[1].token: same token as webhook[0]",
    )


# --- regexes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"\bINC-(?P<number>\d+)\b",
        r"(a|b)+",
        r"\d+(?:\.\d++)*",
        r"(?>a+)+",
        r"(ab+c)?",
        r"a{2,5}b*c+",
        r"(?:x*){1}",
        r"(?:ab){3,}",
        r"(a)(?(1)b+|c)",
    ],
)
def test_safe_regexes_are_accepted(pattern: str) -> None:
    compiled, problem = compile_regex(pattern)
    assert problem == ""
    assert compiled is not None and compiled.pattern == pattern


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+",
        r"(a*)*",
        r"(.*a){20}",
        r"(?:\w+\s?)*",
        r"((a+))+",
        r"(?:a+|b)+",
        r"(a+?)+",
        r"(?:(?:a)+)*",
        pytest.param(
            r"(a+)++",
            marks=pytest.mark.skipif(
                sys.version_info < (3, 11),
                reason="3.10's re cannot parse possessive repeats (accepted, timeout-bound)",
            ),
        ),
        r"(x{2,})+",
        r"\d+(\.\d+)*",
    ],
)
def test_nested_quantifiers_are_refused(pattern: str) -> None:
    assert compile_regex(pattern) == (
        None,
        "pattern may backtrack catastrophically (nested quantifier); rewrite it",
    )


@pytest.mark.parametrize(
    ("pattern", "warning"),
    [
        ("[[:digit:]]abc", "Possible nested set at position 1"),
        ("x[a&&b]", "Possible set intersection at position 3"),
        ("[a||b]", "Possible set union at position 2"),
    ],
)
def test_patterns_re_and_regex_read_differently_are_refused(pattern: str, warning: str) -> None:
    # re (which derives the required literal) sees a set then "]abc", regex (which searches)
    # a POSIX class: the prefilter would demand "]abc" and the webhook would never fire.
    # filterwarnings = error: a FutureWarning that escapes fails this test.
    compiled, problem = compile_regex(pattern)
    assert compiled is None
    assert problem.startswith(f"ambiguous regex: {warning}: Python's re and the regex engine")
    assert "escape it" in problem
    assert required_literal(pattern) == ("", False)


def test_too_deep_regex_is_refused_not_crashed() -> None:
    compiled, problem = compile_regex("(" * 400 + ")" * 400)
    assert compiled is None
    assert problem.startswith("invalid regex: ")


# --- helpers and the example file -------------------------------------------------------------


def test_new_token_is_a_mattermost_id() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) == 26 and set(token) <= set(ZBASE32)
        assert is_mattermost_id(token)
        raw = base64.b32decode(
            token.translate(str.maketrans(ZBASE32, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")) + "======"
        )
        assert raw[6] >> 4 == 4  # UUIDv4 bits, like Mattermost's NewId
    assert not is_mattermost_id("zmigewsanbbsdf59xnmduzypjL")
    assert not is_mattermost_id("zmigewsanbbsdf59xnmduzypj")


def test_webhook_from_dict() -> None:
    hook = webhook_from_dict(
        {"name": "x", "callback_urls": ["https://a"], "token": HOOK_TOKEN, "trigger_regex": "go"},
        index=3,
    )
    assert (hook.index, hook.name) == (3, "x")
    assert hook.trigger_regex is not None and hook.trigger_regex.pattern == "go"
    with pytest.raises(ConfigError) as info:
        webhook_from_dict({"name": "x", "token": HOOK_TOKEN, "trigger_words": ["a"]}, index=3)
    assert info.value.errors == ["<dict>: webhook[3].callback_urls: is required"]


def test_example_file_loads_and_has_every_key() -> None:
    path = ROOT / "config.example.toml"
    config = load_config(path, env={})
    assert all("secret written in a file" in w for w in config.warnings)
    assert config.sidecar == SidecarConfig()  # the [sidecar] table shows the defaults
    assert len(config.webhooks) == 3
    text = path.read_text()
    data = tomllib.loads(text)
    hook_keys = set().union(*(h.keys() for h in data["webhook"]))
    present = {
        "mattermost": set(data["mattermost"]),
        "sidecar": set(data["sidecar"]),
        "webhook": hook_keys,
    }
    documented = {
        table: present[table] | set(re.findall(r"^# ([a-z_]+) = ", text, re.M)) for table in present
    }
    for table, keys in PRODUCT_KEYS.items():
        missing = set(keys) - documented[table]
        assert not missing, f"{table}: {missing}"
    # every key the loader accepts is documented too
    assert set(MATTERMOST_KEYS) <= documented["mattermost"]
    assert set(SIDECAR_KEYS) <= present["sidecar"]
    assert set(WEBHOOK_KEYS) - {"signing_secret_file"} <= documented["webhook"]
    assert "signing_secret_file" in text


# --- arbitrary input never crashes ------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "https://x.example",
            "ftp://x",
            "http://[::1",
            "exact",
            "prefix",
            "public",
            "posted",
            FORM,
            SECRET,
            "whsec_",
            "(a+)+",
            "(",
            "[::1]:1",
            ":",
            "10.0.0.0/99",
            HOOK_TOKEN,
            "",
            "~",
            "@",
            math.inf,
            2**70,
        ]
    )
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(sorted({*MATTERMOST_KEYS, *SIDECAR_KEYS, *WEBHOOK_KEYS})) | st.text(
    max_size=8
)
_tables = st.dictionaries(_keys, _values, max_size=10)
_configs = st.fixed_dictionaries(
    {},
    optional={
        "mattermost": _tables | _values,
        "sidecar": _tables | _values,
        "webhook": st.lists(_tables | _values, max_size=3) | _values,
    },
) | st.dictionaries(st.text(max_size=8), _values, max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_configs)
def test_arbitrary_input_only_raises_config_error(
    data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    try:
        config = parse_config(
            data, path=Path("config.toml"), env={}, base_dir=base, file_mode=0o644
        )
    except ConfigError as e:
        assert e.errors and all(line.startswith("config.toml: ") for line in e.errors)
    else:
        assert isinstance(config, Config)


def test_team_and_user_names_are_lowercased_like_mattermosts() -> None:
    hook = webhook_from_dict(
        {
            "name": "x",
            "callback_urls": ["https://a"],
            "token": HOOK_TOKEN,
            "trigger_words": ["#Go"],
            "team": "SomeTeam",
            "users": ["@Alice", "zmigewsanbbsdf59xnmduzypjc"],
            "exclude_users": ["BOB"],
        }
    )
    assert hook.team == "someteam"
    assert hook.users == ("alice", "zmigewsanbbsdf59xnmduzypjc")
    assert hook.exclude_users == ("bob",)
    assert hook.trigger_words == ("#Go",)  # trigger words keep their case


@pytest.mark.parametrize(
    ("package", "key", "value", "extra"),
    [
        ("psycopg", "state_url", '"postgresql://u@db/mm"', "postgresql"),
        ("uvloop", "event_loop", '"uvloop"', "fast"),
    ],
)
def test_a_key_whose_package_is_not_installed_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, key: str, value: str, extra: str
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a)
    )
    errors = errors_of(tmp_path, render({S: {key: value}}))
    assert errors == [
        f"sidecar.{key}: needs {package}: pip install 'mattermost-webhook-sidecar[{extra}]'"
    ]


def test_event_loop_defaults_to_asyncio_and_takes_uvloop(tmp_path: Path) -> None:
    assert load(tmp_path, render({})).sidecar.event_loop == "asyncio"
    assert load(tmp_path, render({S: {"event_loop": '"uvloop"'}})).sidecar.event_loop == "uvloop"
