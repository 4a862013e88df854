"""SeenKeys: the bounded cache of processed keys (pure, futures stand for the commits)."""

from __future__ import annotations

import asyncio
import random

import pytest

from sidecar.errors import StateWriteError
from sidecar.seen import SeenKeys, newest


def future(*, done: bool) -> asyncio.Future[None]:
    f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if done:
        f.set_result(None)
    return f


async def test_memory_keeps_at_most_the_cap_and_the_floor_passes_every_evicted_key() -> None:
    # Before the bound, every key of the window stayed in memory: 1000 here.
    keys = SeenKeys({}, cap=10)
    for n in range(1000):
        keys.record(f"k{n}", n, future(done=True))
    assert len(keys) == 10
    assert set(keys) == {f"k{n}" for n in range(990, 1000)}
    assert keys.floor == 990  # one past the newest evicted key's at
    assert not keys.unsure(990) and keys.unsure(989)


async def test_keys_out_of_time_order_keep_the_invariant() -> None:
    """Every recorded key whose at >= floor is in memory, whatever order the times come in
    (catch-up, skewed clocks), and the floor never passes a key still in memory needlessly."""
    rng = random.Random(7)
    keys = SeenKeys({}, cap=16)
    recorded: dict[str, int] = {}
    for n in range(3000):
        at = 100_000 + n * 10 + rng.choice([0, 0, 0, -50_000, 40, 86_400])
        keys.record(f"k{n}", at, future(done=True))
        recorded[f"k{n}"] = at
        missing = [k for k, a in recorded.items() if a >= keys.floor and k not in keys]
        assert missing == []
        assert len(keys) <= 16 + 1
    assert keys.floor > 0


async def test_only_committed_keys_are_evicted() -> None:
    keys = SeenKeys({}, cap=2)
    pending = [future(done=False) for _ in range(5)]
    for n, f in enumerate(pending):
        keys.record(f"k{n}", n, f)
    # Not committed yet: the table could not answer for them, so all stay.
    assert len(keys) == 5 and keys.floor == 0
    pending[0].set_result(None)
    pending[1].set_result(None)
    keys.record("k5", 5, future(done=True))
    # k0 and k1 committed: evicted; k2.. wait for their commits (and those before them).
    assert set(keys) == {"k2", "k3", "k4", "k5"} and keys.floor == 2
    for f in pending[2:]:
        f.set_result(None)
    keys.record("k6", 6, future(done=True))
    assert set(keys) == {"k5", "k6"} and keys.floor == 5


async def test_a_failed_commit_is_never_passed() -> None:
    """A write that failed (the daemon exits) leaves its key and every later one in memory."""
    keys = SeenKeys({}, cap=1)
    failed = future(done=False)
    failed.set_exception(StateWriteError("disk full"))
    keys.record("k0", 0, failed)
    for n in range(1, 4):
        keys.record(f"k{n}", n, future(done=True))
    assert set(keys) == {"k0", "k1", "k2", "k3"} and keys.floor == 0


async def test_a_key_recorded_again_moves_to_the_newest_place() -> None:
    keys = SeenKeys({}, cap=2)
    keys.record("a", 1, future(done=True))
    keys.record("b", 2, future(done=True))
    keys.record("a", 3, future(done=True))
    keys.record("c", 4, future(done=True))
    assert set(keys) == {"a", "c"} and keys.get("a") == 3 and keys.floor == 3


async def test_loaded_keys_are_evicted_oldest_first_down_to_the_cap() -> None:
    keys = SeenKeys({"new": 30, "old": 10, "mid": 20}, floor=5, cap=2)
    assert set(keys) == {"new", "mid"} and keys.floor == 11


async def test_prune_forgets_keys_older_than_the_horizon() -> None:
    keys = SeenKeys({"a": 1, "b": 5}, cap=10)
    keys.prune(3)
    assert set(keys) == {"b"}


@pytest.mark.parametrize(
    ("rows", "limit", "keys", "floor"),
    [
        ([("c", 30), ("b", 20), ("a", 10)], None, {"c": 30, "b": 20, "a": 10}, 0),
        ([("c", 30), ("b", 20), ("a", 10)], 3, {"c": 30, "b": 20, "a": 10}, 0),
        ([("c", 30), ("b", 20), ("a", 10)], 2, {"c": 30, "b": 20}, 11),
        # A tie at the limit: "a" (at 20) is left out, so 20 is not surely all there.
        ([("c", 30), ("b", 20), ("a", 20)], 2, {"c": 30, "b": 20}, 21),
        ([], 2, {}, 0),
    ],
)
def test_newest_loads_the_newest_keys_and_the_floor_above_what_is_left_out(
    rows: list[tuple[str, int]], limit: int | None, keys: dict[str, int], floor: int
) -> None:
    assert newest(rows, limit) == (keys, floor)


async def test_a_key_stamped_in_the_future_stays_and_does_not_raise_the_floor() -> None:
    """Evicting it would raise the floor past the server's now: every new key would then be
    asked of the table until the clock reached the stamp."""
    now = 1000
    keys = SeenKeys({}, cap=2, now=lambda: now)
    keys.record("future", now + 86_400_000, future(done=True))
    for n in range(10):
        keys.record(f"k{n}", now - 100 + n, future(done=True))
    assert "future" in keys and keys.get("future") == now + 86_400_000
    assert keys.floor == now - 100 + 8  # past k7, the newest evicted key
    assert not keys.unsure(now)
    keys.prune(now + 86_400_001)  # pruning, as before the bound, is what drops it
    assert "future" not in keys
