"""One helper for ``python -m sidecar …`` as a child process, for every test that needs one.

:class:`Daemon` starts it, collects its stdout and stderr line by line, and lets a test wait
for a line (woken by each new line, no polling), signal it, and wait for its exit code.
:func:`run_cli` runs a one-shot command to completion.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from signal import SIGTERM

from sidecar import compat

ROOT = Path(__file__).resolve().parent.parent


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours without MM_SIDECAR_*/NOTIFY_* and the journal, with
    this checkout first on PYTHONPATH."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(("MM_SIDECAR", "NOTIFY_"))
    }
    env.pop("JOURNAL_STREAM", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class Daemon:
    """One ``python -m sidecar ARGS`` process and the lines of its output (stdout and stderr)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read(stream), name="daemon-output")
            for stream in (proc.stdout, proc.stderr)
            if stream is not None
        ]

    @classmethod
    async def start(
        cls, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, stdout: bool = True
    ) -> Daemon:
        """Start ``python -m sidecar ARGS`` (``stdout=False``: its stdout is discarded)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=child_env() if env is None else env,
            cwd=cwd,
        )
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))
            self._wake()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def log(self) -> str:
        """Everything it printed so far."""
        return "\n".join(self.lines)

    def count(self, text: str) -> int:
        """How many lines contain ``text``."""
        return sum(1 for line in self.lines if text in line)

    async def wait_line(self, text: str, *, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until ``count`` lines contain ``text``; fail with the output otherwise."""
        try:
            async with compat.timeout(timeout):
                while self.count(text) < count:
                    if all(r.done() for r in self._readers):
                        raise AssertionError(f"daemon exited before {text!r}:\n{self.log}")
                    await self._changed.wait()
        except asyncio.TimeoutError:
            raise AssertionError(f"no {text!r} in the daemon's output:\n{self.log}") from None

    wait_for = wait_line

    def signal(self, sig: int) -> None:
        """Send ``sig``."""
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Its exit code, once it exited and its output was read to the end."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"daemon still running after {timeout} s:\n{self.log}") from None
        await asyncio.gather(*self._readers)
        return code

    async def stop(self, sig: int = SIGTERM) -> int:
        """Send ``sig`` (if it still runs) and return its exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.wait_exit()

    async def kill(self) -> None:
        """SIGKILL it if it still runs; wait for it."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(*self._readers)


async def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 30.0
) -> tuple[int, str, str]:
    """``python -m sidecar ARGS`` to completion: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env() if env is None else env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
