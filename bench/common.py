"""Shared plumbing for the benchmarks: child processes, the control calls, /proc, tables, JSON.

Every benchmark is a driver (this process, mostly idle) that starts the emulator
(`bench.emulator_proc`), the recording callback (`bench.callback_proc`) and the system under
test each in its own process, and talks to the first two over their ``/_bench`` HTTP control
endpoints. All timestamps are ``time.time()`` taken in those processes, on one machine clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WEBHOOK_TOKEN = "zmigewsanbbsdf59xnmduzypjc"
TRIGGER = "#bench"
READY = "READY "

# urllib would honour http_proxy for 127.0.0.1 otherwise.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout first on the path, no proxies."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.pop("MM_SIDECAR_TOKEN", None)
    env.pop("MM_SIDECAR_CONFIG", None)
    return env


class Proc:
    """A child process with its output in a log file; optionally waits for a READY line."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, *, ready: bool) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.started = time.time()
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready else self._log,
            stderr=self._log,
        )
        self._ready = ready

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the child still runs."""
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """The JSON after ``READY `` on the child's stdout; the rest of stdout is drained."""
        assert self._ready and self.popen.stdout is not None
        out = self.popen.stdout
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: not ready after {timeout:.0f} s\n{self.tail()}")
            readable, _, _ = select.select([out], [], [], left)
            if not readable:
                continue
            line = out.readline()
            if not line:
                raise RuntimeError(f"{self.name}: exited before it was ready\n{self.tail()}")
            text = line.decode(errors="replace")
            if text.startswith(READY):
                threading.Thread(target=self._drain, args=(out,), daemon=True).start()
                info: dict[str, Any] = json.loads(text[len(READY) :])
                return info
            self._log.write(line)

    def _drain(self, out: IO[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in out:
                self._log.write(line)

    def stop(self, timeout: float = 15.0, *, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` (SIGTERM), then SIGKILL after ``timeout``; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return self.popen.returncode

    def tail(self, lines: int = 15) -> str:
        """The last lines of the child's log, for error messages."""
        if not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def call(method: str, url: str, body: Any = None, *, timeout: float = 60.0) -> Any:
    """One JSON request to a control endpoint; returns the decoded answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with _OPENER.open(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process so far (all threads), or of one of its threads.

    The main thread's id is the process id.
    """
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) so far."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return 0.0


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM) in MiB."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mib(pid: int) -> float:
    """The process's current resident set size (VmRSS) in MiB."""
    return _status_kib(pid, "VmRSS") / 1024


# -- the emulator and the callback ---------------------------------------------------------------


@dataclass
class Load:
    """One load run as the emulator saw it: when each post and its reply were created."""

    created: dict[str, float]
    replied: dict[str, float]
    complete: bool
    gc_max_ms: float = 0.0  # the emulator's longest garbage-collection pause meanwhile
    rest_calls: dict[str, int] = field(default_factory=dict)  # by method and route


class Harness:
    """The emulator and the recording callback, each in its own process."""

    def __init__(self, log_dir: Path, *, emulator_args: Sequence[str] = ()) -> None:
        self.log_dir = log_dir
        self._emulator_args = list(emulator_args)
        self.emulator: Proc | None = None
        self.callback: Proc | None = None
        self.info: dict[str, Any] = {}
        self.callback_url = ""

    def __enter__(self) -> Harness:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.emulator = Proc(
                "emulator",
                [sys.executable, "-m", "bench.emulator_proc", *self._emulator_args],
                self.log_dir,
                ready=True,
            )
            self.callback = Proc(
                "callback", [sys.executable, "-m", "bench.callback_proc"], self.log_dir, ready=True
            )
            self.info = self.emulator.wait_ready()
            self.callback_url = self.callback.wait_ready()["url"]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop both children."""
        for proc in (self.emulator, self.callback):
            if proc is not None:
                proc.stop()

    def pid(self, which: str) -> int:
        """The process id of ``emulator`` or ``callback``."""
        proc = self.emulator if which == "emulator" else self.callback
        assert proc is not None
        return proc.pid

    @property
    def url(self) -> str:
        """The emulated Mattermost's base URL."""
        return str(self.info["url"])

    @property
    def control(self) -> str:
        """The base URL of the emulator process's /_bench endpoints."""
        return str(self.info["control"])

    @property
    def hook_url(self) -> str:
        """The callback URL that webhooks post to."""
        return self.callback_url + "/hook"

    def load(self, n: int, *, rate: float = 0.0, timeout: float = 60.0, wait: bool = True) -> Load:
        """Post ``n`` messages (``rate`` per second, 0 = full speed); wait for their replies."""
        body = {"n": n, "rate": rate, "timeout": timeout, "wait": wait}
        got = call("POST", self.control + "/_bench/run", body, timeout=timeout + 60)
        return Load(
            dict(got["created"]),
            dict(got["replied"]),
            bool(got["complete"]),
            float(got.get("gc_max_ms", 0.0)),
            dict(got.get("rest_calls", {})),
        )

    def replied_count(self) -> int:
        """Replies created so far to the posts of the last load."""
        return int(call("GET", self.control + "/_bench/progress")["replied"])

    def reset(self, *, delay: float | None = None) -> None:
        """Forget what both recorded; optionally change the callback's answer delay."""
        call("POST", self.control + "/_bench/reset", {})
        body = {} if delay is None else {"delay": delay}
        call("POST", self.callback_url + "/_bench/reset", body)

    def callbacks(self) -> dict[str, float]:
        """post id → when its (first) callback request arrived."""
        return dict(call("GET", self.callback_url + "/_bench/recorded", timeout=120))

    def callback_count(self) -> int:
        """Distinct posts the callback has been called for."""
        return int(call("GET", self.callback_url + "/_bench/count")["count"])

    def connected(self) -> bool:
        """Whether the bot has a live websocket."""
        return bool(call("GET", self.control + "/_bench/progress")["connected"])

    def wait_connected(self, sut: Proc, timeout: float = 30.0) -> float:
        """Wait for the bot's websocket; returns the time.time() it was first seen."""
        deadline = time.monotonic() + timeout
        while not self.connected():
            if not sut.alive():
                raise RuntimeError(f"{sut.name} exited (code {sut.popen.returncode})\n{sut.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sut.name}: no websocket after {timeout:.0f} s\n{sut.tail()}")
            time.sleep(0.02)
        return time.time()


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


def sidecar_config(
    directory: Path,
    harness: Harness,
    *,
    max_in_flight: int = 64,
    extra_webhooks: str = "",
    name: str = "sidecar.toml",
    extra_sidecar: str = "",
) -> Path:
    """A config for the sidecar against the harness: one webhook on the bench trigger word."""
    directory.mkdir(parents=True, exist_ok=True)
    state = directory / "state"
    text = f"""\
[mattermost]
url = {toml_str(harness.url)}
token = {toml_str(harness.info["bot_token"])}

[sidecar]
state_dir = {toml_str(str(state))}
listen = ""
allowed_untrusted_internal_connections = ["127.0.0.1"]
max_in_flight = {max_in_flight}
{extra_sidecar}
[[webhook]]
name = "bench"
channels = [{toml_str(harness.info["channel"])}]
trigger_words = [{toml_str(TRIGGER)}]
callback_urls = [{toml_str(harness.hook_url)}]
token = {toml_str(WEBHOOK_TOKEN)}
{extra_webhooks}"""
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)  # an inline token in a world-readable file draws a warning
    return path


def sidecar_argv(config: Path) -> list[str]:
    """The command line of the sidecar daemon."""
    return [sys.executable, "-m", "sidecar", "run", "-c", str(config)]
