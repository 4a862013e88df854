"""Joining N public channels: how long the sidecar's start-up pass takes, and its REST calls.

``python -m bench.join [--channels 1000]``: one process. An emulator holds a team with N
public channels the bot is not in, each with one post made before the sidecar starts (a first
start replays no history: the catch-up after the join fetches it and skips it); the sidecar
starts with one team-wide webhook and ``join_public_channels = true``. Printed: the time of the
start-up pass (list the team's channels, join each), the time until the joined channels were
caught up, then the time until one new post in each channel reached the callback (the
websocket now carries their events), and the REST calls by kind. The emulator runs in the same
process and on the same event loop, so the times include the server's side: an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.testing.emulator import Emulator
from sidecar.testing.recorder import CallbackRecorder

_ID = re.compile(r"/[a-z0-9]{26}(?=/|$)")


async def _until(predicate: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the sidecar did not get there")
        await asyncio.sleep(0.01)


async def measure(channels: int) -> dict[str, object]:
    """One run; the numbers."""
    async with Emulator() as mm, CallbackRecorder() as cb:
        team = mm.create_team("bench")
        poster = mm.create_user("poster")
        bot = mm.create_user("sidecar-bot", is_bot=True)
        for user in (poster, bot):
            mm.add_team_member(team["id"], user["id"])
        ids = []
        for i in range(channels):
            channel = mm.create_channel(team["id"], f"c{i:05d}", "O", members=[poster["id"]])
            mm.post(poster["id"], channel["id"], f"#bench before {i}")
            ids.append(channel["id"])
        with tempfile.TemporaryDirectory() as state:
            config = parse_config(
                {
                    "mattermost": {"url": mm.url, "token": mm.create_token(bot["id"])},
                    "sidecar": {
                        "state_dir": state,
                        "listen": "",
                        "allowed_untrusted_internal_connections": ["127.0.0.1"],
                    },
                    "webhook": [
                        {
                            "name": "bench",
                            "team": "bench",
                            "trigger_words": ["#bench"],
                            "callback_urls": [cb.url_for("/bench")],
                            "token": "zmigewsanbbsdf59xnmduzypjc",
                        }
                    ],
                },
                path=Path(state) / "config.toml",
                env={},
            )
            mm.rest_calls.clear()
            app = Sidecar(config)
            stop = asyncio.Event()
            started = time.perf_counter()
            async with app:
                start_s = time.perf_counter() - started
                start_calls = len(mm.rest_calls)
                task = asyncio.create_task(app.serve(stop))
                await _until(
                    lambda: (
                        (app.pipeline is not None and app.pipeline.joins_caught_up >= 1)
                        or task.done()
                    )
                )
                caught_up_s = time.perf_counter() - started
                caught_up_calls = len(mm.rest_calls)
                posted = time.perf_counter()
                for i, channel_id in enumerate(ids):
                    mm.post(poster["id"], channel_id, f"#bench after {i}")
                await _until(lambda: len(cb.requests) >= channels or task.done())
                delivered_s = time.perf_counter() - posted
                stop.set()
                await task
    kinds = Counter(f"{m} {_ID.sub('/{id}', p)}" for m, p in mm.rest_calls)
    return {
        "benchmark": "join",
        "channels": channels,
        "start_pass_s": round(start_s, 3),
        "start_pass_rest_calls": start_calls,
        "caught_up_s": round(caught_up_s, 3),
        "caught_up_rest_calls": caught_up_calls,
        "one_post_per_channel_delivered_s": round(delivered_s, 3),
        "delivered": len(cb.requests),
        "joined": sum(1 for m, p in mm.rest_calls if m == "POST" and p.endswith("/members")),
        "rest_calls": dict(kinds.most_common()),
    }


def main() -> None:
    """Run and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.join")
    parser.add_argument("--channels", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(measure(args.channels))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
