"""The Mattermost REST client: one pooled aiohttp session, async, with cached lookups.

Only the calls the sidecar needs, under ``/api/v4`` with ``Authorization: Bearer``. Users,
teams and channels are cached for a bounded time and invalidated by ``user_updated`` /
``channel_updated`` events, so a rename is followed; concurrent lookups of the same object
share one request.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import aiohttp

from sidecar.errors import BadAnswer as BadAnswer
from sidecar.errors import MattermostError as MattermostError
from sidecar.errors import ObjectError
from sidecar.errors import Unauthorized as Unauthorized
from sidecar.models import Channel, Post, Team, User
from sidecar.retry import parse_retry_after

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # a page of 1000 posts of 16 KiB each, with room
CACHE_TTL = 300.0

T = TypeVar("T")


def local_now_ms() -> int:
    """This machine's wall clock in milliseconds (tests move it to fake a clock offset)."""
    return int(time.time() * 1000)


# The error id of GET /users/{id}/teams/{id}/channels for a user with no channel there.
NO_CHANNELS_ERROR = "app.channel.get_channels.not_found.app_error"


class _Cache(Generic[T]):
    """A TTL cache whose concurrent misses for one key share one lookup."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._values: dict[Hashable, tuple[float, T]] = {}
        self._pending: dict[Hashable, asyncio.Future[T]] = {}

    def peek(self, key: Hashable) -> T | None:
        """The cached value if still fresh, without a coroutine (the hot path's common case)."""
        hit = self._values.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        hit = self._values.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(value)
            self._values[key] = (now + self._ttl, value)
            return value
        finally:
            del self._pending[key]

    def put(self, key: Hashable, value: T) -> None:
        self._values[key] = (time.monotonic() + self._ttl, value)

    def forget(self, key: Hashable) -> None:
        self._values.pop(key, None)


class Transport:
    """The HTTP side of the REST client: the pooled session, the bearer token, one call with
    its errors, and the server's clock read from the answers. Constructing it does no I/O."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        verify_tls: bool = True,
        user_agent: str = "mm-sidecar",
        timeout: float = 30.0,
    ) -> None:
        self.base = url.rstrip("/") + "/api/v4"
        self._token = token
        self._verify_tls = verify_tls
        self._user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(10.0, timeout))
        self._session: aiohttp.ClientSession | None = None
        self._clock_offset = 0  # ms: the server's clock minus ours, from the last Date header
        self._date_text, self._date_ms = "", 0  # the last Date header and its value (ms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"

    async def start(self) -> None:
        """Open the pooled session."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._verify_tls, limit=32)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "User-Agent": self._user_agent,
                    "X-Requested-With": "XMLHttpRequest",
                },
                trust_env=False,
            )

    async def close(self) -> None:
        """Close the session; pending calls fail."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> Any:
        """One REST call; returns the decoded JSON (None when not ``decode``) or raises
        MattermostError / Unauthorized."""
        if self._session is None:
            raise RuntimeError("RestClient is not started")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else None
        sent = local_now_ms()
        try:
            async with self._session.request(
                method,
                self.base + path,
                data=data,
                params=params,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                raw = await _read_at_most(resp, MAX_BODY_BYTES + 1)
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                self._note_date(resp.headers.get("Date"), sent)
        except asyncio.TimeoutError as exc:
            raise MattermostError(f"{method} {path}: timeout") from exc
        except aiohttp.ClientError as exc:
            raise MattermostError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if len(raw) > MAX_BODY_BYTES:
            raise MattermostError(
                f"{method} {path}: answer over {MAX_BODY_BYTES} bytes", status=status
            )
        if status >= 300:
            message, error_id = _error_text(raw)
            cls = Unauthorized if status == 401 else MattermostError
            raise cls(
                f"{method} {path}: {status} {message}",
                status=status,
                error_id=error_id,
                retry_after=retry_after,
            )
        if not decode:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # too deeply nested is as bad as malformed
            raise MattermostError(
                f"{method} {path}: answer is not JSON: {_snippet(raw)}", status=status
            ) from exc

    def server_now_ms(self) -> int:
        """The server's "now" in ms: our clock plus the offset its last ``Date`` header showed.

        ``Date`` has a resolution of one second. When our clock agrees with it (within that
        second and the answer's round trip) our own, millisecond-precise clock is used: a
        smaller difference cannot be measured. Otherwise the offset is the smallest the header
        allows, so the estimate may trail the server by up to a second plus the latency but
        not lead it (a lead would make catch-up skip what was posted in that last second).
        Before any answer: our own clock.
        """
        return local_now_ms() + self._clock_offset

    def _note_date(self, value: str | None, sent: int) -> None:
        if not value:
            return
        if value == self._date_text:  # one parse per second of server time, not per answer
            date = self._date_ms
        else:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return
            if when.tzinfo is None:
                return
            date = int(when.timestamp() * 1000)
            self._date_text, self._date_ms = value, date
        low = date - local_now_ms()  # the server stamped it before we received it …
        high = date + 1000 - sent  # … within that second, after we sent the request
        self._clock_offset = 0 if low <= 0 <= high else low


class RestClient(Transport):
    """Async calls to ``<url>/api/v4`` with the bot token: the lookups the sidecar needs, users,
    teams and channels cached (``cache_ttl`` s). Constructing it does no I/O."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        verify_tls: bool = True,
        user_agent: str = "mm-sidecar",
        timeout: float = 30.0,
        cache_ttl: float = CACHE_TTL,
    ) -> None:
        super().__init__(url, token, verify_tls=verify_tls, user_agent=user_agent, timeout=timeout)
        self._users: _Cache[User] = _Cache(cache_ttl)
        self._teams: _Cache[Team] = _Cache(cache_ttl)
        self._channels: _Cache[Channel] = _Cache(cache_ttl)

    async def __aenter__(self) -> RestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def me(self) -> User:
        """The bot's own user."""
        return _parse(User.from_dict, await self.call("GET", "/users/me"), "user")

    def cached_user(self, user_id: str) -> User | None:
        """A user from the cache, if fresh; None means: ask ``user``."""
        return self._users.peek(user_id)

    def cached_team(self, team_id: str) -> Team | None:
        """A team from the cache, if fresh; None means: ask ``team``."""
        return self._teams.peek(team_id)

    async def user(self, user_id: str) -> User:
        """A user by id (cached)."""

        async def load() -> User:
            return _parse(User.from_dict, await self.call("GET", f"/users/{user_id}"), "user")

        return await self._users.get(user_id, load)

    async def user_by_username(self, username: str) -> User:
        """A user by username (not cached: used only by the start-up checks)."""
        data = await self.call("GET", f"/users/username/{quote(username, safe='')}")
        user = _parse(User.from_dict, data, "user")
        self._users.put(user.id, user)
        return user

    async def users_by_ids(self, user_ids: list[str]) -> list[User]:
        """``POST /users/ids``: many users in one call (unknown ids are left out); cached."""
        data = await self.call("POST", "/users/ids", body=user_ids)
        if not isinstance(data, list):
            raise BadAnswer("POST /users/ids: expected a list")
        users = [_parse(User.from_dict, u, "user") for u in data]
        for u in users:
            self._users.put(u.id, u)
        return users

    async def team(self, team_id: str) -> Team:
        """A team by id (cached)."""

        async def load() -> Team:
            return _parse(Team.from_dict, await self.call("GET", f"/teams/{team_id}"), "team")

        return await self._teams.get(team_id, load)

    async def my_teams(self) -> list[Team]:
        """The teams the bot belongs to."""
        data = await self.call("GET", "/users/me/teams")
        if not isinstance(data, list):
            raise BadAnswer("GET /users/me/teams: expected a list")
        teams = [_parse(Team.from_dict, t, "team") for t in data]
        for t in teams:
            self._teams.put(t.id, t)
        return teams

    async def channel(self, channel_id: str) -> Channel:
        """A channel by id (cached)."""

        async def load() -> Channel:
            data = await self.call("GET", f"/channels/{channel_id}")
            return _parse(Channel.from_dict, data, "channel")

        return await self._channels.get(channel_id, load)

    async def my_channels(self, team_id: str) -> list[Channel]:
        """The bot's channels in a team (the server adds its direct and group channels).

        The server answers 404 ``app.channel.get_channels.not_found.app_error`` when there
        are none: that is an empty list, not an error.
        """
        try:
            data = await self.call("GET", f"/users/me/teams/{team_id}/channels")
        except MattermostError as exc:
            if exc.status == 404 and exc.error_id == NO_CHANNELS_ERROR:
                return []
            raise
        if not isinstance(data, list):
            raise BadAnswer("GET channels for user: expected a list")
        channels = [_parse(Channel.from_dict, c, "channel") for c in data]
        for c in channels:
            self._channels.put(c.id, c)
        return channels

    def forget_channel(self, channel_id: str) -> None:
        """Drop a cached channel (after ``channel_updated``)."""
        self._channels.forget(channel_id)

    def forget_user(self, user_id: str) -> None:
        """Drop a cached user (after ``user_updated``)."""
        self._users.forget(user_id)

    async def post(self, post_id: str) -> Post:
        """A post by id."""
        return _parse(Post.from_dict, await self.call("GET", f"/posts/{post_id}"), "post")

    async def posts_since(self, channel_id: str, since: int) -> list[Post]:
        """Posts of a channel with ``update_at > since`` (new, edited, deleted; at most 1000).

        Only the posts in ``order`` are returned: thread roots that the server adds to
        ``posts`` for context were not changed.
        """
        data = await self.call("GET", f"/channels/{channel_id}/posts", params={"since": str(since)})
        if not isinstance(data, dict):
            raise BadAnswer("posts since: expected an object")
        order = data.get("order") or []
        posts = data.get("posts") or {}
        if not isinstance(order, list) or not isinstance(posts, dict):
            raise BadAnswer("posts since: bad PostList shape")
        return [_parse(Post.from_dict, posts[i], "post") for i in order if i in posts]

    async def create_post(self, body: Mapping[str, Any], *, decode: bool = True) -> dict[str, Any]:
        """``POST /posts``; returns the created post's JSON ({} when not ``decode``: the
        hot path skips parsing a post it does not need)."""
        data = await self.call("POST", "/posts", body=body, decode=decode)
        if not decode:
            return {}
        if not isinstance(data, dict):
            raise BadAnswer("create post: expected an object")
        return data

    async def client_config(self) -> dict[str, Any]:
        """The server's client config (old format: string values)."""
        data = await self.call("GET", "/config/client", params={"format": "old"})
        if not isinstance(data, dict):
            raise BadAnswer("client config: expected an object")
        return data


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes.

    Not ``stream.read(limit)``: that returns only what has arrived so far, and so cuts any
    answer longer than one network read. An answer whose (uncompressed) length is declared
    and within the limit is read whole (the parser stops at Content-Length).
    """
    length = resp.content_length
    if length is not None and length <= limit and "Content-Encoding" not in resp.headers:
        return await resp.content.read()
    try:
        return await resp.content.readexactly(limit)
    except asyncio.IncompleteReadError as exc:  # the usual case: the body is shorter
        return exc.partial


def _parse(fn: Callable[[Any], T], data: Any, what: str) -> T:
    try:
        return fn(data)
    except ObjectError as exc:
        raise BadAnswer(f"bad {what} from server: {exc}") from exc


def _snippet(raw: bytes, limit: int = 120) -> str:
    text = raw[:limit].decode("utf-8", "replace").replace("\n", " ")
    return text + ("…" if len(raw) > limit else "")


def _error_text(raw: bytes) -> tuple[str, str]:
    """Mattermost's JSON error ``message`` and ``id``, or a snippet of whatever came back."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return _snippet(raw), ""
    if isinstance(data, dict):
        message = data.get("message")
        error_id = data.get("id")
        return (
            message if isinstance(message, str) else _snippet(raw),
            error_id if isinstance(error_id, str) else "",
        )
    return _snippet(raw), ""
