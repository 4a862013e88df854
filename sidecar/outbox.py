"""The outbox runner: each job goes deliver → reply → done, durably, concurrently, bounded.

A job is one callback URL of one matched webhook for one event. Its row is committed before
the first attempt and deleted when it is finished (reply posted, no reply wanted, or finally
failed), so a crash at any point resumes it: a receiver may then see a retry, always with the
same ``webhook-id``. At most ``max_in_flight`` callback requests run at once; the rest wait
here (their rows are already in the outbox), and one slow callback holds only its own slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sidecar.backend import StateBackend
from sidecar.config import WebhookConfig
from sidecar.delivery import USER_AGENT, Attempt, CallbackClient, backoff_delay
from sidecar.health import Metrics
from sidecar.mattermost import MattermostError, RestClient, Unauthorized
from sidecar.models import Post
from sidecar.payload import request_headers, signature_headers
from sidecar.reply import ReplyError, ReplySettings, build_reply, parse_response, response_user_ids
from sidecar.state import Job

log = logging.getLogger(__name__)

REPLY_ATTEMPTS = 6  # posting a reply: 429/5xx/connection errors, then it is given up
PROPS_CHECK_EVERY = 64  # replies between two checks that the server kept the webhook props


def safe_url(url: str) -> str:
    """A callback URL fit for a log line: no query (it may carry a secret), no credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(slots=True)
class Counters:
    """Totals for the shutdown summary and tests."""

    delivered: int = 0
    failed: int = 0
    replies: int = 0


class Outbox:
    """Runs jobs; owns their tasks. Constructing it does no I/O."""

    def __init__(
        self,
        *,
        state: StateBackend,
        callbacks: CallbackClient,
        rest: RestClient,
        metrics: Metrics,
        webhook: Callable[[str], WebhookConfig | None],
        reply_settings: Callable[[], ReplySettings],
        max_in_flight: int,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._state = state
        self._callbacks = callbacks
        self._rest = rest
        self._metrics = metrics
        self._webhook = webhook
        self._reply_settings = reply_settings
        self._slots = asyncio.Semaphore(max_in_flight)
        self._on_fatal = on_fatal
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = Counters()
        self._props_warned = False

    @property
    def depth(self) -> int:
        """Jobs not finished yet."""
        return len(self._tasks)

    def submit(self, jobs: list[Job], committed: Awaitable[None]) -> None:
        """Run jobs once ``committed`` (their rows' commit) resolves."""
        shared = asyncio.ensure_future(committed)
        for job in jobs:
            task = asyncio.create_task(self._run(job, shared), name=f"job {job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._done)
        self._metrics.outbox_depth.set(len(self._tasks))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._metrics.outbox_depth.set(len(self._tasks))
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

    async def _run(self, job: Job, committed: Awaitable[None]) -> None:
        await committed
        webhook = self._webhook(job.webhook)
        if webhook is None:
            log.warning("dropped job %s: webhook %r is no longer configured", job.id, job.webhook)
            await self._state.finish_job(job.id)
            return
        wait = job.next_at - time.time()
        if wait > 0:  # resumed after a restart while waiting to retry
            log.info(
                "job %s: next attempt in %.1f s, as scheduled before the restart", job.id, wait
            )
            await asyncio.sleep(wait)
        if job.stage == "deliver":
            attempt = await self._deliver(job, webhook)
            if attempt is None:
                await self._state.finish_job(job.id)
                return
            delivered = (
                f"delivered webhook={webhook.name} post={job.post_id} url={safe_url(job.url)} "
                f"status={attempt.status} in {attempt.elapsed_ms:.0f} ms (attempt {job.attempts})"
            )
            if attempt.error:  # an answer came but cannot be used (over 1 MiB)
                self._metrics.child(self._metrics.replies, "rejected").inc()
                log.warning("%s; no reply webhook=%s: %s", delivered, webhook.name, attempt.error)
                await self._state.finish_job(job.id)
                return
            # Not written to disk: a crash before the reply is posted makes the callback see
            # the request again, with the same webhook-id (at least once, as promised), and
            # saves a write per delivery on the hot path.
            job.stage, job.response = "reply", attempt.body
        else:
            delivered = f"delivered webhook={webhook.name} post={job.post_id} before a restart"
        await self._reply(job, webhook, delivered)
        await self._state.finish_job(job.id)

    async def _deliver(self, job: Job, webhook: WebhookConfig) -> Attempt | None:
        """Call the callback, retrying as configured; None when no answer came."""
        url = safe_url(job.url)
        while True:
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
            self._metrics.child(self._metrics.delivery_seconds, webhook.name).observe(
                attempt.elapsed_ms / 1000
            )
            retry = attempt.retryable and job.attempts <= webhook.retries
            if attempt.status is not None and not retry:
                self.counters.delivered += 1
                self._metrics.child(self._metrics.deliveries, webhook.name, "delivered").inc()
                return attempt  # logged with the reply's outcome, in one line
            what = attempt.error or f"status {attempt.status}"
            if not retry:
                self.counters.failed += 1
                outcome = "refused" if attempt.error.startswith("address forbidden") else "failed"
                self._metrics.child(self._metrics.deliveries, webhook.name, outcome).inc()
                log.error(
                    "delivery %s webhook=%s post=%s url=%s: %s (attempt %d, giving up)",
                    outcome,
                    webhook.name,
                    job.post_id,
                    url,
                    what,
                    job.attempts,
                )
                return None
            delay = backoff_delay(job.attempts - 1, retry_after=attempt.retry_after)
            self._metrics.child(self._metrics.deliveries, webhook.name, "retried").inc()
            # Kept with the job (committed before we say so), so that a restart waits out a
            # Retry-After too and counts the attempts made.
            job.next_at = time.time() + delay
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
            await asyncio.sleep(delay)

    async def _reply(self, job: Job, webhook: WebhookConfig, delivered: str) -> None:
        """Turn the callback's answer into posts, as Mattermost does (reference §3)."""
        try:
            response = parse_response(job.response or b"")
        except ReplyError as exc:
            self._metrics.child(self._metrics.replies, "rejected").inc()
            log.warning("%s; no reply webhook=%s: %s", delivered, webhook.name, exc)
            return
        if response is None:
            self._metrics.child(self._metrics.replies, "none").inc()
            log.info("%s; no reply webhook=%s: empty response", delivered, webhook.name)
            return
        post = Post(
            id=job.post_id, channel_id=job.channel_id, user_id="", create_at=0, root_id=job.root_id
        )
        usernames = await self._usernames(response)
        try:
            plan = build_reply(
                response,
                webhook=webhook,
                post=post,
                settings=self._reply_settings(),
                usernames=usernames,
            )
        except ReplyError as exc:
            self._metrics.child(self._metrics.replies, "rejected").inc()
            log.warning("%s; reply refused webhook=%s: %s", delivered, webhook.name, exc)
            return
        for warning in plan.warnings:
            log.warning("reply webhook=%s post=%s: %s", webhook.name, job.post_id, warning)
        if not plan.posts:
            self._metrics.child(self._metrics.replies, "none").inc()
            log.info("%s; no reply webhook=%s: nothing to post", delivered, webhook.name)
            return
        for i, body in enumerate(plan.posts):
            body = dict(body)
            body["pending_post_id"] = _pending_id(job.id, i)
            # Whether the server keeps the webhook props is checked on the first reply and on
            # one in PROPS_CHECK_EVERY after it (a server upgrade may change it at any time).
            check = not self._props_warned and self.counters.replies % PROPS_CHECK_EVERY == 0
            created = await self._create_post(body, webhook, job, delivered, decode=check)
            if created is None:
                return
            if check:
                self._check_props(created)
        self.counters.replies += 1
        self._metrics.child(self._metrics.replies, "posted").inc()
        first = plan.posts[0]
        props = first.get("props") or {}
        log.info(
            "%s; replied webhook=%s as %s in channel %s%s (%d post%s)",
            delivered,
            webhook.name,
            props.get("override_username") or "the bot",
            job.channel_id,
            f" thread {first['root_id']}" if first.get("root_id") else "",
            len(plan.posts),
            "" if len(plan.posts) == 1 else "s",
        )

    async def _create_post(
        self,
        body: dict[str, Any],
        webhook: WebhookConfig,
        job: Job,
        delivered: str,
        *,
        decode: bool,
    ) -> dict[str, Any] | None:
        for attempt in range(1, REPLY_ATTEMPTS + 1):
            try:
                return await self._rest.create_post(body, decode=decode)
            except Unauthorized:
                raise
            except MattermostError as exc:
                if not exc.retryable or attempt == REPLY_ATTEMPTS:
                    self._metrics.child(self._metrics.replies, "failed").inc()
                    log.error("%s; reply not posted webhook=%s: %s", delivered, webhook.name, exc)
                    return None
                delay = backoff_delay(attempt - 1, base=0.5, cap=30.0, retry_after=exc.retry_after)
                log.warning(
                    "reply failed webhook=%s post=%s: %s; retrying in %.1f s",
                    webhook.name,
                    job.post_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
        return None  # pragma: no cover - the loop always returns

    async def _usernames(self, response: dict[str, Any]) -> dict[str, str]:
        """Usernames for the ``<@USERID>`` mentions in text and attachments (cached lookups)."""
        names: dict[str, str] = {}
        for user_id in response_user_ids(response):
            try:
                names[user_id] = (await self._rest.user(user_id)).username
            except MattermostError as exc:
                log.debug("no username for <@%s>: %s", user_id, exc)
        return names

    def _check_props(self, created: dict[str, Any]) -> None:
        props = created.get("props")
        if self._props_warned or (isinstance(props, dict) and props.get("from_webhook") == "true"):
            return
        self._props_warned = True
        log.warning(
            "the server dropped the webhook props (from_webhook, override_username, …) from a "
            "reply: replies will show as ordinary bot posts"
        )


def _pending_id(job_id: str, part: int) -> str:
    """A stable ``pending_post_id`` per reply part, so the server de-duplicates our retries."""
    return hashlib.sha256(f"{job_id}/{part}".encode()).hexdigest()[:26]
