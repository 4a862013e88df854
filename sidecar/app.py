"""Wiring and lifecycle: websocket frame → event → match → delivery → reply.

``async with Sidecar(config) as app: await app.serve(stop)``. The constructor does no I/O;
``start`` opens the state, logs in, starts the HTTP clients and resumes unfinished jobs;
``serve`` runs the named tasks (gateway, dispatcher, housekeeping) until ``stop`` is set or a
fatal error happens, then drains. The gateway only enqueues; the dispatcher resolves each
event (cached lookups), matches it, writes the jobs and hands them to the outbox, so the
websocket reader never waits for a callback or the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from sidecar import __version__
from sidecar.backend import Fenced, StateBackend, postgres_backend
from sidecar.config import Config, WebhookConfig
from sidecar.delivery import USER_AGENT, CallbackClient
from sidecar.dispatch import Dispatcher
from sidecar.events import ChannelOpened, MemberAdded
from sidecar.gateway import Connected, Gateway, Item, Link, Status
from sidecar.health import HealthServer, Metrics
from sidecar.history import Retention
from sidecar.join import Joined, Joiner
from sidecar.mattermost import MattermostError, RestClient, Unauthorized
from sidecar.models import Channel, User
from sidecar.names import check_teams, check_users
from sidecar.notify import Notifier
from sidecar.outbox import Outbox
from sidecar.redelivery import HistoryKeeper
from sidecar.reply import ReplySettings
from sidecar.retry import RetryPolicy, retrying
from sidecar.rules import RuleSet
from sidecar.state import Snapshot, State, StateError

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
# [mattermost] keys a reload cannot apply (the token also when it comes from token_file).
RESTART_MATTERMOST_KEYS = ("url", "token", "verify_tls")


@dataclass(frozen=True, slots=True)
class Tuning:
    """Timings that tests shorten; the defaults are the production ones."""

    ping_interval: float = 30.0
    pong_timeout: float = 20.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_base: float = 0.25  # first wait before a failed lookup or catch-up is tried again
    history_poll: float = 1.0  # seconds between looks for redeliveries queued by the CLI
    history_prune_every: float = 600.0


class Sidecar:
    """The daemon. Owns every task it starts."""

    def __init__(
        self,
        config: Config,
        *,
        tuning: Tuning = Tuning(),
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._tuning = tuning
        self.notifier = notifier or Notifier({})
        self.metrics = Metrics(__version__)
        # -- HA (issue 13): with state_url, the state is shared and a lease picks the active one.
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
        self._deposed = False  # the lease was lost: the current term ends, not the process
        # -- end HA
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
        self._queue: asyncio.Queue[Item | Joined | None] = asyncio.Queue(QUEUE_SIZE)
        self.gateway = self._new_gateway()
        self.health: HealthServer | None = None
        self.me = User(id="", username="")
        self.rules = RuleSet(config.webhooks, bot_user_id="")
        self._webhooks = {w.name: w for w in config.webhooks}
        self.outbox: Outbox | None = None
        self.dispatcher: Dispatcher | None = None
        self.history: HistoryKeeper | None = None
        self.joiner: Joiner | None = None
        self.joins_caught_up = 0  # Joined items the dispatcher finished (tests wait on it)
        self._ready_once = False
        self._stopping = False
        self._fatal: BaseException | None = None
        self._fatal_event = asyncio.Event()
        self._started = False

    def _new_gateway(self) -> Gateway:
        """A websocket client feeding a new queue (one per active term with HA)."""
        self._queue = asyncio.Queue(QUEUE_SIZE)
        t = self._tuning
        return Gateway(
            self.config.mattermost.url,
            self.config.mattermost.token,
            self._queue.put,
            ping_interval=t.ping_interval,
            pong_timeout=t.pong_timeout,
            backoff_base=t.backoff_base,
            backoff_cap=t.backoff_cap,
            user_agent=USER_AGENT,
            on_status=self._status,
            check_auth=self._check_token,
        )

    def __repr__(self) -> str:
        return f"Sidecar({self.config.mattermost.url!r}, {len(self.config.webhooks)} webhooks)"

    # -- lifecycle ---------------------------------------------------------------------------

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
        """Open state, log in, start clients and the health server, resume the outbox.

        With HA the shared state is read, and the outbox resumed, only when this replica
        becomes the active one (``sidecar.ha``).
        """
        snapshot = None if self.ha else await asyncio.to_thread(self.state.open)
        self._started = True
        self.state.start_writer()
        await self.rest.start()
        self.me = await self._login()
        log.info("logged in to %s as @%s", self.config.mattermost.url, self.me.username)
        self.rules = RuleSet(self.config.webhooks, bot_user_id=self.me.id)
        await self._check_server_settings()
        await check_teams(self.rest, self.config.webhooks)
        await check_users(self.rest, self.config.webhooks)
        await self.callbacks.start()
        self.metrics.retain_webhooks([w.name for w in self.config.webhooks])
        if self.config.sidecar.listen:
            self.health = HealthServer(self.config.sidecar.listen, self.metrics, self.readiness)
            await self.health.start()
        if snapshot is not None:
            await self.begin(snapshot)

    async def begin(self, snapshot: Snapshot) -> None:
        """Build the outbox, the dispatcher, the history keeper and the joiner from
        ``snapshot``; join channels; resume its jobs. With HA only the active replica runs
        this (at each takeover): a standby neither joins channels nor claims redeliveries."""
        self.outbox = Outbox(
            state=self.state,
            callbacks=self.callbacks,
            rest=self.rest,
            metrics=self.metrics,
            webhook=self._webhooks.get,
            reply_settings=self._reply_settings,
            max_in_flight=self.config.sidecar.max_in_flight,
            on_fatal=self._set_fatal,
            webhook_by_url=self._webhook_by_url,
        )
        self.dispatcher = Dispatcher(
            rest=self.rest,
            state=self.state,
            outbox=self.outbox,
            metrics=self.metrics,
            rules=self.rules,
            me=self.me,
            snapshot=snapshot,
            catch_up_window=self.config.sidecar.catch_up_window,
            retry_base=self._tuning.retry_base,
        )
        self.history = HistoryKeeper(
            state=self.state,
            outbox=self.outbox,
            metrics=self.metrics,
            retention=self._retention,
            poll_interval=self._tuning.history_poll,
            prune_every=self._tuning.history_prune_every,
        )
        # Public channels first, so that the check below sees the channels just joined.
        self.joiner = self._make_joiner(self.dispatcher)
        await self.joiner.start()
        await self._check_channels()
        if snapshot.jobs:
            log.info("resuming %d unfinished deliveries from the outbox", len(snapshot.jobs))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            self.outbox.submit(snapshot.jobs, done)

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

    async def close(self) -> None:
        """Release everything ``start`` opened (idempotent)."""
        if self.health is not None:
            await self.health.stop()
            self.health = None
        await self.callbacks.close()
        await self.rest.close()
        if self._started:
            await self.state.close()
            self._started = False
        self.notifier.close()

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain. Raises Unauthorized if the token is refused."""
        if self.ha is not None:  # HA: standby until the lease is ours, then active terms
            await self.ha.serve(stop)
        else:
            await self.serve_term(stop)

    async def serve_term(self, stop: asyncio.Event) -> None:
        """Read the websocket and deliver until ``stop`` (or, with HA, the lease is lost)."""
        assert self.outbox is not None and self.history is not None, "start() first"
        self._deposed = False
        self._fatal_event.clear()
        gateway_stop = asyncio.Event()
        tasks = {
            asyncio.create_task(self.gateway.run(gateway_stop), name="gateway"),
            asyncio.create_task(self._dispatcher(), name="dispatcher"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
            asyncio.create_task(self.history.run(), name="history"),
        }
        if self.joiner is not None:
            tasks.add(asyncio.create_task(self.joiner.run(), name="joiner"))
        waiters = {
            asyncio.create_task(stop.wait(), name="stop-signal"),
            asyncio.create_task(self._fatal_event.wait(), name="fatal"),
        }
        try:
            done, _ = await asyncio.wait(tasks | waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done & tasks:
                if task.exception() is not None:
                    self._set_fatal(task.exception())  # type: ignore[arg-type]
        finally:
            # Deposed (HA): stop reading and delivering at once; the new active resumes.
            grace = 0.0 if self._deposed else self.config.sidecar.shutdown_timeout
            if not self._deposed:
                self._stopping = True
                self.notifier.stopping()
            gateway_stop.set()
            await self.gateway.close()
            for w in waiters:
                w.cancel()
            gateway = next(t for t in tasks if t.get_name() == "gateway")
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(gateway, 5)
            # Let the dispatcher finish what was already received (no network but lookups).
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            dispatcher = next(t for t in tasks if t.get_name() == "dispatcher")
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(dispatcher, grace)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            in_flight = self.outbox.depth
            left = await self.outbox.drain(grace)
            c = self.outbox.counters
            log.info(
                "stopped: %d delivered, %d failed, %d replies; %d of %d in-flight jobs finished, "
                "%d left in the outbox for the next start",
                c.delivered,
                c.failed,
                c.replies,
                in_flight - left,
                in_flight,
                left,
            )
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
        if not self.gateway.connected:
            return False, "websocket not connected"
        return True, "ready"

    def _status(self, status: Status) -> None:
        if status.link is Link.RECONNECTING:
            self.metrics.reconnects.inc()
            self.metrics.connected.set(0)
        self.notifier.status(f"{status}; {len(self.config.webhooks)} webhooks")

    # -- reload --------------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Swap in a new, already validated config: new rules apply to the next event."""
        old = self.config
        self.notifier.reloading()
        # The session and the websocket were opened with these; max_post_size applies at once
        # (the next reply is split at the new size), as does where the token came from.
        changed = [
            key
            for key in RESTART_MATTERMOST_KEYS
            if getattr(config.mattermost, key) != getattr(old.mattermost, key)
        ]
        if changed:
            log.warning(
                "reload: [mattermost] %s take%s effect only after a restart",
                ", ".join(changed),
                "s" if len(changed) == 1 else "",
            )
        for key in (
            "state_dir",
            "listen",
            "max_in_flight",
            "allowed_untrusted_internal_connections",
            "state_url",  # HA: the backend and the lease are chosen at start
            "state_schema",
            "state_password_file",
            "lease_check_interval",
        ):
            if getattr(config.sidecar, key) != getattr(old.sidecar, key):
                log.warning("reload: [sidecar] %s takes effect only after a restart", key)
        self.rules = RuleSet(config.webhooks, bot_user_id=self.me.id)
        if self.dispatcher is not None:
            self.dispatcher.rules = self.rules
            self.dispatcher.catch_up_window = config.sidecar.catch_up_window
        self.metrics.retain_webhooks([w.name for w in config.webhooks])
        self._webhooks.clear()
        self._webhooks.update({w.name: w for w in config.webhooks})
        self.config = config
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded: %d webhooks", len(config.webhooks))
        self.notifier.ready(f"connected; {len(config.webhooks)} webhooks")

    def _retention(self) -> Retention:
        s = self.config.sidecar
        return Retention(s.history_days, s.dead_letter_days, s.history_max_rows)

    def _webhook_by_url(self, url: str) -> WebhookConfig | None:
        """The (first) webhook that calls ``url``: keeps a renamed webhook's jobs deliverable."""
        return next((w for w in self.config.webhooks if url in w.callback_urls), None)

    def _reply_settings(self) -> ReplySettings:
        s = self.config.sidecar
        return ReplySettings(
            enable_post_username_override=s.enable_post_username_override,
            enable_post_icon_override=s.enable_post_icon_override,
            max_post_size=self.config.mattermost.max_post_size,
        )

    def _make_joiner(self, dispatcher: Dispatcher) -> Joiner:
        """Public-channel coverage (sidecar/join.py); reads the live config at each pass."""
        return Joiner(
            rest=self.rest,
            me=self.me,
            metrics=self.metrics,
            rules=lambda: self.rules,
            enabled=lambda: self.config.sidecar.join_public_channels,
            interval=lambda: self.config.sidecar.join_interval,
            window=lambda: self.config.sidecar.catch_up_window,
            floor=lambda: dispatcher.position,
            submit=self._queue.put,
        )

    async def _check_channels(self) -> None:
        """Warn about named channels the bot cannot see, or whose type channel_types excludes.

        (``check`` works offline and cannot know a channel's type; this is its online half.)
        """
        if not any(w.channels for w in self.config.webhooks):
            return
        seen: dict[str, dict[str, Channel]] = {}
        try:
            for team in await self.rest.my_teams():
                for channel in await self.rest.my_channels(team.id):
                    for key in (channel.id, channel.name):
                        seen.setdefault(key, {})[channel.id] = channel
        except Unauthorized:
            raise
        except MattermostError as exc:
            log.warning("could not list the bot's channels to check the webhooks: %s", exc)
            return
        for w in self.config.webhooks:
            for name in w.channels:
                found = seen.get(name)
                if not found:
                    log.warning(
                        "webhook[%d] %s: the bot is not a member of channel %r: it sees no "
                        "events there until it is added",
                        w.index,
                        w.name,
                        name,
                    )
                    continue
                excluded = [
                    c
                    for c in found.values()
                    if w.channel_types is not None and c.type not in w.channel_types
                ]
                for c in excluded:
                    log.warning(
                        "webhook[%d] %s: channel %r is of type %s, which its channel_types "
                        "exclude: it never fires there",
                        w.index,
                        w.name,
                        name,
                        c.type,
                    )

    async def _check_server_settings(self) -> None:
        s = self.config.sidecar
        if not (s.enable_post_username_override or s.enable_post_icon_override):
            return
        try:
            server = await self.rest.client_config()
        except MattermostError as exc:
            log.warning("could not read the server's client config: %s", exc)
            return
        for ours, theirs in (
            (s.enable_post_username_override, "EnablePostUsernameOverride"),
            (s.enable_post_icon_override, "EnablePostIconOverride"),
        ):
            if ours and server.get(theirs) != "true":
                log.warning(
                    "the server's %s is off: replies will not show the overridden %s",
                    theirs,
                    "username" if "Username" in theirs else "icon",
                )

    # -- the pipeline ------------------------------------------------------------------------

    async def _dispatcher(self) -> None:
        """Feeds the dispatcher, one item at a time, in the websocket's order."""
        assert self.dispatcher is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                if isinstance(item, Connected):
                    await self._connected(item)
                elif isinstance(item, Joined):
                    await self.dispatcher.catch_up_channels(item.channels)
                    self.joins_caught_up += 1
                elif isinstance(item, ChannelOpened | MemberAdded):
                    if item.channel_id:
                        self.rest.forget_channel(item.channel_id)  # its type may have changed
                    if self.joiner is not None:
                        self.joiner.hint(item)
                else:
                    await self.dispatcher.dispatch(item)
            except Unauthorized:
                raise
            except Exception:
                log.exception("failed to process %s", type(item).__name__)

    async def _connected(self, item: Connected) -> None:
        assert self.dispatcher is not None
        self.metrics.connected.set(1)
        if not self._ready_once:
            self._ready_once = True
            self.notifier.ready(f"connected; {len(self.config.webhooks)} webhooks")
        if item.gap:
            await self.dispatcher.gap()

    async def _check_token(self) -> None:
        """Raise Unauthorized if the server no longer accepts the bot token (for the gateway)."""
        await self.rest.me()

    async def _housekeeping(self) -> None:
        """Watchdog pings while healthy, and pruning of old processed keys."""
        interval = self.notifier.watchdog_interval()
        tick = min(interval, 30.0) if interval else 30.0
        last_connected = time.monotonic()
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self.gateway.connected:
                last_connected = now
            # Healthy = connected, or reconnecting for less than five minutes.
            if interval and now - last_connected < 300:
                self.notifier.watchdog()
            if now - last_prune > 600:
                last_prune = now
                window = int(self.config.sidecar.catch_up_window * 1000)
                horizon = self.rest.server_now_ms() - window - 60_000  # server time
                if self.dispatcher is not None:
                    self.dispatcher.prune(horizon)
