"""Catch-up time: how long the sidecar takes to process N posts made while it was down.

``python -m bench.catchup`` (see bench/README.md): the emulator and the recording callback in
their own processes; the sidecar (``python -m sidecar run``) starts, serves a few posts (so its
state holds a position), and stops; N posts are made while it is down; it starts again with its
saved state, finds the gap (a new websocket connection), catches up over REST and forwards
every post. The clock runs from the second start (process spawn) until the callback has
received all N posts; the time until every reply is created is reported too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    Harness,
    Proc,
    cpu_seconds,
    peak_rss_mib,
    sidecar_argv,
    sidecar_config,
)
from bench.report import (
    envelope,
    format_table,
    print_footer,
    target,
    targets_table,
    write_json,
)

POLL = 0.02


def catch_up(h: Harness, n: int, workdir: Path, timeout: float) -> dict[str, Any]:
    """One gap of n posts; the timings."""
    config = sidecar_config(workdir / "sidecar", h)
    first = Proc("sidecar-before", sidecar_argv(config), workdir, ready=False)
    try:
        h.wait_connected(first)
        h.reset()
        warm = h.load(20, timeout=30)
        if not warm.complete:
            raise RuntimeError(f"warm-up: {len(warm.replied)} of 20 replies")
    finally:
        code = first.stop()
    if code != 0:
        raise RuntimeError(f"the sidecar did not stop cleanly (exit {code})\n{first.tail()}")
    while h.connected():  # the emulator notices the socket is gone
        time.sleep(POLL)
    h.reset()
    made = time.time()
    h.load(n, wait=False)
    made_s = time.time() - made
    second = Proc("sidecar-after", sidecar_argv(config), workdir, ready=False)
    spawned = second.started
    connected_at = None
    all_callbacks = all_replies = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (all_callbacks is None or all_replies is None):
            if not second.alive():
                raise RuntimeError(f"the sidecar exited\n{second.tail()}")
            now = time.time()
            if connected_at is None and h.connected():
                connected_at = now
            if all_callbacks is None and h.callback_count() >= n:
                all_callbacks = now
            if all_replies is None and h.replied_count() >= n:
                all_replies = now
            time.sleep(POLL)
        cpu = cpu_seconds(second.pid)
        peak = peak_rss_mib(second.pid)
        got = h.callback_count()
    finally:
        second.stop()

    def since(t: float | None, start: float | None) -> float | None:
        return round(t - start, 3) if t is not None and start is not None else None

    return {
        "posts": n,
        "posts_made_in_s": round(made_s, 3),
        "callbacks_received": got,
        "complete": all_callbacks is not None,
        "connect_s": since(connected_at, spawned),
        "catch_up_s": since(all_callbacks, spawned),
        "catch_up_from_connect_s": since(all_callbacks, connected_at),
        "all_replies_s": since(all_replies, spawned),
        "posts_per_s": round(n / (all_callbacks - spawned), 1) if all_callbacks else None,
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="posts made during the gap")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/…)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.timeout = 300, 60.0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out.with_suffix("") if args.out else RESULTS / f"catchup-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with Harness(workdir) as h:
        result = catch_up(h, args.n, workdir, args.timeout)
    checks = [target(f"catch-up of {args.n} posts (s)", result["catch_up_s"], 10.0, at_least=False)]
    data = envelope(
        "catchup",
        started,
        args,
        result=result,
        targets=checks,
    )
    path = write_json("catchup", data, args.out)
    headers = (
        "posts", "callbacks", "connected s", "all callbacks s", "from connect s",
        "all replies s", "posts/s", "CPU s", "peak MiB",
    )  # fmt: skip
    keys = (
        "posts", "callbacks_received", "connect_s", "catch_up_s", "catch_up_from_connect_s",
        "all_replies_s", "posts_per_s", "cpu_s", "peak_rss_mib",
    )  # fmt: skip
    print(format_table(headers, [[result[k] for k in keys]]))
    print("(seconds from the sidecar's process start)\n")
    print(targets_table(checks))
    print_footer(data, path, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
