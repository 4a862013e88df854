"""Progress: cursors, start position and processed keys (pure bookkeeping over a fake state)."""

from __future__ import annotations

from typing import Any, cast

from fakes import FakeState

from sidecar.models import Post
from sidecar.progress import Progress
from sidecar.state import Snapshot

NOW = 1_800_000_000_000


def progress(
    state: FakeState, *, cursors: dict[str, int] | None = None, start: int | None = None
) -> Progress:
    snap = Snapshot(
        fresh=not cursors and start is None,
        cursors=dict(cursors or {}),
        seen={},
        jobs=[],
        start=start,
    )
    return Progress(snap, cast(Any, state), lambda: NOW)


def post(channel: str, create_at: int) -> Post:
    return Post(id=f"p{create_at}", channel_id=channel, user_id="u", create_at=create_at)


async def test_first_start_begins_at_the_servers_now_and_saves_it() -> None:
    state = FakeState()
    p = progress(state)
    assert p.fresh
    p.begin_now()
    assert (p.fresh, p.position, state.start) == (False, NOW, NOW)
    assert p.cursor("any channel") == NOW


async def test_a_channel_without_a_cursor_starts_at_the_start_not_at_another_channels() -> None:
    p = progress(FakeState(), cursors={"a": NOW - 10}, start=NOW - 500)
    assert p.cursor("b") == NOW - 500


async def test_a_cursor_older_than_the_start_is_raised_to_it() -> None:
    p = progress(FakeState(), cursors={"a": 0}, start=NOW - 500)
    assert p.cursor("a") == NOW - 500


async def test_a_future_stamped_post_moves_the_cursor_only_to_the_servers_now() -> None:
    state = FakeState()
    p = progress(state, start=NOW - 500)
    p.record([], post("a", NOW + 86_400_000), "k", NOW, posted=True)
    assert p.cursors["a"] == NOW and state.cursors["a"] == NOW
    assert dict(p.seen.items()) == {"k": NOW}


async def test_an_edit_as_a_channels_first_event_writes_the_start_as_its_cursor() -> None:
    state = FakeState()
    p = progress(state, start=NOW - 500)
    p.record([], post("a", NOW - 100), "k:e1", NOW - 50, posted=False)
    assert "a" not in p.cursors and state.cursors["a"] == NOW - 500


async def test_a_post_that_fires_nothing_still_moves_the_cursor_once() -> None:
    state = FakeState()
    p = progress(state, start=NOW - 500)
    p.passed(post("a", NOW - 100))
    p.passed(post("a", NOW - 200))  # older: no move, no write
    assert p.cursors["a"] == NOW - 100 and state.cursors["a"] == NOW - 100
