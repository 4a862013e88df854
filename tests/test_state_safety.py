"""The state file under hostile conditions: foreign and future files are
refused untouched, one daemon per state_dir, a full disk is retried then exits 1, and the
state is private to its owner."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from harness import World, make_config, running
from sidecar import cli
from sidecar import state as state_module
from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.state import (
    DB_NAME,
    LOCK_NAME,
    SCHEMA_VERSION,
    State,
    StateError,
    StateWriteError,
)
from sidecar.testing.recorder import CallbackRecorder
from sidecar.writes import Rows


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- 7. foreign and future files ---------------------------------------------------------------


def test_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    """Before: the schema script ran first, the file was adopted and modified."""
    db = tmp_path / DB_NAME
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    before = digest(db)
    with pytest.raises(StateError, match="not an mm-sidecar state file"):
        State(tmp_path).open()
    assert digest(db) == before
    assert not (tmp_path / (DB_NAME + "-wal")).exists()


def test_future_schema_is_refused_untouched(tmp_path: Path) -> None:
    """Before: tables were added and WAL set before the version check refused it."""
    db = tmp_path / DB_NAME
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    future = str(SCHEMA_VERSION + 1)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (future,))
    conn.commit()
    conn.close()
    before = digest(db)
    with pytest.raises(StateError, match=f"schema version {future}"):
        State(tmp_path).open()
    assert digest(db) == before
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert tables == {"meta"} and journal == "delete"


def test_refused_file_has_its_connection_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []

    class Tracked(sqlite3.Connection):
        closed = False

        def close(self) -> None:
            self.closed = True
            super().close()

    real = sqlite3.connect

    def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = real(*args, factory=Tracked, **kw)
        opened.append(conn)
        return conn

    conn = real(tmp_path / DB_NAME)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(StateError):
        State(tmp_path).open()
    assert opened and all(c.closed for c in opened)


def test_empty_file_is_adopted_as_new(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).touch()
    state = State(tmp_path)
    assert state.open().fresh
    asyncio.run(state.close())


# -- 8. one daemon per state_dir ------------------------------------------------------------------


async def test_second_daemon_on_one_state_dir_is_refused(tmp_path: Path) -> None:
    """Before: both opened the file, and both delivered everything."""
    first = State(tmp_path)
    first.open()
    with pytest.raises(StateError, match=rf"in use by another mm-sidecar \(pid {os.getpid()}\)"):
        State(tmp_path).open()
    await first.close()
    second = State(tmp_path)  # the lock goes with the first daemon
    second.open()
    await second.close()
    assert (tmp_path / LOCK_NAME).exists()


# -- 9. a failing disk: retried, then exit 1 (not 78) --------------------------------------------


async def test_transient_write_failure_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the first failure failed every waiter with a StateError (exit 78)."""
    real = state_module.write_sqlite
    failures = [sqlite3.OperationalError("database or disk is full")] * 2

    def write(conn: sqlite3.Connection, rows: Rows) -> None:
        if failures:
            raise failures.pop()
        real(conn, rows)

    monkeypatch.setattr(state_module, "write_sqlite", write)
    state = State(tmp_path)
    state.open()
    state.start_writer()
    await state.record_position("chan", 5, ["k"], 5)
    await state.close()
    assert not failures
    assert "disk is full; retrying" in caplog.text
    again = State(tmp_path)
    assert again.open().cursors == {"chan": 5}
    await again.close()


async def test_persistent_write_failure_is_given_up_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(conn: sqlite3.Connection, rows: Rows) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(state_module, "write_sqlite", write)
    reported: list[BaseException] = []
    state = State(tmp_path, write_retry_for=0.2)
    state.on_write_failure = reported.append
    state.open()
    state.start_writer()
    with pytest.raises(StateWriteError, match="kept failing"):
        await state.record_position("chan", 5, ["k"], 5)
    await asyncio.sleep(0)  # the report is scheduled right after the waiters are resolved
    await state.close()
    assert len(reported) == 1 and isinstance(reported[0], StateWriteError)


class FakeSidecar:
    """Stands in for the daemon in `cli._run`: fails as told."""

    fail_on_start: BaseException | None = None
    fail_on_serve: BaseException | None = None

    def __init__(self, config: Any, **kw: Any) -> None:
        self.metrics = None

    async def start(self) -> None:
        if self.fail_on_start is not None:
            raise self.fail_on_start

    async def serve(self, stop: asyncio.Event) -> None:
        if self.fail_on_serve is not None:
            raise self.fail_on_serve

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("where", "error", "code"),
    [
        ("serve", StateWriteError("state writes kept failing for 60 s: disk full"), 1),
        ("start", StateError("state file is unreadable"), 78),
        ("start", StateError("state_dir is in use by another mm-sidecar (pid 1)"), 78),
    ],
)
def test_exit_codes_of_state_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, error: BaseException, code: int
) -> None:
    """Before: every state error exited 78, and systemd never restarted after a full disk."""
    import sidecar.app

    fake = type("Fake", (FakeSidecar,), {f"fail_on_{where}": error})
    monkeypatch.setattr(sidecar.app, "Sidecar", fake)
    config = parse_config(
        {
            "mattermost": {"url": "http://mm.example.com", "token": "x" * 26},
            "sidecar": {"state_dir": str(tmp_path), "listen": ""},
            "webhook": [],
        },
        path=tmp_path / "config.toml",
        env={},
    )
    assert asyncio.run(cli._run("config.toml", config, reset_state=False)) == code


# -- 10. private state --------------------------------------------------------------------------


async def test_state_is_private_to_its_owner(tmp_path: Path) -> None:
    """Before: state_dir 0755 and state.sqlite3 0644, with webhook tokens in outbox rows."""
    state_dir = tmp_path / "state"
    state = State(state_dir)
    state.open()
    state.start_writer()
    await state.record_position("chan", 5, ["k"], 5)
    assert mode(state_dir) == 0o700
    assert mode(state_dir / DB_NAME) == 0o600
    assert mode(state_dir / (DB_NAME + "-wal")) == 0o600
    assert mode(state_dir / LOCK_NAME) == 0o600
    await state.close()


def test_readable_state_dir_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sidecar")
    tmp_path.chmod(0o755)
    state = State(tmp_path)
    state.open()
    asyncio.run(state.close())
    assert f"{tmp_path} is readable by others (mode 755)" in caplog.text


async def test_reset_refuses_while_a_daemon_holds_the_state_dir(tmp_path: Path) -> None:
    running = State(tmp_path)
    running.open()
    with pytest.raises(StateError, match="in use by another mm-sidecar"):
        State.reset(tmp_path)
    assert (tmp_path / DB_NAME).exists()  # not moved from under the running daemon
    await running.close()
    assert State.reset(tmp_path) is not None


async def test_second_sidecar_on_a_running_state_dir_is_refused(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    """End to end: a second daemon on the same state_dir stops at start (exit 78 in `run`)."""
    config = make_config(world, tmp_path, [{"channels": ["dev"], "callback_urls": [cb.url_for()]}])
    async with running(config):
        with pytest.raises(StateError, match=rf"\(pid {os.getpid()}\)"):
            async with Sidecar(config):
                pass
        world.mm.post(world.alice["id"], world.dev["id"], "still served once")
        await cb.wait_for(1)  # the first daemon is untouched by the refused one
