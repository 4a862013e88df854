"""The emulated REST routes of posts, threads and reactions (Mattermost 11.6)."""

from __future__ import annotations

from aiohttp import web

from sidecar.testing.model import ApiError, Post, User, forbidden
from sidecar.testing.postlists import page_params, posts_around, posts_page
from sidecar.testing.rest_base import RestBase, invalid_param, json_response


class PostRoutes(RestBase):
    """Handlers under ``/posts``, ``/reactions`` and ``/channels/{id}/posts``."""

    def readable_post(self, request: web.Request, me: User) -> Post:
        """The live post named by ``{post_id}`` that the session may read."""
        post = self.store.post(self.param_id(request, "post_id"))
        if post.delete_at:
            raise ApiError(404, "app.post.get.app_error", "Unable to get the post.")
        if not self.store.can_read_channel(me.id, self.store.channels[post.channel_id]):
            raise forbidden()
        return post

    async def channel_posts(self, request: web.Request) -> web.StreamResponse:
        """``GET /channels/{id}/posts``: ``since``, else ``after``, else ``before``, else a page."""
        me = self.session(request)
        channel = self.store.channel(self.param_id(request, "channel_id"))
        if not self.store.can_read_channel(me.id, channel):
            raise forbidden()
        query = request.query
        since = 0
        if query.get("since"):
            try:
                since = int(query["since"])
            except ValueError:
                raise invalid_param("since") from None
        page, per_page = page_params(query.get("page"), query.get("per_page"))
        collapsed = query.get("collapsedThreads") == "true"
        if since > 0:
            if collapsed:
                return self.post_list(*self.store.posts_since(channel.id, since, collapsed=True))
            return self.post_list(*self.store.posts_since(channel.id, since))
        for key, before in (("after", False), ("before", True)):
            anchor = query.get(key, "")
            if anchor:
                listing = posts_around(
                    self.store,
                    channel.id,
                    anchor,
                    before=before,
                    page=page,
                    per_page=per_page,
                    collapsed=collapsed,
                )
                return self.listing_response(listing)
        return self.listing_response(posts_page(self.store, channel.id, page, per_page, collapsed))

    async def create_post(self, request: web.Request) -> web.StreamResponse:
        """``POST /posts`` → 201; see Store.create_post for the server's checks."""
        me = self.session(request)
        body = await self.body(request)
        metadata, props, file_ids = body.get("metadata"), body.get("props"), body.get("file_ids")
        priority = metadata.get("priority") if isinstance(metadata, dict) else None
        props = props if isinstance(props, dict) else {}
        file_ids = file_ids if isinstance(file_ids, list) else []
        set_online = request.query.get("set_online", "true").lower() not in ("false", "0")
        post = self.emu.create_post(
            me.id,
            str(body.get("channel_id", "")),
            str(body.get("message", "")),
            root_id=str(body.get("root_id", "") or ""),
            props=props,
            file_ids=[str(f) for f in file_ids],
            type=str(body.get("type", "") or ""),
            pending_post_id=str(body.get("pending_post_id", "") or ""),
            priority=priority if isinstance(priority, dict) else None,
            integration=me.is_bot,
            set_online=set_online,
        )
        return json_response(self.store.post_json(post), 201)

    async def get_post(self, request: web.Request) -> web.StreamResponse:
        """``GET /posts/{id}``: deleted posts are not found."""
        me = self.session(request)
        return json_response(self.store.post_json(self.readable_post(request, me)))

    async def post_thread(self, request: web.Request) -> web.StreamResponse:
        """``GET /posts/{id}/thread``: the root and its live replies, newest first."""
        me = self.session(request)
        post = self.readable_post(request, me)
        root = self.store.post(post.root_id) if post.root_id else post
        if root.delete_at:
            raise ApiError(404, "app.post.get.app_error", "Unable to get the post.")
        thread = [root, *(p for p in self.store.replies(root.id) if not p.delete_at)]
        thread.sort(key=lambda p: (p.create_at, p.order), reverse=True)
        return self.post_list([p.id for p in thread], {p.id: p for p in thread})

    async def post_reactions(self, request: web.Request) -> web.StreamResponse:
        """``GET /posts/{id}/reactions``: the post's reactions (``[]`` when none)."""
        me = self.session(request)
        post = self.readable_post(request, me)
        reactions = [r.to_json() for r in self.store.reactions if r.post_id == post.id]
        return json_response(reactions)

    async def patch_post(self, request: web.Request) -> web.StreamResponse:
        """``PUT /posts/{id}/patch``: one's own posts; emits ``post_edited``."""
        me = self.session(request)
        post_id = self.param_id(request, "post_id")
        body = await self.body(request)
        post = self.store.posts.get(post_id)
        if post is None or post.delete_at or post.user_id != me.id:
            raise forbidden()
        message = body.get("message")
        props = body.get("props")
        edited = self.emu.edit(
            post_id,
            message if isinstance(message, str) else post.message,
            props=props if isinstance(props, dict) else None,
        )
        return json_response(edited)

    async def delete_post(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /posts/{id}``: one's own posts; emits ``post_deleted``."""
        me = self.session(request)
        post = self.store.post(self.param_id(request, "post_id"))
        if post.user_id != me.id:
            raise forbidden()
        self.emu.delete(post.id, deleted_by=me.id)
        return json_response({"status": "OK"})

    async def add_reaction(self, request: web.Request) -> web.StreamResponse:
        """``POST /reactions`` with ``{user_id, post_id, emoji_name}``; emits ``reaction_added``."""
        me = self.session(request)
        body = await self.body(request)
        if body.get("user_id") != me.id:
            raise forbidden()
        post = self.store.post(str(body.get("post_id", "")))
        if me.id not in self.store.channels[post.channel_id].members:
            raise forbidden()
        reaction = self.emu.react(me.id, post.id, str(body.get("emoji_name", "")))
        return json_response(reaction)
