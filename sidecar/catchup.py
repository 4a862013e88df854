"""Catch-up over REST after a gap: what was posted while the websocket could not tell us.

For every channel that some webhook could fire in, ask ``/channels/{id}/posts?since=`` from
one millisecond before the channel's cursor (a post in the same millisecond as the last one
processed is not lost; processed keys de-duplicate), page forward past the 1000-post limit,
and return what must still be processed, oldest first. Posts older than the window are counted
and skipped. A post first seen here fires as ``posted`` with its current text; an edit of a
post processed earlier fires as ``post_edited`` when some webhook listens for edits.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass, field

from sidecar.mattermost import RestClient
from sidecar.models import Channel, EventName, Post, Team
from sidecar.rules import RuleSet

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # the server's cap on one posts?since= answer


@dataclass(slots=True)
class CatchUp:
    """What a catch-up found."""

    items: list[tuple[EventName, Post, Channel, Team | None]] = field(default_factory=list)
    channels: int = 0
    fetched: int = 0
    skipped_old: int = 0


def edit_key(post: Post) -> str:
    """The processed-key of one edit of a post."""
    return f"{post.id}:e{post.edit_at}"


async def scope_channels(rest: RestClient, rules: RuleSet) -> list[tuple[Channel, Team | None]]:
    """The bot's channels (every team, plus direct and group) where some webhook may fire."""
    found: dict[str, tuple[Channel, Team | None]] = {}
    for team in await rest.my_teams():
        for channel in await rest.my_channels(team.id):
            if channel.id in found:
                continue
            owner = team if channel.team_id else None
            if rules.in_scope(channel, owner):
                found[channel.id] = (channel, owner)
    return list(found.values())


async def collect(
    rest: RestClient,
    rules: RuleSet,
    *,
    cursors: dict[str, int],
    default_cursor: int,
    window_start: int,
    seen: Container[str],
) -> CatchUp:
    """Fetch and sort what is left to process since the cursors."""
    result = CatchUp()
    want_edits = rules.listens_for("post_edited")
    channels = await scope_channels(rest, rules)
    result.channels = len(channels)
    for channel, team in channels:
        cursor = cursors.get(channel.id, default_cursor)
        since = cursor - 1
        done: set[tuple[str, int]] = set()
        while True:
            page = await rest.posts_since(channel.id, since)
            result.fetched += len(page)
            for post in page:
                if (post.id, post.update_at) in done:
                    continue
                done.add((post.id, post.update_at))
                if post.delete_at:
                    continue
                if post.create_at >= cursor:
                    if post.id in seen:
                        continue
                    if post.create_at < window_start:
                        result.skipped_old += 1
                        continue
                    result.items.append(("posted", post, channel, team))
                elif want_edits and post.edit_at >= cursor and edit_key(post) not in seen:
                    if post.edit_at < window_start:
                        result.skipped_old += 1
                        continue
                    result.items.append(("post_edited", post, channel, team))
            if len(page) < PAGE_LIMIT:
                break
            # The server returns at most 1000: ask again from the newest change seen.
            newest = max(p.update_at for p in page) - 1
            since = newest if newest > since else since + 1
    result.items.sort(key=lambda i: i[1].edit_at if i[0] == "post_edited" else i[1].create_at)
    return result
