"""The Mattermost emulator in its own process, with the load generator inside it.

``python -m bench.emulator_proc [--port N]`` seeds team ``bench``, user ``poster``, the bot
``sidecar-bot`` and the public channel ``bench``, prints ``READY {json}`` (url, control url,
bot token and ids) and serves the emulator (REST, websocket, ``/_emulator``) until SIGTERM.

The ``/_bench`` endpoints are on a port of their own (``control`` in the READY line):

* ``POST /_bench/run {n, rate, timeout, wait}``: post ``n`` messages ``#bench <i>`` as
  ``poster`` (``rate`` per second, 0 = as fast as the event loop allows), recording
  ``time.time()`` just before each post is created; with ``wait``, wait up to ``timeout`` s
  for a reply to each (a post by anyone whose ``root_id`` is that post) and return
  ``{created: {id: t}, replied: {id: t}, complete}``.
* ``GET /_bench/progress``: ``{created, replied, connected}`` (connected: the bot has a live
  websocket).
* ``POST /_bench/reset``: forget the recorded posts.

Generating posts here, not over HTTP from another process, keeps post creation from being
the bottleneck, and the reply times come from the same process as the post times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import re
import signal
import time
from collections import Counter
from typing import Any

from aiohttp import web

from bench.common import READY, TRIGGER
from sidecar.testing.emulator import Emulator
from sidecar.testing.model import Post


class LoadGenerator:
    """Posts messages and notes when each one and its reply were created."""

    def __init__(self, emu: Emulator, *, poster_id: str, channel_id: str, bot_id: str) -> None:
        self.emu = emu
        self.poster_id = poster_id
        self.channel_id = channel_id
        self.bot_id = bot_id
        self.created: dict[str, float] = {}
        self.replied: dict[str, float] = {}
        self._expected = 0
        self._done = asyncio.Event()
        self.gc_pauses: list[float] = []
        self._gc_started = 0.0
        gc.callbacks.append(self._gc_callback)
        create_post = emu.create_post

        # Every post, from REST or from us, goes through create_post: a reply is a post whose
        # root is one of ours (all systems under test thread their reply under the post).
        def recording_create_post(*args: Any, **kwargs: Any) -> Post:
            post = create_post(*args, **kwargs)
            root = post.root_id
            if root and root in self.created and root not in self.replied:
                self.replied[root] = time.time()
                if len(self.replied) >= self._expected:
                    self._done.set()
            return post

        emu.create_post = recording_create_post  # type: ignore[method-assign]

    def reset(self) -> None:
        """Forget everything recorded; park what the emulator holds out of the GC's way."""
        self.created.clear()
        self.replied.clear()
        self._done = asyncio.Event()
        self._expected = 0
        self.gc_pauses.clear()
        # The emulator keeps every post: without this a full collection in the middle of a
        # run walks all of them, and its pause would show up as the system's latency.
        gc.collect()
        gc.freeze()

    def _gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def run(self, n: int, rate: float, timeout: float, wait: bool) -> dict[str, Any]:
        """Post ``n`` messages, then (with ``wait``) wait for their replies."""
        self.reset()
        self._expected = n
        calls_before = len(self.emu.rest_calls)
        started = time.monotonic()
        for i in range(n):
            if rate > 0:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            at = time.time()
            post = self.emu.create_post(self.poster_id, self.channel_id, f"{TRIGGER} {i}")
            self.created[post.id] = at
            if rate <= 0 and wait:
                await asyncio.sleep(0)  # let frames and replies through between posts
        if wait:
            left = max(0.0, timeout - (time.monotonic() - started))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._done.wait(), left)
        return {
            "created": self.created,
            "replied": self.replied,
            "complete": len(self.replied) >= n,
            "gc_max_ms": round(max(self.gc_pauses, default=0.0) * 1000, 2),
            "rest_calls": rest_call_counts(self.emu.rest_calls[calls_before:]),
        }

    def connected(self) -> bool:
        """Whether the bot has a live websocket."""
        return any(
            c.user_id == self.bot_id and c.socket is not None
            for c in self.emu.hub.connections.values()
        )


_ID = re.compile(r"/[a-z0-9]{26}(?=/|$)")


def rest_call_counts(calls: list[tuple[str, str]]) -> dict[str, int]:
    """REST calls made during a run, by method and route (ids shown as ``{id}``)."""
    counts = Counter(f"{method} {_ID.sub('/{id}', path)}" for method, path in calls)
    return dict(counts.most_common())


def _app(gen: LoadGenerator) -> web.Application:
    async def run(request: web.Request) -> web.Response:
        body = await request.json()
        result = await gen.run(
            int(body["n"]),
            float(body.get("rate", 0)),
            float(body.get("timeout", 60)),
            bool(body.get("wait", True)),
        )
        return web.json_response(result)

    async def progress(request: web.Request) -> web.Response:
        return web.json_response(
            {"created": len(gen.created), "replied": len(gen.replied), "connected": gen.connected()}
        )

    async def reset(request: web.Request) -> web.Response:
        gen.reset()
        return web.json_response({"status": "OK"})

    app = web.Application()
    app.add_routes(
        [
            web.post("/_bench/run", run),
            web.get("/_bench/progress", progress),
            web.post("/_bench/reset", reset),
        ]
    )
    return app


async def serve(host: str, port: int) -> None:
    """Seed, announce READY, serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    emu = Emulator(host=host, port=port)
    # Nobody resumes here: a stopped system's connection need not be fed for 300 s.
    emu.hub.resume_window = 2.0
    team = emu.create_team("bench", "Bench")
    poster = emu.create_user("poster")
    bot = emu.create_user("sidecar-bot", is_bot=True)
    for user in (poster, bot):
        emu.add_team_member(team["id"], user["id"])
    channel = emu.create_channel(team["id"], "bench", "O", "Bench", [poster["id"], bot["id"]])
    gen = LoadGenerator(emu, poster_id=poster["id"], channel_id=channel["id"], bot_id=bot["id"])
    await emu.start()
    # The emulator builds its own aiohttp app; the bench endpoints get a server of their own.
    control = web.AppRunner(_app(gen), access_log=None)
    await control.setup()
    site = web.TCPSite(control, host, 0)
    await site.start()
    try:
        info = {
            "url": emu.url,
            "control": f"http://{host}:{control.addresses[0][1]}",
            "bot_token": emu.create_token(bot["id"]),
            "bot_id": bot["id"],
            "poster_id": poster["id"],
            "channel_id": channel["id"],
            "channel": "bench",
            "team": "bench",
        }
        print(READY + json.dumps(info), flush=True)
        await stop.wait()
    finally:
        await control.cleanup()
        await emu.stop()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
