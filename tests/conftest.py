"""Shared fixtures: an emulated Mattermost holding the world of tests/harness.py, and a callback
recorder. Tests import helpers from ``harness``, never from this module."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import harness
from pg import pg_cluster, pg_url  # noqa: F401  (fixtures: a throw-away PostgreSQL)
from sidecar import state
from sidecar.backend import StateBackend
from sidecar.testing.emulator import Emulator
from sidecar.testing.recorder import CallbackRecorder


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process sidecars hold lazy SQLite writes (a finished job…) 0.02 s, not 0.25 s: a
    test that waits for an empty outbox waits for that commit. tests/test_state_linger.py sets
    its own."""
    monkeypatch.setattr(state, "LINGER", 0.02)


@pytest.fixture
async def emulator() -> AsyncIterator[harness.World]:
    """A running emulator (fast pings and timeouts) holding the standard world."""
    async with Emulator(ping_interval=0.2, pong_timeout=1.0, auth_timeout=0.5) as mm:
        yield harness.seed(mm)


@pytest.fixture
async def recorder() -> AsyncIterator[CallbackRecorder]:
    """A running callback recorder."""
    async with CallbackRecorder() as rec:
        yield rec


@pytest.fixture
async def world() -> AsyncIterator[harness.World]:
    """A running emulator holding the sidecar tests' world (tests/harness.py)."""
    async with Emulator(ping_interval=5.0) as mm:
        yield harness.seed(mm)


@pytest.fixture
async def cb() -> AsyncIterator[CallbackRecorder]:
    """A running callback recorder for the sidecar tests."""
    async with CallbackRecorder() as rec:
        yield rec


@pytest.fixture
def restore_root() -> Iterator[None]:
    """Put the root logger back as it was (for tests that call ``setup_logging``)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(params=["sqlite", "postgresql"])
def make_state(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StateBackend]:
    """A new state backend object on the same store each call (a restart), for each backend:
    SQLite in ``tmp_path``, PostgreSQL in a throw-away cluster's database."""
    if request.param == "sqlite":
        return lambda: state.State(tmp_path)
    from sidecar.pgconn import PgTarget
    from sidecar.pgstate import PgState

    url: str = request.getfixturevalue("pg_url")
    return lambda: PgState(PgTarget(url, schema="mm_sidecar"))
