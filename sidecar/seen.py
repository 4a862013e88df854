"""The processed keys held in memory: a bounded cache in front of the state's ``seen`` table.

Every processed key (a post id, one edit, one reaction) is written to the ``seen`` table with
its time ``at`` (server ms) and kept there for the catch-up window. Memory holds only the most
recently recorded ones (``SEEN_IN_MEMORY``, a little more between two evictions) and a
``floor`` (ms) with one invariant:

    every recorded key whose ``at >= floor`` is in memory (unless pruned, see below).

So a key absent from memory is surely new when its time is at or after the floor; only an
older one must be asked of the table. Callers ask with a *lower bound* of the ``at`` the key
may have been recorded with (``since``), never a later time: a post id with the post's
``create_at``, an edit key with its ``edit_at``, a reaction key with its post's ``create_at``
(a reaction removed and added again has the same key, first recorded at the earlier time).

Why the invariant holds, although keys are not recorded in ``at`` order (catch-up, skewed
clocks): the floor only rises. A key leaves memory in two ways. Evicted: the floor becomes
at least its ``at + 1``, so its ``at`` is below the floor from then on. Pruned (``at`` older
than the window): the table prunes the same keys, so the answer "not processed" is the one the
table gives too (and the one memory gave before it was bounded). A key recorded again moves to
the newest place, with its new ``at``.

Only keys whose transaction is committed are evicted (the table must be able to answer for
them). Each record's commit future is kept, in record order, until it is done; the ones still
kept are the newest records, and their keys are among the newest ``len(pending)`` in memory
(memory is ordered by the last record of each key), so only keys before those are evicted.
A future that fails (``StateWriteError``, ``Fenced``) is never passed: nothing is evicted after
it, and the daemon exits (or stands down) anyway. Costs: O(1) amortised per record, no timer;
eviction runs in batches of ``cap // 16`` keys.

A key stamped in the future (a client may set a post's ``create_at``) is not evicted: that
would raise the floor to its time, and until the server's clock reached it every new key would
be asked of the table (a query per event, for as long as the client chose). It moves aside, to
a dict of its own that only pruning empties, as memory kept every key before it was bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice

#: How many processed keys memory holds (a little more between two evictions). A tuning knob:
#: the daemon reads it when it starts (tests lower it). 5,000 keys (~1 MiB) cover 50 s at 100
#: posts/s and 4 s at full speed: a websocket event is seconds old at most, so only a catch-up
#: asks the table (one batched lookup per channel).
SEEN_IN_MEMORY = 5_000


def newest(rows: Iterable[tuple[str, int]], limit: int | None) -> tuple[dict[str, int], int]:
    """The keys a start-up loads, and the floor: from the table's rows newest first (``ORDER BY
    at DESC``, at most ``limit + 1`` of them), the first ``limit``; the floor is one past the
    first row left out (every row with a later ``at`` came before it). 0 when none is left out.
    """
    keys: dict[str, int] = {}
    for key, at in rows:
        if limit is not None and len(keys) >= limit:
            return keys, at + 1
        keys[key] = at
    return keys, 0


class SeenKeys:
    """The processed keys in memory: key -> ``at``, oldest record first, with ``floor``."""

    __slots__ = ("_future", "_keys", "_now", "_pending", "_slack", "cap", "floor")

    def __init__(
        self,
        keys: dict[str, int],
        *,
        floor: int = 0,
        cap: int = SEEN_IN_MEMORY,
        now: Callable[[], int] | None = None,
    ) -> None:
        """``now``: the server's clock (ms); a key stamped after it is never evicted."""
        # Loaded keys are committed; the oldest first, so they are evicted first.
        self._keys = dict(sorted(keys.items(), key=lambda item: item[1]))
        self._future: dict[str, int] = {}  # stamped in the future when due for eviction
        self._pending: deque[asyncio.Future[None]] = deque()
        self._now = now
        self.floor = floor
        self.cap = cap
        self._slack = max(1, cap // 16)
        self._evict()

    def __contains__(self, key: object) -> bool:
        """In memory: surely processed (absent: see ``unsure``)."""
        return key in self._keys or key in self._future

    def __len__(self) -> int:
        return len(self._keys) + len(self._future)

    def __iter__(self) -> Iterator[str]:
        return chain(self._keys, self._future)

    def get(self, key: str) -> int | None:
        at = self._keys.get(key)
        return self._future.get(key) if at is None else at

    def items(self) -> Iterable[tuple[str, int]]:
        """Key and ``at``, oldest record first (then those stamped in the future)."""
        return chain(self._keys.items(), self._future.items())

    def unsure(self, since: int) -> bool:
        """Whether a key absent from memory, recorded (if ever) at ``since`` or later, must be
        asked of the table: only when ``since`` is below the floor."""
        return since < self.floor

    def record(self, key: str, at: int, committed: asyncio.Future[None]) -> None:
        """Remember ``key`` (as of ``at``), written by the transaction ``committed``."""
        keys = self._keys
        keys.pop(key, None)  # recorded again: it moves to the newest place
        keys[key] = at
        pending = self._pending
        pending.append(committed)
        while pending and _passed(pending[0]):
            pending.popleft()
        if len(keys) - max(self.cap, len(pending)) >= self._slack:
            self._evict()

    def prune(self, horizon: int) -> None:
        """Forget keys older than ``horizon`` (ms): the table forgets the same."""
        for keys in (self._keys, self._future):
            for key in [k for k, at in keys.items() if at < horizon]:
                del keys[key]

    def _evict(self) -> None:
        """Drop the oldest committed keys beyond the cap, raising the floor past each."""
        keys = self._keys
        extra = len(keys) - max(self.cap, len(self._pending))
        if extra <= 0:
            return
        floor = self.floor
        now = self._now() if self._now is not None else None
        for key in list(islice(keys, extra)):
            at = keys.pop(key)
            if now is not None and at > now:
                self._future[key] = at
            elif at >= floor:
                floor = at + 1
        self.floor = floor


def _passed(future: asyncio.Future[None]) -> bool:
    """Committed: done without an error."""
    return future.done() and not future.cancelled() and future.exception() is None
