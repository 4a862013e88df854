"""The emulator's REST API, against the server's REST behaviour."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mattermostdriver import Driver

from harness import World
from sidecar.testing.emulator import Emulator
from sidecar.testing.model import ID_ALPHABET, ApiError, new_id
from sidecar.testing.seed import apply_seed, load_seed

REPO = Path(__file__).resolve().parents[1]
ERROR_KEYS = ["id", "message", "detailed_error", "request_id", "status_code"]


async def call(
    world: World,
    method: str,
    path: str,
    *,
    user: str | None = "sidecar-bot",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One REST call; returns (status, decoded JSON or text, response)."""
    hdrs = dict(world.auth(user)) if user else {}
    hdrs.update(headers or {})
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, world.mm.url + path, json=body, headers=hdrs) as resp,
    ):
        text = await resp.text()
        data = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, data, resp


def create(world: World, channel: str, message: str, **extra: Any) -> dict[str, Any]:
    """A POST /posts body."""
    return {"channel_id": channel, "message": message, **extra}


def test_ids_are_26_chars_of_z_base_32() -> None:
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 26 and set(i) <= set(ID_ALPHABET) for i in ids)


async def test_users_me_by_id_and_by_username(emulator: World) -> None:
    w = emulator
    status, me, resp = await call(w, "GET", "/api/v4/users/me")
    assert status == 200 and resp.headers["Content-Type"] == "application/json"
    assert me["id"] == w.bot["id"] and me["username"] == "sidecar-bot" and me["is_bot"] is True
    status, alice, _ = await call(w, "GET", f"/api/v4/users/{w.alice['id']}")
    assert status == 200 and alice["username"] == "alice"
    assert "is_bot" not in alice  # Go's omitempty
    status, by_name, _ = await call(w, "GET", "/api/v4/users/username/alice")
    assert by_name["id"] == w.alice["id"]
    status, err, _ = await call(w, "GET", "/api/v4/users/username/nobody")
    assert status == 404 and list(err) == ERROR_KEYS


@pytest.mark.parametrize("token", [None, "wrongtokenwrongtokenwrongt"])
async def test_missing_or_bad_token_is_401_json(emulator: World, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, err, _ = await call(emulator, "GET", "/api/v4/users/me", user=None, headers=headers)
    assert status == 401
    assert list(err) == ERROR_KEYS
    assert err["status_code"] == 401 and err["id"] == "api.context.session_expired.app_error"


async def test_teams_and_channels_lookups(emulator: World) -> None:
    w = emulator
    tid = w.team["id"]
    assert (await call(w, "GET", f"/api/v4/teams/{tid}"))[1]["name"] == "someteam"
    assert (await call(w, "GET", "/api/v4/teams/name/someteam"))[1]["id"] == tid
    for who in ("me", w.bot["id"]):
        status, teams, _ = await call(w, "GET", f"/api/v4/users/{who}/teams")
        assert status == 200 and [t["id"] for t in teams] == [tid]
    status, _, _ = await call(w, "GET", f"/api/v4/users/{w.alice['id']}/teams")
    assert status == 403
    status, channel, _ = await call(w, "GET", f"/api/v4/channels/{w.town['id']}")
    assert (channel["name"], channel["type"], channel["team_id"]) == ("town-square", "O", tid)
    status, channel, _ = await call(w, "GET", f"/api/v4/teams/{tid}/channels/name/private-room")
    assert channel["id"] == w.private["id"] and channel["type"] == "P"


async def test_user_channels_in_team_include_dms_and_nothing_foreign(emulator: World) -> None:
    w = emulator
    other_team = w.mm.create_team("otherteam")
    w.mm.create_channel(other_team["id"], "elsewhere", members=[w.bot["id"]])
    w.mm.create_channel(w.team["id"], "carols-room", members=[w.carol["id"]])
    path = f"/api/v4/users/me/teams/{w.team['id']}/channels"
    status, channels, _ = await call(w, "GET", path)
    assert status == 200
    # The server's query is TeamId = ? OR TeamId = '' over the user's memberships.
    assert {c["id"] for c in channels} == {
        w.town["id"],
        w.dev["id"],
        w.secret["id"],
        w.private["id"],
        w.dm["id"],
        w.group["id"],
    }
    dm = next(c for c in channels if c["type"] == "D")
    assert dm["team_id"] == "" and dm["name"] == "__".join(sorted([w.alice["id"], w.bot["id"]]))


async def test_channel_permissions(emulator: World) -> None:
    w = emulator
    # carol is in the team, not in the private channel: 403 by id, 404 by name.
    status, err, _ = await call(w, "GET", f"/api/v4/channels/{w.private['id']}", user="carol")
    assert status == 403 and err["id"] == "api.context.permissions.app_error"
    path = f"/api/v4/teams/{w.team['id']}/channels/name/private-room"
    assert (await call(w, "GET", path, user="carol"))[0] == 404
    posts_path = f"/api/v4/channels/{w.private['id']}/posts?since=1"
    assert (await call(w, "GET", posts_path, user="carol"))[0] == 403
    # A public channel is readable by any team member, but only members may post in it.
    assert (await call(w, "GET", f"/api/v4/channels/{w.town['id']}", user="carol"))[0] == 200
    status, _, _ = await call(
        w, "POST", "/api/v4/posts", user="carol", body=create(w, w.town["id"], "hi")
    )
    assert status == 403
    assert w.mm.posts_in(w.town["id"]) == []
    assert (await call(w, "GET", f"/api/v4/channels/{new_id()}"))[0] == 404


async def test_bot_post_keeps_reserved_props_and_gets_from_bot(emulator: World) -> None:
    w = emulator
    props = {
        "from_webhook": "true",
        "override_username": "ci",
        "override_icon_url": "http://x/i.png",
        "webhook_display_name": "build",
        "attachments": [{"text": "a"}],
    }
    priority = {"priority": "urgent", "requested_ack": True}
    body = create(w, w.town["id"], "done", props=props, metadata={"priority": priority})
    status, post, _ = await call(w, "POST", "/api/v4/posts", body=body)
    assert status == 201
    assert post["props"] == {**props, "from_bot": "true"}
    assert post["metadata"]["priority"] == priority
    assert post["user_id"] == w.bot["id"] and post["create_at"] == post["update_at"] > 0
    status, human, _ = await call(
        w, "POST", "/api/v4/posts", user="alice", body=create(w, w.town["id"], "hi")
    )
    assert status == 201 and "from_bot" not in human["props"]
    assert [p["id"] for p in w.mm.posts_in(w.town["id"])] == [post["id"], human["id"]]


async def test_priority_is_for_root_posts_only(emulator: World) -> None:
    w = emulator
    root = w.mm.post(w.alice["id"], w.town["id"], "root")
    body = create(
        w, w.town["id"], "r", root_id=root["id"], metadata={"priority": {"priority": "urgent"}}
    )
    assert (await call(w, "POST", "/api/v4/posts", body=body))[0] == 400


async def test_root_id_rules(emulator: World) -> None:
    w = emulator
    root = w.mm.post(w.alice["id"], w.town["id"], "root")
    status, reply, _ = await call(
        w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "r1", root_id=root["id"])
    )
    assert status == 201 and reply["root_id"] == root["id"]
    # A reply is not a root: Mattermost's own comment replies get lost exactly like this.
    status, err, _ = await call(
        w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "r2", root_id=reply["id"])
    )
    assert status == 400 and err["id"] == "api.post.create_post.root_id.app_error"
    assert "Invalid RootId" in err["message"]
    status, err, _ = await call(
        w, "POST", "/api/v4/posts", body=create(w, w.private["id"], "x", root_id=root["id"])
    )
    assert status == 400 and err["id"] == "api.post.create_post.channel_root_id.app_error"
    status, err, _ = await call(
        w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "x", root_id=new_id())
    )
    assert status == 400 and err["id"] == "api.post.create_post.root_id.app_error"
    with pytest.raises(ApiError, match="Invalid RootId"):
        w.mm.post(w.alice["id"], w.town["id"], "x", root_id=reply["id"])


async def test_message_length_limit_in_runes(emulator: World) -> None:
    w = emulator
    ok = create(w, w.town["id"], "é" * 16383)  # 32766 bytes: the limit counts runes
    assert (await call(w, "POST", "/api/v4/posts", body=ok))[0] == 201
    status, err, _ = await call(
        w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "x" * 16384)
    )
    assert status == 400 and list(err) == ERROR_KEYS
    w.mm.settings["MaxPostSize"] = 10
    assert (await call(w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "x" * 11)))[
        0
    ] == 400


async def test_pending_post_id_deduplicates_retries(emulator: World) -> None:
    w = emulator
    body = create(w, w.town["id"], "once", pending_post_id=f"{w.bot['id']}:123")
    first = await call(w, "POST", "/api/v4/posts", body=body)
    second = await call(w, "POST", "/api/v4/posts", body=body)
    assert first[0] == second[0] == 201
    assert first[1]["id"] == second[1]["id"]
    assert first[1]["pending_post_id"] == f"{w.bot['id']}:123"
    assert len(w.mm.posts_in(w.town["id"])) == 1
    other = await call(w, "POST", "/api/v4/posts", body={**body, "pending_post_id": "other"})
    assert other[1]["id"] != first[1]["id"]


async def test_patch_get_delete_and_react(emulator: World) -> None:
    w = emulator
    post = (await call(w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "v1")))[1]
    status, edited, _ = await call(
        w, "PUT", f"/api/v4/posts/{post['id']}/patch", body={"message": "v2"}
    )
    assert status == 200 and edited["message"] == "v2"
    assert edited["edit_at"] == edited["update_at"] >= post["create_at"] and edited["edit_at"] > 0
    assert (
        await call(
            w, "PUT", f"/api/v4/posts/{post['id']}/patch", user="alice", body={"message": "x"}
        )
    )[0] == 403
    status, got, _ = await call(w, "GET", f"/api/v4/posts/{post['id']}", user="alice")
    assert status == 200 and got["message"] == "v2"
    reaction_body = {"user_id": w.alice["id"], "post_id": post["id"], "emoji_name": "+1"}
    status, reaction, _ = await call(
        w, "POST", "/api/v4/reactions", user="alice", body=reaction_body
    )
    assert status == 200
    assert {k: reaction[k] for k in ("user_id", "post_id", "emoji_name", "channel_id")} == {
        **reaction_body,
        "channel_id": w.town["id"],
    }
    assert (await call(w, "POST", "/api/v4/reactions", user="bob", body=reaction_body))[0] == 403
    assert w.mm.get_post(post["id"])["has_reactions"] is True
    assert (await call(w, "DELETE", f"/api/v4/posts/{post['id']}"))[0] == 200
    assert (await call(w, "GET", f"/api/v4/posts/{post['id']}"))[0] == 404


async def test_posts_since_new_edited_deleted_and_roots(emulator: World) -> None:
    w = emulator
    mm = w.mm
    old_root = mm.post(w.alice["id"], w.town["id"], "old root", create_at=1_000)
    old_reply = mm.post(
        w.bob["id"], w.town["id"], "old reply", root_id=old_root["id"], create_at=1_001
    )
    to_edit = mm.post(w.alice["id"], w.town["id"], "to edit", create_at=1_002)
    to_delete = mm.post(w.alice["id"], w.town["id"], "to delete", create_at=1_003)
    untouched = mm.post(w.alice["id"], w.town["id"], "untouched", create_at=1_004)
    since = 1_004
    new = mm.post(w.bob["id"], w.town["id"], "new")
    mm.edit(to_edit["id"], "edited")
    mm.delete(to_delete["id"])
    mm.react(w.alice["id"], old_reply["id"], "tada")  # moves the reply, not its root
    status, listing, _ = await call(
        w, "GET", f"/api/v4/channels/{w.town['id']}/posts?since={since}"
    )
    assert status == 200
    assert set(listing) >= {"order", "posts", "next_post_id", "prev_post_id", "has_next"}
    posts = listing["posts"]
    order = listing["order"]
    assert untouched["id"] not in posts
    for wanted in (new, to_edit, to_delete, old_reply):
        assert wanted["id"] in order
    assert old_root["id"] in posts and old_root["id"] not in order  # root only for context
    assert posts[to_edit["id"]]["message"] == "edited" and posts[to_edit["id"]]["edit_at"] > 0
    assert posts[to_delete["id"]]["delete_at"] > 0
    # The edit left its history copy behind, a deleted post pointing at the original.
    history = [p for p in posts.values() if p["original_id"] == to_edit["id"]]
    assert len(history) == 1 and history[0]["message"] == "to edit" and history[0]["delete_at"]
    creates = [posts[i]["create_at"] for i in order]
    assert creates == sorted(creates, reverse=True)  # newest first
    assert all(posts[i]["update_at"] > since for i in order)


async def test_a_reply_moves_its_root_into_since(emulator: World) -> None:
    w = emulator
    root = w.mm.post(w.alice["id"], w.town["id"], "root", create_at=5_000)
    reply = w.mm.post(w.alice["id"], w.town["id"], "reply", root_id=root["id"])
    listing = (await call(w, "GET", f"/api/v4/channels/{w.town['id']}/posts?since=5000"))[1]
    assert listing["order"] == [reply["id"], root["id"]]
    assert listing["posts"][root["id"]]["update_at"] == reply["create_at"]


async def test_posts_since_is_capped_at_1000(emulator: World) -> None:
    w = emulator
    ids = [
        w.mm.post(w.alice["id"], w.town["id"], f"m{i}", create_at=10_000 + i)["id"]
        for i in range(1005)
    ]
    listing = (await call(w, "GET", f"/api/v4/channels/{w.town['id']}/posts?since=1"))[1]
    assert len(listing["order"]) == 1000 and len(listing["posts"]) == 1000
    assert set(listing["order"]) == set(ids[:1000])  # our choice: the oldest 1000


async def test_posts_page_without_since(emulator: World) -> None:
    w = emulator
    ids = [w.mm.post(w.alice["id"], w.town["id"], f"m{i}")["id"] for i in range(3)]
    listing = (await call(w, "GET", f"/api/v4/channels/{w.town['id']}/posts?per_page=2"))[1]
    assert listing["order"] == [ids[2], ids[1]]


async def test_client_config_old_format(emulator: World) -> None:
    w = emulator
    status, config, _ = await call(w, "GET", "/api/v4/config/client?format=old", user=None)
    assert status == 200
    assert config["EnablePostUsernameOverride"] == "false"
    assert config["EnablePostIconOverride"] == "false"
    assert config["Version"] == "10.5.0"
    w.mm.settings["EnablePostUsernameOverride"] = True
    config = (await call(w, "GET", "/api/v4/config/client?format=old"))[1]
    assert config["EnablePostUsernameOverride"] == "true"
    assert (await call(w, "GET", "/api/v4/config/client"))[0] == 501


async def test_rate_limit_429_plain_text_with_retry_after(emulator: World) -> None:
    w = emulator
    w.mm.settings.update(RateLimitEnable=True, RateLimitPerSec=1, RateLimitMaxBurst=2)
    statuses = []
    limited = None
    for _ in range(6):
        status, body, resp = await call(w, "GET", "/api/v4/users/me")
        statuses.append(status)
        assert resp.headers["X-RateLimit-Limit"] == "3"
        if status == 429:
            limited = (body, resp)
            break
        assert int(resp.headers["X-RateLimit-Remaining"]) >= 0
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
    assert limited is not None
    body, resp = limited
    assert body == "limit exceeded\n" and resp.content_type == "text/plain"
    assert int(resp.headers["Retry-After"]) >= 1
    assert int(resp.headers["X-RateLimit-Reset"]) >= 1


async def test_fail_next_and_rest_calls(emulator: World) -> None:
    w = emulator
    w.mm.fail_next(2, 503, method="POST", path_prefix="/api/v4/posts")
    assert (await call(w, "GET", "/api/v4/users/me"))[0] == 200  # not matched
    for _ in range(2):
        status, err, _ = await call(w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "x"))
        assert status == 503 and list(err) == ERROR_KEYS
    assert (await call(w, "POST", "/api/v4/posts", body=create(w, w.town["id"], "x")))[0] == 201
    assert w.mm.rest_calls == [("GET", "/api/v4/users/me")] + [("POST", "/api/v4/posts")] * 3


async def test_delay_responses(emulator: World) -> None:
    w = emulator
    w.mm.delay_responses(5.0)
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(w.mm.url + "/api/v4/users/me", headers=w.auth())
    w.mm.delay_responses(0)
    assert (await call(w, "GET", "/api/v4/users/me"))[0] == 200


async def test_unknown_route_is_json_501(emulator: World) -> None:
    status, err, _ = await call(emulator, "GET", "/api/v4/no/such/thing")
    assert status == 501 and list(err) == ERROR_KEYS


async def test_mattermostdriver_logs_in_and_posts(emulator: World) -> None:
    w = emulator
    port = int(w.mm.url.rsplit(":", 1)[1])
    driver = Driver(
        {
            "url": "127.0.0.1",
            "port": port,
            "scheme": "http",
            "token": w.bot_token,
            "basepath": "/api/v4",
        }
    )
    me = await asyncio.to_thread(driver.login)
    assert me["id"] == w.bot["id"]
    assert (await asyncio.to_thread(driver.users.get_user, "me"))["username"] == "sidecar-bot"
    post = await asyncio.to_thread(
        driver.posts.create_post, {"channel_id": w.town["id"], "message": "from the driver"}
    )
    assert [p["id"] for p in w.mm.posts_in(w.town["id"])] == [post["id"]]
    assert post["props"]["from_bot"] == "true"


async def test_control_surface_over_http(emulator: World) -> None:
    w = emulator
    async with aiohttp.ClientSession() as session:
        body = {
            "username": "alice",
            "team": "someteam",
            "channel_name": "town-square",
            "message": "hi",
        }
        async with session.post(w.mm.url + "/_emulator/posts", json=body) as resp:
            assert resp.status == 201
            post = await resp.json()
        async with session.put(
            w.mm.url + f"/_emulator/posts/{post['id']}", json={"message": "hey"}
        ) as resp:
            assert resp.status == 200
        async with session.get(w.mm.url + "/_emulator/state") as resp:
            state = await resp.json()
        async with session.post(
            w.mm.url + "/_emulator/posts", json={**body, "username": "nobody"}
        ) as resp:
            assert resp.status == 400
    assert [p["message"] for p in w.mm.posts_in(w.town["id"])] == ["hey"]
    bot = next(u for u in state["users"] if u["username"] == "sidecar-bot")
    assert bot["tokens"] == [w.bot_token]
    town = next(c for c in state["channels"] if c["id"] == w.town["id"])
    assert set(town["members"]) == {w.alice["id"], w.bob["id"], w.ci["id"], w.bot["id"]}


SEED = """
[settings]
EnablePostUsernameOverride = true

[[users]]
username = "alice"

[[bots]]
username = "sidecar-bot"
token = "fixedtokenfixedtokenfixedt"

[[teams]]
name = "someteam"

[[channels]]
team = "someteam"
name = "town-square"

[[channels]]
team = "someteam"
name = "secret"
type = "P"
members = ["sidecar-bot"]

[[channels]]
type = "D"
members = ["alice", "sidecar-bot"]
"""


async def test_seed_file(tmp_path: Path) -> None:
    path = tmp_path / "seed.toml"
    path.write_text(SEED)
    async with Emulator() as mm:
        tokens = apply_seed(mm, load_seed(path))
        assert tokens["sidecar-bot"] == "fixedtokenfixedtokenfixedt"
        assert mm.settings["EnablePostUsernameOverride"] is True
        types = sorted(c.type for c in mm.store.channels.values())
        assert types == ["D", "O", "P"]
        town = next(c for c in mm.store.channels.values() if c.name == "town-square")
        assert len(town.members) == 2  # default: every team member
    json_path = tmp_path / "seed.json"
    json_path.write_text(json.dumps({"users": [{"username": "zed"}]}))
    assert load_seed(json_path) == {"users": [{"username": "zed"}]}


async def test_runs_as_a_process(tmp_path: Path) -> None:
    path = tmp_path / "seed.toml"
    path.write_text(SEED)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "emulator",  # the product's command; same as python -m sidecar.testing
        "--port",
        "0",
        "--seed",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = first.rsplit(" ", 1)[1].strip()
        lines = [(await proc.stdout.readline()).decode() for _ in range(2)]
        assert any("fixedtokenfixedtokenfixedt" in line for line in lines)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                url + "/api/v4/users/me",
                headers={"Authorization": "Bearer fixedtokenfixedtokenfixedt"},
            ) as resp,
        ):
            assert (await resp.json())["username"] == "sidecar-bot"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_posts_in_the_same_millisecond(emulator: World) -> None:
    w = emulator
    a = w.mm.post(w.alice["id"], w.town["id"], "a", create_at=7_000)
    b = w.mm.post(w.bob["id"], w.town["id"], "b", create_at=7_000)
    assert a["id"] != b["id"]
    assert [p["id"] for p in w.mm.posts_in(w.town["id"])] == [a["id"], b["id"]]
    listing = (await call(w, "GET", f"/api/v4/channels/{w.town['id']}/posts?since=6999"))[1]
    assert set(listing["order"]) == {a["id"], b["id"]}


async def test_channel_listing_is_for_oneself_and_team_members(emulator: World) -> None:
    w = emulator
    team = w.team["id"]
    assert (await call(w, "GET", f"/api/v4/users/{w.alice['id']}/teams/{team}/channels"))[0] == 403
    other = w.mm.create_team("otherteam")
    assert (await call(w, "GET", f"/api/v4/users/me/teams/{other['id']}/channels"))[0] == 403
