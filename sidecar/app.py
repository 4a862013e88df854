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
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sidecar import __version__
from sidecar.catchup import collect, edit_key
from sidecar.config import Config, WebhookConfig
from sidecar.delivery import USER_AGENT, CallbackClient
from sidecar.events import ChannelUpdated, Posted, PostEdited, ReactionAdded, UserUpdated
from sidecar.gateway import Connected, Gateway, Item
from sidecar.health import HealthServer, Metrics
from sidecar.mattermost import MattermostError, RestClient, Unauthorized
from sidecar.models import Channel, EventName, Post, Reaction, Team, User
from sidecar.notify import Notifier
from sidecar.outbox import Outbox
from sidecar.payload import build_request
from sidecar.reply import ReplySettings
from sidecar.rules import Context, RuleSet
from sidecar.state import Job, State

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_SIZE = 10_000
LOOKUP_ATTEMPTS = 4  # quiet retries of a lookup before each further retry is logged
RETRY_CAP = 30.0  # seconds: the longest wait between two tries of a lookup or a catch-up
POSITION_KEY = ""  # the cursor row holding where processing began (no channel has this id)


def now_ms() -> int:
    """Wall-clock milliseconds, Mattermost's time unit."""
    return int(time.time() * 1000)


def _retry_delay(attempt: int, retry_after: float | None, base: float) -> float:
    """``base`` doubling to RETRY_CAP, jittered; at least the server's Retry-After."""
    delay = min(RETRY_CAP, base * 2.0 ** min(attempt, 16)) * random.uniform(0.5, 1.0)
    return max(delay, min(retry_after or 0.0, RETRY_CAP))


def _excerpt(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Tuning:
    """Timings that tests shorten; the defaults are the production ones."""

    ping_interval: float = 30.0
    pong_timeout: float = 20.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_base: float = 0.25  # first wait before a failed lookup or catch-up is tried again


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
        self.state = State(config.sidecar.state_dir)
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
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue(QUEUE_SIZE)
        self.gateway = Gateway(
            config.mattermost.url,
            config.mattermost.token,
            self._queue.put,
            ping_interval=tuning.ping_interval,
            pong_timeout=tuning.pong_timeout,
            backoff_base=tuning.backoff_base,
            backoff_cap=tuning.backoff_cap,
            user_agent=USER_AGENT,
            on_status=self._status,
            check_auth=self._check_token,
        )
        self.health: HealthServer | None = None
        self.me = User(id="", username="")
        self.rules = RuleSet(config.webhooks, bot_user_id="")
        self._webhooks = {w.name: w for w in config.webhooks}
        self.outbox: Outbox | None = None
        self._cursors: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._fresh = True
        self._position = now_ms()
        self._ready_once = False
        self._stopping = False
        self._fatal: BaseException | None = None
        self._fatal_event = asyncio.Event()
        self._started = False

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
        """Open state, log in, start clients and the health server, resume the outbox."""
        snapshot = await asyncio.to_thread(self.state.open)
        self._started = True
        self.state.start_writer()
        self._fresh = snapshot.fresh and not snapshot.cursors
        self._cursors = snapshot.cursors
        self._seen = snapshot.seen
        if snapshot.cursors:
            self._position = max(snapshot.cursors.values())
        await self.rest.start()
        self.me = await self.rest.me()
        log.info("logged in to %s as @%s", self.config.mattermost.url, self.me.username)
        self.rules = RuleSet(self.config.webhooks, bot_user_id=self.me.id)
        await self._check_server_settings()
        await self.callbacks.start()
        self.outbox = Outbox(
            state=self.state,
            callbacks=self.callbacks,
            rest=self.rest,
            metrics=self.metrics,
            webhook=self._webhooks.get,
            reply_settings=self._reply_settings,
            max_in_flight=self.config.sidecar.max_in_flight,
            on_fatal=self._set_fatal,
        )
        if self.config.sidecar.listen:
            self.health = HealthServer(self.config.sidecar.listen, self.metrics, self.readiness)
            await self.health.start()
            log.info("health and metrics on http://%s", self.config.sidecar.listen)
        if snapshot.jobs:
            log.info("resuming %d unfinished deliveries from the outbox", len(snapshot.jobs))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            self.outbox.submit(snapshot.jobs, done)

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
        assert self.outbox is not None, "start() first"
        gateway_stop = asyncio.Event()
        tasks = {
            asyncio.create_task(self.gateway.run(gateway_stop), name="gateway"),
            asyncio.create_task(self._dispatcher(), name="dispatcher"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        }
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
                await asyncio.wait_for(dispatcher, self.config.sidecar.shutdown_timeout)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            in_flight = self.outbox.depth
            left = await self.outbox.drain(self.config.sidecar.shutdown_timeout)
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

    def _set_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
            log.error("fatal: %s", exc)
        self._fatal_event.set()

    def readiness(self) -> tuple[bool, str]:
        """Ready = the websocket is authenticated and the hello came."""
        if self._stopping:
            return False, "stopping"
        if not self.gateway.connected:
            return False, "websocket not connected"
        return True, "ready"

    def _status(self, text: str) -> None:
        if text.startswith("reconnecting"):
            self.metrics.reconnects.inc()
        self.notifier.status(f"{text}; {len(self.config.webhooks)} webhooks")

    # -- reload --------------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Swap in a new, already validated config: new rules apply to the next event."""
        old = self.config
        self.notifier.reloading()
        if config.mattermost != old.mattermost:
            log.warning("reload: [mattermost] changes take effect only after a restart")
        for key in (
            "state_dir",
            "listen",
            "max_in_flight",
            "allowed_untrusted_internal_connections",
        ):
            if getattr(config.sidecar, key) != getattr(old.sidecar, key):
                log.warning("reload: [sidecar] %s takes effect only after a restart", key)
        self.rules = RuleSet(config.webhooks, bot_user_id=self.me.id)
        self._webhooks.clear()
        self._webhooks.update({w.name: w for w in config.webhooks})
        self.config = config
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded: %d webhooks", len(config.webhooks))
        self.notifier.ready(f"connected; {len(config.webhooks)} webhooks")

    def _reply_settings(self) -> ReplySettings:
        s = self.config.sidecar
        return ReplySettings(
            enable_post_username_override=s.enable_post_username_override,
            enable_post_icon_override=s.enable_post_icon_override,
            max_post_size=self.config.mattermost.max_post_size,
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
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self._dispatch(item)
            except Unauthorized:
                raise
            except Exception:
                log.exception("failed to process %s", type(item).__name__)

    async def _dispatch(self, item: Item) -> None:
        if isinstance(item, Connected):
            await self._connected(item)
            return
        if isinstance(item, ChannelUpdated):
            self.rest.forget_channel(item.channel_id)
            return
        if isinstance(item, UserUpdated):
            self.rest.forget_user(item.user_id)
            return
        if isinstance(item, Posted):
            self.metrics.events.labels("posted").inc()
            post = item.post
            channel = None
            if item.channel_type in ("O", "P", "D", "G") and item.channel_name:
                channel = Channel(
                    id=post.channel_id,
                    team_id=item.team_id,
                    type=item.channel_type,  # type: ignore[arg-type]
                    name=item.channel_name,
                )
            await self._post_event("posted", post, post.user_id, channel=channel)
        elif isinstance(item, PostEdited):
            self.metrics.events.labels("post_edited").inc()
            await self._post_event("post_edited", item.post, item.post.user_id)
        elif isinstance(item, ReactionAdded):
            self.metrics.events.labels("reaction_added").inc()
            await self._reaction(item.reaction)

    async def _connected(self, item: Connected) -> None:
        if not self._ready_once:
            self._ready_once = True
            self.notifier.ready(f"connected; {len(self.config.webhooks)} webhooks")
        if not item.gap:
            return
        if self._fresh:
            # First start: begin at the present, replay no history.
            self._fresh = False
            self._position = now_ms()
            # Saved, so that a restart catches up from here even if nothing was processed
            # meanwhile (per-channel cursors exist only for channels that had a post).
            self._cursors[POSITION_KEY] = self._position
            self.state.processed(POSITION_KEY, self._position, [], self._position)
            log.info("first start: processing begins now; no history is replayed")
            return
        self.metrics.gaps.inc()
        await self._catch_up()

    async def _catch_up(self) -> None:
        started = time.monotonic()
        default = max([self._position, *self._cursors.values()])
        log.info("catching up over REST from the last processed post")
        attempt = 0
        while True:
            # A catch-up that fails is tried again (the dispatcher waits: later events must
            # not move the cursors past what is still missing), until it works or we stop.
            window_start = now_ms() - int(self.config.sidecar.catch_up_window * 1000)
            try:
                found = await collect(
                    self.rest,
                    self.rules,
                    cursors=self._cursors,
                    default_cursor=default,
                    window_start=window_start,
                    seen=self._seen,
                )
                break
            except Unauthorized:
                raise
            except MattermostError as exc:
                if not exc.retryable:
                    log.error("catch-up failed: %s; it will be tried after the next gap", exc)
                    return
                delay = _retry_delay(attempt, exc.retry_after, self._tuning.retry_base)
                attempt += 1
                log.error("catch-up failed: %s; trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        for event, post, channel, team in found.items:
            await self._post_event(event, post, post.user_id, channel=channel, team=team)
        self.metrics.caught_up_posts.inc(len(found.items))
        if found.skipped_old:
            log.warning(
                "catch-up skipped %d posts older than catch_up_window (%.0f s)",
                found.skipped_old,
                self.config.sidecar.catch_up_window,
            )
        log.info(
            "caught up: %d channels, %d posts fetched, %d processed, %d skipped as too old, "
            "in %.2f s",
            found.channels,
            found.fetched,
            len(found.items),
            found.skipped_old,
            time.monotonic() - started,
        )

    async def _lookup(self, fn: Callable[[str], Awaitable[T]], arg: str) -> T:
        """A cached REST lookup, retried for as long as the server's failure is temporary.

        Skipping the event instead would lose it for good: the next post of the channel
        moves its cursor past it. The dispatcher waits; the websocket reader goes on
        queueing until the queue (QUEUE_SIZE) is full.
        """
        attempt = 0
        while True:
            try:
                return await fn(arg)
            except Unauthorized:
                raise
            except MattermostError as exc:
                if not exc.retryable:
                    raise
                delay = _retry_delay(attempt, exc.retry_after, self._tuning.retry_base)
                attempt += 1
                if attempt >= LOOKUP_ATTEMPTS:
                    log.warning("lookup failed: %s; trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _check_token(self) -> None:
        """Raise Unauthorized if the server no longer accepts the bot token (for the gateway)."""
        await self.rest.me()

    async def _post_event(
        self,
        event: EventName,
        post: Post,
        actor_id: str,
        *,
        channel: Channel | None = None,
        team: Team | None = None,
        reaction: Reaction | None = None,
    ) -> None:
        if post.user_id == self.me.id or post.from_webhook or post.is_system:
            return  # never fires; skip the lookups
        if not self.rules.listens_for(event):
            return
        if event == "posted":
            key = post.id
        elif event == "post_edited":
            key = edit_key(post)
        else:
            assert reaction is not None
            key = f"{post.id}:r:{reaction.user_id}:{reaction.emoji_name}"
        if key in self._seen:
            return
        try:
            if channel is None:
                channel = await self._lookup(self.rest.channel, post.channel_id)
            if team is None and channel.team_id:
                team = await self._lookup(self.rest.team, channel.team_id)
            actor = await self._lookup(self.rest.user, actor_id)
        except Unauthorized:
            raise
        except MattermostError as exc:
            log.error("skipped %s post=%s: lookup failed: %s", event, post.id, exc)
            return
        ctx = Context(
            event=event, post=post, channel=channel, team=team, actor=actor, reaction=reaction
        )
        self._handle(ctx, key)

    async def _reaction(self, reaction: Reaction) -> None:
        if reaction.user_id == self.me.id or not self.rules.listens_for("reaction_added"):
            return
        try:
            post = await self._lookup(self.rest.post, reaction.post_id)
        except Unauthorized:
            raise
        except MattermostError as exc:
            log.error("skipped reaction on post=%s: %s", reaction.post_id, exc)
            return
        await self._post_event("reaction_added", post, reaction.user_id, reaction=reaction)

    def _handle(self, ctx: Context, key: str) -> None:
        """Match one event and hand its jobs to the outbox; record it as processed."""
        assert self.outbox is not None
        post = ctx.post
        jobs: list[Job] = []
        for match in self.rules.match(ctx):
            webhook: WebhookConfig = match.webhook
            self.metrics.matches.labels(webhook.name).inc()
            log.info(
                "matched webhook=%s event=%s post=%s channel=%s user=@%s trigger=%r text=%r",
                webhook.name,
                ctx.event,
                post.id,
                ctx.channel.name,
                ctx.actor.username,
                match.trigger_word,
                _excerpt(post.message),
            )
            request = build_request(match, ctx, user_agent=USER_AGENT)
            for i, url in enumerate(webhook.callback_urls):
                jobs.append(
                    Job(
                        id=f"{request.webhook_id}/{i}",
                        webhook=webhook.name,
                        url=url,
                        webhook_id=request.webhook_id,
                        body=request.body,
                        content_type=request.content_type,
                        event=ctx.event,
                        post_id=post.id,
                        channel_id=post.channel_id,
                        root_id=post.root_id,
                    )
                )
        at = max(post.create_at, post.edit_at, now_ms() if ctx.reaction else 0)
        self._seen[key] = at
        if ctx.event == "posted":
            self._cursors[post.channel_id] = max(
                self._cursors.get(post.channel_id, 0), post.create_at
            )
        committed = self.state.record(
            jobs, post.channel_id, self._cursors.get(post.channel_id, 0), [key], at
        )
        if jobs:
            self.outbox.submit(jobs, committed)

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
                horizon = now_ms() - int(self.config.sidecar.catch_up_window * 1000) - 60_000
                for k in [k for k, at in self._seen.items() if at < horizon]:
                    del self._seen[k]
                self.state.prune_seen(horizon)
