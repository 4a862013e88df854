"""The same forwarding as an mmpy_bot plugin, in its three usual shapes.

``python -m bench.mmpy_plugin --shape sync|async|executor --url URL --token T --callback URL``

* ``sync``: a plain listener; mmpy_bot runs it on its worker threads (10, one of which its
  scheduler keeps). The callback POST (a pooled httpx client per thread) and the reply
  (``driver.reply_to``) both block that thread.
* ``async``: an ``async def`` listener on the event loop; the callback POST is awaited
  (one pooled aiohttp session), the reply is mmpy_bot's blocking ``driver.reply_to``, so it
  stalls the loop (the websocket reader included) for the length of each REST call.
* ``executor``: as ``async``, with the reply moved to the loop's default executor.

Each shape is given its best chance by default: pooled connections, no per-call session;
``--fresh`` makes a new client per callback call instead, as much plugin code does. The listener
matches ``^#bench`` and answers with the callback's ``text``, threaded under the post
(``reply_to``), as the sidecar does with ``response_type: comment``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from mmpy_bot import Bot, Message, Plugin, Settings, listen_to

PATTERN = r"^#bench"


def form(message: Message, token: str) -> dict[str, Any]:
    """What Mattermost would send, as far as the event tells without lookups."""
    post = message.body["data"]["post"]
    return {
        "channel_id": message.channel_id,
        "channel_name": message.channel_name,
        "file_ids": ",".join(message.file_ids or ()),
        "post_id": message.id,
        "team_id": message.team_id,
        "text": post["message"],
        "timestamp": post["create_at"] // 1000,
        "token": token,
        "trigger_word": "#bench",
        "user_id": message.user_id,
        "user_name": message.sender_name,
    }


class _Forward(Plugin):
    def __init__(self, callback: str, token: str, *, fresh: bool = False) -> None:
        super().__init__()
        self.callback = callback
        self.token = token
        self.fresh = fresh
        self._session: aiohttp.ClientSession | None = None
        self._local = threading.local()

    def call_sync(self, message: Message) -> str:
        if self.fresh:
            response = httpx.post(self.callback, data=form(message, self.token), trust_env=False)
        else:
            response = self.http().post(self.callback, data=form(message, self.token))
        answer = response.json()
        return str(answer.get("text") or "") if isinstance(answer, dict) else ""

    def http(self) -> httpx.Client:
        """A pooled client per worker thread."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(trust_env=False)
        return client

    def session(self) -> aiohttp.ClientSession:
        """One pooled aiohttp session, made on the loop that uses it."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def call_async(self, message: Message) -> str:
        if self.fresh:
            async with aiohttp.ClientSession() as session:
                return await _answer(session, self.callback, form(message, self.token))
        return await _answer(self.session(), self.callback, form(message, self.token))


async def _answer(session: aiohttp.ClientSession, url: str, data: dict[str, Any]) -> str:
    async with session.post(url, data=data) as resp:
        answer = await resp.json(content_type=None)
    return str(answer.get("text") or "") if isinstance(answer, dict) else ""


class SyncForward(_Forward):
    """Sync listener: runs on mmpy_bot's worker threads."""

    @listen_to(PATTERN)
    def forward(self, message: Message) -> None:
        text = self.call_sync(message)
        if text:
            self.driver.reply_to(message, text)


class AsyncForward(_Forward):
    """Async listener with mmpy_bot's blocking reply call on the event loop."""

    @listen_to(PATTERN)
    async def forward(self, message: Message) -> None:
        text = await self.call_async(message)
        if text:
            self.driver.reply_to(message, text)


class ExecutorForward(_Forward):
    """Async listener with the blocking reply call moved to the default executor."""

    @listen_to(PATTERN)
    async def forward(self, message: Message) -> None:
        text = await self.call_async(message)
        if text:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, functools.partial(self.driver.reply_to, message, text))


SHAPES: dict[str, type[_Forward]] = {
    "sync": SyncForward,
    "async": AsyncForward,
    "executor": ExecutorForward,
}


def main() -> None:
    """Entry point: build the bot and run it until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--url", required=True, help="Mattermost base URL (http://host:port)")
    parser.add_argument("--token", required=True, help="bot token")
    parser.add_argument("--team", default="bench")
    parser.add_argument("--callback", required=True, help="callback URL")
    parser.add_argument(
        "--fresh", action="store_true", help="a new HTTP client per callback call (no pooling)"
    )
    args = parser.parse_args()
    parts = urlsplit(args.url)
    settings = Settings(
        MATTERMOST_URL=f"{parts.scheme}://{parts.hostname}",
        MATTERMOST_PORT=parts.port or (443 if parts.scheme == "https" else 80),
        MATTERMOST_API_PATH=parts.path.rstrip("/"),
        BOT_TOKEN=args.token,
        BOT_TEAM=args.team,
        SSL_VERIFY=False,
        LOG_LEVEL=logging.INFO,
    )
    plugin = SHAPES[args.shape](args.callback, args.token, fresh=args.fresh)
    Bot(settings=settings, plugins=[plugin]).run()


if __name__ == "__main__":
    main()
