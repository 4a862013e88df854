"""How far processing got: the start position, each channel's cursor, the processed keys.

Every position is server time (ms). A channel's cursor is the ``create_at`` of its last
processed post, never past the server's now (a post stamped in the future must not make
catch-up skip what is posted until real time reaches it); a channel without one is caught up
from the start position (where processing began), never from another channel's cursor. The
processed keys (a post id, one edit, one reaction) make catch-up and replays exactly-once:
memory holds the newest of them (``seen.SeenKeys``, bounded), the state's ``seen`` table all of
the catch-up window; a key older than what memory surely holds is asked of the table.
Every change is written through the state backend, in the same transaction as its jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container, Sequence

from sidecar import seen
from sidecar.backend import StateBackend
from sidecar.models import Post
from sidecar.state import Job, Snapshot


class Progress:
    """The dispatcher's memory of what it processed (loaded from a snapshot, kept written)."""

    def __init__(
        self, snapshot: Snapshot, state: StateBackend, server_now: Callable[[], int]
    ) -> None:
        self._state = state
        self._now = server_now
        self.seen = seen.SeenKeys(
            snapshot.seen, floor=snapshot.seen_floor, cap=seen.SEEN_IN_MEMORY, now=server_now
        )
        self.fresh = snapshot.fresh and not snapshot.cursors and snapshot.start is None
        # A file without a saved start (from before it was kept) falls back to its oldest cursor.
        position = snapshot.start
        if position is None:
            position = min(snapshot.cursors.values(), default=server_now())
        self.position = position
        # No cursor is older than the start: one that is (0, written for an edit or a reaction
        # by versions that did not keep the start position) would make catch-up replay that
        # channel's history.
        self.cursors = {k: max(v, position) for k, v in snapshot.cursors.items()}

    def begin_now(self) -> None:
        """The very first start: processing begins at the server's present, saved so that a
        restart catches up from here even if nothing was processed meanwhile."""
        self.fresh = False
        self.position = self._now()
        self._state.record_start(self.position)

    def cursor(self, channel_id: str) -> int:
        """Where a catch-up of this channel starts."""
        return self.cursors.get(channel_id, self.position)

    def cursor_after(self, post: Post) -> int:
        """The channel's cursor once ``post`` is processed: never past the server's now."""
        return max(self.cursor(post.channel_id), min(post.create_at, self._now()))

    def passed(self, post: Post) -> None:
        """A post that fires nothing: move the cursor past it, so catch-up does not refetch it."""
        cursor = self.cursor_after(post)
        if cursor > self.cursors.get(post.channel_id, cursor - 1):
            self.cursors[post.channel_id] = cursor
            self._state.record_position(post.channel_id, cursor, [], post.create_at)

    def record(
        self, jobs: Sequence[Job], post: Post, key: str, at: int, *, posted: bool
    ) -> asyncio.Future[None]:
        """Remember ``key`` (as of ``at``), move the cursor for a new post, and write both with
        the event's jobs in one transaction. A channel whose first event is an edit or a
        reaction gets the start position as its cursor (never 0)."""
        if posted:
            self.cursors[post.channel_id] = self.cursor_after(post)
        cursor = self.cursor(post.channel_id)
        committed = self._state.record(jobs, post.channel_id, cursor, [key], at)
        self.seen.record(key, at, committed)
        return committed

    async def processed(self, key: str, since: int) -> bool:
        """Whether ``key`` was processed; ``since``: a lower bound of the time it would have
        been recorded with (see ``seen``). Memory first; the table only below its floor."""
        if key in self.seen:
            return True
        return self.seen.unsure(since) and bool(await self._state.seen_among([key]))

    async def processed_among(self, asked: Sequence[tuple[str, int]]) -> Container[str]:
        """Which of the ``(key, since)`` pairs were processed: memory, then one batched
        lookup in the table for the keys below the floor."""
        known = self.seen
        found = {key for key, _ in asked if key in known}
        unsure = [key for key, since in asked if key not in found and known.unsure(since)]
        if unsure:
            found.update(await self._state.seen_among(unsure))
        return found

    def prune(self, horizon: int) -> None:
        """Forget processed keys older than ``horizon`` (ms), in memory and on disk."""
        self.seen.prune(horizon)
        self._state.prune_seen(horizon)
