"""The callback HTTP client, against a real aiohttp server on 127.0.0.1 (and ::1 when present)."""

from __future__ import annotations

import asyncio
import collections
import gzip
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from sidecar.delivery import (
    DELIVERY_RETRY,
    MAX_RESPONSE_BYTES,
    MAX_RETRY_AFTER,
    USER_AGENT,
    Attempt,
    CallbackClient,
    Failure,
    check_url,
    parse_retry_after,
)
from sidecar.guard import FORBIDDEN_MESSAGE

PUBLIC_IP = "93.184.216.34"
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class Recorder:
    """A callback server that remembers what reached it."""

    port: int = 0
    port6: int | None = None
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    max_in_flight: int = 0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def make_app(rec: Recorder) -> web.Application:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        rec.hits[request.path] += 1
        return await handler(request)

    async def echo(request: web.Request) -> web.Response:
        rec.requests.append((dict(request.headers), await request.read()))
        return web.json_response({"text": "ok"})

    async def status(request: web.Request) -> web.Response:
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        code = int(request.match_info["code"])
        return web.Response(status=code, body=b'{"text": "busy"}', headers=headers)

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["n"])
        if request.query.get("mode") == "gzip":
            body = gzip.compress(b"\0" * size)
            return web.Response(body=body, headers={"Content-Encoding": "gzip"})
        if request.query.get("mode") != "chunked":
            return web.Response(body=b"x" * size)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        while size > 0:
            await resp.write(b"x" * min(size, 100_000))
            size -= 100_000
        await resp.write_eof()
        return resp

    async def sleep(request: web.Request) -> web.Response:
        await rec.release.wait()
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        location = {"Location": request.query["to"]}
        return web.Response(status=302, body=b'{"text":"moved"}', headers=location)

    async def concurrent(request: web.Request) -> web.Response:
        rec.in_flight += 1
        rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
        if rec.in_flight >= int(request.query["n"]):
            rec.all_in.set()
        try:
            await asyncio.wait_for(rec.all_in.wait(), 5)
        except asyncio.TimeoutError:
            pass
        finally:
            rec.in_flight -= 1
        return web.Response(text="done")

    app = web.Application(middlewares=[count])
    app.router.add_post("/echo", echo)
    app.router.add_post("/target", echo)
    app.router.add_post("/status/{code}", status)
    app.router.add_post("/big", big)
    app.router.add_post("/sleep", sleep)
    app.router.add_post("/redirect", redirect)
    app.router.add_post("/concurrent", concurrent)
    return app


@pytest.fixture
async def server() -> AsyncIterator[Recorder]:
    rec = Recorder()
    runner = web.AppRunner(make_app(rec))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    if ipv6_loopback():
        site6 = web.TCPSite(runner, "::1", 0)
        await site6.start()
        rec.port6 = runner.addresses[1][1]
    yield rec
    rec.release.set()
    await runner.cleanup()


class MapResolver(AbstractResolver):
    """Answers from a table; a host may get a different answer on each call (rebinding)."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.calls: collections.Counter[str] = collections.Counter()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = self.table[host]
        ips = answers[min(self.calls[host], len(answers) - 1)]
        self.calls[host] += 1
        return [
            ResolveResult(
                hostname=host, host=ip, port=port, proto=0, flags=0,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
            )
            for ip in ips
        ]  # fmt: skip

    async def close(self) -> None:
        pass


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[..., Awaitable[CallbackClient]]]:
    async with AsyncExitStack() as stack:

        async def make(**kwargs: Any) -> CallbackClient:
            return await stack.enter_async_context(CallbackClient(**kwargs))

        yield make


Factory = Callable[..., Awaitable[CallbackClient]]


def assert_forbidden(attempt: Attempt) -> None:
    assert attempt.error.startswith(FORBIDDEN_MESSAGE), attempt
    assert attempt.status is None
    assert not attempt.retryable


# --- the guard, on the address actually connected to ------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "0.0.0.0", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"]
)
async def test_refused_by_default(server: Recorder, client_factory: Factory, host: str) -> None:
    client = await client_factory()
    attempt = await client.send(server.url("/echo", host), b"x", FORM, timeout=5)
    assert_forbidden(attempt)
    assert not server.hits


async def test_ipv6_loopback_refused_then_allowed(
    server: Recorder, client_factory: Factory
) -> None:
    if server.port6 is None:
        pytest.skip("no IPv6 loopback on this machine")
    url = f"http://[::1]:{server.port6}/echo"
    assert_forbidden(await (await client_factory()).send(url, b"x", FORM, timeout=5))
    assert not server.hits
    allowed = await client_factory(allowed_untrusted_internal_connections=["::1"])
    assert (await allowed.send(url, b"x", FORM, timeout=5)).status == 200
    assert server.hits["/echo"] == 1


@pytest.mark.parametrize(
    ("entries", "host"),
    [
        (["127.0.0.1"], "127.0.0.1"),
        (["localhost"], "localhost"),
        (["127.0.0.0/8"], "127.0.0.1"),
        (["10.0.0.0/8, 127.0.0.0/8"], "127.0.0.1"),
        (["example.com localhost"], "localhost"),
    ],
)
async def test_allowed(
    server: Recorder, client_factory: Factory, entries: list[str], host: str
) -> None:
    client = await client_factory(allowed_untrusted_internal_connections=entries)
    attempt = await client.send(server.url("/echo", host), b"x", FORM, timeout=5)
    assert (attempt.status, attempt.error, attempt.body) == (200, "", b'{"text": "ok"}')
    assert server.hits["/echo"] == 1


async def test_cidr_applies_to_resolved_names(server: Recorder, client_factory: Factory) -> None:
    resolver = MapResolver({"internal.test": [["127.0.0.1"]]})
    client = await client_factory(
        allowed_untrusted_internal_connections=["127.0.0.0/8"], resolver=resolver
    )
    attempt = await client.send(server.url("/echo", "internal.test"), b"x", FORM, timeout=5)
    assert attempt.status == 200
    refused = await client_factory(
        allowed_untrusted_internal_connections=["10.0.0.0/8"], resolver=resolver
    )
    assert_forbidden(await refused.send(server.url("/echo", "internal.test"), b"", FORM, timeout=5))
    assert server.hits["/echo"] == 1


async def test_one_internal_address_refuses_the_whole_host(
    server: Recorder, client_factory: Factory
) -> None:
    resolver = MapResolver({"mixed.test": [[PUBLIC_IP, "127.0.0.1"]]})
    client = await client_factory(resolver=resolver)
    assert_forbidden(await client.send(server.url("/echo", "mixed.test"), b"x", FORM, timeout=5))
    assert not server.hits


async def test_public_address_is_not_refused(server: Recorder, client_factory: Factory) -> None:
    resolver = MapResolver({"public.test": [[PUBLIC_IP]]})
    client = await client_factory(resolver=resolver)
    attempt = await client.send(server.url("/", "public.test"), b"x", FORM, timeout=0.3)
    assert not attempt.error.startswith(FORBIDDEN_MESSAGE)
    assert attempt.error == "timeout" or attempt.error.startswith("connect error") or attempt.status
    assert resolver.calls["public.test"] == 1


async def test_dns_rebinding_is_checked_on_every_connection(
    server: Recorder, client_factory: Factory
) -> None:
    resolver = MapResolver({"rebind.test": [[PUBLIC_IP], ["127.0.0.1"]]})
    client = await client_factory(resolver=resolver)
    url = server.url("/echo", "rebind.test")
    first = await client.send(url, b"x", FORM, timeout=0.3)
    assert not first.error.startswith(FORBIDDEN_MESSAGE)
    assert_forbidden(await client.send(url, b"x", FORM, timeout=0.3))
    assert resolver.calls["rebind.test"] == 2
    assert not server.hits


@pytest.mark.parametrize("entry", ["allowed.test", "127.0.0.1"])
async def test_redirect_is_returned_not_followed(
    server: Recorder, client_factory: Factory, entry: str
) -> None:
    resolver = MapResolver({"allowed.test": [["127.0.0.1"]]})
    client = await client_factory(allowed_untrusted_internal_connections=[entry], resolver=resolver)
    target = server.url("/target")
    url = server.url(f"/redirect?to={target}", entry)
    attempt = await client.send(url, b"x", FORM, timeout=5)
    assert (attempt.status, attempt.body, attempt.error) == (302, b'{"text":"moved"}', "")
    assert not attempt.retryable
    assert server.hits == {"/redirect": 1}


# --- the HTTP exchange ----------------------------------------------------------------------


@pytest.fixture
async def local(client_factory: Factory) -> CallbackClient:
    return await client_factory(allowed_untrusted_internal_connections=["127.0.0.1"])


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/json"])
async def test_headers_and_body_sent_exactly(
    server: Recorder, local: CallbackClient, content_type: str
) -> None:
    body = b'{"text":"caf\xc3\xa9 \\u003c"}'
    headers = {"Content-Type": content_type, "Accept": "application/json", "webhook-id": "msg_1"}
    attempt = await local.send(server.url("/echo"), body, headers, timeout=5)
    assert attempt.status == 200
    [(seen, seen_body)] = server.requests
    assert seen_body == body
    assert seen["Content-Type"] == content_type
    assert seen["User-Agent"] == USER_AGENT == "mm-sidecar/0.1.0"
    assert seen["Accept"] == "application/json"
    assert seen["webhook-id"] == "msg_1"
    assert seen["Content-Length"] == str(len(body))


async def test_custom_user_agent(server: Recorder, client_factory: Factory) -> None:
    client = await client_factory(
        allowed_untrusted_internal_connections=["127.0.0.1"], user_agent="Mattermost-Bot/1.1"
    )
    await client.send(server.url("/echo"), b"", FORM, timeout=5)
    assert server.requests[0][0]["User-Agent"] == "Mattermost-Bot/1.1"


async def test_proxy_variables_are_ignored(
    server: Recorder, local: CallbackClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    attempt = await local.send(server.url("/echo"), b"x", FORM, timeout=5)
    assert (attempt.status, attempt.error) == (200, "")
    assert server.hits["/echo"] == 1


async def test_status_not_checked(server: Recorder, local: CallbackClient) -> None:
    attempt = await local.send(server.url("/status/500"), b"x", FORM, timeout=5)
    assert (attempt.status, attempt.body, attempt.error) == (500, b'{"text": "busy"}', "")
    assert attempt.retryable
    attempt = await local.send(server.url("/status/404"), b"x", FORM, timeout=5)
    assert (attempt.status, attempt.body) == (404, b'{"text": "busy"}')
    assert not attempt.retryable


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/status/429?retry_after=7", 7.0),
        ("/status/503?retry_after=120", 120.0),
        ("/status/503?retry_after=Wed,%2021%20Oct%202015%2007:28:00%20GMT", 0.0),  # in the past
        ("/status/503?retry_after=soon", None),
        ("/status/500?retry_after=7", None),  # only 429 and 503 carry it
        ("/status/429", None),
    ],
)
async def test_retry_after_from_the_answer(
    server: Recorder, local: CallbackClient, path: str, expected: float | None
) -> None:
    attempt = await local.send(server.url(path), b"x", FORM, timeout=5)
    assert attempt.retry_after == expected
    assert attempt.retryable


async def test_timeout(server: Recorder, local: CallbackClient) -> None:
    attempt = await local.send(server.url("/sleep"), b"x", FORM, timeout=0.3)
    assert (attempt.status, attempt.body, attempt.error) == (None, b"", "timeout")
    assert attempt.retryable


async def test_connect_error(local: CallbackClient) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    attempt = await local.send(f"http://127.0.0.1:{port}/", b"x", FORM, timeout=5)
    assert attempt.status is None
    assert attempt.error.startswith("connect error: ")
    assert attempt.retryable


@pytest.mark.parametrize("mode", ["plain", "chunked", "gzip"])
async def test_response_over_one_mib(server: Recorder, local: CallbackClient, mode: str) -> None:
    url = server.url(f"/big?n={MAX_RESPONSE_BYTES + 1}&mode={mode}")
    attempt = await local.send(url, b"x", FORM, timeout=10)
    assert (attempt.status, attempt.body) == (200, b"")
    assert attempt.error == "response too large (> 1 MiB)"
    assert not attempt.retryable
    # The pool still works after a connection was dropped half-read.
    assert (await local.send(server.url("/echo"), b"x", FORM, timeout=5)).status == 200


@pytest.mark.parametrize("mode", ["plain", "chunked"])
async def test_response_of_exactly_one_mib(
    server: Recorder, local: CallbackClient, mode: str
) -> None:
    url = server.url(f"/big?n={MAX_RESPONSE_BYTES}&mode={mode}")
    attempt = await local.send(url, b"x", FORM, timeout=10)
    assert (attempt.status, attempt.error, len(attempt.body)) == (200, "", MAX_RESPONSE_BYTES)


async def test_requests_run_concurrently(server: Recorder, local: CallbackClient) -> None:
    url = server.url("/concurrent?n=10")
    attempts = await asyncio.gather(*(local.send(url, b"x", FORM, timeout=20) for _ in range(10)))
    assert [a.status for a in attempts] == [200] * 10
    assert server.max_in_flight == 10


async def test_invalid_url_and_lifecycle(client_factory: Factory) -> None:
    client = CallbackClient()
    with pytest.raises(RuntimeError):
        await client.send("http://8.8.8.8/", b"", FORM, timeout=1)
    await client.close()  # closing an unstarted client is harmless
    started = await client_factory()
    for url in ("ftp://example.com/", "http:///nohost", "no url at all"):
        attempt = await started.send(url, b"", FORM, timeout=1)
        assert attempt.error.startswith("invalid url"), attempt
        assert not attempt.retryable


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "retryable"),
    [
        (Attempt(None, b"", "timeout", 1.0, failure=Failure.TIMEOUT), True),
        (Attempt(None, b"", "connect error: refused", 1.0, failure=Failure.CONNECT), True),
        (Attempt(500, b"", "", 1.0), True),
        (Attempt(502, b"", "", 1.0), True),
        (Attempt(503, b"", "", 1.0, 5.0), True),
        (Attempt(429, b"", "", 1.0, 5.0), True),
        (Attempt(200, b"", "", 1.0), False),
        (Attempt(302, b"", "", 1.0), False),
        (Attempt(400, b"", "", 1.0), False),
        (Attempt(404, b"", "", 1.0), False),
        (
            Attempt(None, b"", f"{FORBIDDEN_MESSAGE} (127.0.0.1)", 1.0, failure=Failure.REFUSED),
            False,
        ),
        (Attempt(200, b"", "response too large (> 1 MiB)", 1.0, failure=Failure.TOO_LARGE), False),
        (Attempt(500, b"", "response too large (> 1 MiB)", 1.0, failure=Failure.TOO_LARGE), False),
        (Attempt(None, b"", "invalid url: x", 1.0, failure=Failure.INVALID_URL), False),
    ],
)
def test_retryable(attempt: Attempt, retryable: bool) -> None:
    assert attempt.retryable is retryable


NOW = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # RFC 850, still to be accepted
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def backoff_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    return replace(DELIVERY_RETRY, base=base, cap=cap, rng=rng).delay(attempt, retry_after)


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(42)
    for attempt in range(12):
        ceiling = min(60.0, 2.0**attempt)
        delays = [backoff_delay(attempt, rng=rng) for _ in range(50)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, not a fixed schedule
    assert 0.0 <= backoff_delay(10_000, base=0.5, cap=5.0, rng=rng) <= 5.0
    assert backoff_delay(-3, rng=rng) <= 1.0


def test_backoff_is_reproducible_with_a_seed() -> None:
    first = [backoff_delay(n, rng=random.Random(7)) for n in range(5)]
    assert first == [backoff_delay(n, rng=random.Random(7)) for n in range(5)]


def test_backoff_honours_retry_after() -> None:
    rng = random.Random(1)
    assert all(30.0 <= backoff_delay(2, retry_after=30.0, rng=rng) <= 60.0 for _ in range(20))
    assert backoff_delay(0, retry_after=10**9, rng=rng) == MAX_RETRY_AFTER
    assert backoff_delay(0, retry_after=0.0, rng=rng) <= 1.0


# --- check_url (for mm-sidecar check) -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "entries", "warns"),
    [
        ("http://127.0.0.1/hook", [], "127.0.0.1"),
        ("http://localhost:8080/hook", [], "localhost resolves to 127.0.0.1"),
        ("http://[::1]/hook", [], "::1"),
        ("http://169.254.169.254/latest", ["10.0.0.0/8"], "169.254.169.254"),
        ("http://127.0.0.1/hook", ["127.0.0.1"], None),
        ("http://localhost/hook", ["localhost"], None),
        ("http://127.0.0.1/hook", ["127.0.0.0/8"], None),
        ("http://8.8.8.8/hook", [], None),
        ("https://nonexistent.invalid/hook", [], None),
        ("not a url", [], None),
        ("http://[::1/", [], None),
    ],
)
def test_check_url(url: str, entries: list[str], warns: str | None) -> None:
    warning = check_url(url, entries)
    if warns is None:
        assert warning is None
    else:
        assert warning is not None
        assert warns in warning
        assert "allowed_untrusted_internal_connections" in warning
