"""py-spy's raw (collapsed) stacks of the sidecar → where its time goes.

``python -m bench.profile FILE`` summarises a raw file again (``throughput --profile`` keeps
it as ``sidecar-profile.txt`` beside its logs).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from typing import Any

_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks → where the samples went, in % of all samples.

    The main thread (the event loop) is told apart from the others (SQLite writer, executor):
    a stack that starts in ``threading``'s bootstrap belongs to another thread. An executor
    thread waiting for work (``_worker``) is idle, though py-spy may count it: dropped.
    """
    own: Counter[str] = Counter()
    own_threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = main = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if stack.rpartition(";")[2].startswith("_worker (concurrent/futures/thread.py"):
            idle += count
            continue
        total += count
        names = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m is None:
                names.append(frame)
                continue
            path = m["file"]
            short = path.split("site-packages/")[-1].split("/work/main/")[-1]
            names.append(f"{m['fn']} ({short})")
        if "_bootstrap (threading.py" in names[0]:
            own_threads[names[-1]] += count
            continue
        main += count
        own[names[-1]] += count
        for name in set(names):
            if "sidecar/" in name:
                inclusive[name] += count

    def pct(counter: Counter[str], n: int = top) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "main_thread_pct": round(100 * main / max(total, 1), 1),
        "own": pct(own),
        "other_threads_own": pct(own_threads, 5),
        "sidecar_inclusive": pct(inclusive),
    }


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as raw_file:
        print(json.dumps(summarize_profile(raw_file.read()), indent=1))
