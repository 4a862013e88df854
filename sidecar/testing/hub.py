"""The emulator's websocket hub: connections, their send and dead queues, resume and reaping.

This reproduces the server's web_conn.go / web_hub.go as the server's source (11.6) has them:

* A `Connection` is the server's memory of one connection id. Events for it wait unnumbered in
  a send queue of ``SEND_QUEUE_SIZE`` slots (overflow drops the connection, as the hub does
  with a full channel); they are numbered when *written* to a socket, and the last
  ``DEAD_QUEUE_SIZE`` written events are kept in the dead queue for a resume.
* `Hub.attach` applies the resume rules: a known inactive connection with ``sequence_number``
  in the dead queue replays from it; older than the dead queue → a new id, a new ``hello`` at
  seq 0 and then the events still queued (seq 1, 2, …); ``sequence_number=0`` → nothing
  replayed, no hello, numbering restarts; otherwise the numbering simply continues.
* A reaper forgets inactive connections idle over ``reap_after`` s, checked every
  ``reap_every`` s (the server's 5 and 5 minutes).

Frames are written as the server writes them: ``hello`` and per-recipient events (those a
broadcast hook changed, like ``posted``) by Go's encoder, with a trailing newline; plain
broadcasts from the precomputed JSON, ``{"event": …, "data": …, "broadcast": …, "seq": N}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.testing.model import go_json, new_id

log = logging.getLogger(__name__)

SEND_QUEUE_SIZE = 256
DEAD_QUEUE_SIZE = 128
REAP_AFTER = 300.0  # an inactive connection idle this long is forgotten
REAP_EVERY = 300.0  # how often the reaper looks
WAKE = object()  # a socket's queue item: write the connection's pending events

# Per-connection extra data for an event (a broadcast hook), or None for a plain broadcast.
Hook = Callable[["Connection"], Mapping[str, Any]]


def broadcast(*, user_id: str = "", channel_id: str = "", team_id: str = "") -> dict[str, Any]:
    """An event's ``broadcast`` object, keys in the server's order."""
    return {
        "omit_users": None,
        "user_id": user_id,
        "channel_id": channel_id,
        "team_id": team_id,
        "connection_id": "",
        "omit_connection_id": "",
    }


@dataclass(slots=True)
class Event:
    """An event waiting in a send queue; numbered and rendered when written."""

    name: str
    data: Mapping[str, Any]
    bcast: Mapping[str, Any]
    encoded: bool  # Go's encoder (hello, hooked events) rather than the precomputed JSON

    def render(self, seq: int) -> str:
        """The frame with sequence number ``seq``, byte-shaped as the server writes it."""
        data = go_json(dict(sorted(self.data.items())))
        event, bcast = go_json(self.name), go_json(self.bcast)
        if self.encoded:
            return f'{{"event":{event},"data":{data},"broadcast":{bcast},"seq":{seq}}}\n'
        return f'{{"event": {event}, "data": {data}, "broadcast": {bcast}, "seq": {seq}}}'


class Socket:
    """One open websocket, its outgoing queue and its liveness."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.conn: Connection | None = None
        self.last_pong = time.monotonic()
        self.finished = asyncio.Event()
        self.posted_ack = request.query.get("posted_ack") == "true"

    def abort(self) -> None:
        """Cut the TCP connection with no close frame, like a network failure."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class Connection:
    """The server's state for one connection id."""

    def __init__(self, user_id: str, dead_size: int) -> None:
        self.id = new_id()
        self.user_id = user_id
        self.sequence = 0  # the number the next written event gets
        self.pending: deque[Event] = deque()
        self.dead: deque[tuple[int, str]] = deque(maxlen=dead_size)
        self.socket: Socket | None = None
        self.idle_since = time.monotonic()

    def next_frame(self) -> str | None:
        """Number and render the next pending event, keeping it in the dead queue."""
        if not self.pending:
            return None
        seq = self.sequence
        self.sequence += 1
        frame = self.pending.popleft().render(seq)
        self.dead.append((seq, frame))
        return frame

    def resume_frames(self, seq: int, hello: Callable[[], Event]) -> list[str]:
        """What the server's write pump sends first on a reused connection (web_conn.go)."""
        self.sequence = seq
        if seq == 0:
            return []  # nothing replayed, no hello, numbering restarts
        held = [s for s, _ in self.dead]
        if seq in held:
            frames = [f for s, f in self.dead if s >= seq]
            self.sequence = self.dead[-1][0] + 1
            return frames
        if held and (seq < held[0] or seq > held[-1] + 1):
            # Lost messages: a new id, a new hello at seq 0, then whatever is still queued.
            self.dead.clear()
            self.id = new_id()
            self.sequence = 0
            self.pending.appendleft(hello())
            frame = self.next_frame()
            return [frame] if frame is not None else []
        return []


class Hub:
    """Every connection and socket; publishes events to the connections of the recipients."""

    def __init__(
        self,
        *,
        dead_size: int,
        hello_data: Callable[[Connection], dict[str, Any]],
        reap_after: float = REAP_AFTER,
        reap_every: float = REAP_EVERY,
    ) -> None:
        self.dead_size = dead_size
        self.hello_data = hello_data
        self.reap_after = reap_after
        self.reap_every = reap_every
        self.send_queue_size = SEND_QUEUE_SIZE
        self.black_hole = False  # events are numbered and dead-queued but never arrive
        self.connections: dict[str, Connection] = {}
        self.sockets: set[Socket] = set()
        self._reaper: asyncio.Task[None] | None = None

    @property
    def resume_window(self) -> float:
        """How long an inactive connection is kept (both reaper timers; older name)."""
        return self.reap_after

    @resume_window.setter
    def resume_window(self, seconds: float) -> None:
        self.reap_after = self.reap_every = seconds

    @property
    def live(self) -> int:
        """Connections with an authenticated socket attached."""
        return sum(1 for c in self.connections.values() if c.socket is not None)

    def start(self) -> None:
        """Start the reaper (on the running loop)."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="emulator-ws-reaper")

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.reap_every)
            limit = time.monotonic() - self.reap_after
            for conn in list(self.connections.values()):
                if conn.socket is None and conn.idle_since <= limit:
                    log.debug("reaper: forgetting inactive connection %s", conn.id)
                    self.forget(conn)

    def forget(self, conn: Connection) -> None:
        """Remove the connection (its socket, if any, is cut)."""
        if self.connections.get(conn.id) is conn:
            del self.connections[conn.id]
        if conn.socket is not None:
            sock, conn.socket = conn.socket, None
            sock.conn = None
            sock.abort()

    def publish(
        self,
        event: str,
        data: Mapping[str, Any],
        bcast: Mapping[str, Any],
        recipients: set[str],
        hook: Hook | None = None,
    ) -> None:
        """Queue an event for every connection (live or resumable) of the recipient users.

        With ``hook`` the event is per recipient: its data gains what the hook returns for
        each connection, and it is written by the encoder (as the server's hooked events are).
        """
        for conn in list(self.connections.values()):
            if conn.user_id not in recipients:
                continue
            if hook is None:
                self._queue(conn, Event(event, data, bcast, False))
            else:
                self._queue(conn, Event(event, {**data, **hook(conn)}, bcast, True))

    def _queue(self, conn: Connection, event: Event) -> None:
        if len(conn.pending) >= self.send_queue_size:
            log.debug("websocket: send queue full for %s, dropping the connection", conn.id)
            self.forget(conn)
            return
        conn.pending.append(event)
        if conn.socket is not None:
            conn.socket.queue.put_nowait(WAKE)

    def hello(self, conn: Connection) -> Event:
        """The ``hello`` event of a connection (encoder-written)."""
        return Event("hello", self.hello_data(conn), broadcast(user_id=conn.user_id), True)

    def open(self, sock: Socket, user_id: str) -> Connection:
        """A fresh connection for an authenticated socket; ``hello`` is its first event."""
        conn = Connection(user_id, self.dead_size)
        self.connections[conn.id] = conn
        conn.pending.append(self.hello(conn))
        self._attach(conn, sock, [])
        return conn

    def reusable(self, user_id: str, conn_id: str) -> Connection | None:
        """The user's *inactive* connection with that id (active ones are never reused)."""
        conn = self.connections.get(conn_id)
        if conn is None or conn.user_id != user_id or conn.socket is not None:
            return None
        return conn

    def resume(self, sock: Socket, conn: Connection, seq: int) -> None:
        """Reattach a socket to an inactive connection, as the server's write pump does."""
        old_id = conn.id
        frames = conn.resume_frames(seq, lambda: self.hello(conn))
        if conn.id != old_id:
            log.debug("resume: sequence %d lost, new id and hello", seq)
            del self.connections[old_id]
            self.connections[conn.id] = conn
        self._attach(conn, sock, frames)

    def inject(self, raw: str | bytes) -> None:
        """Send ``raw`` as it is to every authenticated socket: not numbered, not buffered."""
        for sock in self.sockets:
            if sock.conn is not None:
                sock.queue.put_nowait(raw)

    def _attach(self, conn: Connection, sock: Socket, frames: list[str]) -> None:
        conn.socket = sock
        sock.conn = conn
        for frame in frames:
            sock.queue.put_nowait(frame)
        sock.queue.put_nowait(WAKE)

    def detach(self, sock: Socket) -> None:
        """The socket is gone; its connection waits, inactive, for a resume or the reaper."""
        self.sockets.discard(sock)
        conn = sock.conn
        if conn is not None and conn.socket is sock:
            conn.socket = None
            conn.idle_since = time.monotonic()
        sock.conn = None

    async def drop(self, *, forget: bool) -> None:
        """Cut every socket; with ``forget`` also lose every connection (a server restart)."""
        socks = list(self.sockets)
        for sock in socks:
            sock.abort()
        if forget:
            self.connections.clear()
        await _wait_finished(socks)

    async def close(self) -> None:
        """Stop the reaper and close every socket cleanly with 1001 (server shutdown)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        socks = list(self.sockets)

        async def close_one(sock: Socket) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.ws.close(code=1001, message=b"server shutdown"), 1.0)
            sock.abort()

        await asyncio.gather(*(close_one(s) for s in socks))
        await _wait_finished(socks)


async def _wait_finished(socks: list[Socket]) -> None:
    if socks:
        await asyncio.wait([asyncio.ensure_future(s.finished.wait()) for s in socks], timeout=5.0)
