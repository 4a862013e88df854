"""The lease against a real PostgreSQL: one holder, takeover on a lost session, fencing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from fakes import numbered_job

from pg import Cluster
from sidecar.lease import Lease
from sidecar.pgconn import PgTarget
from sidecar.pgstate import Fenced, PgState
from sidecar.state import Job


def job(n: int) -> Job:
    return numbered_job(n, body=b"x", content_type="application/json")


@pytest.fixture
async def target(pg_url: str) -> PgTarget:
    t = PgTarget(pg_url)
    await asyncio.to_thread(PgState(t).open)  # creates the schema and the leader row
    return t


@pytest.fixture
async def leases(target: PgTarget) -> AsyncIterator[Callable[..., Lease]]:
    made: list[Lease] = []

    def make(holder: str, **kw: Any) -> Lease:
        lease = Lease(target, holder=holder, **kw)
        made.append(lease)
        return lease

    yield make
    for lease in made:
        await lease.close()


async def acquire_within(lease: Lease, attempts: int = 200) -> int:
    """Try every 50 ms until the lock is ours (the server frees it ~0.1 s after a kill)."""
    for _ in range(attempts):
        epoch = await lease.try_acquire()
        if epoch is not None:
            return epoch
        await asyncio.sleep(0.05)
    raise AssertionError(f"{lease.holder} never got the lease")


def leader(cluster: Cluster, url: str) -> tuple[object, ...]:
    return cluster.sql("SELECT epoch, holder FROM mm_sidecar.leader", url.rsplit("/", 1)[1])[0]


async def test_one_holder_at_a_time_and_each_takeover_bumps_the_epoch(
    pg_cluster: Cluster, pg_url: str, leases: Callable[..., Lease]
) -> None:
    a, b = leases("a"), leases("b")
    assert await a.try_acquire() == 1 and a.active
    assert await b.try_acquire() is None and not b.active
    assert leader(pg_cluster, pg_url) == (1, "a")
    assert await a.check()
    await a.close()
    assert await b.try_acquire() == 2
    assert leader(pg_cluster, pg_url) == (2, "b") and b.takeovers == 1


async def test_a_terminated_holder_loses_the_lease_and_its_writes_are_refused(
    pg_cluster: Cluster, target: PgTarget, leases: Callable[..., Lease]
) -> None:
    a, b = leases("a"), leases("b")
    state_a, state_b = PgState(target), PgState(target)
    state_a.start_writer()
    state_b.start_writer()
    state_a.epoch = await a.try_acquire()
    await state_a.add_jobs([job(1)])  # the holder writes under its epoch
    assert pg_cluster.sql(f"SELECT pg_terminate_backend({a.backend_pid})") == [(True,)]
    state_b.epoch = await acquire_within(b)
    assert state_b.epoch == 2
    # The deposed replica has not noticed yet: its late write is refused by the epoch...
    with pytest.raises(Fenced):
        await state_a.add_jobs([job(2)])
    # ...while the new holder's lands; the old one's next check makes it stand down.
    await state_b.add_jobs([job(3)])
    assert not await a.check() and not a.active
    await state_a.close()
    await state_b.close()
    assert [j.id for j in PgState(target).open().jobs] == ["msg_1/0", "msg_3/0"]


async def test_a_takeover_waits_for_in_flight_writes_within_its_lock_timeout(
    target: PgTarget, leases: Callable[..., Lease]
) -> None:
    b = leases("b", takeover_lock_timeout_ms=200)
    # An old holder's write transaction, stuck after reading the epoch FOR SHARE.
    writer = await psycopg.AsyncConnection.connect(target.url)
    await writer.execute("SELECT epoch FROM mm_sidecar.leader WHERE id = 1 FOR SHARE")
    assert await b.try_acquire() is None  # gave up after 200 ms and gave the lock back
    c = leases("c")
    assert await c.try_acquire() is None  # blocked by the same row lock, not by b's lock
    await writer.commit()
    await writer.close()
    assert await b.try_acquire() == 1


async def test_a_check_slower_than_its_bound_stands_down(
    pg_cluster: Cluster, target: PgTarget, leases: Callable[..., Lease]
) -> None:
    a = leases("a", check_timeout=0.3)
    assert await a.try_acquire() == 1
    blocker = await psycopg.AsyncConnection.connect(target.url)
    await blocker.execute("LOCK TABLE mm_sidecar.leader IN ACCESS EXCLUSIVE MODE")
    assert not await a.check()  # the SELECT waits behind the lock: no answer within 0.3 s
    assert not a.active and a.backend_pid is None
    await blocker.rollback()
    await blocker.close()
    assert await acquire_within(leases("b")) == 2  # a's session ended, its lock with it


async def test_two_running_replicas_fail_over_when_the_active_session_dies(
    pg_cluster: Cluster, leases: Callable[..., Lease]
) -> None:
    replicas = {"a": leases("a", check_interval=0.1), "b": leases("b", check_interval=0.1)}
    changes: asyncio.Queue[tuple[str, bool, int | None]] = asyncio.Queue()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            lease.run(lambda act, ep, n=name: changes.put_nowait((n, act, ep)), stop)
        )
        for name, lease in replicas.items()
    ]
    first, active, epoch = await asyncio.wait_for(changes.get(), 10)
    assert active and epoch == 1
    pg_cluster.sql(f"SELECT pg_terminate_backend({replicas[first].backend_pid})")
    # The holder stands down; a replica (the other, or the same one on a new session) takes
    # over at epoch 2.
    after = [await asyncio.wait_for(changes.get(), 10) for _ in range(2)]
    assert (first, False, 1) in after
    [(winner, _, _)] = [c for c in after if c[1:] == (True, 2)]
    assert [name for name, lease in replicas.items() if lease.active] == [winner]
    stop.set()
    await asyncio.gather(*tasks)
    assert all(lease.backend_pid is None for lease in replicas.values())
