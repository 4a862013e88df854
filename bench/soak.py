"""Leak check: the sidecar's resident memory after 10,000 events and after many more.

``python -m bench.soak`` (see bench/README.md; not part of the default suite: a million
events take a quarter of an hour or more here). The emulator (with the load generator inside)
and the recording callback run in their own processes; one sidecar (``python -m sidecar run``,
SQLite state) serves ``--n`` posts at full speed in chunks of ``--chunk``, each chunk waiting
for every reply. Its RSS (``VmRSS``) is read after each chunk; the target compares the RSS
after the last chunk with the RSS after the first 10,000 events (within 10 %).
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
    rss_mib,
    sidecar_argv,
    sidecar_config,
)
from bench.report import envelope, format_table, print_footer, target, targets_table, write_json

BASELINE = 10_000  # events after which the reference RSS is read


def soak(h: Harness, n: int, chunk: int, workdir: Path) -> dict[str, Any]:
    """Serve ``n`` posts in chunks; RSS after each chunk."""
    config = sidecar_config(workdir / "sidecar", h)
    proc = Proc("sidecar", sidecar_argv(config), workdir, ready=False)
    points: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        h.wait_connected(proc)
        done = 0
        while done < n:
            size = min(chunk, n - done)
            h.reset()
            load = h.load(size, timeout=max(60.0, size / 20))
            if not load.complete:
                raise RuntimeError(f"{len(load.replied)} of {size} replies after {done} events")
            if not proc.alive():
                raise RuntimeError(f"the sidecar exited\n{proc.tail()}")
            done += size
            points.append(
                {
                    "events": done,
                    "rss_mib": round(rss_mib(proc.pid), 1),
                    "cpu_s": round(cpu_seconds(proc.pid), 1),
                    "elapsed_s": round(time.monotonic() - started, 1),
                }
            )
            print(f"  {done} events: RSS {points[-1]['rss_mib']} MiB", file=sys.stderr, flush=True)
    finally:
        proc.stop()
    return {"posts": n, "chunk": chunk, "points": points}


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="posts in all")
    parser.add_argument("--chunk", type=int, default=BASELINE, help="posts per load")
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/…)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.chunk = 600, 200
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out.with_suffix("") if args.out else RESULTS / f"soak-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with Harness(workdir) as h:
        result = soak(h, args.n, args.chunk, workdir)
    points = result["points"]
    base = next((p for p in points if p["events"] >= BASELINE), points[0] if points else None)
    last = points[-1] if points else None
    ratio = last["rss_mib"] / base["rss_mib"] if base and last and base["rss_mib"] else None
    checks = [
        target(
            f"RSS after {last['events'] if last else args.n} events / after"
            f" {base['events'] if base else BASELINE}",
            ratio,
            1.1,
            at_least=False,
        )
    ]
    data = envelope("soak", started, args, result=result, targets=checks)
    path = write_json("soak", data, args.out)
    rows = [(p["events"], p["rss_mib"], p["cpu_s"], p["elapsed_s"]) for p in points]
    print(format_table(("events", "RSS MiB", "CPU s", "elapsed s"), rows))
    print()
    print(targets_table(checks))
    print_footer(data, path, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
