"""``mm-sidecar demo``: the whole loop on one machine with no setup.

Starts the Mattermost emulator (a team, a public and a private channel, a DM, two users and
the bot), a sample callback that answers like a CI bot, and the sidecar with a generated
config; posts a few messages and prints each step as it happens.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.app import Sidecar
from sidecar.config import load_config, new_token

log = logging.getLogger(__name__)

# The stages whose log lines the demo prints as its steps.
STEP_LOGGERS = ("sidecar.app", "sidecar.dispatch", "sidecar.outbox", "sidecar.replies")

SAMPLES: list[tuple[str, str, str]] = [
    # (channel key, user, text)
    ("town", "alice", "#build api"),
    ("town", "bob", "!deploy-prod web"),
    ("town", "alice", "can someone look at ticket MM-4211 please?"),
    ("ops", "alice", "!status db"),
    ("dm", "alice", "help me with the release"),
    ("town", "bob", "just chatting, nothing to see"),
]


def _print(line: str) -> None:
    print(line, flush=True)


class _StepPrinter(logging.Handler):
    """Shows the sidecar's own decisions (matched, delivered, replied…) as demo steps."""

    WORDS = ("matched", "delivered", "delivery", "replied", "no reply", "reply")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.WORDS):
            _print(f"   · {message}")


async def _ci_bot(request: web.Request) -> web.Response:
    """The sample callback: a CI bot answering in Mattermost's outgoing-webhook format."""
    form = await request.post()
    word = str(form.get("trigger_word", ""))
    text = str(form.get("text", ""))
    user = str(form.get("user_name", ""))
    if word == "#build":
        target = text.split()[1] if len(text.split()) > 1 else "all"
        answer: dict[str, Any] = {
            "text": f"| build | status | time |\n|---|---|---|\n| {target} | :white_check_mark: "
            f"passed | 42 s |\nrequested by @{user}",
            "username": "ci-bot",
            "icon_url": "https://example.com/ci.png",
        }
    elif word == "!deploy":
        answer = {"text": f"deploying for @{user}: {text}", "response_type": "comment"}
    elif word.startswith("MM-"):
        answer = {"text": f"{word}: *Fix flaky login* — status **In review**"}
    elif word == "!status":
        answer = {"text": "db: all green (private channel reply)"}
    else:
        answer = {"text": f"hi @{user}, you said: {text}"}
    return web.json_response(answer)


async def demo(*, keep_running: bool = False, stop: asyncio.Event | None = None) -> int:
    """Run the demo; returns the exit code."""
    from sidecar.testing.emulator import Emulator

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mm-sidecar-demo-"))
    emulator = Emulator(
        settings={"EnablePostUsernameOverride": True, "EnablePostIconOverride": True}
    )
    await emulator.start()
    callback = web.AppRunner(web.Application(), access_log=None)
    callback.app.router.add_post("/ci", _ci_bot)
    await callback.setup()
    site = web.TCPSite(callback, "127.0.0.1", 0)
    await site.start()
    cb_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cb_url = f"http://127.0.0.1:{cb_port}/ci"

    team = emulator.create_team("demo", "Demo Team")
    alice = emulator.create_user("alice")
    bob = emulator.create_user("bob")
    bot = emulator.create_user("sidecar-bot", is_bot=True)
    for u in (alice, bob, bot):
        emulator.add_team_member(team["id"], u["id"])
    members = [alice["id"], bob["id"], bot["id"]]
    channels = {
        "town": emulator.create_channel(team["id"], "town-square", "O", "Town Square", members),
        "ops": emulator.create_channel(team["id"], "ops", "P", "Ops (private)", members),
        "dm": emulator.create_direct_channel(alice["id"], bot["id"]),
    }
    users = {"alice": alice, "bob": bob}
    bot_token = emulator.create_token(bot["id"])
    config_path = workdir / "config.toml"
    (workdir / "bot-token").write_text(bot_token + "\n")
    (workdir / "bot-token").chmod(0o600)
    config_path.write_text(_config_text(emulator.url, workdir, cb_url))
    config_path.chmod(0o600)
    config = load_config(config_path)

    _print(f"Mattermost emulator  {emulator.url}  (team 'demo', bot @sidecar-bot)")
    _print(f"sample CI callback   {cb_url}")
    _print(f"sidecar config       {config_path}")
    handler = _StepPrinter()
    for name in STEP_LOGGERS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    stop = stop or asyncio.Event()
    app = Sidecar(config)
    code = 0
    try:
        async with app:
            serving = asyncio.create_task(app.serve(stop), name="demo-sidecar")
            # serve() returns without ever being ready when stop (SIGINT) came first.
            stopped = asyncio.create_task(stop.wait(), name="demo-stop")
            while not app.readiness()[0] and not serving.done() and not stopped.done():
                await asyncio.wait({serving, stopped}, timeout=0.02)
            stopped.cancel()
            if not app.readiness()[0]:
                stop.set()
                await serving  # raises what made it fail, if anything did
                _print("stopped during start-up")
                return code
            await asyncio.sleep(0.1)
            _print(f"sidecar connected with {len(config.webhooks)} webhooks\n")
            for key, who, text in SAMPLES:
                if stop.is_set():
                    break
                code |= await _one(emulator, channels[key], users[who], text, key)
            _print(f"\ndone in {time.monotonic() - started:.1f} s")
            if keep_running:
                _print("\nstill running (Ctrl-C to stop):")
                _print(f"  emulator URL: {emulator.url}   config: {config_path}")
                _print(
                    f"  post as alice: curl -X POST {emulator.url}/_emulator/posts "
                    f'-d \'{{"username": "alice", "channel_id": "{channels["town"]["id"]}", '
                    f'"message": "#build web"}}\''
                )
                await stop.wait()  # SIGINT/SIGTERM, set by the CLI
            stop.set()
            await serving
    finally:
        for name in STEP_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).propagate = True
        await callback.cleanup()
        await emulator.stop()
    return code


async def _one(
    emulator: Any, channel: dict[str, Any], user: dict[str, Any], text: str, key: str
) -> int:
    where = {"town": "~town-square", "ops": "~ops (private)", "dm": "a DM with @sidecar-bot"}[key]
    before = len(emulator.posts_in(channel["id"]))
    _print(f"→ @{user['username']} posts in {where}: {text!r}")
    emulator.post(user["id"], channel["id"], text)
    try:
        posts = await emulator.wait_for_posts(channel["id"], before + 2, timeout=1.0)
    except (asyncio.TimeoutError, TimeoutError, AssertionError):
        _print("   (no webhook matched: nothing sent, nothing replied)\n")
        return 0
    await asyncio.sleep(0.02)  # let the sidecar log its "replied" line first
    reply = posts[-1]
    props = reply.get("props") or {}
    who = props.get("override_username") or "sidecar-bot"
    thread = " in the thread" if reply.get("root_id") else ""
    first_line = str(reply.get("message", "")).splitlines()[0] if reply.get("message") else ""
    _print(f"← reply posted as @{who} in {where}{thread}: {first_line}\n")
    return 0


def _config_text(url: str, workdir: Path, cb_url: str) -> str:
    token = new_token()
    return f"""# generated by mm-sidecar demo
[mattermost]
url = "{url}"
token_file = "bot-token"

[sidecar]
state_dir = "{workdir / "state"}"
listen = ""
allowed_untrusted_internal_connections = ["127.0.0.1"]
enable_post_username_override = true
enable_post_icon_override = true

[[webhook]]
name = "build"
channels = ["town-square"]
trigger_words = ["#build"]
callback_urls = ["{cb_url}"]
token = "{token}"

[[webhook]]
name = "deploy"
trigger_words = ["!deploy"]
trigger_when = "prefix"
callback_urls = ["{cb_url}"]
token = "{token}"
username = "deploy-bot"

[[webhook]]
name = "tickets"
channels = ["town-square"]
trigger_regex = '(?P<key>MM-\\d+)'
callback_urls = ["{cb_url}"]
token = "{token}"
extended_payload = false

[[webhook]]
name = "ops-status"
channels = ["ops"]
trigger_words = ["!status"]
callback_urls = ["{cb_url}"]
token = "{token}"

[[webhook]]
name = "dm-helper"
channel_types = ["direct"]
callback_urls = ["{cb_url}"]
token = "{token}"
"""
