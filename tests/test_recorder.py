"""The recording callback server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from sidecar.testing.recorder import CallbackRecorder, Recorded, Reply


async def send(
    rec: CallbackRecorder, path: str = "/hook", *, method: str = "POST", **kwargs: object
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, rec.url_for(path), allow_redirects=False, **kwargs) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, await resp.read(), resp


async def test_records_the_request_as_sent(recorder: CallbackRecorder) -> None:
    status, body, _ = await send(
        recorder,
        "/hook/a",
        params={"x": "1"},
        data=b"token=abc&text=hi",
        headers=[("X-Custom-Thing", "v"), ("X-Dup", "a"), ("X-Dup", "b")],  # type: ignore[dict-item]
    )
    assert (status, body) == (200, b"")
    [req] = await recorder.wait_for(1)
    assert (req.method, req.path, req.query, req.body) == (
        "POST",
        "/hook/a",
        "x=1",
        b"token=abc&text=hi",
    )
    assert req.headers["X-Custom-Thing"] == "v"  # name case kept
    assert req.headers["X-Dup"] == "a, b"
    assert req.received_at > 0
    assert recorder.url_for("/x") == recorder.url + "/x" and recorder.url.startswith(
        "http://127.0.0.1:"
    )


async def test_scripted_replies_per_path_then_global_then_default() -> None:
    async with CallbackRecorder(default=Reply(202, "fallback")) as rec:
        rec.script(Reply(200, {"text": "a"}), Reply(500, b"boom"), path="/one")
        rec.script(Reply(201, ["x"]))
        first = await send(rec, "/one")
        assert (first[0], first[1]) == (200, b'{"text": "a"}')
        assert first[2].headers["Content-Type"] == "application/json"
        assert (await send(rec, "/one"))[:2] == (500, b"boom")
        assert (await send(rec, "/one"))[:2] == (201, b'["x"]')  # the global script
        fallback = await send(rec, "/one")
        assert fallback[:2] == (202, b"fallback")
        assert fallback[2].headers["Content-Type"].startswith("text/plain")
        assert len(rec.requests) == 4


async def test_respond_with_sync_and_async(recorder: CallbackRecorder) -> None:
    recorder.respond_with(lambda r: Reply(200, {"echo": r.path}))
    assert (await send(recorder, "/p"))[1] == b'{"echo": "/p"}'

    async def later(r: Recorded) -> Reply:
        return Reply(418, r.body)

    recorder.respond_with(later)
    assert (await send(recorder, data=b"tea"))[:2] == (418, b"tea")
    recorder.script(Reply(200, "scripted wins"))
    assert (await send(recorder))[1] == b"scripted wins"


async def test_redirect_is_returned_as_is(recorder: CallbackRecorder) -> None:
    recorder.script(Reply(302, b"", headers={"Location": "http://127.0.0.1:1/elsewhere"}))
    status, _, resp = await send(recorder)
    assert status == 302 and resp.headers["Location"] == "http://127.0.0.1:1/elsewhere"
    assert len(recorder.requests) == 1


async def test_no_content_reply_drops_the_body(recorder: CallbackRecorder) -> None:
    recorder.script(Reply(204, {"ignored": True}))
    assert (await send(recorder))[:2] == (204, b"")


async def test_delay_holds_the_reply(recorder: CallbackRecorder) -> None:
    recorder.script(Reply(200, b"late", delay=5.0))
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(recorder.url_for())
    assert len(recorder.requests) == 1  # recorded on arrival


async def test_wait_for_timeout_and_clear(recorder: CallbackRecorder) -> None:
    with pytest.raises(TimeoutError, match="0 requests"):
        await recorder.wait_for(1, timeout=0.1)
    waiter = asyncio.create_task(recorder.wait_for(2))
    await send(recorder)
    await send(recorder, method="GET")
    assert [r.method for r in await waiter] == ["POST", "GET"]
    recorder.script(Reply(500))
    recorder.clear()
    assert recorder.requests == []
    assert (await send(recorder))[0] == 200  # the script went with clear()
    assert Recorded("POST", "/", "", {}, b'{"a": 1}', 0.0).json() == {"a": 1}
