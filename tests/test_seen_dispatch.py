"""Processed keys beyond memory: the dispatcher and catch-up ask the table for evicted keys, and
a start-up loads only the newest keys (fakes; tests/test_state.py has the real backends)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from fakes import ALICE, BOT, CHANNEL, TEAM, FakeRest, FakeState, RecordingOutbox, config, metrics

from sidecar import seen
from sidecar.catchup import collect, reaction_key
from sidecar.dispatch import Dispatcher
from sidecar.events import Posted, ReactionAdded
from sidecar.models import Post, Reaction
from sidecar.retry import NO_WAIT
from sidecar.rules import RuleSet
from sidecar.runtime import Live, Runtime

NOW = 1_800_000_000_000
CAP = 2
EVENTS = ["posted", "reaction_added"]


@pytest.fixture(autouse=True)
def tiny_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seen, "SEEN_IN_MEMORY", CAP)


def dispatcher(rest: FakeRest, state: FakeState, outbox: RecordingOutbox) -> Dispatcher:
    """A dispatcher started as the daemon starts: the newest SEEN_IN_MEMORY keys loaded."""
    rest.now_ms = NOW + 10_000  # after every post here (a key stamped later is kept)
    return Dispatcher(
        rest=cast(Any, rest),
        state=cast(Any, state),
        outbox=cast(Any, outbox),
        metrics=metrics(),
        live=Live(Runtime.build(config(events=EVENTS), bot_user_id=BOT.id)),
        me=BOT,
        snapshot=state.snapshot(seen_limit=seen.SEEN_IN_MEMORY),
        retry=NO_WAIT,
    )


def post(n: int, *, at: int | None = None, reactions: tuple[Reaction, ...] = ()) -> Post:
    at = NOW + n if at is None else at
    return Post(
        id=f"p{n:025d}",
        channel_id=CHANNEL.id,
        user_id=ALICE.id,
        create_at=at,
        update_at=at,
        reactions=reactions,
    )


def posted(p: Post) -> Posted:
    return Posted(p, CHANNEL.type, CHANNEL.name, TEAM.id)


def reaction(p: Post, at: int) -> Reaction:
    return Reaction(user_id=ALICE.id, post_id=p.id, emoji_name="tada", create_at=at)


async def test_memory_is_bounded_and_an_evicted_post_is_answered_by_the_table() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    d = dispatcher(rest, state, outbox)
    for n in range(50):
        await d.dispatch(posted(post(n)))
    assert len(outbox.jobs) == 50
    # Before the bound memory held all 50 keys (every key of the catch-up window).
    assert len(d.progress.seen) <= CAP + 1 and post(0).id not in d.progress.seen
    assert state.lookups == []  # new posts, all after the floor: memory answered alone
    await d.dispatch(posted(post(0)))  # a replay (a resume repeating what we had)
    assert len(outbox.jobs) == 50
    assert state.lookups == [[post(0).id]]


async def test_a_reaction_added_again_is_asked_of_the_table_by_its_posts_time() -> None:
    """A reaction removed and added again has the key of the first one, recorded at the first
    one's time: the key is looked up from its post's create_at, not the new reaction's time
    (which is after the floor: memory alone would have said "new", and it fired twice)."""
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    first = post(0)
    rest.posts[first.id] = first
    d = dispatcher(rest, state, outbox)
    await d.dispatch(ReactionAdded(reaction(first, NOW + 1)))
    for n in range(1, 6):
        await d.dispatch(posted(post(n)))
    assert d.progress.seen.floor > NOW + 1  # the reaction's key was evicted
    await d.dispatch(ReactionAdded(reaction(first, NOW + 100)))
    assert [j.event for j in outbox.jobs].count("reaction_added") == 1
    assert state.lookups == [[reaction_key(reaction(first, NOW + 1))]]


async def test_catch_up_asks_the_table_once_per_channel_for_the_evicted_keys() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    d = dispatcher(rest, state, outbox)
    for n in range(10):
        await d.dispatch(posted(post(n)))
    # The server repeats the channel's posts since an old cursor, a new post, and one
    # stamped before the floor but after the cursor (a client's clock): it is due as well.
    state.cursors[CHANNEL.id] = NOW - 100
    d.progress.cursors[CHANNEL.id] = NOW - 100
    backdated = post(20, at=NOW - 50)
    rest.since_pages = [[post(n) for n in range(11)] + [backdated]]
    assert await d.catch_up() == 2
    assert [j.post_id for j in outbox.jobs][10:] == [backdated.id, post(10).id]  # oldest first
    # One batched lookup for the keys below the floor, none again while processing them.
    assert len(state.lookups) == 1
    assert {post(0).id, backdated.id} <= set(state.lookups[0])
    assert post(10).id not in state.lookups[0]  # after the floor: surely new


async def test_a_restart_loads_the_newest_keys_and_an_older_one_is_still_deduplicated() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    d = dispatcher(rest, state, outbox)
    for n in range(10):
        await d.dispatch(posted(post(n)))
    restarted = dispatcher(rest, state, outbox)
    assert set(restarted.progress.seen) == {post(9).id, post(8).id}
    assert restarted.progress.seen.floor == NOW + 8
    await restarted.dispatch(posted(post(3)))
    await restarted.dispatch(posted(post(9)))
    assert len(outbox.jobs) == 10
    assert state.lookups == [[post(3).id]]  # post 9: memory answered


async def test_collect_asks_with_each_keys_earliest_recorded_time() -> None:
    """What catch-up asks ``seen`` about: the keys it would fire, each with a lower bound of
    the time it was recorded with (a reaction: its post's create_at)."""
    old = post(1, at=NOW - 50)
    p = post(2, reactions=(reaction(post(2), NOW + 5),))
    asked: list[tuple[str, int]] = []

    async def check(pairs: Any) -> set[str]:
        asked.extend(pairs)
        return {p.id}

    cfg = config(events=EVENTS)
    found = await collect(
        cast(Any, FakeRest(since_pages=[[old, p]])),
        RuleSet(cfg.webhooks, bot_user_id=BOT.id),
        cursors={},
        default_cursor=NOW - 100,
        window_start=0,
        seen=check,
        channels=[(CHANNEL, TEAM)],
    )
    assert asked == [(old.id, NOW - 50), (p.id, NOW + 2), (reaction_key(p.reactions[0]), NOW + 2)]
    assert [item.name for item in found.items] == ["posted", "reaction_added"]
