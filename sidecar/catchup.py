"""Catch-up over REST after a gap: what was posted while the websocket could not tell us.

For every channel that some webhook could fire in, ask ``/channels/{id}/posts?since=`` from
one millisecond before the channel's cursor (a post in the same millisecond as the last one
processed is not lost; processed keys de-duplicate), page forward past the 1000-post limit,
and return what must still be processed, oldest first. Posts older than the window are counted
and skipped. A post first seen here fires as ``posted`` with its current text; independently,
its latest edit, made at or after the cursor and not processed yet, fires as ``post_edited``
when some webhook listens for edits (a post created and edited in one gap fires both).

The server answers ``since`` with at most 1000 posts chosen by a LIMIT without ORDER BY, so
when a page comes back full, paging forward from the newest change seen is complete only if
the server happened to return the oldest ones. Then the channel is also walked with
``?page=&per_page=`` (newest first by create_at, a stable order) back to the cursor, so no new
post is missed whatever order the server used; only edits beyond 1000 can still be missed.

Which events were processed already is asked once per channel, for all the keys its posts
could be due under (memory answers for the newest keys, one batched lookup in the state's
``seen`` table for older ones: see ``sidecar.seen``); deciding what is due stays pure.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field

from sidecar.errors import BadAnswer, MattermostError, ObjectError, Unauthorized
from sidecar.events import Posted, PostEdited, ReactionAdded
from sidecar.mattermost import RestClient
from sidecar.models import Channel, EventName, Post, Reaction, Team
from sidecar.rules import RuleSet

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # the server's cap on one posts?since= answer
PER_PAGE = 200  # the server's cap on per_page

#: Which of the ``(key, since)`` pairs were processed (``since``: the earliest time the key can
#: have been recorded with); ``Progress.processed_among``.
SeenCheck = Callable[[Sequence[tuple[str, int]]], Awaitable[Container[str]]]


@dataclass(frozen=True, slots=True)
class Found:
    """One event a catch-up found: the websocket's typed event (``Posted``, ``PostEdited``,
    ``ReactionAdded``), with what REST already told about it: the post (for a reaction, the
    post reacted to), its channel and team, so processing it looks nothing up again."""

    event: Posted | PostEdited | ReactionAdded
    post: Post
    channel: Channel
    team: Team | None

    @property
    def name(self) -> EventName:
        if isinstance(self.event, Posted):
            return "posted"
        return "post_edited" if isinstance(self.event, PostEdited) else "reaction_added"

    @property
    def reaction(self) -> Reaction | None:
        return self.event.reaction if isinstance(self.event, ReactionAdded) else None

    @property
    def actor_id(self) -> str:
        """Who made the event: the reacting user, or the post's author."""
        reaction = self.reaction
        return reaction.user_id if reaction is not None else self.post.user_id

    @property
    def at(self) -> int:
        """When it happened (server ms): the order catch-up processes in."""
        if isinstance(self.event, ReactionAdded):
            return self.event.reaction.create_at
        return self.post.edit_at if isinstance(self.event, PostEdited) else self.post.create_at


@dataclass(slots=True)
class CatchUp:
    """What a catch-up found."""

    items: list[Found] = field(default_factory=list)
    channels: int = 0
    fetched: int = 0
    skipped_old: int = 0

    def admit(self, at: int, item: Found, window_start: int) -> None:
        """Keep ``item`` (made at ``at`` ms), or count it as older than the window."""
        if at < window_start:
            self.skipped_old += 1
        else:
            self.items.append(item)


def edit_key(post: Post) -> str:
    """The processed-key of one edit of a post."""
    return f"{post.id}:e{post.edit_at}"


def reaction_key(reaction: Reaction) -> str:
    """The processed-key of one reaction (one user, one emoji, one post)."""
    return f"{reaction.post_id}:r:{reaction.user_id}:{reaction.emoji_name}"


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
    seen: SeenCheck,
    channels: Sequence[tuple[Channel, Team | None]] | None = None,
) -> CatchUp:
    """Fetch and sort what is left to process since the cursors.

    ``channels`` defaults to every channel in scope (``scope_channels``; a join passes the
    channels just joined); a channel without a cursor is caught up from ``default_cursor``.
    A post is new (``posted``) when it was not processed (``seen``, asked once per channel)
    and was created at or after the channel's cursor; independently, its latest edit is due
    (``post_edited``) when made at or after the cursor and not processed: a post created and
    edited in one gap fires both, with its current text.

    A channel the server refuses (403/404: the bot left it meanwhile) is logged and skipped;
    any other error is raised, so the caller can try the whole catch-up again.
    """
    result = CatchUp()
    wants = _Wants(rules.listens_for("post_edited"), rules.listens_for("reaction_added"))
    if channels is None:
        channels = await scope_channels(rest, rules)
    result.channels = len(channels)
    for channel, team in channels:
        cursor = cursors.get(channel.id, default_cursor)
        posts = await _fetch_channel(rest, channel, cursor, window_start, result)
        posts = [post for post in posts if not post.delete_at]
        due = _Due(channel, team, cursor, window_start, wants)
        processed = await seen([asked for post in posts for asked in due.asked(post)])
        for post in posts:
            due.add(post, result, processed)
    result.items.sort(key=lambda item: item.at)
    return result


@dataclass(frozen=True, slots=True)
class _Wants:
    """Which events besides ``posted`` some webhook listens for."""

    edits: bool
    reactions: bool


async def _fetch_channel(
    rest: RestClient, channel: Channel, cursor: int, window_start: int, result: CatchUp
) -> list[Post]:
    """The channel's posts changed since ``cursor``; none when the server refuses the channel
    (403/404: the bot left it meanwhile; logged). Other errors are raised (tried again)."""
    try:
        posts, fetched = await _changed_since(rest, channel.id, cursor, window_start)
    except Unauthorized:
        raise
    except MattermostError as exc:
        if exc.retryable:
            raise
        log.warning("catch-up skipped channel %s: %s", channel.name, exc)
        return []
    result.fetched += fetched
    return posts


@dataclass(frozen=True, slots=True)
class _Due:
    """What is still due in one channel: made at or after its cursor, not processed yet."""

    channel: Channel
    team: Team | None
    cursor: int
    window_start: int
    wants: _Wants

    def asked(self, post: Post) -> Iterator[tuple[str, int]]:
        """The keys ``add`` asks ``seen`` about, each with the earliest time it can have been
        recorded with (a reaction added again keeps its key: its post's create_at)."""
        if post.create_at >= self.cursor:
            yield post.id, post.create_at
        if self.wants.edits and post.edit_at and post.edit_at >= self.cursor:
            yield edit_key(post), post.edit_at
        for reaction in post.reactions if self.wants.reactions else ():
            if reaction.create_at >= self.cursor:
                yield reaction_key(reaction), post.create_at

    def add(self, post: Post, result: CatchUp, seen: Container[str]) -> None:
        """The post's events still due: itself, its latest edit, its reactions."""
        if post.create_at >= self.cursor and post.id not in seen:
            # Also when no webhook listens for posts: it moves the channel's cursor.
            posted = Posted(post, self.channel.type, self.channel.name, self.channel.team_id)
            result.admit(post.create_at, self._found(posted, post), self.window_start)
        if self.wants.edits and self._edit_due(post, seen):
            result.admit(post.edit_at, self._found(PostEdited(post), post), self.window_start)
        # A reaction moves its post's update_at, and REST posts carry their reactions.
        for reaction in post.reactions if self.wants.reactions else ():
            if reaction.create_at >= self.cursor and reaction_key(reaction) not in seen:
                found = self._found(ReactionAdded(reaction), post)
                result.admit(reaction.create_at, found, self.window_start)

    def _edit_due(self, post: Post, seen: Container[str]) -> bool:
        return bool(post.edit_at) and post.edit_at >= self.cursor and edit_key(post) not in seen

    def _found(self, event: Posted | PostEdited | ReactionAdded, post: Post) -> Found:
        return Found(event, post, self.channel, self.team)


async def _changed_since(
    rest: RestClient, channel_id: str, cursor: int, window_start: int
) -> tuple[list[Post], int]:
    """Every post of the channel changed at or after ``cursor`` (ms); and how many were fetched.

    One entry per post, in its latest known version. (The fallback walk stops at the window:
    older posts would be skipped anyway, they are just not all counted then.)
    """
    found: dict[str, Post] = {}
    fetched = 0

    def keep(post: Post) -> bool:
        """Add or refresh a post; True when it brought something new."""
        old = found.get(post.id)
        if old is not None and old.update_at >= post.update_at:
            return False
        found[post.id] = post
        return True

    since = cursor - 1
    full = False
    while True:
        page = await rest.posts_since(channel_id, since)
        fetched += len(page)
        fresh = [p for p in page if keep(p)]
        if len(page) < PAGE_LIMIT:
            break
        full = True
        if not fresh:
            break  # a full page of what we already had: ``since`` cannot get further
        # Ask again from the newest change seen (minus 1 ms: others may share that millisecond).
        since = max(since + 1, max(p.update_at for p in page) - 1)
    if full:
        # The full pages may have been any 1000 of the changes (no ORDER BY on the server):
        # walk the channel newest first, in a stable order, back to the cursor.
        stop_at = max(cursor, window_start)
        page_no = 0
        while True:
            page = await _posts_page(rest, channel_id, page_no)
            fetched += len(page)
            for post in page:
                keep(post)
            if len(page) < PER_PAGE or min(p.create_at for p in page) < stop_at:
                break
            page_no += 1
    return list(found.values()), fetched


async def _posts_page(rest: RestClient, channel_id: str, page: int) -> list[Post]:
    """``GET /channels/{id}/posts?page=&per_page=``: live posts, newest first by create_at."""
    params = {"page": str(page), "per_page": str(PER_PAGE)}
    data = await rest.call("GET", f"/channels/{channel_id}/posts", params=params)
    if not isinstance(data, dict):
        raise BadAnswer("posts page: expected an object")
    order, posts = data.get("order") or [], data.get("posts") or {}
    if not isinstance(order, list) or not isinstance(posts, dict):
        raise BadAnswer("posts page: bad PostList shape")
    try:
        return [Post.from_dict(posts[i]) for i in order if i in posts]
    except ObjectError as exc:
        raise BadAnswer(f"bad post from server: {exc}") from exc
