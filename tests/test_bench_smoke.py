"""A reduced run (small N) of each benchmark in bench/, so that they cannot rot.

Each benchmark runs as its own process (``python -m bench.X --quick --out FILE``), exactly as
bench/README.md says to run it; the tests check the JSON it writes: the expected fields, every
post answered, numbers that make sense together. Never timings: a slow CI machine must pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.instructions import _summary, functions_of
from bench.profile import summarize_profile
from bench.report import format_table, latency_ms, percentile
from bench.throughput import normalised

ROOT = Path(__file__).resolve().parent.parent


def run_bench(
    module: str, tmp_path: Path, *args: str, timeout: float = 55
) -> tuple[dict[str, Any], str]:
    """Run one benchmark with --quick; its JSON and what it printed."""
    out = tmp_path / f"{module}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["benchmark"] == module
    assert data["machine"]["cpus"] >= 1
    assert str(out) in proc.stdout  # the table ends by naming the JSON file
    return data, proc.stdout


def check_latencies(row: dict[str, Any]) -> None:
    """Every post was answered, and the percentiles are ordered as they must be."""
    for key in ("post_to_callback_ms", "post_to_reply_ms"):
        lat = row[key]
        assert lat["n"] == row["n"], (row["sut"], row["scenario"], key)
        assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    # A reply is created after its callback was called, post by post, so in every percentile.
    for p in ("p50", "p95", "p99", "max"):
        assert row["post_to_reply_ms"][p] >= row["post_to_callback_ms"][p]


def check_throughput_rows(data: dict[str, Any], suts: list[str], scenarios: list[str]) -> None:
    rows = data["runs"]
    assert [r for r in rows if "error" in r] == []
    assert {(r["sut"], r["scenario"]) for r in rows} == {(s, c) for s in suts for c in scenarios}
    for row in rows:
        assert row["complete"] is True
        assert row["replied"] == row["n"] > 0
        assert row["posts_per_s"] > 0 and row["elapsed_s"] > 0
        assert row["cpu_s"] >= 0 and row["cpu_s_per_1000"] >= 0
        assert row["peak_rss_mib"] > 10
        check_latencies(row)


def test_throughput_sidecar_and_forwarder(tmp_path: Path) -> None:
    data, printed = run_bench("throughput", tmp_path, "--suts", "sidecar,forwarder")
    check_throughput_rows(data, ["sidecar", "forwarder"], ["max", "rate100", "slow-callback"])
    for row in data["runs"]:
        if row["scenario"] == "slow-callback":
            # The callback really waits 200 ms before it answers, and the reply follows it.
            assert row["callback_delay_s"] == 0.2
            assert row["post_to_reply_ms"]["p50"] >= 200
        if row["scenario"] == "rate100":
            assert row["rate"] == 100
        # Each system posts each reply over REST, once, and looks nothing up per post.
        assert row["rest_calls_per_post"] == {"POST /api/v4/posts": 1.0}, row["sut"]
    targets = {t["target"]: t for t in data["targets"]}
    same_round = {
        "throughput sidecar / forwarder, same round",
        "CPU per post sidecar / forwarder (max), same round",
        "CPU per post sidecar / forwarder (rate100), same round",
        "p99 post→callback at 100 posts/s sidecar / forwarder, same round",
    }
    assert len(targets) == 5 + len(same_round) and same_round <= set(targets)
    mmpy = targets["throughput sidecar / best mmpy_bot"]
    assert mmpy["value"] is None and mmpy["pass"] is None  # not measured in this run
    for name, t in targets.items():
        if name != "throughput sidecar / best mmpy_bot":
            assert isinstance(t["pass"], bool), name
            assert t["value"] > 0
    assert "sidecar" in printed and "forwarder" in printed
    assert "PASS" in printed or "FAIL" in printed
    assert [n["scenario"] for n in data["normalised"]] == ["max", "rate100"]
    assert "divided by the emulator's CPU" in printed


def test_throughput_mmpy_bot(tmp_path: Path) -> None:
    pytest.importorskip("mmpy_bot")
    suts = ["mmpy-sync", "mmpy-async", "mmpy-executor"]
    data, printed = run_bench("throughput", tmp_path, "--suts", ",".join(suts))
    check_throughput_rows(data, suts, ["max", "rate100"])
    assert data["skipped"] == []
    assert "mmpy_bot" in data["machine"]
    for sut in suts:
        assert sut in printed


def test_matching(tmp_path: Path) -> None:
    data, printed = run_bench("matching", tmp_path)
    costs = data["match_cost"]
    kinds = {"exact", "prefix", "regex", "channel", "mixed"}
    assert {(r["kind"], r["webhooks"]) for r in costs} == {(k, n) for k in kinds for n in (10, 100)}
    for row in costs:
        assert row["us_per_event"] > 0
        # Half the events fire exactly one webhook, half fire none: matching is right.
        assert row["matches_per_event"] == 0.5, row
    assert data["config_load"]["webhooks"] == 200
    assert data["config_load"]["load_s_first"] > 0
    rss = data["sidecar_rss"]
    assert [r["webhooks"] for r in rss] == [11, 201]
    for row in rss:
        assert "error" not in row
        assert row["replied"] == row["posts"] == 50
        assert row["peak_rss_mib"] >= row["rss_mib"] > 10
    assert len(data["targets"]) == 4
    assert all(isinstance(t["pass"], bool) for t in data["targets"])
    assert "regex" in printed


def test_catchup(tmp_path: Path) -> None:
    data, printed = run_bench("catchup", tmp_path)
    result = data["result"]
    assert result["complete"] is True
    assert result["callbacks_received"] == result["posts"] == 300
    assert 0 < result["connect_s"] <= result["catch_up_s"] <= result["all_replies_s"]
    assert result["catch_up_from_connect_s"] >= 0
    assert result["peak_rss_mib"] > 10
    [check] = data["targets"]
    assert check["value"] == result["catch_up_s"] and isinstance(check["pass"], bool)
    assert "catch-up of 300 posts" in printed


# -- the pure helpers ----------------------------------------------------------------------------


def test_the_normalised_ratio_divides_each_system_by_the_emulator_of_its_run() -> None:
    def row(sut: str, rnd: int, cpu: float, emulator: float) -> dict[str, Any]:
        return {
            "sut": sut,
            "scenario": "rate100",
            "round": rnd,
            "cpu_s_per_1000": cpu,
            "emulator_cpu_s_per_1000": emulator,
        }

    rows = [
        # Round 0 ran on a machine twice as fast for the forwarder: the raw ratio says 3.0,
        # the emulator (same work in both runs) says the machine, not the forwarder, changed.
        row("sidecar", 0, 3.0, 2.0),
        row("forwarder", 0, 1.0, 1.0),
        row("sidecar", 1, 2.0, 1.0),
        row("forwarder", 1, 1.25, 1.0),
        row("sidecar", 2, 3.0, 1.5),
        row("forwarder", 2, 2.0, 1.5),
    ]
    assert normalised(rows) == [{"scenario": "rate100", "median": 1.5, "rounds": [1.5, 1.6, 1.5]}]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) == 0


def test_latency_only_counts_posts_with_both_times() -> None:
    start = {"a": 1.0, "b": 2.0, "c": 3.0}
    end = {"a": 1.010, "b": 2.030}
    lat = latency_ms(start, end)
    assert lat["n"] == 2
    assert lat["p50"] == pytest.approx(10, abs=0.01)
    assert lat["max"] == pytest.approx(30, abs=0.01)


def test_profile_summary_counts_own_and_inclusive_samples() -> None:
    raw = "\n".join(
        [
            "main (sidecar/cli.py:10);_handle (/work/main/sidecar/app.py:20);"
            "dumps (json/__init__.py:5) 30",
            "main (sidecar/cli.py:10);emit (logging/__init__.py:1) 50",
            "Thread._bootstrap (threading.py:1);run (threading.py:2);"
            "_writer (sidecar/state.py:99) 20",
            "Thread._bootstrap (threading.py:1);_worker (concurrent/futures/thread.py:81) 50",
        ]
    )
    summary = summarize_profile(raw)
    assert summary["samples"] == 100 and summary["idle_samples_dropped"] == 50
    assert summary["main_thread_pct"] == 80.0
    assert dict(summary["own"]) == {
        "emit (logging/__init__.py)": 50.0,
        "dumps (json/__init__.py)": 30.0,
    }
    assert dict(summary["other_threads_own"]) == {"_writer (sidecar/state.py)": 20.0}
    inclusive = dict(summary["sidecar_inclusive"])
    assert inclusive["main (sidecar/cli.py)"] == 80.0
    assert inclusive["_handle (sidecar/app.py)"] == 30.0


def test_table_aligns_numbers_right() -> None:
    text = format_table(("name", "n"), [("a", 5), ("bb", 1234.4)])
    lines = text.splitlines()
    assert lines[0].startswith("name")
    assert lines[2].endswith("    5") and lines[3].endswith("1,234")


def test_throughput_with_the_postgresql_state(tmp_path: Path, pg_cluster: object) -> None:
    """``--state postgresql``: the sidecar again with its state in PostgreSQL (its own cluster;
    the ``pg_cluster`` fixture only gates on PostgreSQL being installed)."""
    data, printed = run_bench(
        "throughput", tmp_path, "--suts", "sidecar", "--slow-suts", "none", "--state", "postgresql"
    )
    check_throughput_rows(data, ["sidecar", "sidecar-pg"], ["max", "rate100"])
    targets = {t["target"]: t for t in data["targets"]}
    for name in (
        "throughput PostgreSQL state / SQLite state",
        "CPU per 1000 posts PostgreSQL state / SQLite state",
    ):
        assert targets[name]["value"] > 0 and isinstance(targets[name]["pass"], bool)
    assert "sidecar-pg" in printed


def test_soak_reads_rss_after_each_chunk(tmp_path: Path) -> None:
    data, printed = run_bench("soak", tmp_path)
    points = data["result"]["points"]
    assert [p["events"] for p in points] == [200, 400, 600]
    assert all(p["rss_mib"] > 0 for p in points)
    (check,) = data["targets"]
    assert check["value"] > 0 and isinstance(check["pass"], bool)
    assert "RSS after 600 events / after 200" in printed


def test_instructions_reads_the_summary_of_a_callgrind_dump(tmp_path: Path) -> None:
    dump = tmp_path / "x.callgrind.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nsummary: 129669909\n\nfn=x\n")
    assert _summary(dump) == 129_669_909
    (tmp_path / "bad").write_text("events: Ir\n")
    with pytest.raises(RuntimeError, match="no summary"):
        _summary(tmp_path / "bad")


# What callgrind_annotate --inclusive=yes prints for code without symbols: -X perf trampolines.
ANNOTATED = """\
--------------------------------------------------------------------------------
210,254,768 (100.0%)  PROGRAM TOTALS
1,648,870,224 (784.2%)  /x/Python/perf_trampoline.c:py_trampoline_evaluator'2 [/x/libpython3.12.so]
  208,906,611 (99.36%)  ???:0x0000000005480934 [???]
   86,952,508 (41.36%)  ???:0x0000000005486f41 [???]
      152,000 ( 0.07%)  ???:0x0000000005486f4c [???]
   99,000,000 (47.00%)  ???:0x0000000005486f41'2 [???]
    5,000,000 ( 2.38%)  ???:0x0000000009000000 [???]
"""
PERF_MAP = """\
5480930 b py::BaseEventLoop._run_once:/usr/lib/python3.12/asyncio/base_events.py
5486f40 20 py::Outbox._run:/work/main/sidecar/outbox.py
"""


def test_instructions_names_trampolines_after_the_perf_map() -> None:
    """Each address inside a trampoline counts for its function (the entry's count, the
    largest); recursive entries ('2) and addresses outside every trampoline are left out."""
    assert functions_of(ANNOTATED, PERF_MAP) == {
        "BaseEventLoop._run_once:/usr/lib/python3.12/asyncio/base_events.py": 208_906_611,
        "Outbox._run:/work/main/sidecar/outbox.py": 86_952_508,
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions(tmp_path: Path) -> None:
    data, printed = run_bench("instructions", tmp_path, timeout=300)
    rows = {r["sut"]: r for r in data["runs"]}
    assert set(rows) == {"sidecar", "forwarder"}
    for row in rows.values():
        assert row["replied"] == row["posts"] > 0
        assert row["ir_per_post_m"] > 0 and row["ir_idle_per_s_m"] >= 0
    [ratio] = data["targets"]
    assert ratio["value"] > 0 and isinstance(ratio["pass"], bool)
    assert "M instr/post" in printed
