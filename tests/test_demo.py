"""``mm-sidecar demo`` always ends on SIGINT, whenever it comes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.demo import STEP_LOGGERS, demo

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    levels = {n: logging.getLogger(n).level for n in STEP_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_stop_before_the_sidecar_is_ready_ends_the_demo(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop = asyncio.Event()
    stop.set()  # as a SIGINT during start-up does: serve() returns without ever being ready
    assert await asyncio.wait_for(demo(keep_running=True, stop=stop), 30) == 0
    out = capsys.readouterr().out
    assert "stopped during start-up" in out
    assert "sidecar connected" not in out


@pytest.mark.parametrize(
    "after",
    [
        "Mattermost emulator",  # the emulator is up, the sidecar not yet built
        "sidecar config",  # the sidecar is starting
        "sidecar connected",  # the samples are being posted
        "still running",  # waiting for Ctrl-C
    ],
)
async def test_sigint_at_each_point_of_start_up_exits(after: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "demo",
        "--keep-running",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        while not any(line.startswith(after) for line in seen):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, f"demo ended before {after!r}: {seen}"
            seen.append(line.decode().strip())
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, seen + rest.decode().splitlines()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
