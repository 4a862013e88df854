"""The emulator's websocket, ``GET /api/v4/websocket``, as Mattermost serves it (reference §4).

A `Connection` is the server's memory of one connection id: the per-connection sequence
counter and a replay buffer of the last N events. A `Socket` is one open websocket attached
to (at most) one connection. Events are numbered and buffered per connection at publish time,
whether or not a socket is attached, so a client that resumes with
``?connection_id=…&sequence_number=…`` gets exactly what it missed (the server's web_conn.go:
replay from the buffer when the wanted sequence is in it, nothing when it is the next one, and
otherwise a new ``hello`` with a new connection id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from sidecar.testing.model import go_json, is_valid_id, new_id, now_ms

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator

log = logging.getLogger(__name__)

RESUME_WINDOW = 300.0  # seconds the server keeps a disconnected connection's state


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


def event_prefix(event: str, data: Mapping[str, Any], bcast: Mapping[str, Any]) -> str:
    """A frame without its sequence number; data keys sorted, as Go encodes a map."""
    return (
        f'{{"event":{go_json(event)},"data":{go_json(dict(sorted(data.items())))},'
        f'"broadcast":{go_json(bcast)},"seq":'
    )


class Socket:
    """One open websocket, its outgoing queue and its liveness."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.conn: Connection | None = None
        self.last_pong = time.monotonic()
        self.finished = asyncio.Event()

    def abort(self) -> None:
        """Cut the TCP connection with no close frame, like a network failure."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class Connection:
    """The server's state for one connection id."""

    def __init__(self, user_id: str, buffer_size: int) -> None:
        self.id = new_id()
        self.user_id = user_id
        self.next_seq = 0
        self.buffer: deque[tuple[int, str]] = deque(maxlen=buffer_size)
        self.socket: Socket | None = None
        self.detached_at = 0.0

    def emit(self, prefix: str) -> None:
        """Number the event for this connection, buffer it, and send it if a socket is on."""
        seq = self.next_seq
        self.next_seq += 1
        frame = f"{prefix}{seq}}}"
        self.buffer.append((seq, frame))
        if self.socket is not None:
            self.socket.queue.put_nowait(frame)


class Hub:
    """Every connection and socket; publishes events to the connections of the recipients."""

    def __init__(self, *, buffer_size: int, server_version: Callable[[], str]) -> None:
        self.buffer_size = buffer_size
        self.server_version = server_version
        self.resume_window = RESUME_WINDOW
        self.connections: dict[str, Connection] = {}
        self.sockets: set[Socket] = set()

    @property
    def live(self) -> int:
        """Connections with an authenticated socket attached."""
        return sum(1 for c in self.connections.values() if c.socket is not None)

    def publish(
        self, event: str, data: Mapping[str, Any], bcast: Mapping[str, Any], recipients: set[str]
    ) -> None:
        """Send an event to every connection (live or resumable) of the recipient users."""
        self._expire()
        prefix = event_prefix(event, data, bcast)
        for conn in list(self.connections.values()):
            if conn.user_id in recipients:
                conn.emit(prefix)

    def open(self, sock: Socket, user_id: str) -> Connection:
        """A fresh connection for an authenticated socket, starting with ``hello``."""
        conn = Connection(user_id, self.buffer_size)
        self.connections[conn.id] = conn
        self._attach(conn, sock, [])
        data = {"connection_id": conn.id, "server_version": self.server_version()}
        conn.emit(event_prefix("hello", data, broadcast(user_id=user_id)))
        return conn

    def resume(self, sock: Socket, user_id: str, conn_id: str, seq: int) -> Connection:
        """Reattach to a known connection and replay from ``seq``, or start afresh."""
        self._expire()
        conn = self.connections.get(conn_id)
        if conn is None or conn.user_id != user_id:
            log.debug("resume: unknown connection, new hello")
            return self.open(sock, user_id)
        held = [s for s, _ in conn.buffer]
        if seq in held:
            frames = [f for s, f in conn.buffer if s >= seq]
        elif seq == conn.next_seq:
            frames = []
        else:
            log.debug("resume: sequence %d not buffered, new hello", seq)
            del self.connections[conn.id]
            if conn.socket is not None:
                conn.socket.abort()
            return self.open(sock, user_id)
        if conn.socket is not None:
            # A client reconnecting before the server noticed the old socket die.
            old, conn.socket = conn.socket, None
            old.conn = None
            old.abort()
        self._attach(conn, sock, frames)
        return conn

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

    def detach(self, sock: Socket) -> None:
        """The socket is gone; its connection waits for a resume for a while."""
        self.sockets.discard(sock)
        conn = sock.conn
        if conn is not None and conn.socket is sock:
            conn.socket = None
            conn.detached_at = time.monotonic()
        sock.conn = None

    def _expire(self) -> None:
        limit = time.monotonic() - self.resume_window
        for conn in list(self.connections.values()):
            if conn.socket is None and conn.detached_at < limit:
                del self.connections[conn.id]

    async def drop(self, *, forget: bool) -> None:
        """Cut every socket; with ``forget`` also lose every connection (a server restart)."""
        socks = list(self.sockets)
        for sock in socks:
            sock.abort()
        if forget:
            self.connections.clear()
        await _wait_finished(socks)

    async def close(self) -> None:
        """Close every socket cleanly with 1001 (server shutdown)."""
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


def request_token(request: web.Request) -> str:
    """The token of a request: ``Authorization: Bearer|Token …`` or ``?access_token=``."""
    header = request.headers.get("Authorization", "")
    if len(header) > 7 and header[:7].lower() == "bearer ":
        return header[7:].strip()
    if len(header) > 6 and header[:6].lower() == "token ":
        return header[6:].strip()
    return request.query.get("access_token", "")


async def handle_websocket(emu: Emulator, request: web.Request) -> web.StreamResponse:
    """``GET /api/v4/websocket``: upgrade, authenticate, resume, then serve the socket."""
    token = request_token(request)
    # A bad token at upgrade is not refused: the socket is simply unauthenticated (the server
    # serves the websocket with TrustRequester) and is closed if it does not authenticate.
    user_id = emu.store.tokens.get(token) if token else None
    conn_id = request.query.get("connection_id", "")
    seq_text = request.query.get("sequence_number")
    ws = web.WebSocketResponse(autoping=False, timeout=1.0)
    await ws.prepare(request)
    sock = Socket(ws, request)
    hub = emu.hub
    hub.sockets.add(sock)
    try:
        if user_id is not None:
            if not conn_id:
                hub.open(sock, user_id)
            elif not is_valid_id(conn_id):
                return ws  # the server closes the socket on a malformed connection id
            elif conn_id in hub.connections:
                if seq_text is None or not seq_text.isdigit():
                    return ws  # a known connection id requires a sequence number
                hub.resume(sock, user_id, conn_id, int(seq_text))
            else:
                hub.open(sock, user_id)
        await _serve(emu, sock)
    finally:
        hub.detach(sock)
        transport = request.transport
        if not ws.closed and transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                await ws.close()
        sock.finished.set()
    return ws


async def _serve(emu: Emulator, sock: Socket) -> None:
    tasks = [
        asyncio.create_task(_writer(sock), name="emulator-ws-writer"),
        asyncio.create_task(_keepalive(emu, sock), name="emulator-ws-keepalive"),
    ]
    if sock.conn is None:
        tasks.append(asyncio.create_task(_auth_deadline(emu, sock), name="emulator-ws-auth"))
    try:
        await _read(emu, sock)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _writer(sock: Socket) -> None:
    while True:
        frame = await sock.queue.get()
        try:
            if isinstance(frame, bytes):
                await sock.ws.send_bytes(frame)
            else:
                await sock.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            return


async def _keepalive(emu: Emulator, sock: Socket) -> None:
    """Ping every ping_interval; drop the client when no pong came within pong_timeout."""
    next_ping = time.monotonic() + emu.ping_interval
    while True:
        deadline = sock.last_pong + emu.pong_timeout
        await asyncio.sleep(max(0.0, min(next_ping, deadline) - time.monotonic()))
        now = time.monotonic()
        if now - sock.last_pong >= emu.pong_timeout:
            log.debug("websocket: no pong within %.1fs, dropping", emu.pong_timeout)
            sock.abort()
            return
        if now >= next_ping:
            next_ping = now + emu.ping_interval
            try:
                await sock.ws.ping()
            except (ConnectionError, RuntimeError):
                return


async def _auth_deadline(emu: Emulator, sock: Socket) -> None:
    await asyncio.sleep(emu.auth_timeout)
    if sock.conn is None:
        log.debug("websocket: not authenticated within %.1fs, closing", emu.auth_timeout)
        sock.abort()


async def _read(emu: Emulator, sock: Socket) -> None:
    while True:
        msg = await sock.ws.receive()
        if msg.type == WSMsgType.TEXT:
            if not _action(emu, sock, msg.data):
                return
        elif msg.type == WSMsgType.PING:
            if emu.answer_pings:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await sock.ws.pong(msg.data)
        elif msg.type == WSMsgType.PONG:
            sock.last_pong = time.monotonic()
        elif msg.type == WSMsgType.BINARY:
            continue  # msgpack requests are not emulated
        else:
            return


def _reply(sock: Socket, seq: Any, status: str = "OK", **extra: Any) -> None:
    body: dict[str, Any] = {"status": status}
    if isinstance(seq, int) and seq:
        body["seq_reply"] = seq
    body.update(extra)
    sock.queue.put_nowait(go_json(body))


def _action(emu: Emulator, sock: Socket, text: str) -> bool:
    """Handle one client request; False closes the socket (as the server does on bad input)."""
    try:
        req = json.loads(text)
    except ValueError:
        return False
    if not isinstance(req, dict):
        return False
    seq, action = req.get("seq"), req.get("action")
    data = req.get("data")
    if not isinstance(data, dict):
        data = {}
    if action == "authentication_challenge":
        if sock.conn is not None:
            return True
        user_id = emu.store.tokens.get(str(data.get("token", "")))
        if user_id is None:
            return False
        emu.hub.open(sock, user_id)
        _reply(sock, seq)
        return True
    if sock.conn is None:
        error = {"id": "api.web_socket_router.not_authenticated.app_error", "status_code": 401}
        _reply(sock, seq, "FAIL", error=error)
        return True
    if action == "ping":
        pong = {"node_id": "", "server_time": now_ms(), "text": "pong", "version": emu.version_id}
        _reply(sock, seq, data=pong)
    elif action in ("user_typing", "get_statuses", "get_statuses_by_ids", "presence"):
        _reply(sock, seq)
    else:
        error = {"id": "api.web_socket_router.bad_action.app_error", "status_code": 501}
        _reply(sock, seq, "FAIL", error=error)
    return True
