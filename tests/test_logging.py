"""Log lines people can read: short aligned text (no time under journald), or stable JSON."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.cli import setup_logging

pytestmark = pytest.mark.usefixtures("restore_root")

SECRET = "zmigewsanbbsdf59xnmduzypjc"


def emit(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    logging.getLogger("sidecar.outbox").info(*args)
    return capsys.readouterr().err


def test_text_under_journald_has_no_timestamp(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:123")
    setup_logging("text", [SECRET])
    line = emit(capsys, "delivered webhook=%s status=%d", "build", 200)
    assert line == "INFO    sidecar.outbox    delivered webhook=build status=200\n"


def test_text_elsewhere_starts_with_a_short_time(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("text", [])
    line = emit(capsys, "hello")
    stamp, rest = line[:12], line[13:]
    assert stamp[2] == ":" and stamp[5] == ":" and stamp[8] == "."
    assert rest == "INFO    sidecar.outbox    hello\n"


def test_json_lines_have_stable_keys_and_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", [SECRET])
    entry = json.loads(emit(capsys, "token %s leaked?", SECRET))
    assert list(entry) == ["ts", "level", "logger", "msg"]
    assert entry["level"] == "info" and entry["logger"] == "sidecar.outbox"
    assert entry["msg"] == "token *** leaked?"
