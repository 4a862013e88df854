"""A callback server that records every request and answers as scripted.

Stands in for the receivers of outgoing webhooks::

    async with CallbackRecorder() as hook:
        hook.script(Reply(200, {"text": "done"}), path="/hook")
        ...                                    # point a webhook at hook.url_for("/hook")
        [request] = await hook.wait_for(1)
        assert request.headers["Content-Type"] == "application/json"

Replies come from, in order: the path's script, the global script, the `respond_with`
function, then the default. A reply is sent exactly as given — a 3xx with a ``Location`` is
not followed by anybody here; following redirects is the client's business.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from sidecar import compat

_NO_BODY_STATUSES = {204, 304}


@dataclass
class Recorded:
    """One request as received: header names keep their case; repeated headers are joined."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.time()

    def json(self) -> object:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class Reply:
    """How to answer: a dict or list body is sent as JSON, a str as text, bytes as they are."""

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def to_response(self) -> web.Response:
        """The aiohttp response for this reply."""
        headers = dict(self.headers)
        has_type = any(k.lower() == "content-type" for k in headers)
        data: bytes
        if self.body is None:
            data = b""
        elif isinstance(self.body, bytes):
            data = self.body
        elif isinstance(self.body, str):
            data = self.body.encode()
            if not has_type:
                headers["Content-Type"] = "text/plain; charset=utf-8"
        else:
            data = json.dumps(self.body).encode()
            if not has_type:
                headers["Content-Type"] = "application/json"
        if self.status in _NO_BODY_STATUSES or self.status < 200:
            return web.Response(status=self.status, headers=headers)
        return web.Response(status=self.status, body=data, headers=headers)


Responder = Callable[[Recorded], "Reply | Awaitable[Reply]"]


class CallbackRecorder:
    """An HTTP server on 127.0.0.1 that records requests to any path and replies as told."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, default: Reply | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.default = default if default is not None else Reply(200, b"")
        self.requests: list[Recorded] = []
        self.url = ""
        self._scripts: dict[str | None, deque[Reply]] = {}
        self._responder: Responder | None = None
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; ``url`` is set afterwards."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A handler still running at stop (a scripted delay) is cancelled after 0.1 s.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> CallbackRecorder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def url_for(self, path: str = "/hook") -> str:
        """The full URL of ``path`` on this server."""
        return self.url + (path if path.startswith("/") else "/" + path)

    def script(self, *replies: Reply, path: str | None = None) -> None:
        """Queue replies, used once each in order (for ``path`` only, if given)."""
        self._scripts.setdefault(path, deque()).extend(replies)

    def respond_with(self, fn: Responder) -> None:
        """Answer unscripted requests with ``fn(recorded)`` (sync or async)."""
        self._responder = fn

    async def wait_for(self, count: int, *, timeout: float = 10.0) -> list[Recorded]:
        """Wait until ``count`` requests arrived; return every request so far."""
        try:
            async with compat.timeout(timeout):
                while len(self.requests) < count:
                    changed = self._changed
                    await changed.wait()
        except asyncio.TimeoutError:
            raise TimeoutError(f"{len(self.requests)} requests arrived, wanted {count}") from None
        return list(self.requests)

    def clear(self) -> None:
        """Forget recorded requests and scripts (the default and responder stay)."""
        self.requests.clear()
        self._scripts.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.raw_headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        recorded = Recorded(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=headers,
            body=await request.read(),
            received_at=time.time(),
        )
        self.requests.append(recorded)
        self._changed.set()
        self._changed = asyncio.Event()
        reply = await self._choose(recorded)
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        return reply.to_response()

    async def _choose(self, recorded: Recorded) -> Reply:
        for key in (recorded.path, None):
            queue = self._scripts.get(key)
            if queue:
                return queue.popleft()
        if self._responder is not None:
            result = self._responder(recorded)
            if inspect.isawaitable(result):
                result = await result
            assert isinstance(result, Reply)
            return result
        return self.default
