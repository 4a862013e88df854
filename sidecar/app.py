"""Wiring and lifecycle: websocket frame → event → match → delivery → reply.

``async with Sidecar(config) as app: await app.serve(stop)``. The constructor does no I/O. The
life is named phases, as uvicorn's server:

- ``start``: open the state, ``connect`` (log in, build the ``Runtime``, run the start-up
  checks, start the HTTP clients and the health server), then ``begin``: build the pipeline
  (``sidecar.pipeline``) from the state's snapshot and resume its unfinished jobs;
- ``serve``: the pipeline's main loop until ``stop`` is set or a fatal error happens, then its
  shutdown phases (stop reading → drain);
- ``close``: flush and close the state, close the clients.

With HA (``sidecar.ha``) a standby holds no pipeline; each takeover ``begin``s one and a
deposed term tears it down. A reload swaps the runtime in one assignment (``sidecar.runtime``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sidecar import __version__, seen
from sidecar.backend import Fenced, StateBackend, postgres_backend
from sidecar.config import Config
from sidecar.delivery import USER_AGENT, CallbackClient
from sidecar.gateway import Gateway, Link, Status
from sidecar.health import HealthServer, Metrics
from sidecar.mattermost import MattermostError, RestClient
from sidecar.models import User
from sidecar.notify import Notifier
from sidecar.pipeline import DEFAULT_TUNING, Pipeline, Tuning, build_pipeline
from sidecar.retry import RetryPolicy, retrying
from sidecar.runtime import Live, Runtime, restart_warnings
from sidecar.startup_checks import check_channels, run_startup_checks
from sidecar.state import Snapshot, State, StateError

log = logging.getLogger(__name__)

__all__ = ["Session", "Sidecar", "Tuning"]


@dataclass(frozen=True, slots=True)
class Session:
    """What logging in gives: the bot user and the one reference to the current runtime."""

    me: User
    live: Live


class Sidecar:
    """The daemon. Owns every task it starts.

    ``boot`` is the config the process started with (server URL, token, listen address,
    state: what only a restart applies); ``config`` the current one, which once logged in is
    the session's ``live.runtime.config``: the running parts read only ``live.runtime``.
    ``pipeline`` exists while this replica is active.
    """

    def __init__(
        self, config: Config, *, tuning: Tuning = DEFAULT_TUNING, notifier: Notifier | None = None
    ) -> None:
        self.boot = config  # what the process started with: the keys only a restart applies
        self._config = config  # until logged in; then the session's runtime holds it
        self.session: Session | None = None  # once logged in
        self.pipeline: Pipeline | None = None  # while active
        self._tuning = tuning
        self.notifier = notifier or Notifier({})
        self.metrics = Metrics(__version__)
        self.state: StateBackend = State(config.sidecar.state_dir)
        self.ha: Any = None  # sidecar.ha.HighAvailability when state_url is set
        if config.sidecar.state_url:
            from sidecar.ha import HighAvailability

            self.state = postgres_backend(
                config.sidecar.state_url,
                schema=config.sidecar.state_schema,
                password_file=config.sidecar.state_password_file,
            )
            self.ha = HighAvailability(self)
        self.state.on_write_failure = self._set_fatal  # commits kept failing: exit 1
        self.rest = RestClient(
            config.mattermost.url,
            config.mattermost.token,
            verify_tls=config.mattermost.verify_tls,
            user_agent=USER_AGENT,
        )
        self.callbacks = CallbackClient(
            allowed_untrusted_internal_connections=(
                config.sidecar.allowed_untrusted_internal_connections
            ),
            user_agent=USER_AGENT,
        )
        self.health: HealthServer | None = None  # None when [sidecar] listen = ""
        self._deposed = False  # (HA) the lease was lost: the current term ends, not the process
        self._ready_once = False
        self._stopping = False
        self._fatal: BaseException | None = None
        self._fatal_event = asyncio.Event()
        self._state_open = False

    def __repr__(self) -> str:
        return f"Sidecar({self.config.mattermost.url!r}, {len(self.config.webhooks)} webhooks)"

    @property
    def config(self) -> Config:
        """The current config: the current runtime's once logged in (one reference)."""
        return self.session.live.runtime.config if self.session is not None else self._config

    @property
    def gateway(self) -> Gateway:
        """The active pipeline's websocket client."""
        if self.pipeline is None:
            raise RuntimeError("no pipeline: not started, or a standby")
        return self.pipeline.gateway

    # -- startup -----------------------------------------------------------------------------

    async def __aenter__(self) -> Sidecar:
        try:
            await self.start()
        except BaseException:
            # A refused token or a bad state file: release what start() had opened.
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the state, connect, and (without HA) build the pipeline."""
        snapshot = None if self.ha else await asyncio.to_thread(self.open_state)
        self._state_open = True
        self.state.start_writer()
        await self.connect()
        if snapshot is not None:
            await self.begin(snapshot)

    def open_state(self) -> Snapshot:
        """Read the state back, with the newest processed keys only (``seen``). Blocking."""
        return self.state.open(seen_limit=seen.SEEN_IN_MEMORY)

    async def connect(self) -> Session:
        """Log in, build the runtime, run the start-up checks, start the clients and the
        health server. With HA, the shared state is read only at a takeover (``begin``)."""
        await self.rest.start()
        me = await self._login()
        log.info("logged in to %s as @%s", self.boot.mattermost.url, me.username)
        session = Session(me, Live(Runtime.build(self.config, bot_user_id=me.id)))
        self.session = session  # from here on a reload swaps the runtime
        await run_startup_checks(self.rest, self.config)
        await self.callbacks.start()
        self.metrics.retain_webhooks([w.name for w in self.config.webhooks])
        if self.boot.sidecar.listen:
            self.health = HealthServer(self.boot.sidecar.listen, self.metrics, self.readiness)
            await self.health.start()
        return session

    async def _login(self) -> User:
        """``/users/me``, retried while the server is unreachable or failing (5xx, 429).

        A 401 is final. Cancel the caller to give up (SIGTERM during start-up does).
        """
        policy = RetryPolicy(base=self._tuning.backoff_base, cap=self._tuning.backoff_cap)

        def failed(exc: MattermostError, attempts: int, delay: float) -> None:
            log.warning(
                "cannot reach Mattermost at start-up: %s; retrying in %.1f s (attempt %d)",
                exc,
                delay,
                attempts,
            )
            self.notifier.status(f"cannot reach Mattermost; retrying in {delay:.0f} s")

        return await retrying(self.rest.me, policy, on_retry=failed)

    async def begin(self, snapshot: Snapshot) -> Pipeline:
        """Build the pipeline from ``snapshot``, join channels, resume its jobs. With HA only
        the active replica runs this (at each takeover): a standby neither joins channels nor
        claims redeliveries."""
        if self.session is None:
            raise RuntimeError("connect() first")
        pipeline = build_pipeline(
            me=self.session.me,
            live=self.session.live,
            snapshot=snapshot,
            config=self.boot,
            tuning=self._tuning,
            state=self.state,
            rest=self.rest,
            callbacks=self.callbacks,
            metrics=self.metrics,
            notifier=self.notifier,
            on_status=self._status,
            on_fatal=self._set_fatal,
            on_connected=self._connected,
        )
        self.pipeline = pipeline
        # Public channels first, so that the check below sees the channels just joined.
        await pipeline.joiner.start()
        await check_channels(self.rest, self.session.live.runtime.config.webhooks)
        if snapshot.jobs:
            log.info("resuming %d unfinished deliveries from the outbox", len(snapshot.jobs))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            pipeline.outbox.submit(snapshot.jobs, done)
        return pipeline

    # -- main loop ---------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain. Raises Unauthorized if the token is refused."""
        if self.ha is not None:  # HA: standby until the lease is ours, then active terms
            await self.ha.serve(stop)
        else:
            await self.serve_term(stop)

    async def serve_term(self, stop: asyncio.Event) -> None:
        """Run the pipeline until ``stop`` (or, with HA, the lease is lost), then shut it down
        and drop it."""
        pipeline = self.pipeline
        if pipeline is None:
            raise RuntimeError("begin() first")
        self._deposed = False
        self._fatal_event.clear()
        try:
            failed = await pipeline.main_loop(stop, self._fatal_event)
            if failed is not None:
                self._set_fatal(failed)
        finally:
            # Deposed (HA): stop reading and delivering at once; the new active resumes.
            grace = 0.0 if self._deposed else self.config.sidecar.shutdown_timeout
            if not self._deposed:
                self._stopping = True
                self.notifier.stopping()
            await pipeline.shutdown(grace)
            self.pipeline = None
        if self._fatal is not None:
            raise self._fatal

    def depose(self) -> None:
        """HA: the lease is lost; end the current active term now (not the process)."""
        self._deposed = True
        self._fatal_event.set()

    def _set_fatal(self, exc: BaseException) -> None:
        if isinstance(exc, Fenced) or (self._deposed and isinstance(exc, StateError)):
            self.depose()  # a write refused by the epoch: another replica is active
            return
        if self._fatal is None:
            self._fatal = exc
            log.error("fatal: %s", exc)
        self._fatal_event.set()

    def readiness(self) -> tuple[bool, str]:
        """Ready = the websocket is authenticated and the hello came."""
        if self._stopping:
            return False, "stopping"
        if self.ha is not None:
            ready: tuple[bool, str] = self.ha.readiness()
            return ready
        if self.pipeline is None or not self.pipeline.gateway.connected:
            return False, "websocket not connected"
        return True, "ready"

    def _status(self, status: Status) -> None:
        if status.link is Link.RECONNECTING:
            self.metrics.reconnects.inc()
            self.metrics.connected.set(0)
        self.notifier.status(f"{status}; {len(self.config.webhooks)} webhooks")

    def _connected(self) -> None:
        if not self._ready_once:
            self._ready_once = True
            self.notifier.ready(f"connected; {len(self.config.webhooks)} webhooks")

    # -- reload --------------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Swap in a new, already validated config: one new ``Runtime``, one assignment; the
        next event (and each job started from now on) uses it."""
        self.notifier.reloading()
        for line in restart_warnings(self.config, config):
            log.warning("%s", line)
        if self.session is not None:
            runtime = Runtime.build(config, bot_user_id=self.session.me.id)
            self.session.live.runtime = runtime  # the swap
        else:  # not logged in yet: connect() builds the runtime of this one
            self._config = config
        self.metrics.retain_webhooks([w.name for w in config.webhooks])
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded: %d webhooks", len(config.webhooks))
        self.notifier.ready(f"connected; {len(config.webhooks)} webhooks")

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Release everything ``start`` opened (idempotent): flush the state, close."""
        if self.health is not None:
            await self.health.stop()
            self.health = None
        await self.callbacks.close()
        await self.rest.close()
        if self._state_open:
            await self.state.close()  # flushes the writes still queued
            self._state_open = False
        self.notifier.close()
