"""The ``seen`` table beyond memory, on both backends: the batched lookup of processed keys and
the start-up read of the newest ones (``seen_limit``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.backend import StateBackend
from sidecar.state import State

Factory = Callable[[], StateBackend]


async def test_seen_among_answers_which_keys_the_table_holds(make_state: Factory) -> None:
    state = make_state()
    state.open()
    state.start_writer()
    try:
        keys = [f"k{n}" for n in range(1200)]  # more than one IN (...) chunk
        await state.record([], "chan", 5, keys[:700], 5)
        await state.record_position("chan", 6, ["edit:1"], 6)
        asked = [*keys, "edit:1", "never"]
        assert await state.seen_among(asked) == {*keys[:700], "edit:1"}
        assert await state.seen_among([]) == set()
        await state.prune_seen(6)
        assert await state.seen_among(asked) == {"edit:1"}
    finally:
        await state.close()


async def test_a_start_reads_only_the_newest_keys_and_migrate_all(make_state: Factory) -> None:
    state = make_state()
    state.open()
    state.start_writer()
    for n in range(10):
        await state.record_position("chan", 100 + n, [f"k{n}"], 100 + n)
    await state.record_position("chan", 107, ["tie"], 107)
    await state.close()

    again = make_state()
    try:
        snap = again.open(seen_limit=3)
    finally:
        await again.close()
    # Newest first: k9 (109), k8 (108), then k7 or "tie" (both 107): 107 is not surely all
    # there, so the floor is 108 (every key at or after it was read).
    assert {"k9", "k8"} < set(snap.seen) and len(snap.seen) == 3
    assert snap.seen_floor == 108

    whole = make_state()
    try:
        snap = whole.open()  # what `mm-sidecar state migrate` reads: every key
    finally:
        await whole.close()
    assert len(snap.seen) == 11 and snap.seen_floor == 0


async def test_sqlite_answers_from_a_thread_before_the_writer_started(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.open()
    state.start_writer()
    await state.record_position("chan", 5, ["a"], 5)
    await state.close()
    reader = State(tmp_path)
    reader.open()  # no writer started: no connection of the loop's
    try:
        assert await reader.seen_among(["a", "b"]) == {"a"}
    finally:
        await reader.close()


async def test_postgresql_lookup_survives_a_lost_connection(pg_cluster: Any, pg_url: str) -> None:
    from sidecar.pgconn import PgTarget
    from sidecar.pgstate import PgState

    state = PgState(PgTarget(pg_url))
    state.open()
    state.start_writer()
    try:
        await state.record_position("chan", 5, ["a"], 5)
        assert await state.seen_among(["a", "b"]) == {"a"}
        db = pg_url.rsplit("/", 1)[1]
        killed = pg_cluster.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{db}' AND application_name = 'mm-sidecar'"
        )
        assert len(killed) == 2  # the writer's connection and the lookups'
        assert await state.seen_among(["a", "b"]) == {"a"}
    finally:
        await state.close()


async def test_postgresql_lookup_gives_up_after_the_retry_bound(pg_cluster: Any) -> None:
    from sidecar.backend import StateUnavailable
    from sidecar.pgconn import PgTarget
    from sidecar.pgstate import PgState

    url = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/no_such_db"
    state = PgState(PgTarget(url), retry_for=0.3)
    with pytest.raises(StateUnavailable, match="seen lookup failed"):
        await asyncio.wait_for(state.seen_among(["a"]), 10)
    await state.close()
