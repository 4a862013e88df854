"""Log injection: a value from outside can never forge or hide a daemon log line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from harness import World, make_config, running
from sidecar.cli import setup_logging
from sidecar.testing.recorder import CallbackRecorder, Reply

pytestmark = pytest.mark.usefixtures("restore_root")

FORGED = "ci\n06:48:20.000 ERROR   sidecar.app       fatal: \x1b[31mboom\x1b[0m\r\u202edone\x85"
ESCAPED = (
    "ci\\n06:48:20.000 ERROR   sidecar.app       fatal: \\x1b[31mboom\\x1b[0m\\r\\u202edone\\x85"
)
CONTROLS = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]] + [
    "\u061c",
    "\u200e",
    "\u200f",
    "\u2028",
    "\u2029",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
]


def messages(fmt: str, err: str) -> list[str]:
    lines = err.splitlines()
    if fmt == "json":
        return [json.loads(line)["msg"] for line in lines]
    return [line.split(None, 2)[2].split(None, 1)[1] for line in lines]  # after time, level


# The daemon's own log lines that carry outside values, one of each kind.
KINDS = {
    "username": (
        "%s; replied webhook=%s as %s in channel %s%s (%d post%s)",
        "delivered",
        "b",
        FORGED,
        "c",
        "",
        1,
        "",
    ),
    "url": (
        "delivery failed webhook=%s post=%s url=%s: %s",
        "b",
        "p",
        "https://x.test/" + FORGED,
        "x",
    ),
    "error text": ("cannot reach Mattermost: %s", "GET /users/me: 500 " + FORGED),
    "channel name": ("webhook[%d] %s: the bot is not a member of channel %s", 0, "b", FORGED),
    "callback answer": ("%s; reply refused webhook=%s: %s", "delivered", "b", FORGED),
}


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_outside_values_cannot_start_a_line(
    fmt: str, kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging(fmt, [])
    msg, *args = KINDS[kind]
    logging.getLogger("sidecar.outbox").warning(msg, *args)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    [message] = messages(fmt, err)
    assert ESCAPED in message
    assert not any(c in message for c in CONTROLS)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_control_character_is_escaped(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(fmt, [])
    logging.getLogger("sidecar").info("x%sy", "".join(CONTROLS))
    [message] = messages(fmt, capsys.readouterr().err)
    assert not any(c in message for c in CONTROLS)
    assert message.startswith("x\\x00\\x01") and message.endswith("\\u2069y")
    assert "\\n" in message and "\\t" in message and "\\x1b" in message and "\\x9f" in message


def test_plain_text_is_unchanged_and_tracebacks_still_print(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("text", [])
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("sidecar").exception("failed to process %s: ü é 日本", "Event")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("failed to process Event: ü é 日本")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad"


async def test_a_callback_cannot_forge_a_line_through_the_reply_username(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    cb.script(Reply(200, {"text": "hi", "username": FORGED}))
    config = make_config(
        world,
        tmp_path,
        [{"trigger_words": ["#build"], "callback_urls": [cb.url_for("/b")]}],
        enable_post_username_override=True,
    )
    setup_logging("text", [])
    async with running(config):
        world.mm.post(world.alice["id"], world.town["id"], "#build")
        await world.mm.wait_for_posts(world.town["id"], 2)
    err = capsys.readouterr().err
    [replied] = [line for line in err.splitlines() if "replied webhook=hook0" in line]
    assert f"as {ESCAPED} in channel" in replied
    assert not any(line.split(None, 1)[1].startswith("ERROR") for line in err.splitlines()), err
    assert "\x1b" not in err
