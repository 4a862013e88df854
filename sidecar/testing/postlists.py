"""``GET /channels/{id}/posts`` as the server's sqlstore and app layer answer it (Mattermost 11.6).

* ``since``: posts with ``update_at > since`` (new, edited, deleted, and edit-history rows), at
  most 1000 (Store.posts_since); with ``collapsedThreads=true`` roots only, the newest 1000.
* ``before``/``after`` a post: live posts created before/after it, ``per_page`` of them from
  offset ``page * per_page``, nearest first in the query and returned newest first.
* neither: a page of live posts, newest first.

Without ``collapsedThreads`` the roots of the replies join ``posts``; ``next_post_id`` and
``prev_post_id`` are the cursors of the server's AddCursorIdsForPostList.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.testing.model import Post
from sidecar.testing.store import Store

PER_PAGE_DEFAULT = 60
PER_PAGE_MAXIMUM = 200


@dataclass
class PostList:
    """A post list before rendering: order (newest first), posts, cursors."""

    order: list[str]
    posts: dict[str, Post]
    next_post_id: str = ""
    prev_post_id: str = ""


def page_params(page_text: str | None, per_page_text: str | None) -> tuple[int, int]:
    """``page`` and ``per_page`` as the server's params parser reads them (no errors)."""
    try:
        page = int(page_text or "0")
    except ValueError:
        page = 0
    try:
        per_page = int(per_page_text) if per_page_text is not None else PER_PAGE_DEFAULT
    except ValueError:
        per_page = PER_PAGE_DEFAULT
    if per_page < 0:
        per_page = PER_PAGE_DEFAULT
    return max(page, 0), min(per_page, PER_PAGE_MAXIMUM)


def _live(store: Store, channel_id: str, collapsed: bool) -> list[Post]:
    """The channel's live posts, oldest first."""
    return [
        p
        for p in store.channel_posts(channel_id)
        if not p.delete_at and not (collapsed and p.root_id)
    ]


def _with_roots(store: Store, chosen: list[Post], collapsed: bool) -> PostList:
    found = {p.id: p for p in chosen}
    if not collapsed:
        for p in chosen:
            if p.root_id and p.root_id in store.posts:
                found.setdefault(p.root_id, store.posts[p.root_id])
    return PostList([p.id for p in chosen], found)


def posts_page(
    store: Store, channel_id: str, page: int, per_page: int, collapsed: bool
) -> PostList:
    """Neither ``since`` nor ``before``/``after``: live posts, newest first."""
    live = _live(store, channel_id, collapsed)
    live.reverse()
    chosen = live[page * per_page : (page + 1) * per_page]
    result = _with_roots(store, chosen, collapsed)
    _cursors(store, channel_id, result, collapsed, next_set=False, prev_set=False)
    return result


def posts_around(
    store: Store,
    channel_id: str,
    post_id: str,
    *,
    before: bool,
    page: int,
    per_page: int,
    collapsed: bool,
) -> PostList:
    """``before``/``after`` a post: nearest ``per_page`` from offset ``page * per_page``."""
    anchor = store.posts.get(post_id)
    live = _live(store, channel_id, collapsed)
    if anchor is None:
        chosen: list[Post] = []  # the server's subquery finds no CreateAt: nothing matches
    elif before:
        chosen = [p for p in reversed(live) if p.create_at < anchor.create_at]
    else:
        chosen = [p for p in live if p.create_at > anchor.create_at]
    chosen = chosen[page * per_page : (page + 1) * per_page]
    if not before:
        chosen.reverse()
    result = _with_roots(store, chosen, collapsed)
    next_set = prev_set = False
    if before:
        if page == 0:
            result.next_post_id, next_set = post_id, True
        prev_set = not chosen
    else:
        if page == 0:
            result.prev_post_id, prev_set = post_id, True
        next_set = not chosen
    _cursors(store, channel_id, result, collapsed, next_set=next_set, prev_set=prev_set)
    return result


def _cursors(
    store: Store,
    channel_id: str,
    result: PostList,
    collapsed: bool,
    *,
    next_set: bool,
    prev_set: bool,
) -> None:
    """The post after the list's newest and the one before its oldest (live posts)."""
    if not result.order:
        return
    listed = [result.posts[i] for i in result.order]
    newest = max(p.create_at for p in listed)
    oldest = min(p.create_at for p in listed)
    live = _live(store, channel_id, collapsed)
    if not next_set:
        after = [p for p in live if p.create_at > newest]
        result.next_post_id = after[0].id if after else ""
    if not prev_set:
        earlier = [p for p in live if p.create_at < oldest]
        result.prev_post_id = earlier[-1].id if earlier else ""
