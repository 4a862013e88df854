"""Joining N public channels: how long the sidecar's start-up pass takes, and its REST calls.

``python -m bench.join [--channels 1000] [--posts-per-channel 1]``: one process. An emulator
holds a team with N public channels the bot is not in (each with a few posts made before the
sidecar starts, so the catch-up after the join has something to find); the sidecar starts with
one team-wide webhook and ``join_public_channels = true``. Printed: the time of the start-up
pass (list the team's channels, join each), the time until every joined channel was caught up,
the posts delivered, and the REST calls by kind. The emulator runs in the same process and on
the same event loop, so the times include the server's side; they are an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.testing.emulator import Emulator
from sidecar.testing.recorder import CallbackRecorder

_ID = re.compile(r"/[a-z0-9]{26}(?=/|$)")


async def measure(channels: int, posts: int) -> dict[str, object]:
    """One run; the numbers."""
    async with Emulator() as mm, CallbackRecorder() as cb:
        team = mm.create_team("bench")
        poster = mm.create_user("poster")
        bot = mm.create_user("sidecar-bot", is_bot=True)
        for user in (poster, bot):
            mm.add_team_member(team["id"], user["id"])
        for i in range(channels):
            channel = mm.create_channel(team["id"], f"c{i:05d}", "O", members=[poster["id"]])
            for j in range(posts):
                mm.post(poster["id"], channel["id"], f"#bench {i}/{j}")
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
                while app.joins_caught_up < 1 and not task.done():
                    await asyncio.sleep(0.01)
                caught_up_s = time.perf_counter() - started
                while len(cb.requests) < channels * posts and not task.done():
                    await asyncio.sleep(0.01)
                delivered_s = time.perf_counter() - started
                stop.set()
                await task
    kinds = Counter(f"{m} {_ID.sub('/{id}', p)}" for m, p in mm.rest_calls)
    return {
        "benchmark": "join",
        "channels": channels,
        "posts_per_channel": posts,
        "start_pass_s": round(start_s, 3),
        "start_pass_rest_calls": start_calls,
        "caught_up_s": round(caught_up_s, 3),
        "delivered_s": round(delivered_s, 3),
        "delivered": len(cb.requests),
        "joined": sum(1 for m, p in mm.rest_calls if m == "POST" and p.endswith("/members")),
        "rest_calls": dict(kinds.most_common()),
    }


def main() -> None:
    """Run and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.join")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--posts-per-channel", type=int, default=1)
    args = parser.parse_args()
    result = asyncio.run(measure(args.channels, args.posts_per_channel))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
