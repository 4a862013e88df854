"""Numbers and their presentation: percentiles, targets, tables, the JSON file, the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import sidecar

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": list(os.getloadavg()),
        "sidecar": sidecar.__version__,
    }
    with contextlib.suppress(ImportError):
        from importlib.metadata import version

        info["mmpy_bot"] = version("mmpy-bot")
    return info


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not values:
        return 0.0
    rank = max(0, min(len(values) - 1, int(-(-p * len(values) // 100)) - 1))
    return values[rank]


def latency_ms(start: Mapping[str, float], end: Mapping[str, float]) -> dict[str, float]:
    """p50/p95/p99/max of ``end - start`` in ms over the keys both have."""
    values = sorted((end[k] - start[k]) * 1000 for k in start if k in end)
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(values[-1], 2) if values else 0.0,
    }


def target(name: str, value: float | None, limit: float, *, at_least: bool) -> dict[str, Any]:
    """One target with its verdict (None when it could not be measured)."""
    ok = None if value is None else (value >= limit if at_least else value <= limit)
    return {
        "target": name,
        "value": None if value is None else round(value, 3),
        "limit": limit,
        "rule": ">=" if at_least else "<=",
        "pass": ok,
    }


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [bool(cells) and all(_is_num(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                c.rjust(w) if numeric[i] else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _is_num(text: str) -> bool:
    return text == "-" or text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def targets_table(targets: Sequence[Mapping[str, Any]]) -> str:
    """The targets with PASS/FAIL (or n/a)."""
    rows = [
        (
            t["target"],
            t["value"],
            f"{t['rule']} {t['limit']:g}",
            "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL"),
        )
        for t in targets
    ]
    return format_table(("target", "value", "limit", "result"), rows)


def write_json(kind: str, data: Mapping[str, Any], out: Path | None) -> Path:
    """Write results to ``out`` or ``bench/results/<kind>-<timestamp>.json``."""
    if out is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    full = {**data, "loadavg_at_end": list(os.getloadavg())}
    out.write_text(json.dumps(full, indent=1) + "\n")
    return out


def load_note(started_load: Sequence[float]) -> str:
    """A warning when something else kept the machine busy (the numbers are then noisy)."""
    start = started_load[0]
    if start <= 1.5:
        return ""
    return (
        f"note: load average {start:.2f} at start: other work may have shared the cores, so"
        " absolute numbers are noisy (the ratios less so)"
    )


def envelope(kind: str, started: float, args: Any, **fields: Any) -> dict[str, Any]:
    """The JSON document of one run: what ran, when, where, with which options, and results."""
    return {
        "benchmark": kind,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **fields,
    }


def print_footer(data: Mapping[str, Any], path: Path, workdir: Path) -> None:
    """The load warning (if any) and where the JSON and the logs are."""
    note = load_note(data["machine"]["loadavg_at_start"])
    if note:
        print("\n" + note)
    print(f"\nJSON: {path}\nlogs: {workdir}")
