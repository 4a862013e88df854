"""Safe by default, end to end: the address guard, signed requests, no secret leaks.

Through a running Sidecar against the emulator and a recording callback. The guard's address
rules are covered unit by unit elsewhere, not repeated here: ::1, ::ffff:127.0.0.1, 0.0.0.0,
169.254.169.254, 10.x, NAT64/6to4/Teredo and the host's own addresses in tests/test_guard.py;
a host name resolving to 127.0.0.1, DNS rebinding, a redirect to 127.0.0.1 (returned, not
followed), proxy variables and a public address in tests/test_delivery.py; the Standard
Webhooks spec vector and its must_reject signature in tests/test_payload.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import quote_plus

import aiohttp
import pytest
from daemon import Daemon
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from harness import World, make_config, running, seed, wait_until
from sidecar.cli import main
from sidecar.config import JSON
from sidecar.guard import FORBIDDEN_MESSAGE
from sidecar.health import Metrics
from sidecar.payload import go_json
from sidecar.testing.emulator import Emulator
from sidecar.testing.recorder import CallbackRecorder, Recorded, Reply

REPO = Path(__file__).resolve().parent.parent
SECRET_1 = "whsec_" + base64.b64encode(b"first signing secret, 32 bytes!!").decode()
SECRET_2 = "whsec_" + base64.b64encode(b"second signing secret, rotation!").decode()


def refusals(metrics: Metrics, webhook: str) -> float:
    labels = {"webhook": webhook, "outcome": "refused"}
    return metrics.registry.get_sample_value("mm_sidecar_deliveries_total", labels) or 0.0


# --- the internal-address guard ---------------------------------------------------------------


async def test_internal_callbacks_refused_by_default(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(
        world,
        tmp_path,
        [
            {"trigger_words": ["#ip"], "callback_urls": [f"http://127.0.0.1:{cb.port}/ip"]},
            {"trigger_words": ["#name"], "callback_urls": [f"http://localhost:{cb.port}/name"]},
        ],
        allowed_untrusted_internal_connections=[],  # the default
    )
    async with running(config) as app:
        for text in ("#ip one", "#name one", "#ip two"):
            world.mm.post(world.alice["id"], world.town["id"], text)
        await wait_until(
            lambda: refusals(app.metrics, "hook0") == 2 and refusals(app.metrics, "hook1") == 1,
            what="three refusals",
        )
    assert cb.requests == []
    refused = [r.getMessage() for r in caplog.records if "delivery refused" in r.getMessage()]
    assert len(refused) == 3
    assert all(FORBIDDEN_MESSAGE in line for line in refused)
    assert any("localhost resolves to 127.0.0.1" in line for line in refused)


async def test_host_entry_allows_only_that_host_and_the_next_message_is_delivered(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Mattermost compares an entry with the URL's host as written: "localhost" does not
    # allow http://127.0.0.1 even though that is where localhost points.
    caplog.set_level(logging.INFO)
    cb.script(Reply(200, {"text": "good reply"}), path="/good")
    config = make_config(
        world,
        tmp_path,
        [
            {"trigger_words": ["#bad"], "callback_urls": [f"http://127.0.0.1:{cb.port}/bad"]},
            {"trigger_words": ["#good"], "callback_urls": [f"http://localhost:{cb.port}/good"]},
        ],
        allowed_untrusted_internal_connections=["localhost"],
    )
    async with running(config) as app:
        world.mm.post(world.alice["id"], world.town["id"], "#bad first")
        await wait_until(lambda: refusals(app.metrics, "hook0") == 1, what="the refusal")
        world.mm.post(world.alice["id"], world.town["id"], "#good second")
        [request] = await cb.wait_for(1)
        posts = await world.mm.wait_for_posts(world.town["id"], 3)
    assert request.path == "/good"
    assert posts[-1]["message"] == "good reply"
    assert any(FORBIDDEN_MESSAGE in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("allowed", "delivered"),
    [
        (["127.0.0.1"], True),  # a host entry equal to the IP literal
        (["127.0.0.0/8"], True),  # a CIDR entry
        ("10.0.0.0/8, 127.0.0.1/32", True),  # Mattermost's own one-string format
        (["::1/128"], False),  # the IPv6 loopback network does not cover 127.0.0.1
        (["10.0.0.0/8", "localhost"], False),  # neither covers the literal 127.0.0.1
    ],
)
async def test_allowed_by_host_or_cidr_entry(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    allowed: list[str] | str,
    delivered: bool,
) -> None:
    config = make_config(
        world,
        tmp_path,
        [{"trigger_words": ["#go"], "callback_urls": [f"http://127.0.0.1:{cb.port}/go"]}],
        allowed_untrusted_internal_connections=allowed,
    )
    async with running(config) as app:
        world.mm.post(world.alice["id"], world.town["id"], "#go")
        if delivered:
            await cb.wait_for(1)
        else:
            await wait_until(lambda: refusals(app.metrics, "hook0") == 1, what="the refusal")
    assert len(cb.requests) == (1 if delivered else 0)


def test_check_warns_about_callbacks_that_would_be_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        """
[mattermost]
url = "http://chat.example.com"
token = "zmigewsanbbsdf59xnmduzypjc"
[sidecar]
allowed_untrusted_internal_connections = "10.1.0.0/16 internal.example.com"
[[webhook]]
name = "w"
trigger_words = ["#x"]
token = "zmigewsanbbsdf59xnmduzypjc"
callback_urls = [
  "http://127.0.0.1:8080/hook",
  "http://169.254.169.254/latest/meta-data/",
  "http://[::ffff:127.0.0.1]/",
  "http://localhost/hook",
  "http://10.1.2.3/allowed-by-cidr",
  "http://internal.example.com/allowed-by-name",
  "https://ci.example.com/public",
]
"""
    )
    config.chmod(0o600)
    assert main(["check", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "will be refused" in line]
    where = sorted(line.split(": callback URL")[0].rsplit(": ", 1)[1] for line in warned)
    assert where == [f"webhook[0].callback_urls[{i}]" for i in range(4)], err
    assert "allowed_untrusted_internal_connections" in warned[0]


# --- signed requests ----------------------------------------------------------------------------


def only(request: Recorded, signature: str) -> dict[str, str]:
    """The request's headers with one of its signatures."""
    return {**request.headers, "webhook-signature": signature}


async def test_live_request_verifies_with_standardwebhooks(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(
        world,
        tmp_path,
        [
            {
                "trigger_words": ["#sign"],
                "content_type": JSON,
                "signing_secret": SECRET_1,
                "callback_urls": [cb.url_for("/signed")],
            }
        ],
    )
    async with running(config):
        post = world.mm.post(world.alice["id"], world.town["id"], "#sign <this> & ü")
        [request] = await cb.wait_for(1)
    assert Webhook(SECRET_1).verify(request.body, request.headers)["post_id"] == post["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_2).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_1).verify(request.body.replace(b"#sign", b"#sigN"), request.headers)


async def test_two_secrets_give_two_signatures_and_retries_keep_the_webhook_id(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    cb.script(Reply(503, "busy"), Reply(200, {"text": "ok"}), path="/rotating")
    config = make_config(
        world,
        tmp_path,
        [
            {
                "trigger_words": ["#sign"],
                "signing_secret": [SECRET_1, SECRET_2],
                "retries": 1,
                "callback_urls": [cb.url_for("/rotating")],
            }
        ],
    )
    async with running(config):
        world.mm.post(world.alice["id"], world.town["id"], "#sign twice please")
        first, retry = await cb.wait_for(2)
        await world.mm.wait_for_posts(world.town["id"], 2)
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    assert first.body == retry.body
    for request in (first, retry):
        signatures = request.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
        for secret, signature, other in ((SECRET_1, *signatures), (SECRET_2, *signatures[::-1])):
            assert (
                Webhook(secret).verify(request.body, only(request, signature), json_parse=False)
                is None
            )
            with pytest.raises(WebhookVerificationError):
                Webhook(secret).verify(request.body, only(request, other), json_parse=False)


# --- no secret anywhere: a full run of the real program -----------------------------------------

HOOK_TOKEN = "s3cr3thooktokeninline1abcd"  # 26 chars, not z-base-32: only the value matters
# A token from a file, with characters that form and JSON encoding change.
HOOK_TOKEN_FILE = "Tok/en+with&special<chars>=%x?y"
RELOAD_SECRET = "whsec_not-base64-" + "R" * 20  # only in a config that SIGHUP refuses
SECRET_3 = "whsec_" + base64.b64encode(b"third secret, from a list").decode()


def secret_forms(secret: str) -> set[str]:
    """A secret as text, as a form value and as a JSON string; for whsec also the key alone."""
    forms = {secret}
    if secret.startswith("whsec_"):
        forms.add(secret.removeprefix("whsec_"))
    for value in list(forms):
        forms.add(quote_plus(value, safe=""))
        forms.add(go_json(value)[1:-1])
    return {f for f in forms if len(f) >= 8}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "MM_SIDECAR_TOKEN",
            "MM_SIDECAR_CONFIG",
            "CREDENTIALS_DIRECTORY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
        )
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_config(
    run: str, mm_url: str, cb: CallbackRecorder, *, fmt: str, listen: str, bot_token_file: bool
) -> str:
    hook = f"http://127.0.0.1:{cb.port}/{run}"
    return f"""
[mattermost]
url = "{mm_url}"
{'token_file = "bot-token"' if bot_token_file else ""}

[sidecar]
state_dir = "state"
listen = "{listen}"
log_format = "{fmt}"
allowed_untrusted_internal_connections = ["127.0.0.1"]
shutdown_timeout = 5

[[webhook]]
name = "ok"
channels = ["c-{run}"]
trigger_words = ["#ok"]
callback_urls = ["{hook}/ok"]
content_type = "application/json"
token = "{HOOK_TOKEN}"
signing_secret = ["{SECRET_1}", "{SECRET_2}"]

[[webhook]]
name = "retry"
channels = ["c-{run}"]
trigger_words = ["#retry"]
callback_urls = ["{hook}/retry"]
token_file = "hook-token"
signing_secret = "{SECRET_3}"
retries = 2

[[webhook]]
name = "refused"
channels = ["c-{run}"]
trigger_words = ["#refused"]
callback_urls = ["http://169.254.169.254/latest/meta-data/"]
token = "{HOOK_TOKEN}"

[[webhook]]
name = "long"
channels = ["c-{run}"]
trigger_words = ["#long"]
callback_urls = ["{hook}/long"]
token_file = "hook-token"
"""


async def full_run(
    run: str,
    world: World,
    cb: CallbackRecorder,
    base: Path,
    *,
    fmt: str,
    bot_token: str,
    source: str,
    channel_id: str,
) -> list[str]:
    """One daemon through every path that handles a secret; returns every line it printed."""
    home = base / run
    home.mkdir()
    (home / "hook-token").write_text(HOOK_TOKEN_FILE + "\n")
    env = clean_env()
    if source == "token_file":
        (home / "bot-token").write_text(bot_token + "\n")
    elif source == "env":
        env["MM_SIDECAR_TOKEN"] = bot_token
    else:
        (home / "creds").mkdir()
        (home / "creds" / "token").write_text(bot_token)
        env["CREDENTIALS_DIRECTORY"] = str(home / "creds")
    listen = f"127.0.0.1:{free_port()}"
    text = run_config(
        run, world.mm.url, cb, fmt=fmt, listen=listen, bot_token_file=source == "token_file"
    )
    config = home / "config.toml"
    config.write_text(text)  # left readable by others: the warning must not show values either
    cb.script(Reply(500, "<h1>oops</h1>"), path=f"/{run}/retry")
    output: list[str] = []

    async def cli(*args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            *args,
            "-c",
            str(config),
            env=env,
            cwd=home,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        output.append(out.decode("utf-8", "replace"))
        assert proc.returncode == 0, out.decode()

    await cli("check")
    for trigger in ("#ok go", "#retry go"):
        await cli("match", "--channel", f"c-{run}", "--team", "someteam", "--text", trigger)
        assert "1 webhook(s) match" in output[-1] and "***" in output[-1], output[-1]
    # The control: with --show-secrets the grep below finds them (not kept in the output).
    await cli("match", "--channel", f"c-{run}", "--text", "#retry", "--show-secrets")
    shown = output.pop()
    assert any(form in shown for form in secret_forms(HOOK_TOKEN_FILE))
    assert "webhook-signature: v1," in shown

    daemon = await Daemon.start("run", "-v", "-c", str(config), env=env, cwd=home)
    try:
        await daemon.wait_for("first start")
        for trigger in ("#ok", "#retry", "#refused", "#long"):
            world.mm.post(world.alice["id"], channel_id, f"{trigger} from {run}")
        await daemon.wait_for("replied webhook=ok")
        await daemon.wait_for("replied webhook=retry")
        await daemon.wait_for("delivery refused webhook=refused")
        await daemon.wait_for("reply not posted webhook=long")
        assert daemon.count("Invalid Message.") >= 1  # the server's 400 message is logged
        async with aiohttp.ClientSession() as http, http.get(f"http://{listen}/metrics") as resp:
            metrics = await resp.text()
        assert 'outcome="refused"' in metrics
        output.append(metrics)

        # SIGHUP with a broken file (a secret where it is refused), then with a good one.
        config.write_text(
            text.replace(SECRET_3, RELOAD_SECRET).replace("retries = 2", "retries = 99")
        )
        daemon.proc.send_signal(signal.SIGHUP)
        await daemon.wait_for("reload refused: keeping the running config")
        config.write_text(text.replace("#long", "#longer"))
        daemon.proc.send_signal(signal.SIGHUP)
        await daemon.wait_for("config reloaded")
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
    assert daemon.count("stopped:") == 1
    assert daemon.count("DEBUG") + daemon.count('"level": "debug"') > 0  # -v was on
    if fmt == "json":
        assert all("msg" in json.loads(line) for line in daemon.lines)
    return output + daemon.lines


async def test_no_secret_in_any_output_of_a_full_run(cb: CallbackRecorder, tmp_path: Path) -> None:
    async with Emulator(ping_interval=5.0, settings={"MaxPostSize": 1000}) as mm:
        world = seed(mm)
        runs = {"json": "token_file", "text": "env", "cred": "credentials"}
        tokens, channels = {}, {}
        for run in runs:
            bot = mm.create_user(f"bot-{run}", is_bot=True)
            members = [world.alice["id"], bot["id"]]
            channels[run] = mm.create_channel(world.team["id"], f"c-{run}", "O", members=members)
            tokens[run] = mm.create_token(bot["id"])

        def respond(request: Recorded) -> Reply:
            kind = request.path.rsplit("/", 1)[1]
            return Reply(200, {"text": "x" * 2000} if kind == "long" else {"text": f"{kind} done"})

        cb.respond_with(respond)
        outputs = await asyncio.gather(
            *(
                full_run(
                    run,
                    world,
                    cb,
                    tmp_path,
                    fmt="text" if run == "text" else "json",
                    bot_token=tokens[run],
                    source=source,
                    channel_id=channels[run]["id"],
                )
                for run, source in runs.items()
            )
        )
    everything = "\n".join(line for output in outputs for line in output)
    secrets = [
        *tokens.values(),
        HOOK_TOKEN,
        HOOK_TOKEN_FILE,
        SECRET_1,
        SECRET_2,
        SECRET_3,
        RELOAD_SECRET,
    ]
    # The signatures the callbacks received are as good as the secret for a replay.
    secrets += [s for r in cb.requests for s in r.headers.get("webhook-signature", "").split()]
    leaks = sorted({form for s in secrets for form in secret_forms(s) if form in everything})
    assert leaks == [], [line for line in everything.splitlines() if any(x in line for x in leaks)]
    assert len([r for r in cb.requests if r.path.endswith("/retry")]) == 6  # 3 runs × (500, 200)
    assert everything.count("address forbidden") >= 3
