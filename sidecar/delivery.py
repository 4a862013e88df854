"""The HTTP client for callback URLs: one attempt at a time, never raising for network trouble.

One pooled ``aiohttp.ClientSession`` (keep-alive, proxy variables ignored). Each attempt is a
POST of the exact body and headers, redirects not followed, answers read up to 1 MiB, and the
internal-address guard (``guard.py``) applied to the address actually connected to: in a
resolver wrapper for names, and before connecting for IP literals (aiohttp does not resolve
those). aiohttp's DNS cache is off, so every new connection resolves, and is checked, afresh:
a name that later rebinds to an internal address is refused then.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

import sidecar
from sidecar import guard
from sidecar.compat import StrEnum
from sidecar.errors import Forbidden
from sidecar.guard import Allowed
from sidecar.retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after

__all__ = [
    "DELIVERY_RETRY",
    "MAX_RESPONSE_BYTES",
    "MAX_RETRY_AFTER",
    "USER_AGENT",
    "Attempt",
    "CallbackClient",
    "Failure",
    "Forbidden",
    "check_url",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

USER_AGENT = f"mm-sidecar/{sidecar.__version__}"
MAX_RESPONSE_BYTES = 1024 * 1024
CONNECT_TIMEOUT = 3.0  # Mattermost's dial timeout
TOO_LARGE = "response too large (> 1 MiB)"
_CHUNK = 64 * 1024


class Failure(StrEnum):
    """Why an attempt got no usable answer; decides retries and the metric label."""

    TIMEOUT = "timeout"  # no answer within the webhook's timeout
    CONNECT = "connect"  # the connection failed or broke
    REFUSED = "refused"  # the internal-address guard refused the address
    INVALID_URL = "invalid_url"  # the callback URL cannot be called
    TOO_LARGE = "too_large"  # an answer came, over MAX_RESPONSE_BYTES

    @property
    def retryable(self) -> bool:
        """Only network trouble may go away: a refusal, a bad URL, a huge answer will not."""
        return self in (Failure.TIMEOUT, Failure.CONNECT)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one POST to a callback URL."""

    status: int | None  # None: no HTTP answer
    body: bytes  # at most MAX_RESPONSE_BYTES; b"" when none
    error: str  # "" for a usable HTTP answer, else a short reason (for people)
    elapsed_ms: float
    retry_after: float | None = None  # seconds, from Retry-After on 429/503
    failure: Failure | None = None  # None: an HTTP answer that can be used

    @property
    def retryable(self) -> bool:
        """Worth another attempt: connect error, timeout, 5xx, 429 (not refused, not too large)."""
        if self.failure is not None:
            return self.failure.retryable
        return self.status is not None and (self.status == 429 or self.status >= 500)


DELIVERY_RETRY = RetryPolicy(base=1.0, cap=60.0)
"""How a callback is retried: full jitter from 1 s to 60 s, at least Retry-After (capped at an
hour, so a receiver cannot park a delivery for days); the attempts are the webhook's."""


async def _own_addresses() -> frozenset[guard.IPAddress]:
    cached = guard.cached_own_addresses()
    if cached is not None:
        return cached
    # Reading them may look the host name up: keep that off the event loop.
    return await asyncio.to_thread(guard.own_addresses)


_LITERAL_TTL = 60.0  # seconds a verdict on an IP-literal host is reused (own addresses too)
_literal_verdicts: dict[tuple[str, Allowed], tuple[float, bool]] = {}


async def _check_literal(host: str, allowed: Allowed) -> None:
    """Refuse an IP-literal host that aiohttp would connect to without resolving."""
    now = time.monotonic()
    verdict = _literal_verdicts.get((host, allowed))
    if verdict is None or verdict[0] < now:
        ok = (
            not guard.looks_like_ip_literal(host)
            or guard.host_allowed_outright(host, allowed)
            or (
                (addr := guard.parse_address(host)) is not None
                and guard.address_allowed(addr, allowed, await _own_addresses())
            )
        )
        if len(_literal_verdicts) > 4096:
            _literal_verdicts.clear()
        verdict = _literal_verdicts[(host, allowed)] = (now + _LITERAL_TTL, ok)
    if not verdict[1]:
        raise Forbidden(host, host)


class _GuardedResolver(AbstractResolver):
    """Resolves through another resolver and refuses a host if any address is forbidden."""

    def __init__(self, inner: AbstractResolver, allowed: Allowed, *, owns_inner: bool) -> None:
        self._inner = inner
        self._allowed = allowed
        self._owns_inner = owns_inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if guard.host_allowed_outright(host, self._allowed):
            return results
        own = await _own_addresses()
        for result in results:
            if not guard.address_allowed(result["host"], self._allowed, own):
                # Mattermost refuses the host when any of its addresses is internal.
                raise Forbidden(host, result["host"])
        return results

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


class CallbackClient:
    """Sends callback requests on one pooled session; ``start`` it (or use ``async with``)."""

    def __init__(
        self,
        *,
        allowed_untrusted_internal_connections: Sequence[str] = (),
        user_agent: str = USER_AGENT,
        resolver: AbstractResolver | None = None,
        limit_per_host: int = 0,
        total_limit: int = 256,
    ) -> None:
        self._allowed = guard.parse_allowed(allowed_untrusted_internal_connections)
        self._user_agent = user_agent
        self._resolver = resolver
        self._limit_per_host = limit_per_host
        self._total_limit = total_limit
        self._session: aiohttp.ClientSession | None = None
        self._guarded: _GuardedResolver | None = None

    @property
    def allowed(self) -> Allowed:
        """The parsed AllowedUntrustedInternalConnections in force."""
        return self._allowed

    async def start(self) -> None:
        """Open the connection pool."""
        if self._session is not None:
            return
        owns = self._resolver is None
        inner = self._resolver if self._resolver is not None else aiohttp.ThreadedResolver()
        self._guarded = _GuardedResolver(inner, self._allowed, owns_inner=owns)
        connector = aiohttp.TCPConnector(
            resolver=self._guarded,
            use_dns_cache=False,  # every new connection resolves and is checked again
            limit=self._total_limit,
            limit_per_host=self._limit_per_host,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # proxy variables must not route callbacks around the guard
            headers={"User-Agent": self._user_agent},
            auto_decompress=True,
        )
        await _own_addresses()

    async def close(self) -> None:
        """Close the pool; in-flight attempts are the caller's to finish first."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        guarded, self._guarded = self._guarded, None
        if guarded is not None:
            await guarded.close()

    async def __aenter__(self) -> CallbackClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> Attempt:
        """POST ``body`` to ``url`` once; network and HTTP problems become ``Attempt.error``."""
        session = self._session
        if session is None:
            raise RuntimeError("CallbackClient.send() before start()")
        started = time.perf_counter()

        def done(
            status: int | None,
            data: bytes,
            error: str,
            retry_after: float | None = None,
            failure: Failure | None = None,
        ) -> Attempt:
            elapsed = (time.perf_counter() - started) * 1000.0
            return Attempt(status, data, error, elapsed, retry_after, failure)

        # sock_connect, not connect: aiohttp's "connect" also counts waiting for a free pooled
        # connection, which under load is not the receiver's fault. Mattermost's 3 s is a dial.
        client_timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(CONNECT_TIMEOUT, timeout)
        )
        try:
            target = URL(url)
            host = target.raw_host
            if not host or target.scheme not in ("http", "https"):
                return done(None, b"", f"invalid url: {url}", None, Failure.INVALID_URL)
            await _check_literal(host, self._allowed)
            async with session.post(
                target,
                data=body,
                headers=dict(headers),
                allow_redirects=False,
                timeout=client_timeout,
            ) as resp:
                status = resp.status
                retry_after = None
                if status in (429, 503):
                    retry_after = DELIVERY_RETRY.retry_after(resp.headers.get("Retry-After"))
                data = await _read_limited(resp)
                if data is None:
                    resp.close()  # drop the connection rather than drain the rest
                    return done(status, b"", TOO_LARGE, retry_after, Failure.TOO_LARGE)
                return done(status, data, "", retry_after)
        except Forbidden as exc:
            return done(None, b"", str(exc), None, Failure.REFUSED)
        except asyncio.TimeoutError:
            return done(None, b"", "timeout", None, Failure.TIMEOUT)
        except (aiohttp.InvalidURL, ValueError) as exc:
            return done(None, b"", f"invalid url: {exc}", None, Failure.INVALID_URL)
        except (aiohttp.ClientError, OSError) as exc:
            return done(None, b"", f"connect error: {_describe(exc)}", None, Failure.CONNECT)


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes | None:
    """The body, or ``None`` when it is over MAX_RESPONSE_BYTES (counted after decompression)."""
    length = resp.content_length
    if length is not None and length > MAX_RESPONSE_BYTES:
        return None
    if length is not None and "Content-Encoding" not in resp.headers:
        return await resp.content.read()  # the parser stops at Content-Length: at most that
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_url(url: str, allowed: Allowed | Iterable[str], *, resolve: bool = True) -> str | None:
    """A warning if the guard would refuse ``url`` as things resolve now, else ``None``.

    Resolves the name with the system resolver (blocking) unless ``resolve`` is false, in which
    case only IP literals and ``localhost`` names are judged (``mm-sidecar check`` uses no
    network). A name that does not resolve is not the guard's business and gives ``None``.
    Never raises.
    """
    try:
        rules = allowed if isinstance(allowed, Allowed) else guard.parse_allowed(allowed)
        target = URL(url)
        host = target.raw_host
        if not host or guard.host_allowed_outright(host, rules):
            return None
        if guard.looks_like_ip_literal(host):
            addresses = [host]
        elif not resolve and not (host == "localhost" or host.endswith(".localhost")):
            return None
        else:
            try:
                infos = socket.getaddrinfo(host, target.port or 80, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return None
            addresses = [str(info[4][0]) for info in infos]
        own = guard.own_addresses()
        for address in addresses:
            if not guard.address_allowed(address, rules, own):
                where = address if address == host else f"{host} resolves to {address}"
                return (
                    f"callback URL {url} will be refused: {where} is an internal address; "
                    "add the host or a CIDR to allowed_untrusted_internal_connections to allow it"
                )
        return None
    except Exception:  # a check must warn or stay quiet, never crash the command
        logger.debug("check_url failed for %s", url, exc_info=True)
        return None
