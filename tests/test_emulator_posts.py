"""``GET /channels/{id}/posts`` paging, collapsed threads,
deletes and the edit history as the server keeps them."""

from __future__ import annotations

from typing import Any

from harness import World
from tests.emulator_helpers import call


async def listing(w: World, query: str) -> dict[str, Any]:
    status, body, _ = await call(w, "GET", f"/api/v4/channels/{w.town['id']}/posts?{query}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def posts(w: World, n: int) -> list[str]:
    """``n`` posts one millisecond apart (the server pages by ``create_at``)."""
    return [
        w.mm.post(w.alice["id"], w.town["id"], f"m{i}", create_at=1_000 + i)["id"] for i in range(n)
    ]


async def test_before_and_after_page_around_a_post(emulator: World) -> None:
    w = emulator
    p = posts(w, 10)
    before = await listing(w, f"before={p[5]}&per_page=2")
    assert before["order"] == [p[4], p[3]]
    assert (before["next_post_id"], before["prev_post_id"]) == (p[5], p[2])
    second = await listing(w, f"before={p[5]}&per_page=2&page=1")
    assert second["order"] == [p[2], p[1]]
    assert (second["next_post_id"], second["prev_post_id"]) == (p[3], p[0])
    after = await listing(w, f"after={p[5]}&per_page=2")
    assert after["order"] == [p[7], p[6]]  # nearest two after it, newest first
    assert (after["next_post_id"], after["prev_post_id"]) == (p[8], p[5])
    last = await listing(w, f"after={p[8]}&per_page=5")
    assert last["order"] == [p[9]] and last["next_post_id"] == ""
    page = await listing(w, "page=1&per_page=3")
    assert page["order"] == [p[6], p[5], p[4]]
    assert (page["next_post_id"], page["prev_post_id"]) == (p[7], p[3])
    assert (await listing(w, "per_page=abc"))["order"] == list(reversed(p))  # default 60


async def test_collapsed_threads_lists_roots_only(emulator: World) -> None:
    w = emulator
    root = w.mm.post(w.alice["id"], w.town["id"], "root", create_at=1_000)
    reply = w.mm.post(w.bob["id"], w.town["id"], "reply", root_id=root["id"], create_at=1_001)
    other = w.mm.post(w.bob["id"], w.town["id"], "other root", create_at=1_002)
    flat = await listing(w, "")
    assert flat["order"] == [other["id"], reply["id"], root["id"]]
    collapsed = await listing(w, "collapsedThreads=true")
    assert collapsed["order"] == [other["id"], root["id"]]
    assert set(collapsed["posts"]) == {other["id"], root["id"]}
    since = await listing(w, f"since={root['create_at'] - 1}&collapsedThreads=true")
    assert set(since["order"]) == {other["id"], root["id"]}
    assert reply["id"] not in since["posts"]


async def test_deleting_a_reply_moves_the_root_deleting_a_root_stamps_replies(
    emulator: World,
) -> None:
    w = emulator
    root = w.mm.post(w.alice["id"], w.town["id"], "root", create_at=1_000)
    reply = w.mm.post(w.bob["id"], w.town["id"], "reply", root_id=root["id"], create_at=1_001)
    mark = w.mm.get_post(root["id"])["update_at"]
    w.mm.delete(reply["id"])
    changed = await listing(w, f"since={mark}")
    assert set(changed["order"]) == {reply["id"], root["id"]}  # the root moved too
    assert changed["posts"][root["id"]]["update_at"] > mark
    again = w.mm.post(w.bob["id"], w.town["id"], "second reply", root_id=root["id"])
    w.mm.delete(root["id"])
    gone = {p["id"]: p for p in w.mm.posts_in(w.town["id"])}
    assert gone[again["id"]]["delete_at"] == gone[again["id"]]["update_at"] > 0
    assert gone[root["id"]]["delete_at"] == gone[root["id"]]["update_at"]


async def test_an_edit_keeps_the_old_version_that_since_returns(emulator: World) -> None:
    w = emulator
    post = w.mm.post(w.alice["id"], w.town["id"], "v1", create_at=1_000)
    w.mm.edit(post["id"], "v2")
    changed = await listing(w, "since=1000")
    old = [p for p in changed["posts"].values() if p["original_id"] == post["id"]]
    assert len(old) == 1 and old[0]["message"] == "v1"
    assert old[0]["delete_at"] == old[0]["update_at"] > 0
    assert changed["posts"][post["id"]]["message"] == "v2"
