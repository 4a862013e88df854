"""The ``MMAUTHTOKEN`` cookie, and rate limiting with
``X-RateLimit-*`` on every response, ``Retry-After`` only on 429, varying by user."""

from __future__ import annotations

from harness import World
from tests.emulator_helpers import call

LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


async def test_cookie_session_as_the_server_takes_it(emulator: World) -> None:
    w = emulator
    cookies = {"MMAUTHTOKEN": w.tokens["alice"]}
    status, me, _ = await call(w, "GET", "/api/v4/users/me", user=None, cookies=cookies)
    assert (status, me["id"]) == (200, w.alice["id"])
    post = {"channel_id": w.town["id"], "message": "by cookie"}
    status, err, _ = await call(w, "POST", "/api/v4/posts", user=None, body=post, cookies=cookies)
    assert (status, err["id"]) == (401, "api.context.session_expired.app_error")  # CSRF check
    xhr = {"X-Requested-With": "XMLHttpRequest"}
    status, created, _ = await call(
        w, "POST", "/api/v4/posts", user=None, body=post, cookies=cookies, headers=xhr
    )
    assert status == 201 and created["user_id"] == w.alice["id"]


async def test_limit_headers_on_every_response_retry_after_only_on_429(emulator: World) -> None:
    w = emulator
    w.mm.settings.update(RateLimitEnable=True, RateLimitPerSec=100, RateLimitMaxBurst=100)
    answers = [
        await call(w, "GET", "/api/v4/users/me"),
        await call(w, "GET", "/api/v4/users/me", user=None),  # 401
        await call(w, "GET", f"/api/v4/channels/{w.private['id']}", user="carol"),  # 403
        await call(w, "GET", "/api/v4/not/emulated"),  # 501
        await call(w, "POST", "/api/v4/posts", body={"channel_id": w.town["id"], "message": "x"}),
    ]
    assert [a[0] for a in answers] == [200, 401, 403, 501, 201]
    for _, _, resp in answers:
        assert all(h in resp.headers for h in LIMIT_HEADERS)
        assert "Retry-After" not in resp.headers


async def test_limit_varies_by_user_when_asked(emulator: World) -> None:
    w = emulator
    w.mm.settings.update(
        RateLimitEnable=True, RateLimitPerSec=1, RateLimitMaxBurst=1, RateLimitVaryByUser=True
    )
    alice = [(await call(w, "GET", "/api/v4/users/me", user="alice"))[0] for _ in range(3)]
    assert alice[:2] == [200, 200] and alice[-1] == 429
    bob = await call(w, "GET", "/api/v4/users/me", user="bob")
    assert bob[0] == 200  # his own budget
    assert "Retry-After" in (await call(w, "GET", "/api/v4/users/me", user="alice"))[2].headers
