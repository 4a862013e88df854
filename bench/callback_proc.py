"""The recording callback in its own process.

``python -m bench.callback_proc`` prints ``READY {"url": …}`` and serves until SIGTERM:

* ``POST /hook``: notes ``time.time()`` on arrival under the post id found in the body (form
  ``post_id=…`` or JSON ``"post_id": "…"``), waits the configured delay, answers
  ``{"text": "ok", "response_type": "comment"}`` (a comment threads the reply under the post,
  which is how the emulator tells which post a reply answers).
* ``GET /_bench/recorded``: ``{post_id: t}`` (first arrival of each post);
  ``GET /_bench/count``: ``{count, requests}``;
  ``POST /_bench/reset {delay?}``: forget, and set the answer delay in seconds.

Kept lean on purpose: it shares the machine's cores with the system under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import time

from aiohttp import web

from bench.common import READY

ANSWER = b'{"text": "ok", "response_type": "comment"}'
_POST_ID = re.compile(rb'post_id(?:=|"\s*:\s*")([a-z0-9]{26})')


class Recorder:
    """What arrived, and how to answer."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.requests = 0
        self.delay = 0.0

    async def hook(self, request: web.Request) -> web.Response:
        at = time.time()
        body = await request.read()
        self.requests += 1
        m = _POST_ID.search(body)
        if m is not None:
            self.arrived.setdefault(m.group(1).decode(), at)
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        return web.Response(body=ANSWER, content_type="application/json")

    async def recorded(self, request: web.Request) -> web.Response:
        return web.json_response(self.arrived)

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.arrived), "requests": self.requests})

    async def reset(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        self.arrived.clear()
        self.requests = 0
        if "delay" in body:
            self.delay = float(body["delay"])
        return web.json_response({"delay": self.delay})


async def serve(host: str, port: int, delay: float) -> None:
    """Serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    rec = Recorder()
    rec.delay = delay
    app = web.Application()
    app.add_routes(
        [
            web.post("/hook", rec.hook),
            web.get("/_bench/recorded", rec.recorded),
            web.get("/_bench/count", rec.count),
            web.post("/_bench/reset", rec.reset),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    try:
        print(READY + json.dumps({"url": f"http://{host}:{runner.addresses[0][1]}"}), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port, args.delay))


if __name__ == "__main__":
    main()
