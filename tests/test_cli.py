"""The command line: check, match, token, run and --version, mostly as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from standardwebhooks.webhooks import Webhook

from harness import World, running, wait_until
from sidecar import __version__
from sidecar.cli import EX_CONFIG, main
from sidecar.config import ZBASE32, load_config
from sidecar.testing.recorder import CallbackRecorder, Reply

REPO = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK_TOKEN = "zmigewsanbbsdf59xnmduzypjc"


def env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would change the config's meaning."""
    drop = (
        "MM_SIDECAR_TOKEN",
        "MM_SIDECAR_CONFIG",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    )
    clean = {k: v for k, v in os.environ.items() if k not in drop}
    clean["PYTHONPATH"] = str(REPO) + os.pathsep + clean.get("PYTHONPATH", "")
    return {**clean, **extra}


def sidecar(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``python -m sidecar ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env(**extra_env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- version, token, check ------------------------------------------------------------------


def test_version() -> None:
    done = sidecar("--version")
    assert done.returncode == 0
    assert done.stdout == f"mm-sidecar {__version__}\n"


def test_token_prints_26_zbase32_characters() -> None:
    first, second = sidecar("token"), sidecar("token")
    assert first.returncode == second.returncode == 0
    assert re.fullmatch(f"[{ZBASE32}]{{26}}\n", first.stdout), first.stdout
    assert first.stdout != second.stdout


FIVE_MISTAKES = """
[mattermost]
url = "ftp://chat.example.com"
token = "zmigewsanbbsdf59xnmduzypjc"

[sidecar]
max_in_flight = 0

[[webhook]]
name = "one"
trigger_words = ["#a"]
trigger_when = "sometimes"
callback_urls = ["https://ci.example.com/a"]
token = "zmigewsanbbsdf59xnmduzypjc"

[[webhook]]
name = "two"
trigger_words = ["#b"]
chanels = ["town-square"]
content_type = "text/plain"
callback_urls = ["https://ci.example.com/b"]
token = "zmigewsanbbsdf59xnmduzypjd"
"""


def test_check_reports_five_mistakes_with_their_key_paths(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(FIVE_MISTAKES)
    done = sidecar("check", "-c", str(config))
    assert done.returncode == EX_CONFIG == 78
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[-1] == "5 error(s)"
    keys = sorted(line.split(": ")[1] for line in lines[:-1])
    assert keys == [
        "mattermost.url",
        "sidecar.max_in_flight",
        "webhook[0].trigger_when",
        "webhook[1].chanels",
        "webhook[1].content_type",
    ], done.stderr
    assert all(line.startswith(f"{config}: ") for line in lines[:-1])
    assert "did you mean 'channels'?" in done.stderr
    assert "got 'sometimes'" in done.stderr and "got 'ftp://chat.example.com'" in done.stderr


def test_check_ok_prints_a_summary(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        FIVE_MISTAKES.replace("ftp:", "https:")
        .replace("= 0", "= 8")
        .replace('"sometimes"', '"prefix"')
        .replace("chanels", "channels")
        .replace('"text/plain"', '"application/json"')
    )
    config.chmod(0o600)
    done = sidecar("check", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config}: OK — 2 webhook(s)")
    assert "  one: posted; words ['#a'] (prefix)" in done.stdout
    assert "application/json" in done.stdout


def test_check_refuses_a_posix_class_with_no_raw_library_warning(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[mattermost]\nurl = "https://chat.example.com"\ntoken = "zmigewsanbbsdf59xnmduzypjc"\n'
        '[[webhook]]\nname = "n"\ntrigger_regex = "[[:digit:]]abc"\n'
        'callback_urls = ["https://ci.example.com/a"]\ntoken = "zmigewsanbbsdf59xnmduzypjd"\n'
    )
    done = sidecar("check", "-c", str(config), PYTHONWARNINGS="default")
    assert done.returncode == EX_CONFIG, done.stderr
    assert f"{config}: webhook[0].trigger_regex: ambiguous regex: Possible nested set" in (
        done.stderr
    )
    assert "FutureWarning" not in done.stderr and "warnings.warn" not in done.stderr


# --- match prints what run sends --------------------------------------------------------------

TEXT = '!Deploy now: deploy api to prod <at once> & "then" 100% done, ü+1\tok'


def match_config(world: World, cb: CallbackRecorder, tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[mattermost]
url = "{world.mm.url}"
token = "{world.bot_token}"

[sidecar]
state_dir = "state"
listen = ""
allowed_untrusted_internal_connections = ["127.0.0.1"]

[[webhook]]
name = "json"
channels = ["town-square"]
trigger_regex = '(?P<verb>deploy) (?P<app>\\w+) to (?P<env>\\w+)'
extended_payload = true
content_type = "application/json"
callback_urls = ["{cb.url_for("/json")}"]
token = "{HOOK_TOKEN}"
signing_secret = "{SECRET}"

[[webhook]]
name = "form"
trigger_words = ["!deploy"]
trigger_when = "prefix"
case_insensitive = true
callback_urls = ["{cb.url_for("/form")}"]
token = "{HOOK_TOKEN}"
""")
    config.chmod(0o600)
    return config


def parse_match(output: str) -> dict[str, tuple[dict[str, str], str]]:
    """``match`` output → {path: (headers, body)}."""
    requests: dict[str, tuple[dict[str, str], str]] = {}
    lines = iter(output.splitlines())
    for line in lines:
        if line.startswith("POST "):
            path = "/" + line.rsplit("/", 1)[1]
            headers = dict(h.split(": ", 1) for h in iter(lines.__next__, ""))
            requests[path] = (headers, next(lines))
    return requests


def with_post_fields(body: str, real: bytes, json_body: bool) -> str:
    """``match``'s body with the post-specific values of the real request put in."""
    keys = ("team_id", "channel_id", "timestamp", "user_id", "post_id")
    if json_body:
        mine, theirs = json.loads(body), json.loads(real)
        for key in keys:
            body = body.replace(
                f'"{key}":{json.dumps(mine[key])}', f'"{key}":{json.dumps(theirs[key])}'
            )
        return body
    mine_f, theirs_f = parse_qs(body), parse_qs(real.decode())
    for key in keys:
        body = body.replace(f"{key}={mine_f[key][0]}", f"{key}={theirs_f[key][0]}")
    return body


async def test_match_prints_the_body_that_run_sends(
    world: World, cb: CallbackRecorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = match_config(world, cb, tmp_path)
    args = [
        "match",
        "-c",
        str(config),
        "--channel",
        "town-square",
        "--team",
        "someteam",
        "--user",
        "alice",
        "--text",
        TEXT,
        "--show-secrets",
    ]
    assert main(args) == 0
    printed = parse_match(capsys.readouterr().out)
    assert set(printed) == {"/json", "/form"}

    async with running(load_config(config)):
        post = world.mm.post(world.alice["id"], world.town["id"], TEXT)
        sent = {r.path: r for r in await cb.wait_for(2)}

    for path, (headers, body) in printed.items():
        real = sent[path]
        assert with_post_fields(body, real.body, path == "/json").encode() == real.body
        for name in ("Content-Type", "Accept", "User-Agent"):
            assert headers[name] == real.headers[name]
        assert ("webhook-signature" in headers) == ("webhook-signature" in real.headers)
    # The replaced values are the real post's, and match's own signature is valid.
    real_json = json.loads(sent["/json"].body)
    assert (
        real_json["post_id"],
        real_json["channel_id"],
        real_json["team_id"],
        real_json["user_id"],
    ) == (post["id"], world.town["id"], world.team["id"], world.alice["id"])
    assert real_json["matches"] == {"verb": "deploy", "app": "api", "env": "prod"}
    assert parse_qs(sent["/form"].body.decode())["trigger_word"] == ["!deploy"]
    headers, body = printed["/json"]
    assert Webhook(SECRET).verify(body, headers)["text"] == TEXT


# --- run ----------------------------------------------------------------------------------------


def run_config_text(world: World, cb: CallbackRecorder) -> str:
    return f"""
[mattermost]
url = "{world.mm.url}"

[sidecar]
state_dir = "state"
listen = ""
allowed_untrusted_internal_connections = ["127.0.0.1"]

[[webhook]]
name = "ping"
trigger_words = ["#ping"]
callback_urls = ["{cb.url_for("/ping")}"]
token = "{HOOK_TOKEN}"
"""


async def test_run_as_a_process_makes_a_full_round_trip(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(200, {"text": "pong", "response_type": "comment"}), path="/ping")
    config = tmp_path / "config.toml"
    config.write_text(run_config_text(world, cb))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "run",
        "-c",
        str(config),
        env=env(MM_SIDECAR_TOKEN=world.bot_token),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            lines.append(line.decode())

    reader = asyncio.create_task(read())
    try:
        await wait_until(
            lambda: any("first start" in line for line in lines) or proc.returncode is not None,
            timeout=20,
            what="the daemon's start",
        )
        assert proc.returncode is None, "".join(lines)
        post = world.mm.post(world.alice["id"], world.town["id"], "#ping from a test")
        [request] = await cb.wait_for(1)
        posts = await world.mm.wait_for_posts(world.town["id"], 2)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader
    assert parse_qs(request.body.decode())["post_id"] == [post["id"]]
    reply = posts[-1]
    assert (reply["message"], reply["user_id"], reply["root_id"]) == (
        "pong",
        world.bot["id"],
        post["id"],
    )
    assert reply["props"]["from_webhook"] == "true"
    output = "".join(lines)
    for decision in (
        "matched webhook=ping",
        "delivered webhook=ping",
        "status=200",
        "replied webhook=ping",
        "stopped:",
    ):
        assert decision in output, output


def test_run_with_a_config_error_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(FIVE_MISTAKES)
    done = sidecar("run", "-c", str(config))
    assert done.returncode == EX_CONFIG
    assert f"{config}: webhook[1].content_type" in done.stderr
    # The same through $MM_SIDECAR_CONFIG, and with no config at all.
    assert sidecar("run", MM_SIDECAR_CONFIG=str(config)).returncode == EX_CONFIG
    missing = sidecar("run")
    assert missing.returncode == EX_CONFIG
    assert "no config file" in missing.stderr


async def test_run_with_a_rejected_token_exits_78(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(run_config_text(world, cb))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "run",
        "-c",
        str(config),
        env=env(MM_SIDECAR_TOKEN="revokedtokenrevokedtoken00"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == EX_CONFIG, out.decode()
    assert b"the bot token was rejected" in out
    assert b"revokedtoken" not in out
