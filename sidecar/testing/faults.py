"""Faults the emulator can inject: Mattermost's rate limiter and scripted REST failures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.testing.hub import Hub

WEBSOCKET_PATH = "/api/v4/websocket"


class RateLimiter:
    """Mattermost's rate limiter: throttled's GCRA, limit = burst + 1, keyed by remote address."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._quota = (0, 0)

    def check(self, key: str, per_sec: int, burst: int) -> tuple[bool, dict[str, str]]:
        """Count one request; return (limited, X-RateLimit-* and Retry-After headers)."""
        if (per_sec, burst) != self._quota:
            self._tat.clear()
            self._quota = (per_sec, burst)
        now = time.monotonic()
        emission = 1.0 / max(per_sec, 1)
        tolerance = emission * (burst + 1)
        tat = self._tat.get(key, now)
        new_tat = max(tat, now) + emission
        diff = now - (new_tat - tolerance)
        limited = diff < 0
        if limited:
            ttl = tat - now
        else:
            ttl = new_tat - now
            self._tat[key] = new_tat
        headers = {"X-RateLimit-Limit": str(burst + 1)}
        spare = tolerance - ttl
        headers["X-RateLimit-Remaining"] = str(int(spare / emission) if spare > -emission else 0)
        headers["X-RateLimit-Reset"] = str(math.ceil(ttl))
        if limited:
            headers["Retry-After"] = str(math.ceil(-diff))
        return limited, headers


@dataclass
class _Failure:
    remaining: int
    status: int
    method: str | None
    path_prefix: str | None


class Failures:
    """Scripted failures: the next n matching requests answer a given status."""

    def __init__(self) -> None:
        self._rules: list[_Failure] = []

    def add(self, n: int, status: int, method: str | None, path_prefix: str | None) -> None:
        """Fail the next ``n`` requests matching method and path prefix (see Emulator)."""
        if path_prefix is not None and not path_prefix.startswith("/api/"):
            path_prefix = "/api/v4/" + path_prefix.lstrip("/")
        self._rules.append(_Failure(n, status, method.upper() if method else None, path_prefix))

    def take(self, method: str, path: str, *, websocket: bool) -> int | None:
        """Consume a matching failure; its status, or None.

        The websocket upgrade matches only a rule whose prefix names the websocket path.
        """
        for rule in self._rules:
            if rule.method and rule.method != method:
                continue
            prefix = rule.path_prefix
            if prefix is None:
                if websocket:
                    continue
            elif not path.startswith(prefix) or (
                websocket and not prefix.startswith(WEBSOCKET_PATH)
            ):
                continue
            rule.remaining -= 1
            self._rules = [f for f in self._rules if f.remaining > 0]
            return rule.status
        return None


class FaultInjection:
    """The emulator's fault-injection methods (mixed into `Emulator`)."""

    hub: Hub
    failures: Failures
    response_delay: float

    async def drop_websockets(self) -> None:
        """Cut every socket abruptly; connection state stays, so a resume replays."""
        await self.hub.drop(forget=False)

    async def restart(self) -> None:
        """Cut every socket and forget every connection: resumes get a new hello."""
        await self.hub.drop(forget=True)

    def black_hole_websockets(self, on: bool = True) -> None:
        """While on, events are written (numbered, kept in the dead queue) but never arrive:
        a network that loses what the server sent, so a later resume can be too old."""
        self.hub.black_hole = on

    def fail_next(
        self, n: int, status: int, *, method: str | None = None, path_prefix: str | None = None
    ) -> None:
        """The next ``n`` matching REST calls answer ``status`` with a JSON error body.

        ``path_prefix`` is a full path (``/api/v4/posts``) or relative to ``/api/v4``. The
        websocket upgrade is matched only when ``path_prefix`` names it.
        """
        self.failures.add(n, status, method, path_prefix)

    def inject_frame(self, raw: str | bytes) -> None:
        """Send a raw websocket message (text, or binary for bytes) to every live socket.

        Exactly as given, with no sequence number and no replay: for tests of hostile input.
        A numbered event with any ``data`` is ``hub.publish(event, data, broadcast(), users)``.
        """
        self.hub.inject(raw)

    def clear_failures(self) -> None:
        """Forget every scripted failure not consumed yet (the server is healthy again)."""
        self.failures = Failures()

    def delay_responses(self, seconds: float) -> None:
        """Delay every REST response by ``seconds`` (0 turns it off)."""
        self.response_delay = max(0.0, seconds)
