"""Leadership among replicas: an advisory-lock lease plus a fencing epoch in PostgreSQL.

The lease is a session-level advisory lock held on one dedicated autocommit connection
(never a pooled one: a pool's reset would drop it), with server-side keepalives and
``tcp_user_timeout`` so PostgreSQL ends a vanished replica's session, and so frees the lock,
within seconds. On takeover the new holder increments the epoch in the ``leader`` row (under a
``lock_timeout``: the ``UPDATE`` waits for the old holder's in-flight write transactions, which
read that row ``FOR SHARE``); every write of the active replica is conditional on that epoch
(``PgState.epoch``), so a deposed replica's late writes are refused.

The holder checks the lease every ``check_interval`` (1 s); a check that fails or takes longer
than ``check_timeout`` (2 s) makes it stand down at once. Standbys try the lock as often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from sidecar.compat import timeout
from sidecar.pgconn import PgTarget
from sidecar.pgstate import lock_key

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # lease_check_interval: seconds between two checks (or two tries)
CHECK_TIMEOUT = 2.0  # a check slower than this counts as lost
TAKEOVER_LOCK_TIMEOUT_MS = 2000  # how long a takeover waits for the old holder's writes


def default_holder() -> str:
    """This replica's name in the leader row: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """One replica's view of the lease. ``epoch`` is set while ``active``."""

    def __init__(
        self,
        target: PgTarget,
        *,
        holder: str | None = None,
        check_interval: float = CHECK_INTERVAL,
        check_timeout: float = CHECK_TIMEOUT,
        takeover_lock_timeout_ms: int = TAKEOVER_LOCK_TIMEOUT_MS,
    ) -> None:
        self.target = target
        self.holder = holder or default_holder()
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.takeover_lock_timeout_ms = takeover_lock_timeout_ms
        self.active = False
        self.epoch: int | None = None
        self.takeovers = 0
        self.last_error: BaseException | None = None  # of the last failed attempt, if any
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._key = lock_key("lease", target.schema)

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the lease session (tests, diagnostics)."""
        return None if self._conn is None or self._conn.closed else self._conn.info.backend_pid

    # -- one step each ---------------------------------------------------------------------

    async def try_acquire(self) -> int | None:
        """Try the lock once; on success bump the epoch and return it, else None.

        Never waits for the lock; waits at most ``takeover_lock_timeout_ms`` for the old
        holder's in-flight writes, and gives the lock back if they outlast that.
        """
        if self.active:
            return self.epoch
        self.last_error = None
        try:
            conn = await self._connection()
            cur = await conn.execute(sql.SQL("SELECT pg_try_advisory_lock({})").format(self._key))
            row = await cur.fetchone()
            if row is None or not row[0]:
                return None
            try:
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("SET LOCAL lock_timeout = {}").format(
                            sql.Literal(f"{self.takeover_lock_timeout_ms}ms")
                        )
                    )
                    cur = await conn.execute(
                        "UPDATE leader SET epoch = epoch + 1, holder = %s, since = now() "
                        "WHERE id = 1 RETURNING epoch",
                        (self.holder,),
                    )
                    row = await cur.fetchone()
            except psycopg.errors.LockNotAvailable:
                log.warning("lease: the previous holder's writes outlasted the takeover; later")
                await conn.execute(sql.SQL("SELECT pg_advisory_unlock({})").format(self._key))
                return None
            if row is None:
                raise RuntimeError("the leader row is missing (schema not migrated?)")
        except (psycopg.Error, OSError) as exc:
            log.debug("lease: attempt failed: %s", exc)
            self.last_error = exc
            await self._drop()
            return None
        self.active, self.epoch = True, int(row[0])
        self.takeovers += 1
        return self.epoch

    async def check(self) -> bool:
        """Holder: is the lease still ours? A failure or a slow answer counts as no.

        On no, the lease connection is closed (PostgreSQL releases the lock with the session)
        and this replica is a standby.
        """
        if not self.active or self._conn is None:
            return False
        try:
            async with timeout(self.check_timeout):
                cur = await self._conn.execute("SELECT epoch FROM leader WHERE id = 1")
                row = await cur.fetchone()
            ok = row is not None and row[0] == self.epoch
            reason = "" if ok else f"the epoch moved on to {None if row is None else row[0]}"
        except (asyncio.TimeoutError, psycopg.Error, OSError) as exc:
            ok, reason = False, str(exc) or f"no answer within {self.check_timeout:g} s"
        if not ok:
            log.warning("lease: lost (epoch %s): %s", self.epoch, reason)
            await self.stand_down()
        return ok

    async def stand_down(self) -> None:
        """Give the lease up (close its session); ``epoch`` keeps the last value held."""
        self.active = False
        await self._drop()

    async def close(self) -> None:
        """Release the lease and the connection."""
        if self.active and self._conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await self._conn.execute(sql.SQL("SELECT pg_advisory_unlock({})").format(self._key))
        await self.stand_down()

    # -- the loop --------------------------------------------------------------------------

    async def run(self, on_change: Callable[[bool, int | None], None], stop: asyncio.Event) -> None:
        """Try (standby) or check (active) every ``check_interval`` until ``stop``.

        ``on_change(active, epoch)`` is called at each role change, before the next check.
        """
        try:
            while not stop.is_set():
                if self.active:
                    if not await self.check():
                        log.warning("lease: standby (was active at epoch %s)", self.epoch)
                        on_change(False, self.epoch)
                else:
                    epoch = await self.try_acquire()
                    if epoch is not None:
                        log.info("lease: active at epoch %d (%s)", epoch, self.holder)
                        on_change(True, epoch)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.check_interval)
        finally:
            await self.close()

    # -- the connection --------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.target.url, **self.target.kwargs())
            try:
                for stmt in self.target.setup_sql():
                    await conn.execute(stmt.encode())
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
