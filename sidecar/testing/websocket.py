"""The emulator's websocket, ``GET /api/v4/websocket``, as Mattermost 11.6 serves it.

Upgrade and authentication (a header, cookie or challenge token; ``?access_token=`` with a
session token is 401), the resume parameters, the socket's writer, the server's pings and the
client actions of the server's websocket router. Connections, numbering and replay live in
sidecar.testing.hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from sidecar.testing.auth import Location, request_token, token_in_query
from sidecar.testing.hub import WAKE, Hub, Socket, broadcast
from sidecar.testing.model import go_json, is_valid_id, now_ms

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator

log = logging.getLogger(__name__)

_INT_RE = re.compile(r"^[+-]?[0-9]{1,18}$")

# The server's websocket error messages (en), by id.
_MESSAGES = {
    "api.web_socket_router.no_action.app_error": "No websocket action.",
    "api.web_socket_router.bad_seq.app_error": "Invalid sequence for WebSocket message.",
    "api.web_socket_router.not_authenticated.app_error": (
        "No websocket session established, please authenticate."
    ),
    "api.web_socket_router.bad_action.app_error": "Unknown WebSocket action.",
    "api.websocket_handler.invalid_param.app_error": "Invalid {{.Name}} parameter.",
}

__all__ = ["Hub", "Socket", "broadcast", "handle_websocket"]


async def handle_websocket(emu: Emulator, request: web.Request) -> web.StreamResponse:
    """``GET /api/v4/websocket``: upgrade, authenticate, resume, then serve the socket."""
    token, where = request_token(request)
    # A bad token at upgrade is not refused: the socket is simply unauthenticated (the server
    # serves the websocket with TrustRequester) and is closed if it does not authenticate.
    user_id = emu.store.tokens.get(token) if token else None
    if user_id is not None and where is Location.QUERY:
        raise token_in_query()
    conn_id = request.query.get("connection_id", "")
    seq_text = request.query.get("sequence_number", "")
    ws = web.WebSocketResponse(autoping=False, timeout=1.0)
    await ws.prepare(request)
    sock = Socket(ws, request)
    hub = emu.hub
    hub.sockets.add(sock)
    try:
        if user_id is not None:
            if not conn_id:
                hub.open(sock, user_id)
            elif not is_valid_id(conn_id) or not _INT_RE.match(seq_text):
                log.debug("websocket: bad connection_id or sequence_number, closing")
                return ws
            else:
                conn = hub.reusable(user_id, conn_id)
                if conn is None:
                    hub.open(sock, user_id)
                else:
                    hub.resume(sock, conn, int(seq_text))
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
        asyncio.create_task(_writer(emu.hub, sock), name="emulator-ws-writer"),
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


async def _writer(hub: Hub, sock: Socket) -> None:
    try:
        while True:
            item = await sock.queue.get()
            if item is WAKE:
                # Events are numbered as they are written (the server's write pump).
                while (conn := sock.conn) is not None:
                    frame = conn.next_frame()
                    if frame is None:
                        break
                    if not hub.black_hole:  # else: written, lost on the way
                        await sock.ws.send_str(frame)
            elif isinstance(item, bytes):
                await sock.ws.send_bytes(item)
            elif isinstance(item, str):
                await sock.ws.send_str(item)
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


def _reply(sock: Socket, seq: int, status: str = "OK", **extra: Any) -> None:
    """A response frame; the server delivers it only to a registered (authenticated) socket."""
    if sock.conn is None:
        return
    body: dict[str, Any] = {"status": status}
    if seq:
        body["seq_reply"] = seq
    body.update(extra)
    sock.queue.put_nowait(go_json(body) + "\n")


def _error(sock: Socket, seq: int, error_id: str, status_code: int) -> None:
    error = {
        "id": error_id,
        "message": _MESSAGES.get(error_id, error_id),
        "detailed_error": "",
        "status_code": status_code,
    }
    _reply(sock, seq, "FAIL", error=error)


def _action(emu: Emulator, sock: Socket, text: str) -> bool:
    """Handle one client request (the server's websocket router); False closes the socket."""
    try:
        req = json.loads(text)
    except ValueError:
        return False
    if not isinstance(req, dict):
        return False
    raw_seq, action = req.get("seq"), req.get("action")
    seq = raw_seq if isinstance(raw_seq, int) and not isinstance(raw_seq, bool) else 0
    data = req.get("data")
    if not isinstance(data, dict):
        data = {}
    if not action:
        _error(sock, seq, "api.web_socket_router.no_action.app_error", 400)
        return True
    if seq <= 0:
        _error(sock, seq, "api.web_socket_router.bad_seq.app_error", 400)
        return True
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
        return True  # not authenticated: the server's answer never reaches this socket
    _authenticated_action(emu, sock, seq, str(action), data)
    return True


def _authenticated_action(
    emu: Emulator, sock: Socket, seq: int, action: str, data: dict[str, Any]
) -> None:
    if action == "ping":
        pong = {"node_id": "", "server_time": now_ms(), "text": "pong", "version": emu.version_id}
        _reply(sock, seq, data=pong)
    elif action in ("user_typing", "user_update_active_status", "posted_notify_ack"):
        _reply(sock, seq)
    elif action == "get_statuses":
        _reply(sock, seq, data=_statuses(emu, list(emu.store.users)))
    elif action == "get_statuses_by_ids":
        ids = data.get("user_ids")
        if not isinstance(ids, list) or not ids:
            _error(sock, seq, "api.websocket_handler.invalid_param.app_error", 400)
            return
        _reply(sock, seq, data=_statuses(emu, [str(i) for i in ids]))
    else:
        _error(sock, seq, "api.web_socket_router.bad_action.app_error", 500)


def _statuses(emu: Emulator, user_ids: list[str]) -> dict[str, str]:
    """``online`` for users with a live socket, ``offline`` for the others."""
    online = {c.user_id for c in emu.hub.connections.values() if c.socket is not None}
    return {u: "online" if u in online else "offline" for u in user_ids}
