"""The routes clients used, in the server's shapes;
every other route answers 501 ``emulator.not_implemented``; the README lists the routes."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from harness import World
from sidecar.testing.emulator import Emulator
from sidecar.testing.rest import emulated_routes
from sidecar.testing.seed import apply_seed
from tests.emulator_helpers import ERROR_KEYS, call, hello

README = Path(__file__).resolve().parents[1] / "README.md"


async def test_channel_by_team_name_and_channel_name(emulator: World) -> None:
    w = emulator
    path = "/api/v4/teams/name/someteam/channels/name/town-square"
    status, channel, _ = await call(w, "GET", path)
    assert status == 200 and channel["id"] == w.town["id"]
    status, err, _ = await call(w, "GET", "/api/v4/teams/name/someteam/channels/name/nope")
    assert (status, err["id"]) == (404, "app.channel.get_by_name.missing.app_error")
    status, err, _ = await call(w, "GET", "/api/v4/teams/name/noteam/channels/name/town-square")
    assert (status, err["id"]) == (404, "app.team.get_by_name.missing.app_error")
    assert (await call(w, "GET", "/api/v4/teams/name/someteam/channels/name/private-room",
                       user="carol"))[0] == 404  # fmt: skip


async def test_team_members_channels_and_members(emulator: World) -> None:
    w = emulator
    status, members, _ = await call(w, "GET", "/api/v4/users/me/teams/members")
    assert status == 200
    assert [(m["team_id"], m["user_id"], m["roles"]) for m in members] == [
        (w.team["id"], w.bot["id"], "team_user")
    ]
    status, channels, _ = await call(w, "GET", "/api/v4/users/me/channels")
    assert status == 200
    assert {c["id"] for c in channels} == {
        w.town["id"],
        w.dev["id"],
        w.secret["id"],
        w.private["id"],
        w.dm["id"],
        w.group["id"],
    }
    status, listed, _ = await call(w, "GET", f"/api/v4/channels/{w.town['id']}/members")
    assert status == 200
    assert {m["user_id"] for m in listed} == {w.alice["id"], w.bob["id"], w.ci["id"], w.bot["id"]}
    assert all(m["channel_id"] == w.town["id"] and "notify_props" in m for m in listed)
    one_page = await call(w, "GET", f"/api/v4/channels/{w.town['id']}/members?per_page=1")
    assert len(one_page[1]) == 1
    assert (await call(w, "GET", f"/api/v4/channels/{w.private['id']}/members", user="carol"))[
        0
    ] == 403


async def test_thread_and_reactions(emulator: World) -> None:
    w = emulator
    root = w.mm.post(w.alice["id"], w.town["id"], "root", create_at=1_000)
    first = w.mm.post(w.bob["id"], w.town["id"], "one", root_id=root["id"], create_at=1_001)
    second = w.mm.post(w.alice["id"], w.town["id"], "two", root_id=root["id"], create_at=1_002)
    status, thread, _ = await call(w, "GET", f"/api/v4/posts/{first['id']}/thread")
    assert status == 200
    assert thread["order"] == [second["id"], first["id"], root["id"]]
    assert set(thread["posts"]) == set(thread["order"])
    status, reactions, _ = await call(w, "GET", f"/api/v4/posts/{root['id']}/reactions")
    assert (status, reactions) == (200, [])
    w.mm.react(w.alice["id"], root["id"], "tada")
    status, reactions, _ = await call(w, "GET", f"/api/v4/posts/{root['id']}/reactions")
    assert [(r["user_id"], r["emoji_name"]) for r in reactions] == [(w.alice["id"], "tada")]


async def test_usernames_direct_channel_and_status(emulator: World) -> None:
    w = emulator
    status, users, _ = await call(
        w, "POST", "/api/v4/users/usernames", body=["alice", "nobody", "bob"]
    )
    assert status == 200 and [u["username"] for u in users] == ["alice", "bob"]
    status, dm, _ = await call(
        w, "POST", "/api/v4/channels/direct", body=[w.bot["id"], w.bob["id"]]
    )
    assert status == 201 and dm["type"] == "D"
    assert dm["name"] == "__".join(sorted([w.bot["id"], w.bob["id"]]))
    again = await call(w, "POST", "/api/v4/channels/direct", body=[w.bob["id"], w.bot["id"]])
    assert (again[0], again[1]["id"]) == (201, dm["id"])
    others = await call(w, "POST", "/api/v4/channels/direct", body=[w.alice["id"], w.bob["id"]])
    assert others[0] == 403
    status, mine, _ = await call(w, "GET", "/api/v4/users/me/status")
    assert status == 200 and (mine["user_id"], mine["status"]) == (w.bot["id"], "offline")
    ws, _ = await hello(w)
    async with ws:
        assert (await call(w, "GET", "/api/v4/users/me/status"))[1]["status"] == "online"


async def test_login_with_username_and_password(emulator: World) -> None:
    w = emulator
    w.mm.store.set_password(w.alice["id"], "s3cret-Pass")
    body = {"login_id": "alice", "password": "s3cret-Pass"}
    status, user, resp = await call(w, "POST", "/api/v4/users/login", user=None, body=body)
    assert status == 200 and user["id"] == w.alice["id"]
    token = resp.headers["Token"]
    assert resp.cookies["MMAUTHTOKEN"].value == token
    me = await call(w, "GET", "/api/v4/users/me", user=None,
                    headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert (me[0], me[1]["username"]) == (200, "alice")
    wrong = {"login_id": "alice", "password": "nope"}
    status, err, _ = await call(w, "POST", "/api/v4/users/login", user=None, body=wrong)
    assert (status, err["id"]) == (401, "api.user.login.invalid_credentials_email_username")
    bot = {"login_id": "sidecar-bot", "password": ""}
    assert (await call(w, "POST", "/api/v4/users/login", user=None, body=bot))[0] == 401


async def test_seeded_users_log_in_with_their_password() -> None:
    seed = {"users": [{"username": "somename", "password": "Some-pass-1"}]}
    async with Emulator() as mm:
        apply_seed(mm, seed)
        url = f"{mm.url}/api/v4/users/login"
        body = {"login_id": "somename", "password": "Some-pass-1"}
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
            assert resp.status == 200 and (await resp.json())["username"] == "somename"
            assert len(resp.headers["Token"]) == 26


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v4/no/such/thing"),
        ("PUT", "/api/v4/users/me"),  # a known path, a method not emulated
        ("POST", "/api/v4/teams/abc/invite/email"),
    ],
)
async def test_routes_not_emulated_answer_501(emulator: World, method: str, path: str) -> None:
    status, err, resp = await call(emulator, method, path)
    assert status == 501 and list(err) == ERROR_KEYS
    assert err["id"] == "emulator.not_implemented"
    assert err["message"] == f"{method} {path} is not emulated"
    assert resp.headers["Content-Type"] == "application/json"


def test_readme_lists_the_emulated_routes() -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(
        r"<!-- emulated-routes:start -->\n```text\n(.*?)```\n<!-- emulated-routes:end -->",
        text,
        re.S,
    )
    assert block is not None, "README: the emulated routes block is missing"
    assert block.group(1).splitlines() == emulated_routes()
