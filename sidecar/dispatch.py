"""The pipeline's middle: event → context → matches → jobs in the outbox; catch-up after gaps.

Events arrive one at a time, in the websocket's order (``Sidecar`` awaits each). For a post
the dispatcher resolves its channel, team and author (cached REST lookups, retried while the
server's trouble is temporary: skipping would lose the post, because the channel's next post
moves the cursor past it), matches it against the rules, builds each callback request, and
records the jobs and the processed post in one transaction before handing the jobs to the
outbox. Its ``progress`` (progress.py) holds the cursors, the start position and the
processed keys that make catch-up and replays exactly-once. Every "now" is the server's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TypeVar

from sidecar.backend import StateBackend
from sidecar.catchup import edit_key, reaction_key
from sidecar.catchup_runner import CatchUpRunner
from sidecar.config import WebhookConfig
from sidecar.delivery import USER_AGENT
from sidecar.events import ChannelUpdated, Event, Posted, PostEdited, ReactionAdded, UserUpdated
from sidecar.health import Metrics
from sidecar.mattermost import MattermostError, RestClient, Unauthorized
from sidecar.models import Channel, EventName, Post, Reaction, Team, User
from sidecar.outbox import Outbox
from sidecar.payload import build_request
from sidecar.progress import Progress
from sidecar.resolve import Resolver
from sidecar.retry import RetryPolicy
from sidecar.rules import Context, Match, RuleSet
from sidecar.runtime import Live, Runtime
from sidecar.state import Job, Snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_CAP = 30.0  # seconds: the longest wait between two tries of a lookup or a catch-up


def now_ms() -> int:
    """Wall-clock milliseconds, Mattermost's time unit."""
    return int(time.time() * 1000)


def lookup_policy(base: float) -> RetryPolicy:
    """How lookups and catch-ups are retried: ``base`` doubling to RETRY_CAP, half jittered,
    at least the server's Retry-After (capped at RETRY_CAP too); until they work."""
    return RetryPolicy(base=base, cap=RETRY_CAP, jitter=0.5, retry_after_cap=RETRY_CAP)


def _excerpt(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Dispatcher:
    """Turns events into outbox jobs. Constructing it does no I/O."""

    def __init__(
        self,
        *,
        rest: RestClient,
        state: StateBackend,
        outbox: Outbox,
        metrics: Metrics,
        live: Live,
        me: User,
        snapshot: Snapshot,
        retry_base: float = 0.25,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.rest = rest
        self.state = state
        self.outbox = outbox
        self.metrics = metrics
        self._live = live
        # The runtime of the current step (one event, one catch-up): pinned at its start, so
        # that a reload meanwhile applies from the next step (see sidecar.runtime).
        self._step: Runtime = live.runtime
        self.me = me
        self._retry = retry or lookup_policy(retry_base)
        self._resolve = Resolver(rest, self._retry)
        self._catching_up = CatchUpRunner(rest, self._retry, metrics)
        self.progress = Progress(snapshot, state, rest.server_now_ms)

    def server_now(self) -> int:
        """The server's clock (ms), as its answers show it: never ours, which may differ."""
        return self.rest.server_now_ms()

    async def gap(self) -> None:
        """Events may have been missed: catch up; or, on the very first start, begin now."""
        if self.progress.fresh:
            # First start: begin at the present, replay no history.
            self.progress.begin_now()
            log.info("first start: processing begins now; no history is replayed")
            return
        self.metrics.gaps.inc()
        await self.catch_up()

    def prune(self, horizon: int) -> None:
        """Forget processed keys older than ``horizon`` (ms), in memory and on disk."""
        self.progress.prune(horizon)

    @property
    def rules(self) -> RuleSet:
        """The rules of the current step."""
        return self._step.rules

    @property
    def catch_up_window(self) -> float:
        """The catch-up window (seconds) of the current step."""
        return self._step.catch_up_window

    async def dispatch(self, item: Event) -> None:
        """Process one event from the websocket (in order; the caller awaits each), matched
        with the runtime current when it starts."""
        self._step = self._live.runtime
        if isinstance(item, ChannelUpdated):
            self.rest.forget_channel(item.channel_id)
            return
        if isinstance(item, UserUpdated):
            self.rest.forget_user(item.user_id)
            return
        if isinstance(item, Posted):
            self.metrics.child(self.metrics.events, "posted").inc()
            post = item.post
            if post.user_id == self.me.id:  # the bot's own (a reply): fires nothing
                self.progress.passed(post)
                return
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
            self.metrics.child(self.metrics.events, "post_edited").inc()
            await self._post_event("post_edited", item.post, item.post.user_id)
        elif isinstance(item, ReactionAdded):
            self.metrics.child(self.metrics.events, "reaction_added").inc()
            await self._reaction(item.reaction)

    async def catch_up(
        self,
        channels: list[tuple[Channel, Team | None]] | None = None,
        since: int | None = None,
    ) -> int:
        """Fetch and process what the websocket could not tell us (after a gap or a restart).

        By default every channel in scope, each from its own cursor (or the start position).
        With ``channels`` and ``since`` (server ms), just those channels from ``since``:
        through the same de-duplicated path, nothing fires twice. Returns how many events
        were processed.
        """
        cursors = self.progress.cursors if since is None else {}
        default = self.progress.position if since is None else since
        log.info("catching up over REST from the last processed post")
        return await self._catch_up(cursors, default, channels, "")

    @property
    def position(self) -> int:
        """Where processing began (ms): a channel joined later is caught up from no earlier."""
        return self.progress.position

    async def catch_up_channels(self, channels: Sequence[tuple[Channel, Team | None, int]]) -> int:
        """Catch up channels the bot just joined, each from its own start (server ms), through
        the same de-duplicated path as a gap's catch-up. Returns how many events were processed."""
        cursors = {channel.id: since for channel, _, since in channels}
        scope = [(channel, team) for channel, team, _ in channels]
        return await self._catch_up(cursors, self.server_now(), scope, " after a join")

    async def _catch_up(
        self,
        cursors: dict[str, int],
        default: int,
        channels: list[tuple[Channel, Team | None]] | None,
        what: str,
    ) -> int:
        started = time.monotonic()
        self._step = self._live.runtime  # one catch-up, one runtime

        found = await self._catching_up.collect(
            self._step,
            cursors=cursors,
            default=default,
            seen=self.progress.processed_among,
            channels=channels,
            what=what,
        )
        if found is None:
            return 0
        for item in found.items:
            if item.reaction is not None and item.reaction.user_id == self.me.id:
                continue
            await self._post_event(
                item.name,
                item.post,
                item.actor_id,
                channel=item.channel,
                team=item.team,
                reaction=item.reaction,
                asked=True,
            )
        self._catching_up.report(found, self._step, what, started)
        return len(found.items)

    async def _post_event(
        self,
        event: EventName,
        post: Post,
        actor_id: str,
        *,
        channel: Channel | None = None,
        team: Team | None = None,
        reaction: Reaction | None = None,
        asked: bool = False,
    ) -> None:
        """One post event; ``asked``: found by a catch-up, which asked the table about its key
        already (since then, only this pipeline can have processed it: memory tells)."""
        if (
            post.user_id == self.me.id
            or post.from_webhook
            or post.is_system
            or post.burn_on_read
            or not self.rules.listens_for(event)
        ):
            if event == "posted":
                self.progress.passed(post)  # never fires; skip the lookups, but move the cursor
            return
        # ``since``: the earliest time the key can have been recorded with (see sidecar.seen;
        # a reaction added again has its first time, no earlier than its post's create_at).
        if event == "posted":
            key, since = post.id, post.create_at
        elif event == "post_edited":
            key, since = edit_key(post), post.edit_at
        else:
            assert reaction is not None
            key, since = reaction_key(reaction), post.create_at
        seen = self.progress.seen
        if key in seen or (
            not asked and seen.unsure(since) and await self.progress.processed(key, since)
        ):
            return
        try:
            channel, team, actor = await self._resolve.context(post, actor_id, channel, team)
        except Unauthorized:
            raise
        except MattermostError as exc:
            log.error("skipped %s post=%s: lookup failed: %s", event, post.id, exc)
            return
        ctx = Context(
            event=event, post=post, channel=channel, team=team, actor=actor, reaction=reaction
        )
        if not self.outbox.has_room:  # a burst or a long catch-up: at the pace of deliveries
            await self.outbox.room()
        self.match_and_enqueue(ctx, key)

    async def _reaction(self, reaction: Reaction) -> None:
        if reaction.user_id == self.me.id or not self.rules.listens_for("reaction_added"):
            return
        try:
            post = await self._resolve.post(reaction.post_id)
        except Unauthorized:
            raise
        except MattermostError as exc:
            log.error("skipped reaction on post=%s: %s", reaction.post_id, exc)
            return
        await self._post_event("reaction_added", post, reaction.user_id, reaction=reaction)

    def match_and_enqueue(self, ctx: Context, key: str) -> None:
        """Match one event and hand its jobs to the outbox; record it as processed."""
        post = ctx.post
        jobs: list[Job] = []
        for match in self.rules.match(ctx):
            webhook: WebhookConfig = match.webhook
            self.metrics.child(self.metrics.matches, webhook.name).inc()
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
            jobs.extend(jobs_for(match, ctx))
        # Server timestamps: a key is kept for catch_up_window after the event it stands for.
        at = max(post.create_at, post.edit_at, ctx.reaction.create_at if ctx.reaction else 0)
        committed = self.progress.record(jobs, post, key, at, posted=ctx.event == "posted")
        if jobs:
            self.outbox.submit(jobs, committed)


def jobs_for(match: Match, ctx: Context) -> list[Job]:
    """One job per callback URL of the matched webhook, all with the same request (pure)."""
    request = build_request(match, ctx, user_agent=USER_AGENT)
    post = ctx.post
    return [
        Job(
            id=f"{request.webhook_id}/{i}",
            webhook=match.webhook.name,
            url=url,
            webhook_id=request.webhook_id,
            body=request.body,
            content_type=request.content_type,
            event=ctx.event,
            post_id=post.id,
            channel_id=post.channel_id,
            root_id=post.root_id,
        )
        for i, url in enumerate(match.webhook.callback_urls)
    ]
