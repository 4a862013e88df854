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

``--functions N`` (Python 3.12 or newer) also says where the instructions go: each system runs
with ``-X perf``, which gives every Python function a small trampoline of machine code of its
own and names it in ``/tmp/perf-PID.map``; the inclusive count callgrind gives each trampoline
is then the inclusive count of that Python function (all it ran and called), per post.
"""

from __future__ import annotations

import argparse
import bisect
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, Harness, Proc, sidecar_argv, sidecar_config, toml_str
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


#: A line of ``callgrind_annotate --inclusive=yes`` for code without a symbol (a trampoline);
#: a ``'2`` suffix marks a recursive call, already inside the outer call's count.
_ANONYMOUS = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\?\?\?:0x([0-9a-f]+)('\d+)? \[\?\?\?\]")


def read_perf_map(text: str) -> tuple[list[int], list[int], list[str]]:
    """``/tmp/perf-PID.map`` lines (``START SIZE NAME``, hex) → sorted starts, ends, names."""
    entries = []
    for line in text.splitlines():
        start, size, name = line.split(" ", 2)
        entries.append((int(start, 16), int(start, 16) + int(size, 16), name.removeprefix("py::")))
    entries.sort()
    return [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]


def functions_of(annotated: str, perf_map: str) -> dict[str, int]:
    """Python function → its inclusive instructions, from callgrind_annotate's inclusive
    listing and the process's perf map. Callgrind may list a trampoline under more than one
    address (its entry, and the code after the call returns): the largest count is the
    entry's, which includes the call."""
    starts, ends, names = read_perf_map(perf_map)
    found: dict[str, int] = {}
    for line in annotated.splitlines():
        m = _ANONYMOUS.match(line)
        if m is None or m.group(3):
            continue
        address = int(m.group(2), 16)
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < ends[i]:
            cost = int(m.group(1).replace(",", ""))
            found[names[i]] = max(found.get(names[i], 0), cost)
    return found


def _short(name: str) -> str:
    """``Outbox._run:/x/sidecar/outbox.py`` → ``Outbox._run (sidecar/outbox.py)``."""
    function, _, path = name.partition(":")
    for marker in ("site-packages/", "/lib/python3.", f"{ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = re.sub(r"^\d+/", "", path)  # the rest of "/lib/python3.12/"
    return f"{function} ({path})" if path else function


def top_functions(dump: Path, perf_map: Path, posts: int, top: int) -> list[dict[str, Any]]:
    """The ``top`` Python functions of a callgrind dump by inclusive instructions per post."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    found = functions_of(annotated, perf_map.read_text(errors="replace"))
    ranked = sorted(found.items(), key=lambda item: -item[1])[:top]
    per_post = 1e3 * max(posts, 1)
    return [{"function": _short(k), "k_ir_per_post": round(v / per_post, 1)} for k, v in ranked]


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
    if args.functions:
        command[1:1] = ["-X", "perf"]  # a trampoline per Python function (see the docstring)
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
    perf_map = workdir / f"{sut}.perf-map"
    if args.functions:
        written = Path(f"/tmp/perf-{proc.pid}.map")
        shutil.move(written, perf_map)
    dumps = sorted(workdir.glob(f"{out.name}.*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) < 2:
        raise RuntimeError(f"{sut}: callgrind wrote {len(dumps)} dumps, expected 2\n{proc.tail()}")
    loaded, idle = _summary(dumps[0]), _summary(dumps[1])
    per_second = idle / args.idle
    done = len(load.replied)
    row: dict[str, Any] = {
        "sut": sut,
        "posts": args.n,
        "replied": done,
        "seconds": round(loaded_s, 1),
        "ir_per_post_m": round((loaded - per_second * loaded_s) / max(done, 1) / 1e6, 3),
        "ir_idle_per_s_m": round(per_second / 1e6, 3),
        "ir_total_m": round(loaded / 1e6, 1),
    }
    if args.functions:
        row["functions"] = top_functions(dumps[0], perf_map, done, args.functions)
    return row


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
    parser.add_argument(
        "--functions",
        type=int,
        default=0,
        metavar="N",
        help="also list the N Python functions with the most inclusive instructions per post "
        "(Python >= 3.12: -X perf trampolines)",
    )
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/…)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.warmup, args.idle, args.rate = 10, 5, 2.0, 5.0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    if args.functions and sys.version_info < (3, 12):
        print("--functions needs Python 3.12 or newer (-X perf)", file=sys.stderr)
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
    for r in rows:
        if "functions" in r:
            title = "inclusive instructions per post (k; the load window's idle work included)"
            print(f"\n{r['sut']}: {title}, by Python function")
            table = [[f["k_ir_per_post"], f["function"]] for f in r["functions"]]
            print(format_table(("k instr/post", "function"), table))
    print()
    print(targets_table(checks))
    print_footer(data, path, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
