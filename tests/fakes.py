"""In-memory fakes behind the pipeline's seams, for unit tests of the stateful classes.

``ScriptedCallbacks`` stands for ``delivery.CallbackClient`` (``outbox.Callbacks``),
``FakeRest`` for ``mattermost.RestClient`` (the calls the dispatcher, catch-up and outbox
make), ``FakeState`` for ``state.State``: every write is committed at once and kept in lists
a test can read. Scripts are lists of answers consumed in order; an exception in a script is
raised instead of answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import __version__, history
from sidecar.config import Config, parse_config
from sidecar.delivery import Attempt
from sidecar.errors import MattermostError
from sidecar.health import Metrics
from sidecar.models import Channel, Post, Team, User
from sidecar.outbox import Counters
from sidecar.reply import ReplySettings
from sidecar.seen import newest
from sidecar.state import Job, Snapshot

TOKEN = "zmigewsanbbsdf59xnmduzypjc"
TEAM = Team(id="t" * 26, name="team")
CHANNEL = Channel(id="c" * 26, team_id=TEAM.id, type="O", name="town-square")
ALICE = User(id="a" * 26, username="alice")
BOT = User(id="b" * 26, username="sidecar-bot", is_bot=True)
SETTINGS = ReplySettings(enable_post_username_override=True, enable_post_icon_override=True)


def config(**webhook: Any) -> Config:
    """A config with one webhook ``hook`` on town-square (``webhook`` overrides its keys)."""
    hook = {
        "name": "hook",
        "token": TOKEN,
        "channels": ["town-square"],
        "callback_urls": ["https://hooks.example.com/hook"],
        **webhook,
    }
    data = {
        "mattermost": {"url": "http://mm.example.com", "token": TOKEN},
        "sidecar": {"state_dir": "/nonexistent", "listen": ""},
        "webhook": [hook],
    }
    return parse_config(data, path=Path("/nonexistent/config.toml"), env={})


def metrics() -> Metrics:
    return Metrics(__version__)


def done() -> asyncio.Future[None]:
    """An already committed write."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def answer(status: int, body: bytes = b"", retry_after: float | None = None) -> Attempt:
    """A callback's HTTP answer."""
    return Attempt(status, body, "", 1.0, retry_after)


class ScriptedCallbacks:
    """``outbox.Callbacks``: answers each POST with the next scripted ``Attempt``."""

    def __init__(self, *script: Attempt) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> Attempt:
        self.sent.append((url, body, dict(headers)))
        return self.script.pop(0)


@dataclass
class FakeRest:
    """The REST calls of the dispatcher, catch-up and outbox, answered from memory.

    ``failures[name]`` is a list of errors raised, one per call, before ``name`` answers.
    """

    channels: dict[str, Channel] = field(default_factory=lambda: {CHANNEL.id: CHANNEL})
    users: dict[str, User] = field(default_factory=lambda: {ALICE.id: ALICE, BOT.id: BOT})
    posts: dict[str, Post] = field(default_factory=dict)
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)
    now_ms: int = 1_800_000_000_000
    pages: list[Any] = field(default_factory=list)  # answers of GET /channels/{id}/posts
    since_pages: list[list[Post]] = field(default_factory=list)  # answers of posts_since

    def _called(self, name: str) -> None:
        self.calls.append(name)
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)

    def server_now_ms(self) -> int:
        return self.now_ms

    def forget_channel(self, channel_id: str) -> None:
        self.calls.append("forget_channel")

    def forget_user(self, user_id: str) -> None:
        self.calls.append("forget_user")

    async def channel(self, channel_id: str) -> Channel:
        self._called("channel")
        try:
            return self.channels[channel_id]
        except KeyError:
            raise MattermostError("GET /channels: 404", status=404) from None

    def cached_team(self, team_id: str) -> Team | None:
        return None

    async def team(self, team_id: str) -> Team:
        self._called("team")
        return TEAM

    def cached_user(self, user_id: str) -> User | None:
        return None

    async def user(self, user_id: str) -> User:
        self._called("user")
        return self.users[user_id]

    async def users_by_ids(self, user_ids: list[str]) -> list[User]:
        self._called("users_by_ids")
        return [self.users[i] for i in user_ids if i in self.users]

    async def post(self, post_id: str) -> Post:
        self._called("post")
        return self.posts[post_id]

    async def my_teams(self) -> list[Team]:
        self._called("my_teams")
        return [TEAM]

    async def my_channels(self, team_id: str) -> list[Channel]:
        self._called("my_channels")
        return list(self.channels.values())

    async def posts_since(self, channel_id: str, since: int) -> list[Post]:
        self._called("posts_since")
        return self.since_pages.pop(0) if self.since_pages else []

    async def call(self, method: str, path: str, **_kwargs: Any) -> Any:
        self._called("call")
        return self.pages.pop(0)

    async def create_post(self, body: Mapping[str, Any], *, decode: bool = True) -> dict[str, Any]:
        self._called("create_post")
        self.created.append(dict(body))
        return {"id": f"r{len(self.created)}", "props": {"from_webhook": "true"}}


async def nothing_seen(asked: Sequence[tuple[str, int]]) -> set[str]:
    """``catchup.SeenCheck`` of a sidecar that processed nothing yet."""
    return set()


class FakeState:
    """``state.State``: every write committed at once, kept for the test to read.
    ``lookups``: the keys of each ``seen_among`` call."""

    def __init__(self) -> None:
        self.cursors: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.lookups: list[list[str]] = []
        self.jobs: list[Job] = []
        self.finished: list[tuple[str, tuple[Any, ...] | None]] = []
        self.updates: list[Job] = []
        self.start: int | None = None

    def record_position(
        self, channel_id: str, create_at: int, keys: list[str], at: int
    ) -> asyncio.Future[None]:
        self.cursors[channel_id] = max(create_at, self.cursors.get(channel_id, create_at))
        self.seen.update((k, at) for k in keys)
        return done()

    def record(
        self, jobs: list[Job], channel_id: str, create_at: int, keys: list[str], at: int
    ) -> asyncio.Future[None]:
        self.jobs.extend(jobs)
        return self.record_position(channel_id, create_at, keys, at)

    def record_start(self, position: int) -> asyncio.Future[None]:
        self.start = position
        return done()

    def prune_seen(self, horizon: int) -> None:
        pass

    async def seen_among(self, keys: Sequence[str]) -> set[str]:
        self.lookups.append(list(keys))
        return {k for k in keys if k in self.seen}

    def update_job(self, job: Job) -> asyncio.Future[None]:
        self.updates.append(job)
        return done()

    def finish_job(self, job_id: str, entry: tuple[Any, ...] | None = None) -> asyncio.Future[None]:
        self.finished.append((job_id, entry))
        return done()

    def outcomes(self) -> list[history.Outcome]:
        """The history outcome of each finished job, in order."""
        return [entry[11] for _, entry in self.finished if entry is not None]

    def snapshot(self, *, fresh: bool = False, seen_limit: int | None = None) -> Snapshot:
        """What ``open(seen_limit=)`` reads back."""
        newest_first = sorted(self.seen.items(), key=lambda item: -item[1])
        seen, floor = newest(newest_first, seen_limit)
        return Snapshot(
            fresh=fresh,
            cursors=dict(self.cursors),
            seen=seen,
            jobs=[],
            start=self.start,
            seen_floor=floor,
        )


class RecordingOutbox:
    """``outbox.Outbox.submit`` only: the jobs handed over, in order (always with room)."""

    has_room = True

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, jobs: list[Job], committed: Any) -> None:
        self.jobs.extend(jobs)


def job(url: str = "https://hooks.example.com/hook", *, webhook: str = "hook") -> Job:
    """A job for ``webhook``, as the dispatcher queues it."""
    return Job(
        id="wid/0",
        webhook=webhook,
        url=url,
        webhook_id="wid",
        body=b"text=hello",
        content_type="application/x-www-form-urlencoded",
        event="posted",
        post_id="p" * 26,
        channel_id=CHANNEL.id,
        root_id="",
    )


def numbered_job(n: int, *, body: bytes = b"x", content_type: str = "application/json") -> Job:
    """The n-th job of a state test: webhook "build", channel "chan", post "post{n}"."""
    return Job(
        id=f"msg_{n}/0",
        webhook="build",
        url="https://ci.test/hook",
        webhook_id=f"msg_{n}",
        body=body,
        content_type=content_type,
        event="posted",
        post_id=f"post{n}",
        channel_id="chan",
        root_id="",
    )


class FakeOutbox:
    """What the history keeper needs of the outbox: which jobs run here, a submit that
    records, and the counters it reads."""

    def __init__(self, running: set[str]) -> None:
        self.ids = running
        self.submitted: list[Job] = []
        self.committed: list[Any] = []
        self.counters = Counters()

    def running(self, job_id: str) -> bool:
        return job_id in self.ids

    def submit(self, jobs: list[Job], committed: Any) -> None:
        self.submitted.extend(jobs)
        self.committed.append(committed)
