"""The emulator's public-channel routes and events, as the server has them."""

from __future__ import annotations

from typing import Any

import aiohttp

from harness import World
from tests.test_emulator_ws import hello, recv


async def call(
    world: World, method: str, path: str, user: str = "sidecar-bot", **kw: Any
) -> tuple[int, Any]:
    url = world.mm.url + "/api/v4" + path
    async with (
        aiohttp.ClientSession(headers=world.auth(user)) as s,
        s.request(method, url, **kw) as resp,
    ):
        return resp.status, await resp.json()


async def test_team_channels_lists_live_public_channels_by_page(emulator: World) -> None:
    mm, team = emulator.mm, emulator.team["id"]
    for name in ("b-two", "a-one", "c-three"):
        mm.create_channel(team, name, "O")
    gone = mm.create_channel(team, "d-gone", "O")
    mm.public.archive(gone["id"])
    path = f"/teams/{team}/channels"
    status, first = await call(emulator, "GET", path, params={"page": "0", "per_page": "2"})
    assert status == 200
    _, second = await call(emulator, "GET", path, params={"page": "1", "per_page": "2"})
    _, rest = await call(emulator, "GET", path, params={"page": "2", "per_page": "2"})
    names = [c["name"] for c in first + second + rest]
    # Public only (not private-room, not secret), not archived, by display name.
    assert names == ["a-one", "b-two", "c-three", "dev", "town-square"]
    outsider = mm.create_user("outsider")
    emulator.tokens["outsider"] = mm.create_token(outsider["id"])
    status, body = await call(emulator, "GET", path, user="outsider")
    assert (status, body["id"]) == (403, "api.context.permissions.app_error")


async def test_join_answers_201_posts_the_message_and_tells_the_members(emulator: World) -> None:
    mm, bot = emulator.mm, emulator.bot
    channel = mm.create_channel(emulator.team["id"], "news", "O", members=[emulator.alice["id"]])
    ws, _ = await hello(emulator, "alice")
    async with ws:
        status, member = await call(
            emulator, "POST", f"/channels/{channel['id']}/members", json={"user_id": bot["id"]}
        )
        assert status == 201
        assert (member["channel_id"], member["user_id"]) == (channel["id"], bot["id"])
        added = await recv(ws)
        assert added["event"] == "user_added"
        assert added["data"] == {"team_id": emulator.team["id"], "user_id": bot["id"]}
        assert added["broadcast"]["channel_id"] == channel["id"]
        posted = await recv(ws)
        assert posted["event"] == "posted"
        assert '"type":"system_join_channel"' in posted["data"]["post"]
        assert "sidecar-bot joined the channel." in posted["data"]["post"]
    # Again: already a member, 201 and nothing new.
    status, _ = await call(
        emulator, "POST", f"/channels/{channel['id']}/members", json={"user_id": bot["id"]}
    )
    assert status == 201
    assert len(mm.posts_in(channel["id"])) == 1


async def test_join_refusals(emulator: World) -> None:
    mm, bot = emulator.mm, emulator.bot
    private = mm.create_channel(emulator.team["id"], "closed", "P", members=[emulator.alice["id"]])
    public = mm.create_channel(emulator.team["id"], "open", "O")
    body = {"user_id": bot["id"]}
    status, err = await call(emulator, "POST", f"/channels/{private['id']}/members", json=body)
    assert (status, err["id"]) == (403, "api.context.permissions.app_error")
    mm.public.refuse_joins(bot["id"])
    status, _ = await call(emulator, "POST", f"/channels/{public['id']}/members", json=body)
    assert status == 403
    mm.public.refuse_joins(bot["id"], False)
    mm.public.archive(public["id"])
    status, err = await call(emulator, "POST", f"/channels/{public['id']}/members", json=body)
    assert (status, err["id"]) == (400, "api.channel.add_user_to_channel.deleted.app_error")


async def test_team_is_told_of_conversion_and_restore_but_not_of_creation(
    emulator: World,
) -> None:
    mm, team = emulator.mm, emulator.team["id"]
    ws, _ = await hello(emulator)  # the bot: a team member
    async with ws:
        created = mm.public.create_channel_as(emulator.alice["id"], team, "fresh")
        hidden = mm.create_channel(team, "hidden", "P", members=[emulator.alice["id"]])
        mm.public.convert(hidden["id"])
        frame = await recv(ws)  # no channel_created before it
        assert frame["event"] == "channel_converted"
        assert frame["data"] == {"channel_id": hidden["id"]}
        assert frame["broadcast"]["team_id"] == team
        mm.public.archive(created["id"])
        assert (await recv(ws))["event"] == "channel_deleted"
        mm.public.restore(created["id"])
        frame = await recv(ws)
        assert (frame["event"], frame["data"]) == (
            "channel_restored",
            {"channel_id": created["id"]},
        )
