"""The outbox runner: each job goes deliver → reply → done, durably, concurrently, bounded.

A job is one callback URL of one matched webhook for one event. Its row is committed before
the first attempt and deleted when it is finished (reply posted, no reply wanted, or finally
failed), so a crash at any point resumes it: a receiver may then see a retry, always with the
same ``webhook-id``. At most ``max_in_flight`` callback requests run at once; the rest wait
here (their rows are already in the outbox), and one slow callback holds only its own slot.
At most ``backlog`` jobs are held in memory: beyond that the dispatcher waits (``room``) for
deliveries to finish, so a burst or a long catch-up is handed over at the pace it is delivered
instead of becoming one task per job at once (the websocket's queue and the posts not yet
caught up wait upstream).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from sidecar import history
from sidecar.backend import StateBackend
from sidecar.config import WebhookConfig
from sidecar.delivery import DELIVERY_RETRY, USER_AGENT, Attempt, Failure
from sidecar.health import Metrics
from sidecar.payload import request_headers, signature_headers
from sidecar.replies import Replier
from sidecar.retry import RetryPolicy
from sidecar.runtime import Live, Runtime
from sidecar.state import Job

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)  # a handful of configured URLs, each logged per delivery
def safe_url(url: str) -> str:
    """A callback URL fit for a log line: no query (it may carry a secret), no credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Callbacks(Protocol):
    """What the outbox needs of the callback client (``delivery.CallbackClient``)."""

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> Attempt:
        """POST once; never raises for network or HTTP trouble."""


@dataclass(slots=True)
class Counters:
    """Totals for the shutdown summary and tests."""

    delivered: int = 0
    failed: int = 0
    dropped: int = 0  # not delivered: a reload removed the webhook or the callback URL
    dead_letters: int = 0  # dead letters whose history row is committed (the gauge recounts)


#: Jobs held in memory per callback slot (``max_in_flight``) before the dispatcher waits;
#: at least BACKLOG_MIN.
BACKLOG_PER_SLOT = 16
BACKLOG_MIN = 1024
FULL_LOG_EVERY = 60.0  # seconds between two "outbox full" lines


class Outbox:
    """Runs jobs; owns their tasks. Constructing it does no I/O."""

    def __init__(
        self,
        *,
        state: StateBackend,
        callbacks: Callbacks,
        replier: Replier,
        metrics: Metrics,
        live: Live,
        max_in_flight: int,
        on_fatal: Callable[[BaseException], None],
        delivery_retry: RetryPolicy = DELIVERY_RETRY,
        backlog: int | None = None,
    ) -> None:
        self._delivery_retry = delivery_retry
        self.backlog = backlog or max(BACKLOG_PER_SLOT * max_in_flight, BACKLOG_MIN)
        self._low_water = self.backlog * 3 // 4  # a waiting dispatcher resumes at this depth
        self._room = asyncio.Event()  # set while at most ``_low_water`` jobs are held
        self._room.set()
        self._full_logged = -FULL_LOG_EVERY  # monotonic time of the last "outbox full" line
        self._waits = 0  # waits for room since that line …
        self._waited = 0.0  # … and their seconds
        self._state = state
        self._callbacks = callbacks
        self.replier = replier
        self._metrics = metrics
        self._live = live  # see sidecar.runtime for which runtime each step reads
        self._slots = asyncio.Semaphore(max_in_flight)
        self._slots_total = max_in_flight
        self._on_fatal = on_fatal
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()  # job ids queued or in flight (redelivery skips them)
        self.counters = Counters()
        # Read when scraped, not set on every change (two updates per delivery otherwise).
        metrics.outbox_depth.set_function(lambda: len(self._tasks))

    @property
    def depth(self) -> int:
        """Jobs not finished yet."""
        return len(self._tasks)

    @property
    def has_room(self) -> bool:
        """Fewer than ``backlog`` jobs are held: the dispatcher may hand over more."""
        return len(self._tasks) < self.backlog

    async def room(self) -> None:
        """Wait until the held jobs are down to three quarters of ``backlog`` (so one wait
        lets a quarter through, not one job). Logged at most once a minute, with what was
        waited since the last line (a sustained overload waits many times a second)."""
        if self.has_room:
            return
        started = time.monotonic()
        if started - self._full_logged >= FULL_LOG_EVERY:
            log.info(
                "outbox full (%d jobs held, %d in flight at most): dispatching waits for "
                "deliveries (since the last such line: %d waits, %.1f s)",
                len(self._tasks),
                self._slots_total,
                self._waits,
                self._waited,
            )
            self._full_logged, self._waits, self._waited = started, 0, 0.0
        while len(self._tasks) > self._low_water:
            self._room.clear()
            await self._room.wait()
        self._waits += 1
        self._waited += time.monotonic() - started

    def running(self, job_id: str) -> bool:
        """Whether this job is queued or in flight here (a redelivery of it must wait)."""
        return job_id in self._running

    def submit(self, jobs: list[Job], committed: Awaitable[None]) -> None:
        """Run jobs once ``committed`` (their rows' commit) resolves, each with the runtime
        current now (see ``_run_job``)."""
        shared = asyncio.ensure_future(committed)
        runtime = self._live.runtime
        for job in jobs:
            self._running.add(job.id)
            task = asyncio.create_task(self._run(job, shared, runtime), name=f"job {job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) <= self._low_water:
            self._room.set()
        if not task.cancelled() and task.exception() is not None:
            self._on_fatal(task.exception())  # type: ignore[arg-type]

    async def drain(self, grace: float) -> int:
        """Let running jobs finish for up to ``grace`` s; cancel the rest (their rows stay).

        Returns how many were left unfinished.
        """
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
        return len(left)

    # -- one job -----------------------------------------------------------------------------

    async def _run(self, job: Job, committed: Awaitable[None], runtime: Runtime) -> None:
        try:
            await self._run_job(job, committed, runtime)
        finally:
            self._running.discard(job.id)

    async def _run_job(self, job: Job, committed: Awaitable[None], runtime: Runtime) -> None:
        """deliver → reply → finish. The job's webhook and its reply (settings, username,
        icon) come from ``runtime``, the one current when the job was submitted; only each
        delivery attempt reads the current runtime (``_deliver``)."""
        await committed
        webhook = runtime.webhook_of(job.webhook, job.url)
        if job.stage == "deliver":
            current = self._still_configured(job)
            webhook = None if current is None else webhook or current
        elif webhook is None:
            log.warning("dropped job %s: webhook %r is no longer configured", job.id, job.webhook)
        if webhook is None:
            await self._finish(job, history.FAILED, error="no longer configured (reload)")
            return
        wait = job.next_at - self._delivery_retry.clock()
        if wait > 0:  # resumed after a restart while waiting to retry
            log.info(
                "job %s: next attempt in %.1f s, as scheduled before the restart", job.id, wait
            )
            await self._delivery_retry.sleep(wait)
        attempt: Attempt | None = None
        if job.stage == "deliver":
            attempt = await self._deliver(job)
            if attempt is None:  # a reload removed the callback URL (logged, counted)
                await self._finish(job, history.FAILED, error="no longer configured (reload)")
                return
            if attempt.status is None:  # no answer after the retries (logged by _deliver)
                refused = attempt.failure is Failure.REFUSED
                await self._finish(job, history.REFUSED if refused else history.FAILED, attempt)
                return
            delivered = (
                f"delivered webhook={webhook.name} post={job.post_id} url={safe_url(job.url)} "
                f"status={attempt.status} in {attempt.elapsed_ms:.0f} ms (attempt {job.attempts})"
            )
            if attempt.error:  # an answer came but cannot be used (over 1 MiB)
                self._metrics.child(self._metrics.replies, "rejected").inc()
                log.warning("%s; no reply webhook=%s: %s", delivered, webhook.name, attempt.error)
                await self._finish(job, history.NO_REPLY, attempt, error=attempt.error)
                return
            # Not written to disk: a crash before the reply is posted makes the callback see
            # the request again, with the same webhook-id (at least once, as promised), and
            # saves a write per delivery on the hot path.
            job.stage, job.response = "reply", attempt.body
        else:
            delivered = f"delivered webhook={webhook.name} post={job.post_id} before a restart"
        outcome, error = await self.replier.reply(job, webhook, runtime.reply, delivered)
        if attempt is not None and attempt.retryable:  # a final 5xx/429: still a dead letter
            outcome, error = history.FAILED, f"status {attempt.status}"
        await self._finish(job, outcome, attempt, error=error)

    def _still_configured(self, job: Job) -> WebhookConfig | None:
        """The job's webhook in the current runtime; None (logged, counted) when a reload
        removed the webhook or this callback URL from it: that URL gets no further traffic."""
        webhook = self._live.runtime.webhook_of(job.webhook, job.url)
        if webhook is not None and job.url in webhook.callback_urls:
            return webhook
        self.counters.dropped += 1
        if webhook is not None:
            self._metrics.child(self._metrics.deliveries, webhook.name, "dropped").inc()
        log.warning(
            "delivery dropped webhook=%s post=%s url=%s: %s no longer configured; "
            "not delivered (%d attempt(s) made)",
            job.webhook,
            job.post_id,
            safe_url(job.url),
            "the webhook is" if webhook is None else "this callback URL is",
            job.attempts,
        )
        return None

    async def _finish(
        self, job: Job, outcome: history.Outcome, attempt: Attempt | None = None, *, error: str = ""
    ) -> None:
        """Delete the job's outbox row and write its history row, in one transaction."""
        if not error and attempt is not None and outcome in history.DEAD:
            error = attempt.error or f"status {attempt.status}"
        entry = history.entry(
            job,
            job.delivery_id or new_delivery_id(),
            outcome,
            None if attempt is None else attempt.status,
            0.0 if attempt is None else attempt.elapsed_ms,
            error,
            None if attempt is None else attempt.body,
            time.time(),
        )
        await self._state.finish_job(job.id, entry)
        if outcome in history.DEAD:
            self.counters.dead_letters += 1

    async def _deliver(self, job: Job) -> Attempt | None:
        """Call the callback, retrying as configured; the last attempt, or None when a reload
        removed the callback URL meanwhile.

        Each attempt reads the webhook's current config (timeout, retries, signing secrets),
        so a reload applies to queued jobs; the body was built at match time.
        """
        url = safe_url(job.url)
        while True:
            webhook = self._still_configured(job)
            if webhook is None:
                return None
            async with self._slots:
                headers = request_headers(job.content_type, job.webhook_id, USER_AGENT)
                headers.update(
                    signature_headers(
                        job.webhook_id, int(time.time()), job.body, webhook.signing_secrets
                    )
                )
                attempt = await self._callbacks.send(
                    job.url, job.body, headers, timeout=webhook.timeout
                )
            job.attempts += 1
            job.headers = headers
            self._metrics.child(self._metrics.delivery_seconds, webhook.name).observe(
                attempt.elapsed_ms / 1000
            )
            retry = attempt.retryable and job.attempts <= webhook.retries
            if attempt.status is not None and not retry and not attempt.retryable:
                self.counters.delivered += 1
                self._metrics.child(self._metrics.deliveries, webhook.name, "delivered").inc()
                return attempt  # logged with the reply's outcome, in one line
            what = attempt.error or f"status {attempt.status}"
            if not retry:
                # No answer, or a final 5xx/429 (whose body is still the reply, as in
                # Mattermost): a dead letter, named for `mm-sidecar redeliver`.
                self.counters.failed += 1
                outcome = history.REFUSED if attempt.failure is Failure.REFUSED else history.FAILED
                self._metrics.child(self._metrics.deliveries, webhook.name, outcome).inc()
                job.delivery_id = job.delivery_id or new_delivery_id()
                log.error(
                    "delivery %s webhook=%s post=%s url=%s: %s (attempt %d, giving up); "
                    "id=%s: `mm-sidecar redeliver %s` sends it again",
                    outcome,
                    webhook.name,
                    job.post_id,
                    url,
                    what,
                    job.attempts,
                    job.delivery_id,
                    job.delivery_id,
                )
                return attempt
            delay = self._delivery_retry.delay(job.attempts - 1, attempt.retry_after)
            self._metrics.child(self._metrics.deliveries, webhook.name, "retried").inc()
            # Kept with the job (committed before we say so), so that a restart waits out a
            # Retry-After too and counts the attempts made.
            job.next_at = self._delivery_retry.clock() + delay
            await self._state.update_job(job)
            log.warning(
                "delivery failed webhook=%s post=%s url=%s: %s (attempt %d of %d); "
                "retrying in %.1f s",
                webhook.name,
                job.post_id,
                url,
                what,
                job.attempts,
                webhook.retries + 1,
                delay,
            )
            await self._delivery_retry.sleep(delay)


def new_delivery_id() -> str:
    """A history row's id, short enough to type: 12 hex digits."""
    return secrets.token_hex(6)
