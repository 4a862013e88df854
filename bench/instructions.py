"""Instructions per post: the sidecar against the minimal forwarder, counted by callgrind.

``python -m bench.instructions`` (see bench/README.md). CPU seconds on a shared 2-core machine
move by ±15 % from run to run; the number of instructions a process executes for the same work
barely moves, so this is the steady measure of *cost per post* (it does not see cache misses
or the kernel's share of a system call: ``throughput`` still has the last word on seconds).

Each system runs under ``valgrind --tool=callgrind`` with instrumentation off until it is
connected and warmed up (``--warmup`` posts); then counting starts, ``--n`` posts are made at
``--rate`` per second (slow enough that the instrumented process keeps up: each post is then
handled alone, as at an ordinary rate), the count is dumped, and after ``--idle`` seconds with
no posts it is dumped again: what the process spends per second doing nothing (timers, polls),
which is taken out of the per-post figure and reported on its own.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, Harness, Proc, sidecar_argv, sidecar_config, toml_str
from bench.forwarder import LOOPS
from bench.report import envelope, format_table, print_footer, target, targets_table, write_json

SUTS = ("sidecar", "forwarder")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False, timeout=60)


def _summary(path: Path) -> int:
    found = re.search(r"^summary: (\d+)", path.read_text(errors="replace"), re.M)
    if found is None:
        raise RuntimeError(f"no summary line in {path}")
    return int(found.group(1))


def count(h: Harness, sut: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One system under callgrind: instructions per post and per idle second."""
    out = workdir / f"{sut}.callgrind"
    if sut == "sidecar":
        extra = f"event_loop = {toml_str(args.loop)}\n"
        command = sidecar_argv(sidecar_config(workdir / sut, h, extra_sidecar=extra))
    else:
        token = str(h.info["bot_token"])
        command = [
            *(sys.executable, "-m", "bench.forwarder", "--url", h.url, "--token", token),
            *("--callback", h.hook_url, "--loop", args.loop),
        ]
    argv = [
        *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no"),
        *command,
    ]
    proc = Proc(sut, argv, workdir, ready=False)
    try:
        h.wait_connected(proc, timeout=120)
        _control("-i", "on", str(proc.pid))
        h.reset()
        h.load(args.warmup, rate=args.rate, timeout=args.warmup / args.rate + 120)
        time.sleep(1.0)  # the last reply's lazy writes
        _control("-z", str(proc.pid))
        started = time.monotonic()
        h.reset()
        load = h.load(args.n, rate=args.rate, timeout=args.n / args.rate + 120)
        loaded_s = time.monotonic() - started
        _control("-d", "load", str(proc.pid))
        time.sleep(args.idle)
        _control("-d", "idle", str(proc.pid))
    finally:
        proc.stop(timeout=60)
    dumps = sorted(workdir.glob(f"{out.name}.*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) < 2:
        raise RuntimeError(f"{sut}: callgrind wrote {len(dumps)} dumps, expected 2\n{proc.tail()}")
    loaded, idle = _summary(dumps[0]), _summary(dumps[1])
    per_second = idle / args.idle
    done = len(load.replied)
    return {
        "sut": sut,
        "posts": args.n,
        "replied": done,
        "seconds": round(loaded_s, 1),
        "ir_per_post_m": round((loaded - per_second * loaded_s) / max(done, 1) / 1e6, 3),
        "ir_idle_per_s_m": round(per_second / 1e6, 3),
        "ir_total_m": round(loaded / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="posts counted")
    parser.add_argument("--rate", type=float, default=4.0, help="posts/s (callgrind is slow)")
    parser.add_argument("--warmup", type=int, default=30, help="posts before counting")
    parser.add_argument("--idle", type=float, default=10.0, help="idle seconds counted")
    parser.add_argument("--suts", default=",".join(SUTS), help="systems, comma-separated")
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="event loop of the sidecar and the forwarder alike (uvloop: the [fast] extra)",
    )
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/…)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.warmup, args.idle, args.rate = 10, 5, 2.0, 5.0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out.with_suffix("") if args.out else RESULTS / f"instructions-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = []
    with Harness(workdir) as h:
        for sut in args.suts.split(","):
            print(f"  {sut} under callgrind…", file=sys.stderr, flush=True)
            rows.append(count(h, sut, workdir, args))
    by = {r["sut"]: r for r in rows}
    checks = []
    if "sidecar" in by and "forwarder" in by:
        ratio = by["sidecar"]["ir_per_post_m"] / max(by["forwarder"]["ir_per_post_m"], 1e-9)
        checks.append(target("instructions per post sidecar / forwarder", round(ratio, 2), 1.3,
                             at_least=False))  # fmt: skip
    data = envelope("instructions", started, args, runs=rows, targets=checks)
    path = write_json("instructions", data, args.out)
    headers = ("system", "posts", "replied", "M instr/post", "M instr/idle s", "at posts/s")
    table = [
        [r["sut"], r["posts"], r["replied"], r["ir_per_post_m"], r["ir_idle_per_s_m"], args.rate]
        for r in rows
    ]
    print(format_table(headers, table))
    print()
    print(targets_table(checks))
    print_footer(data, path, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
