"""Event → context: the cached REST lookups of an event's channel, team, author and post.

Each lookup is retried for as long as the server's failure is temporary. Skipping the event
instead would lose it for good: the next post of the channel moves its cursor past it. The
dispatcher waits; the websocket reader goes on queueing until the queue is full.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sidecar.errors import MattermostError
from sidecar.mattermost import RestClient
from sidecar.models import Channel, Post, Team, User
from sidecar.retry import RetryPolicy, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOKUP_ATTEMPTS = 4  # quiet retries of a lookup before each further retry is logged


class Resolver:
    """The lookups of the dispatcher. Constructing it does no I/O."""

    def __init__(self, rest: RestClient, retry: RetryPolicy) -> None:
        self._rest = rest
        self._retry = retry

    async def lookup(self, fn: Callable[[str], Awaitable[T]], arg: str) -> T:
        """One cached lookup, retried while the failure is temporary (raises otherwise)."""

        def failed(exc: MattermostError, attempts: int, delay: float) -> None:
            if attempts >= LOOKUP_ATTEMPTS:
                log.warning("lookup failed: %s; trying again in %.1f s", exc, delay)

        return await retrying(lambda: fn(arg), self._retry, on_retry=failed)

    async def context(
        self, post: Post, actor_id: str, channel: Channel | None, team: Team | None
    ) -> tuple[Channel, Team | None, User]:
        """The post's channel and team (unless the event gave them) and the actor."""
        rest = self._rest
        if channel is None:
            channel = await self.lookup(rest.channel, post.channel_id)
        if team is None and channel.team_id:
            team = rest.cached_team(channel.team_id) or await self.lookup(
                rest.team, channel.team_id
            )
        actor = rest.cached_user(actor_id)
        if actor is None:
            actor = await self.lookup(rest.user, actor_id)
        return channel, team, actor

    async def post(self, post_id: str) -> Post:
        """A post by id (a reaction's)."""
        return await self.lookup(self._rest.post, post_id)
