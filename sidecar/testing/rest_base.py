"""What every emulated REST handler shares: the session, path parameters, bodies, JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.testing.auth import Location, csrf_ok, request_token, session_expired, token_in_query
from sidecar.testing.model import ApiError, Post, User, go_json, is_valid_id
from sidecar.testing.postlists import PostList
from sidecar.testing.store import Store

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON response encoded as Go does, with exactly ``Content-Type: application/json``."""
    body = (go_json(value) + "\n").encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def error_response(error: ApiError, request_id: str) -> web.Response:
    """The server's JSON error body for ``error``."""
    return json_response(error.body(request_id), error.status)


def invalid_param(name: str) -> ApiError:
    """The server's 400 for a missing or malformed URL or body parameter."""
    return ApiError(400, "api.context.invalid_url_param.app_error", f"Invalid or missing {name}.")


class RestBase:
    """The helpers of the REST handlers, bound to one emulator."""

    emu: Emulator
    store: Store

    def session(self, request: web.Request) -> User:
        """The user behind the request's token (header, cookie or query), or 401."""
        token, where = request_token(request)
        user_id = self.store.tokens.get(token or "\0")
        if user_id is None:
            raise session_expired()
        if where is Location.QUERY:
            raise token_in_query()
        if where is Location.COOKIE and not csrf_ok(request, self.store.csrf.get(token, "")):
            raise session_expired("Appears to be a CSRF attempt")
        return self.store.users[user_id]

    @staticmethod
    def param_id(request: web.Request, name: str) -> str:
        """A path parameter that must be a Mattermost id."""
        value = request.match_info[name]
        if not is_valid_id(value):
            raise invalid_param(name)
        return value

    def user_param(self, request: web.Request, me: User) -> str:
        """``{user_id}`` in a path, where ``me`` means the session's user."""
        if request.match_info["user_id"] == "me":
            return me.id
        return self.param_id(request, "user_id")

    def own_user_param(self, request: web.Request, me: User) -> str:
        """``{user_id}`` that must be the session's own (403 otherwise)."""
        user_id = self.user_param(request, me)
        if user_id != me.id:
            raise ApiError(
                403,
                "api.context.permissions.app_error",
                "You do not have the appropriate permissions.",
            )
        return user_id

    @staticmethod
    async def json_body(request: web.Request) -> Any:
        """The request body as JSON (None when empty or malformed)."""
        try:
            return json.loads(await request.read() or b"null")
        except ValueError:
            return None

    async def body(self, request: web.Request) -> dict[str, Any]:
        """A JSON object body, or 400."""
        value = await self.json_body(request)
        if not isinstance(value, dict):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid body.")
        return value

    def listing_response(self, listing: PostList) -> web.Response:
        """A PostList as the server renders it."""
        return json_response(
            {
                "order": listing.order,
                "posts": {pid: self.store.post_json(p) for pid, p in listing.posts.items()},
                "next_post_id": listing.next_post_id,
                "prev_post_id": listing.prev_post_id,
                "has_next": False,
                "first_inaccessible_post_time": 0,
            }
        )

    def post_list(self, order: list[str], posts: dict[str, Post]) -> web.Response:
        """A PostList without cursors (``since``, threads)."""
        return self.listing_response(PostList(order, posts))
