"""The websocket: header auth, hello, seq, resume, ping liveness, reconnect with backoff + jitter.

The gateway turns the server's event stream into a stream of items for the app: every typed
event (``events.py``) and a ``Connected`` marker after each (re)connection that says whether
events may have been missed (a gap), in which case the app catches up over REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from sidecar.errors import SidecarError, Unauthorized
from sidecar.events import MAX_FRAME_BYTES, Event, FrameError, Hello, parse_frame
from sidecar.retry import RetryPolicy

log = logging.getLogger(__name__)

PING_INTERVAL = 30.0  # the server pings every 60 s; we ping more often to notice a dead link
PONG_TIMEOUT = 20.0  # a pong later than this means the connection is dead
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


@dataclass(frozen=True, slots=True)
class Connected:
    """The websocket is (again) authenticated and receiving.

    ``gap`` is true when events may have been missed since the last one processed: the first
    connection of the process, a new hello after a failed resume, or a hole in ``seq``.
    """

    connection_id: str
    resumed: bool
    gap: bool
    server_version: str = ""


Item = Event | Connected


class Link(Enum):
    """The websocket's state, as told to ``on_status``."""

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"


@dataclass(frozen=True, slots=True)
class Status:
    """What the gateway tells the app after each change: connected, or reconnecting in
    ``delay`` seconds."""

    link: Link
    delay: float = 0.0

    def __str__(self) -> str:
        if self.link is Link.RECONNECTING:
            return f"reconnecting in {self.delay:.0f} s"
        return "connected"


class Desync(SidecarError):
    """The server's ``seq`` went backwards or leapt: this connection cannot be trusted."""


Sink = Callable[[Item], Awaitable[None]]


def websocket_url(base_url: str) -> str:
    """``https://host/sub`` → ``wss://host/sub/api/v4/websocket``."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/api/v4/websocket"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class Gateway:
    """Follows the event stream until ``stop`` is set. Constructing it does no I/O."""

    def __init__(
        self,
        url: str,
        token: str,
        sink: Sink,
        *,
        ping_interval: float = PING_INTERVAL,
        pong_timeout: float = PONG_TIMEOUT,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        user_agent: str = "mm-sidecar",
        on_status: Callable[[Status], None] | None = None,
        check_auth: Callable[[], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._url = websocket_url(url)
        self._token = token
        self._sink = sink
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        self._backoff = RetryPolicy(base=backoff_base, cap=backoff_cap, rng=rng or random.Random())
        self._user_agent = user_agent
        self._on_status = on_status or (lambda _status: None)
        self._check_auth = check_auth
        self.connection_id = ""
        self.next_seq = 0
        self.connected = False
        self.reconnects = 0
        self._ws: ClientConnection | None = None
        self._opened = False  # the current/last session got past the upgrade
        self._got_frames = False  # … and received at least one frame
        self._replaying = False  # a resume's replay may repeat frames we already had

    def __repr__(self) -> str:
        return f"Gateway({self._url!r}, connected={self.connected})"

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, read, reconnect; return when ``stop`` is set. Raises Unauthorized on 401."""
        failures = 0
        first = True
        while not stop.is_set():
            reason = ""
            try:
                got_frames = await self._session(stop, first)
                first = False
                if got_frames:
                    failures = 0
                reason = "closed by the server"
            except Unauthorized:
                raise
            except Desync as exc:
                # Start afresh: a new hello is a gap, so the app catches up over REST.
                self.connection_id, self.next_seq = "", 0
                reason = str(exc)
            except ConnectionClosed as exc:
                # When we closed it (e.g. a frame over MAX_FRAME_BYTES: 1009), say why.
                close = exc.rcvd or exc.sent
                why = f"{close.code} {close.reason}".strip() if close else "no close frame"
                reason = f"connection lost ({why})"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401:
                    raise Unauthorized(
                        "websocket upgrade: 401, the bot token was rejected", status=401
                    ) from exc
                reason = f"upgrade refused with HTTP {status}"
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except InvalidURI as exc:  # pragma: no cover - config validation prevents it
                raise ValueError(str(exc)) from exc
            finally:
                self.connected = False
                self._ws = None
            if stop.is_set():
                break
            if self._opened and not self._got_frames:
                await self._verify_token()
            delay = self._backoff.delay(failures)
            failures += 1
            self.reconnects += 1
            log.warning(
                "websocket %s; reconnecting in %.1f s (attempt %d)", reason, delay, failures
            )
            self._on_status(Status(Link.RECONNECTING, delay))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _verify_token(self) -> None:
        """After a socket that never said anything: is the token still accepted?

        The server does not refuse a bad token at the upgrade (it serves the websocket
        unauthenticated and closes it after a few seconds, without a frame), so a revoked
        token would otherwise look like an endless run of flaky connections.
        """
        if self._check_auth is None:
            return
        try:
            await self._check_auth()
        except Unauthorized:
            raise
        except Exception as exc:  # the server is unwell: the reconnect loop deals with that
            log.debug("token check after a silent websocket failed: %s", exc)

    async def close(self) -> None:
        """Close the current socket, if any (``run`` then notices ``stop``)."""
        if self._ws is not None:
            await self._ws.close()

    async def _session(self, stop: asyncio.Event, first: bool) -> bool:
        """One connection, until it drops or ``stop`` is set. True if it delivered frames."""
        self._opened = self._got_frames = False
        resume = bool(self.connection_id)
        self._replaying = resume
        url = self._url
        if resume:
            url += "?" + urlencode(
                {"connection_id": self.connection_id, "sequence_number": str(self.next_seq)}
            )
        async with connect(
            url,
            additional_headers={"Authorization": f"Bearer {self._token}"},
            user_agent_header=self._user_agent,
            ping_interval=self._ping_interval,
            ping_timeout=self._pong_timeout,
            max_size=MAX_FRAME_BYTES,
            max_queue=256,
            open_timeout=30,
            close_timeout=5,
            proxy=None,
            compression=None,
        ) as ws:
            self._ws = ws
            self._opened = True
            if resume:
                # Authenticated at upgrade: the server replays what we missed, or says hello
                # with a new connection id if it cannot.
                self.connected = True
                log.info(
                    "websocket reconnected; resuming %s at seq %d",
                    self.connection_id,
                    self.next_seq,
                )
                self._on_status(Status(Link.CONNECTED))
                await self._sink(Connected(self.connection_id, resumed=True, gap=False))
            got = False
            # One watcher per connection closes it on stop; the read loop itself stays a
            # plain ``recv`` (no task per frame on the hot path).
            closer = asyncio.create_task(_close_on(stop, ws), name="gateway-stop")
            try:
                while True:
                    try:
                        raw = await ws.recv()
                    except ConnectionClosed:
                        if stop.is_set():
                            return got
                        raise
                    got = self._got_frames = True
                    await self._frame(raw, first)
            finally:
                closer.cancel()

    async def _frame(self, raw: str | bytes, first: bool) -> None:
        try:
            frame = parse_frame(raw)
        except FrameError as exc:
            seq = getattr(exc, "seq", None)
            log.warning("skipped a malformed websocket frame (seq %s): %s", seq, exc)
            if isinstance(seq, int):
                self._in_order(seq)
            return
        event = frame.event
        if isinstance(event, Hello):
            gap = first or event.connection_id != self.connection_id or not self.connected
            resumed_id = self.connection_id
            self.connection_id = event.connection_id
            self.next_seq = (frame.seq or 0) + 1
            self._replaying = False  # a new connection: nothing of it was seen before
            self.connected = True
            if resumed_id and resumed_id != event.connection_id:
                log.warning(
                    "websocket resume refused (new connection %s): catching up over REST",
                    event.connection_id,
                )
            else:
                log.info(
                    "websocket connected (connection %s, server %s)",
                    event.connection_id,
                    event.server_version,
                )
            self._on_status(Status(Link.CONNECTED))
            await self._sink(
                Connected(
                    event.connection_id, resumed=False, gap=gap, server_version=event.server_version
                )
            )
            return
        if frame.seq is None:
            return  # a reply to one of our actions
        if not self._in_order(frame.seq):
            return
        if event is not None:
            await self._sink(event)

    def _in_order(self, seq: int) -> bool:
        """Account for one numbered frame: True to process it, False for a replayed duplicate.

        Only the replay right after a resume may repeat what we had (until it reaches the seq
        we asked for). Any other mismatch, backwards or a leap, is a desync (as the Mattermost
        webapp treats it): raise, so the connection is dropped and a fresh one (a new hello,
        a gap) makes the app catch up over REST. Adopting a leap instead would silence the
        stream: every later frame would look like a replay.
        """
        if seq == self.next_seq:
            self.next_seq += 1
            self._replaying = False
            return True
        if seq < self.next_seq and self._replaying:
            log.debug("skipped replayed frame seq %d (expected %d)", seq, self.next_seq)
            return False
        log.warning(
            "websocket seq %d where %d was expected: reconnecting afresh and catching up over REST",
            seq,
            self.next_seq,
        )
        raise Desync(f"out of sequence (seq {seq}, expected {self.next_seq})")


async def _close_on(stop: asyncio.Event, ws: ClientConnection) -> None:
    await stop.wait()
    await ws.close()
