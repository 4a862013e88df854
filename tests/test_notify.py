"""sd_notify: datagrams received on a real unix socket, in the order they were sent."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.notify import Notifier


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def _fields(datagram: bytes) -> dict[str, str]:
    lines = datagram.decode().split("\n")
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = _receiver(path)
    yield path, sock
    sock.close()


def test_lifecycle_datagrams_in_order(path_socket: tuple[str, socket.socket]) -> None:
    path, receiver = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready("connected, 3 webhooks")
    notifier.status("reconnecting in 2 s")
    notifier.watchdog()
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready()
    notifier.stopping()
    notifier.close()

    got = [receiver.recv(4096) for _ in range(6)]
    assert got[0] == b"READY=1\nSTATUS=connected, 3 webhooks"
    assert got[1] == b"STATUS=reconnecting in 2 s"
    assert got[2] == b"WATCHDOG=1"
    reload = _fields(got[3])
    assert list(reload) == ["RELOADING", "MONOTONIC_USEC"]
    assert reload["RELOADING"] == "1"
    assert before <= int(reload["MONOTONIC_USEC"]) <= after
    assert got[4] == b"READY=1"
    assert got[5] == b"STOPPING=1"


def test_abstract_socket() -> None:
    name = f"mm-sidecar-test-{uuid.uuid4().hex}"
    receiver = _receiver(b"\0" + name.encode())
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.watchdog()
        assert receiver.recv(4096) == b"READY=1"
        assert receiver.recv(4096) == b"WATCHDOG=1"
        notifier.close()
    finally:
        receiver.close()


def test_status_cannot_inject_assignments(path_socket: tuple[str, socket.socket]) -> None:
    path, receiver = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("line one\nREADY=1")
    notifier.close()
    assert receiver.recv(4096) == b"STATUS=line one READY=1"


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_noop_without_a_unix_notify_socket(value: str) -> None:
    env = {"NOTIFY_SOCKET": value} if value else {}
    notifier = Notifier(env)
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    assert notifier.send("READY=1") is False
    notifier.close()


def test_default_env_is_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, path_socket: tuple[str, socket.socket]
) -> None:
    path, receiver = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    notifier.stopping()
    notifier.close()
    assert receiver.recv(4096) == b"STOPPING=1"


def test_send_failure_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="sidecar.notify"):
        notifier.ready()
        notifier.watchdog()
        assert notifier.send("WATCHDOG=1") is False
    notifier.close()
    assert len([r for r in caplog.records if r.name == "sidecar.notify"]) == 1
    assert caplog.records[0].levelno == logging.DEBUG


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_interval() == expected
