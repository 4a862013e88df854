"""One built pipeline: websocket → queue → dispatcher → outbox (→ replies), with the joiner, the
history keeper and housekeeping beside it.

``Sidecar.begin`` builds it once the bot is logged in and the state is read (with HA, at each
takeover); every member exists from construction on. Its life is named phases, as uvicorn's
server: ``main_loop`` runs the named tasks until a stop, a fatal error or a task's end, then
``shutdown`` stops reading (the websocket), drains (the events already received, then the
jobs in flight, each within the grace) and cancels the rest, whose rows stay in the outbox.
Flushing the state and closing the clients is the ``Sidecar``'s (they outlive a term).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.backend import StateBackend
from sidecar.config import Config
from sidecar.delivery import DELIVERY_RETRY, USER_AGENT, CallbackClient
from sidecar.dispatch import Dispatcher
from sidecar.errors import Unauthorized
from sidecar.events import ChannelOpened, MemberAdded
from sidecar.gateway import Connected, Gateway, Item, Status
from sidecar.health import Metrics
from sidecar.housekeeping import Housekeeping
from sidecar.join import Joined, Joiner
from sidecar.mattermost import RestClient
from sidecar.models import User
from sidecar.notify import Notifier
from sidecar.outbox import Outbox
from sidecar.redelivery import HistoryKeeper
from sidecar.replies import REPLY_RETRY, Replier
from sidecar.retry import RetryPolicy
from sidecar.runtime import Live
from sidecar.state import Snapshot

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000  # events received and not dispatched yet; the reader waits when it is full
GATEWAY_CLOSE_TIMEOUT = 5.0  # seconds for the websocket task to end once told to stop


class Inbox:
    """The bounded FIFO between the websocket (and the joiner) and the pump, its one reader.

    What ``asyncio.Queue`` does here, for less: no ``task_done`` bookkeeping (an ``Event``
    cleared on every put) and no deques of waiting getters, which on a lone post cost about
    as much as dispatching it. Writers wait while it holds ``maxsize`` items.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: deque[Item | Joined | None] = deque()
        self._maxsize = maxsize
        self._reader: asyncio.Future[None] | None = None  # the pump, waiting for an item
        self._room = asyncio.Event()  # set while below maxsize
        self._room.set()

    def qsize(self) -> int:
        """Items held."""
        return len(self._items)

    def put_nowait(self, item: Item | Joined | None) -> None:
        """Add ``item``; raise ``asyncio.QueueFull`` when ``maxsize`` items are held."""
        items = self._items
        if len(items) >= self._maxsize:
            raise asyncio.QueueFull
        items.append(item)
        if len(items) >= self._maxsize:
            self._room.clear()
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    async def put(self, item: Item | Joined | None) -> None:
        """Add ``item``, once there is room."""
        while len(self._items) >= self._maxsize:
            await self._room.wait()
        self.put_nowait(item)

    async def get(self) -> Item | Joined | None:
        """The oldest item, once there is one (one reader at a time)."""
        items = self._items
        while not items:
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        item = items.popleft()
        if len(items) < self._maxsize:
            self._room.set()
        return item


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
    delivery_retry: RetryPolicy = DELIVERY_RETRY  # waits between attempts of a callback
    reply_retry: RetryPolicy = REPLY_RETRY  # waits between attempts to post a reply
    outbox_backlog: int | None = None  # jobs held in memory (None: outbox.BACKLOG_PER_SLOT…)


DEFAULT_TUNING = Tuning()


class Pipeline:
    """The running parts of one (active) term. Constructing it does no I/O."""

    def __init__(
        self,
        *,
        queue: Inbox,
        gateway: Gateway,
        dispatcher: Dispatcher,
        outbox: Outbox,
        joiner: Joiner,
        history: HistoryKeeper,
        housekeeping: Housekeeping,
        rest: RestClient,
        metrics: Metrics,
        on_connected: Callable[[], None],
    ) -> None:
        self.queue = queue
        self.gateway = gateway
        self.dispatcher = dispatcher
        self.outbox = outbox
        self.joiner = joiner
        self.history = history
        self.housekeeping = housekeeping
        self._rest = rest
        self._metrics = metrics
        self._on_connected = on_connected
        self.joins_caught_up = 0  # Joined items the dispatcher finished (tests wait on it)
        self._gateway_stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- main loop ---------------------------------------------------------------------------

    async def main_loop(self, *until: asyncio.Event) -> BaseException | None:
        """Run the named tasks until one of ``until`` is set or a task ends.

        Returns the exception of a task that failed (the caller decides what it means).
        """
        self._tasks = {
            "gateway": asyncio.create_task(self.gateway.run(self._gateway_stop), name="gateway"),
            "dispatcher": asyncio.create_task(self.pump(), name="dispatcher"),
            "housekeeping": asyncio.create_task(self.housekeeping.run(), name="housekeeping"),
            "history": asyncio.create_task(self.history.run(), name="history"),
            "joiner": asyncio.create_task(self.joiner.run(), name="joiner"),
        }
        waiters = {asyncio.create_task(e.wait(), name="stop-signal") for e in until}
        try:
            done, _ = await asyncio.wait(
                set(self._tasks.values()) | waiters, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()
        for task in done - waiters:
            if task.exception() is not None:
                return task.exception()
        return None

    async def pump(self) -> None:
        """Feed the dispatcher, one item at a time, in the websocket's order."""
        while True:
            item = await self.queue.get()
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
                        self._rest.forget_channel(item.channel_id)  # its type may have changed
                    self.joiner.hint(item)
                else:
                    await self.dispatcher.dispatch(item)
            except Unauthorized:
                raise
            except Exception:
                log.exception("failed to process %s", type(item).__name__)

    async def _connected(self, item: Connected) -> None:
        self._metrics.connected.set(1)
        self._on_connected()
        if item.gap:
            await self.dispatcher.gap()

    # -- shutdown, in phases -----------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop reading → finish the events received → drain the jobs → cancel the rest.

        One ``grace`` for both: with a full outbox the dispatcher waits for deliveries, so
        finishing the events received may take part of it (what is not dispatched by then is
        not recorded either: the next start catches it up)."""
        await self.stop_reading()
        deadline = time.monotonic() + grace
        await self.finish_received(grace)
        await self.cancel_tasks()
        in_flight = self.outbox.depth
        left = await self.outbox.drain(max(0.0, deadline - time.monotonic()))
        c = self.outbox.counters
        log.info(
            "stopped: %d delivered, %d failed, %d replies; %d of %d in-flight jobs finished, "
            "%d left in the outbox for the next start",
            c.delivered,
            c.failed,
            self.outbox.replier.posted,
            in_flight - left,
            in_flight,
            left,
        )

    async def stop_reading(self) -> None:
        """Close the websocket; no event is read after this."""
        self._gateway_stop.set()
        await self.gateway.close()
        gateway = self._tasks.get("gateway")
        if gateway is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(gateway, GATEWAY_CLOSE_TIMEOUT)

    async def finish_received(self, grace: float) -> None:
        """Let the dispatcher process what was already received (no network but lookups)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)
        dispatcher = self._tasks.get("dispatcher")
        if dispatcher is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(dispatcher, grace)

    async def cancel_tasks(self) -> None:
        """Cancel every task still running and wait for them."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def build_pipeline(
    *,
    me: User,
    live: Live,
    snapshot: Snapshot,
    config: Config,
    tuning: Tuning,
    state: StateBackend,
    rest: RestClient,
    callbacks: CallbackClient,
    metrics: Metrics,
    notifier: Notifier,
    on_status: Callable[[Status], None],
    on_fatal: Callable[[BaseException], None],
    on_connected: Callable[[], None],
) -> Pipeline:
    """Wire one pipeline (no I/O). Its parts read config only through ``live`` (the settings
    fixed at start, as the server URL or ``max_in_flight``, come from ``config``)."""
    t, s = tuning, config.sidecar

    async def check_token() -> None:
        """Raise Unauthorized if the server no longer accepts the bot token (for the gateway)."""
        await rest.me()

    queue = Inbox(QUEUE_SIZE)
    gateway = Gateway(
        config.mattermost.url,
        config.mattermost.token,
        queue.put,
        ping_interval=t.ping_interval,
        pong_timeout=t.pong_timeout,
        backoff_base=t.backoff_base,
        backoff_cap=t.backoff_cap,
        user_agent=USER_AGENT,
        on_status=on_status,
        check_auth=check_token,
    )
    outbox = Outbox(
        state=state,
        callbacks=callbacks,
        replier=Replier(rest=rest, metrics=metrics, retry=t.reply_retry),
        metrics=metrics,
        live=live,
        max_in_flight=s.max_in_flight,
        on_fatal=on_fatal,
        delivery_retry=t.delivery_retry,
        backlog=t.outbox_backlog,
    )
    dispatcher = Dispatcher(
        rest=rest,
        state=state,
        outbox=outbox,
        metrics=metrics,
        live=live,
        me=me,
        snapshot=snapshot,
        retry_base=t.retry_base,
    )
    joiner = Joiner(
        rest=rest,
        me=me,
        metrics=metrics,
        rules=lambda: live.runtime.rules,
        enabled=lambda: live.runtime.join_public_channels,
        interval=lambda: live.runtime.join_interval,
        window=lambda: live.runtime.catch_up_window,
        floor=lambda: dispatcher.position,
        submit=queue.put,
    )
    history = HistoryKeeper(
        state=state,
        outbox=outbox,
        metrics=metrics,
        retention=lambda: live.runtime.retention,
        poll_interval=t.history_poll,
        prune_every=t.history_prune_every,
    )
    housekeeping = Housekeeping(
        gateway=gateway, dispatcher=dispatcher, notifier=notifier, live=live
    )
    return Pipeline(
        queue=queue,
        gateway=gateway,
        dispatcher=dispatcher,
        outbox=outbox,
        joiner=joiner,
        history=history,
        housekeeping=housekeeping,
        rest=rest,
        metrics=metrics,
        on_connected=on_connected,
    )
