"""The minimal forwarder: the physical limit of this stack (aiohttp + websockets) here.

websocket frame → one POST to the callback → one POST of the reply. No rules, no state, no
retries, no lookups: it forwards every post but the bot's own. Callback requests are capped
at ``--concurrency`` like the sidecar's ``max_in_flight``.
``python -m bench.forwarder --url URL --token T --callback URL [--loop uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any
from urllib.parse import urlencode

import aiohttp
from websockets.asyncio.client import connect

LOOPS = ("asyncio", "uvloop")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def forward(url: str, token: str, callback: str, concurrency: int) -> None:
    """Forward until killed."""
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=auth) as rest, aiohttp.ClientSession() as hooks:
        async with rest.get(f"{url}/api/v4/users/me") as response:
            me = (await response.json())["id"]
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def handle(data: dict[str, Any], post: dict[str, Any]) -> None:
            form = urlencode(
                {
                    "channel_id": post["channel_id"],
                    "channel_name": data.get("channel_name", ""),
                    "file_ids": ",".join(post.get("file_ids") or ()),
                    "post_id": post["id"],
                    "team_id": data.get("team_id", ""),
                    "text": post["message"],
                    "timestamp": post["create_at"] // 1000,
                    "token": token,
                    "trigger_word": (post["message"].split() or [""])[0],
                    "user_id": post["user_id"],
                    "user_name": data.get("sender_name", "").lstrip("@"),
                }
            )
            try:
                async with slots, hooks.post(callback, data=form, headers=FORM) as response:
                    answer = await response.json(content_type=None)
                if isinstance(answer, dict) and answer.get("text"):
                    root = post["root_id"] or post["id"]
                    reply = {"channel_id": post["channel_id"], "message": answer["text"]}
                    async with rest.post(f"{url}/api/v4/posts", json={**reply, "root_id": root}):
                        pass
            except (aiohttp.ClientError, ValueError) as exc:
                print(f"forward failed for {post['id']}: {exc}", flush=True)

        ws_url = "ws" + url.removeprefix("http") + "/api/v4/websocket"
        async with connect(ws_url, additional_headers=auth, max_size=None) as ws:
            async for frame in ws:
                event = json.loads(frame)
                if event.get("event") != "posted":
                    continue
                post = json.loads(event["data"]["post"])
                if post["user_id"] == me:
                    continue
                task = asyncio.create_task(handle(event["data"], post))
                tasks.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(tasks.discard)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Mattermost base URL")
    parser.add_argument("--token", required=True, help="bot token")
    parser.add_argument("--callback", required=True, help="callback URL")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop")
    args = parser.parse_args()
    main_task = forward(args.url, args.token, args.callback, args.concurrency)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main_task)
    else:
        asyncio.run(main_task)


if __name__ == "__main__":
    main()
