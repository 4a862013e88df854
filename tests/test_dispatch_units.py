"""Unit tests of the dispatcher and catch-up against in-memory fakes (tests/fakes.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from fakes import (
    ALICE,
    BOT,
    CHANNEL,
    TEAM,
    FakeRest,
    FakeState,
    RecordingOutbox,
    config,
    metrics,
    nothing_seen,
)

from sidecar.catchup import PAGE_LIMIT, _posts_page, collect
from sidecar.dispatch import Dispatcher
from sidecar.errors import BadAnswer, MattermostError, Unauthorized
from sidecar.events import Posted, PostEdited, ReactionAdded
from sidecar.models import Post, Reaction
from sidecar.retry import NO_WAIT
from sidecar.rules import RuleSet
from sidecar.runtime import Live, Runtime

NOW = 1_800_000_000_000


def dispatcher(rest: FakeRest, state: FakeState, outbox: RecordingOutbox) -> Dispatcher:
    cfg = config()
    return Dispatcher(
        rest=cast(Any, rest),
        state=cast(Any, state),
        outbox=cast(Any, outbox),
        metrics=metrics(),
        live=Live(Runtime.build(cfg, bot_user_id=BOT.id)),
        me=BOT,
        snapshot=state.snapshot(),
        retry=NO_WAIT,
    )


def post(n: int, *, user: str = ALICE.id, at: int = NOW) -> Post:
    return Post(id=f"p{n:025d}", channel_id=CHANNEL.id, user_id=user, create_at=at, update_at=at)


def posted(p: Post) -> Posted:
    return Posted(post=p, channel_type="", channel_name="", team_id="")


async def test_a_post_is_matched_and_its_job_enqueued_with_the_cursor() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    state.cursors[CHANNEL.id] = NOW - 1
    d = dispatcher(rest, state, outbox)
    await d.dispatch(posted(post(1)))
    assert [j.url for j in outbox.jobs] == ["https://hooks.example.com/hook"]
    assert state.jobs == outbox.jobs  # recorded before handed over
    assert state.cursors[CHANNEL.id] == NOW and post(1).id in state.seen
    await d.dispatch(posted(post(1)))  # the same post again (a resume's replay)
    assert len(outbox.jobs) == 1


async def test_a_lookup_is_retried_while_the_server_fails_then_the_post_fires() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    rest.failures["channel"] = [MattermostError("503", status=503) for _ in range(5)]
    d = dispatcher(rest, state, outbox)
    await d.dispatch(posted(post(1)))
    assert rest.calls.count("channel") == 6
    assert len(outbox.jobs) == 1


async def test_a_lookup_refused_for_good_skips_the_post() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    rest.failures["channel"] = [MattermostError("403", status=403)]
    d = dispatcher(rest, state, outbox)
    await d.dispatch(posted(post(1)))
    assert rest.calls.count("channel") == 1
    assert outbox.jobs == []


async def test_unauthorized_in_a_lookup_is_raised_not_retried() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    rest.failures["channel"] = [Unauthorized("401", status=401)]
    d = dispatcher(rest, state, outbox)
    with pytest.raises(Unauthorized):
        await d.dispatch(posted(post(1)))
    assert rest.calls.count("channel") == 1


async def test_the_bots_own_post_fires_nothing_but_moves_the_cursor() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    state.cursors[CHANNEL.id] = NOW - 10
    d = dispatcher(rest, state, outbox)
    await d.dispatch(posted(post(1, user=BOT.id, at=NOW - 5)))
    assert outbox.jobs == [] and "channel" not in rest.calls
    assert state.cursors[CHANNEL.id] == NOW - 5
    await d.dispatch(posted(post(2, user=BOT.id, at=NOW + 10**6)))  # stamped in the future
    assert state.cursors[CHANNEL.id] == NOW  # never past the server's now


def full_page() -> list[Post]:
    return [post(n, at=NOW - 10) for n in range(PAGE_LIMIT)]


async def test_a_malformed_posts_page_after_a_full_page_is_a_bad_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fallback walk after a full page: a page of the wrong shape is not retryable, so
    the channel is skipped (its cursor stays; the next gap tries again), not raised."""
    rest = FakeRest(since_pages=[full_page()], pages=[{"order": "not a list", "posts": {}}])
    cfg = config()
    found = await collect(
        cast(Any, rest),
        RuleSet(cfg.webhooks, bot_user_id=BOT.id),
        cursors={},
        default_cursor=NOW - 100,
        window_start=0,
        seen=nothing_seen,
        channels=[(CHANNEL, TEAM)],
    )
    assert found.items == [] and found.channels == 1  # the channel is skipped, as one refused
    assert "catch-up skipped channel town-square: posts page: bad PostList shape" in caplog.text
    with pytest.raises(BadAnswer):
        await _posts_page(cast(Any, FakeRest(pages=[[]])), CHANNEL.id, 0)


@pytest.mark.parametrize(
    "page", [[], {"order": "x", "posts": {}}, {"order": ["a"], "posts": {"a": 1}}]
)
async def test_catch_up_gives_up_on_a_malformed_page_instead_of_retrying_forever(
    page: Any,
) -> None:
    # Before the fix a malformed page was a retryable error: catch_up asked again and again
    # (here until the fake's three scripted full pages ran out).
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    state.cursors[CHANNEL.id] = NOW - 100
    rest.since_pages, rest.pages = [full_page()] * 3, [page] * 3
    d = dispatcher(rest, state, outbox)
    assert await d.catch_up() == 0
    assert rest.calls.count("call") == 1
    assert outbox.jobs == []


async def test_catch_up_retries_a_temporary_failure_then_processes_what_it_found() -> None:
    rest, state, outbox = FakeRest(), FakeState(), RecordingOutbox()
    state.cursors[CHANNEL.id] = NOW - 100
    rest.failures["posts_since"] = [MattermostError("502", status=502)]
    rest.since_pages = [[post(1, at=NOW - 50)]]
    d = dispatcher(rest, state, outbox)
    assert await d.catch_up() == 1
    assert rest.calls.count("posts_since") == 2
    assert [j.post_id for j in outbox.jobs] == [post(1).id]


async def test_catch_up_yields_the_websocket_s_typed_events() -> None:
    """A post, its edit and a reaction found over REST come back as ``Posted``, ``PostEdited``
    and ``ReactionAdded`` (with the post, channel and team REST gave), oldest first."""
    reaction = Reaction(user_id=ALICE.id, post_id=post(1).id, emoji_name="+1", create_at=NOW + 5)
    edited = Post(
        id=post(1).id,
        channel_id=CHANNEL.id,
        user_id=ALICE.id,
        create_at=NOW,
        update_at=NOW + 5,
        edit_at=NOW + 3,
        reactions=(reaction,),
    )
    cfg = config(events=["posted", "post_edited", "reaction_added"])
    found = await collect(
        cast(Any, FakeRest(since_pages=[[edited]])),
        RuleSet(cfg.webhooks, bot_user_id=BOT.id),
        cursors={},
        default_cursor=NOW - 100,
        window_start=0,
        seen=nothing_seen,
        channels=[(CHANNEL, TEAM)],
    )
    assert [item.event for item in found.items] == [
        Posted(edited, CHANNEL.type, CHANNEL.name, CHANNEL.team_id),
        PostEdited(edited),
        ReactionAdded(reaction),
    ]
    assert [item.name for item in found.items] == ["posted", "post_edited", "reaction_added"]
    assert all((i.post, i.channel, i.team) == (edited, CHANNEL, TEAM) for i in found.items)
    assert [item.reaction for item in found.items] == [None, None, reaction]


class ReloadingRest(FakeRest):
    """Swaps ``live.runtime`` for ``then`` during the first channel lookup (a SIGHUP then)."""

    def __init__(self, live: Live, then: Runtime) -> None:
        super().__init__()
        self.live, self.then = live, then

    async def channel(self, channel_id: str) -> Any:
        if self.live.runtime is not self.then:
            self.live.runtime = self.then
        return await super().channel(channel_id)


async def test_an_event_is_matched_with_the_runtime_current_when_it_started() -> None:
    state, outbox = FakeState(), RecordingOutbox()
    state.cursors[CHANNEL.id] = NOW - 1
    live = Live(Runtime.build(config(), bot_user_id=BOT.id))
    elsewhere = Runtime.build(config(channels=["elsewhere"]), bot_user_id=BOT.id)
    rest = ReloadingRest(live, elsewhere)
    d = Dispatcher(
        rest=cast(Any, rest),
        state=cast(Any, state),
        outbox=cast(Any, outbox),
        metrics=metrics(),
        live=live,
        me=BOT,
        snapshot=state.snapshot(),
        retry=NO_WAIT,
    )
    await d.dispatch(posted(post(1)))  # the reload lands during its channel lookup
    assert live.runtime is elsewhere
    assert len(outbox.jobs) == 1  # matched with the rules it started with
    await d.dispatch(posted(post(2)))  # the next event: the new rules (not this channel)
    assert len(outbox.jobs) == 1


class FullOutbox(RecordingOutbox):
    """An outbox holding its backlog: ``room`` waits until the test frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.has_room = False
        self.waiting = asyncio.Event()
        self.freed = asyncio.Event()

    async def room(self) -> None:
        self.waiting.set()
        await self.freed.wait()
        self.has_room = True


async def test_a_full_outbox_makes_the_dispatcher_wait_before_it_hands_over() -> None:
    """Backpressure: a burst (or a long catch-up) is handed over at the pace of deliveries,
    not turned into one task per job at once."""
    rest, state, outbox = FakeRest(), FakeState(), FullOutbox()
    d = dispatcher(rest, state, outbox)
    task = asyncio.create_task(d.dispatch(posted(post(1))))
    await outbox.waiting.wait()
    assert outbox.jobs == [] and post(1).id not in state.seen  # nothing handed over yet
    outbox.freed.set()
    await task
    assert len(outbox.jobs) == 1 and post(1).id in state.seen
