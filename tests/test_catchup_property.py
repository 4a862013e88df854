"""Property test of catch-up: the Dispatcher against an in-memory server model.

Random interleavings of posts, edits, reactions and deletions in three channels, with random
gaps — a websocket drop that resumes (events replayed, some twice), a server restart (events
lost: REST catch-up), a sidecar restart (a new Dispatcher from the saved state: catch-up) —
random ``create_at`` skew (±1 day on some posts) and a server clock offset of ±2 h from ours.

Every matching event is delivered exactly once per (post, webhook, event, edit) — one
``webhook-id`` each —, nothing from before the first start, nothing from the bot. What may
be missing is only what the README states as a limit: a post stamped before its channel's
cursor (backdated) made during a gap, a post deleted before catch-up saw it, and an edit
superseded by a later one within the same gap (catch-up sees a post's latest version).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import __version__, seen
from sidecar.config import parse_config
from sidecar.dispatch import Dispatcher
from sidecar.events import Event, Posted, PostEdited, ReactionAdded
from sidecar.health import Metrics
from sidecar.mattermost import MattermostError
from sidecar.models import Channel, Post, Reaction, Team, User
from sidecar.payload import webhook_id
from sidecar.state import Job, Snapshot

DAY = 86_400_000
HOURS_2 = 7_200_000
T0 = 1_800_000_000_000
TOKEN = "zmigewsanbbsdf59xnmduzypjc"
TEAM = Team(id="t" * 26, name="team")
CHANNELS = [
    Channel(id=f"c{i}" + "x" * 24, team_id=TEAM.id, type="O", name=f"c{i}") for i in range(3)
]
USERS = {u.id: u for u in (User(id="alice", username="alice"), User(id="bob", username="bob"))}
BOT = User(id="bot", username="sidecar-bot", is_bot=True)
USERS[BOT.id] = BOT
# webhook name → (event, channels it watches)
HOOKS = {
    "posts": ("posted", {"c0", "c1"}),
    "edits": ("post_edited", {"c1", "c2"}),  # c2: only edits are watched (item 1b)
    "reacts": ("reaction_added", {"c0", "c1", "c2"}),
}


def rules_config() -> Any:
    data = {
        "mattermost": {"url": "http://mm.example.com", "token": TOKEN},
        "sidecar": {"state_dir": "/nonexistent", "listen": ""},
        "webhook": [
            {
                "name": name,
                "token": TOKEN,
                "events": [event],
                "channels": sorted(chans),
                "callback_urls": [f"https://hooks.example.com/{name}"],
            }
            for name, (event, chans) in HOOKS.items()
        ],
    }
    return parse_config(data, path=Path("/nonexistent/config.toml"), env={})


@dataclass
class ServerPost:
    id: str
    channel: Channel
    user_id: str
    create_at: int
    message: str
    update_at: int
    edit_at: int = 0
    delete_at: int = 0
    reactions: list[Reaction] = field(default_factory=list)

    def model(self, *, with_reactions: bool = True) -> Post:
        return Post(
            id=self.id,
            channel_id=self.channel.id,
            user_id=self.user_id,
            create_at=self.create_at,
            message=self.message,
            update_at=self.update_at,
            edit_at=self.edit_at,
            delete_at=self.delete_at,
            reactions=tuple(self.reactions) if with_reactions else (),
        )


class Server:
    """Mattermost as far as catch-up sees it; timestamps as the emulator makes them."""

    def __init__(self, offset: int, rng: random.Random) -> None:
        self.real = T0  # the true time; our clock shows it, the server's is `offset` away
        self.offset = offset
        self.posts: dict[str, ServerPost] = {}
        self.rng = rng

    def now(self) -> int:
        return self.real + self.offset

    def post(self, channel: Channel, user_id: str, skew: int) -> ServerPost:
        at = self.now() + skew
        p = ServerPost(f"p{len(self.posts):03d}", channel, user_id, at, "text", at)
        self.posts[p.id] = p
        return p

    def edit(self, p: ServerPost) -> None:
        p.edit_at = p.update_at = max(self.now(), p.update_at)
        p.message = f"edited at {p.edit_at}"

    def react(self, p: ServerPost, user_id: str, emoji: str) -> Reaction | None:
        if any(r.user_id == user_id and r.emoji_name == emoji for r in p.reactions):
            return None
        p.update_at = max(self.now(), p.update_at)
        reaction = Reaction(user_id, p.id, emoji, p.update_at, p.channel.id)
        p.reactions.append(reaction)
        return reaction

    def delete(self, p: ServerPost) -> None:
        p.delete_at = p.update_at = max(self.now(), p.update_at)


class FakeRest:
    """The RestClient calls the Dispatcher and catch-up make."""

    def __init__(self, server: Server) -> None:
        self.s = server

    def server_now_ms(self) -> int:
        # As RestClient estimates it from a Date header (whole seconds, at or behind).
        date = self.s.now() // 1000 * 1000
        low = date - self.s.real
        return self.s.real + (0 if low <= 0 <= low + 1000 else low)

    async def channel(self, channel_id: str) -> Channel:
        return next(c for c in CHANNELS if c.id == channel_id)

    def cached_team(self, team_id: str) -> Team:
        return TEAM

    async def team(self, team_id: str) -> Team:
        return TEAM

    def cached_user(self, user_id: str) -> User:
        return USERS[user_id]

    async def user(self, user_id: str) -> User:
        return USERS[user_id]

    async def my_teams(self) -> list[Team]:
        return [TEAM]

    async def my_channels(self, team_id: str) -> list[Channel]:
        return list(CHANNELS)

    async def post(self, post_id: str) -> Post:
        p = self.s.posts[post_id]
        if p.delete_at:
            raise MattermostError("GET /posts: 404", status=404)
        return p.model()

    async def posts_since(self, channel_id: str, since: int) -> list[Post]:
        found = [
            p.model()
            for p in self.s.posts.values()
            if p.channel.id == channel_id and p.update_at > since
        ]
        self.s.rng.shuffle(found)  # no ORDER BY
        return found

    def forget_channel(self, channel_id: str) -> None:
        pass

    def forget_user(self, user_id: str) -> None:
        pass


class FakeState:
    """What `State` keeps on disk, committed at once; ``lookups``: keys asked of the table."""

    def __init__(self) -> None:
        self.cursors: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.start: int | None = None
        self.lookups = 0

    def _done(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def record_position(self, channel_id: str, create_at: int, keys: list[str], at: int) -> Any:
        self.cursors[channel_id] = max(create_at, self.cursors.get(channel_id, create_at))
        self.seen.update((k, at) for k in keys)
        return self._done()

    def record(
        self, jobs: list[Job], channel_id: str, create_at: int, keys: list[str], at: int
    ) -> Any:
        return self.record_position(channel_id, create_at, keys, at)

    def record_start(self, position: int) -> Any:
        self.start = position
        return self._done()

    async def seen_among(self, keys: list[str]) -> set[str]:
        self.lookups += len(keys)
        return {k for k in keys if k in self.seen}

    def snapshot(self) -> Snapshot:
        """What the daemon's start reads: the newest SEEN_IN_MEMORY keys, and the floor."""
        newest_first = sorted(self.seen.items(), key=lambda item: -item[1])
        keys, floor = seen.newest(newest_first, seen.SEEN_IN_MEMORY)
        return Snapshot(
            fresh=not self.cursors and self.start is None,
            cursors=dict(self.cursors),
            seen=keys,
            jobs=[],
            start=self.start,
            seen_floor=floor,
        )


class FakeOutbox:
    has_room = True

    def __init__(self) -> None:
        self.ids: list[str] = []

    def submit(self, jobs: list[Job], committed: Any) -> None:
        self.ids.extend(j.webhook_id for j in jobs)


def post_id_of(p: ServerPost) -> str:
    return webhook_id(p.id, "posts", "posted")


def edit_id_of(p: ServerPost, edit_at: int) -> str:
    return webhook_id(p.id, "edits", "post_edited", str(edit_at))


def reaction_id_of(r: Reaction) -> str:
    return webhook_id(
        r.post_id, "reacts", "reaction_added", f"{r.user_id}:{r.emoji_name}:{r.create_at}"
    )


def watches(hook: str, p: ServerPost) -> bool:
    return p.user_id != BOT.id and p.channel.name in HOOKS[hook][1]


class World:
    """The server, the sidecar (restartable), and the oracle's MUST / MAY sets."""

    def __init__(self, offset: int, seed: int) -> None:
        self.server = Server(offset, random.Random(seed))
        self.rest = FakeRest(self.server)
        self.state = FakeState()
        self.outbox = FakeOutbox()
        self.config = rules_config()
        self.dispatcher: Dispatcher | None = None
        self.gap: str = ""  # "", "drop", "server", "sidecar"
        self.buffered: list[tuple[Event, Any]] = []  # events of a drop, replayed at its end
        self.recent: list[tuple[Event, Any]] = []  # the last events dispatched (replayed twice)
        self.lost: list[Any] = []  # oracle entries of a server/sidecar gap, decided at its end
        self.must: set[str] = set()
        self.may: set[str] = set()

    def new_dispatcher(self) -> Dispatcher:
        from sidecar.runtime import Live, Runtime

        return Dispatcher(
            rest=cast(Any, self.rest),
            state=cast(Any, self.state),
            outbox=cast(Any, self.outbox),
            metrics=Metrics(__version__),
            live=Live(Runtime.build(self.config, bot_user_id=BOT.id)),
            me=BOT,
            snapshot=self.state.snapshot(),
            retry_base=0.0,
        )

    async def start(self) -> None:
        # The documented limit: the start position is the server's time as its Date header
        # shows it; with clocks more than a second apart it may trail by up to a second, and
        # a post of that last second before the start may be caught up once.
        for p in self.server.posts.values():
            if p.create_at >= self.rest.server_now_ms() and watches("posts", p):
                self.may.add(post_id_of(p))
            if p.edit_at >= self.rest.server_now_ms() and watches("edits", p):
                self.may.add(edit_id_of(p, p.edit_at))
        self.dispatcher = self.new_dispatcher()
        await self.dispatcher.gap()  # the first start: begins now

    # -- what happens on the server, and what the sidecar hears of it --------------------

    async def event(self, ev: Event, oracle: Any) -> None:
        """An event happened: delivered now, after the drop, or lost (caught up later)."""
        if self.dispatcher is None:
            return  # before the first start: history
        if self.gap == "drop":
            self.buffered.append((ev, oracle))
        elif self.gap:
            self.lost.append(oracle)
        else:
            await self.deliver(ev, oracle)

    async def deliver(self, ev: Event, oracle: Any) -> None:
        assert self.dispatcher is not None
        await self.dispatcher.dispatch(ev)
        self.recent = [*self.recent, (ev, oracle)][-2:]
        kind, p, extra = oracle
        if kind == "posted" and watches("posts", p):
            self.must.add(post_id_of(p))
        elif kind == "edited" and watches("edits", p):
            self.must.add(edit_id_of(p, extra))
        elif kind == "reaction" and watches("reacts", p):
            # (A reaction replayed after its post was deleted cannot be looked up.)
            (self.may if p.delete_at else self.must).add(reaction_id_of(extra))

    async def begin_gap(self, kind: str) -> None:
        if self.gap or self.dispatcher is None:
            return
        self.gap = kind

    async def end_gap(self) -> None:
        kind, self.gap = self.gap, ""
        if kind == "drop":
            replay, self.buffered = self.buffered, []
            for ev, oracle in self.recent + replay:  # the resume may repeat what we had
                await self.deliver(ev, oracle)
            return
        if kind == "sidecar":
            self.dispatcher = self.new_dispatcher()
        if kind:
            self.judge_lost()
            assert self.dispatcher is not None
            await self.dispatcher.gap()

    def judge_lost(self) -> None:
        """What catch-up must find: the latest state of what changed during the gap."""
        for kind, p, extra in self.lost:
            gone = bool(p.delete_at)
            if kind == "posted" and watches("posts", p):
                backdated = p.create_at < self.server.now() - DAY // 2
                (self.may if gone or backdated else self.must).add(post_id_of(p))
            elif kind == "edited" and watches("edits", p):
                latest = extra == p.edit_at
                (self.may if gone or not latest else self.must).add(edit_id_of(p, extra))
            elif kind == "reaction" and watches("reacts", p):
                (self.may if gone else self.must).add(reaction_id_of(extra))
        self.lost = []

    async def apply(self, op: tuple[Any, ...]) -> None:
        s = self.server
        s.real += op[-1]  # every op comes some milliseconds after the previous one
        live = [p for p in s.posts.values() if not p.delete_at]
        kind = op[0]
        if kind == "post":
            _, c, user, skew, _dt = op
            p = s.post(CHANNELS[c], user, skew)
            ev = Posted(
                post=p.model(with_reactions=False),
                channel_type="O",
                channel_name=p.channel.name,
                team_id=TEAM.id,
            )
            await self.event(ev, ("posted", p, None))
        elif kind == "edit" and live:
            p = live[op[1] % len(live)]
            s.edit(p)
            await self.event(
                PostEdited(post=p.model(with_reactions=False)), ("edited", p, p.edit_at)
            )
        elif kind == "react" and live:
            p = live[op[1] % len(live)]
            reaction = s.react(p, op[3], op[2])
            if reaction is not None:
                await self.event(ReactionAdded(reaction=reaction), ("reaction", p, reaction))
        elif kind == "delete" and live:
            s.delete(live[op[1] % len(live)])
        elif kind == "gap":
            await self.begin_gap(op[1])
        elif kind == "end" and self.gap:
            await self.end_gap()


TINY_CAP = 3  # processed keys in memory (seen.SEEN_IN_MEMORY) during the property test
dt = st.integers(0, 30_000)
index = st.integers(0, 10_000)
post_op = st.tuples(
    st.just("post"),
    st.integers(0, 2),
    st.sampled_from(["alice", "alice", "bob", "bot"]),
    st.sampled_from([0, 0, 0, 0, 0, DAY, -DAY]),
    dt,
)
ops = st.one_of(
    post_op,
    post_op,
    st.tuples(st.just("edit"), index, dt),
    st.tuples(
        st.just("react"),
        index,
        st.sampled_from(["tada", "eyes"]),
        st.sampled_from(["alice", "bob"]),
        dt,
    ),
    st.tuples(st.just("delete"), index, dt),
    st.tuples(st.just("gap"), st.sampled_from(["drop", "server", "sidecar"]), dt),
    st.tuples(st.just("end"), dt),
)
history_op = st.one_of(post_op, st.tuples(st.just("edit"), index, dt))


@settings(max_examples=150, deadline=None, database=None)
@given(
    history=st.lists(history_op, max_size=6),
    script=st.lists(ops, min_size=1, max_size=40),
    offset=st.sampled_from([-HOURS_2, 0, HOURS_2]),
    seed=st.integers(0, 2**16),
)
def test_catch_up_delivers_every_event_exactly_once(
    history: list[tuple[Any, ...]], script: list[tuple[Any, ...]], offset: int, seed: int
) -> None:
    world = World(offset, seed)

    async def run() -> None:
        for op in history:
            await world.apply(op)
        world.server.real += 1
        await world.start()
        for op in script:
            await world.apply(op)
        await world.end_gap()

    # A tiny cache of processed keys: evictions, and lookups in the table, in most examples.
    with patch.object(seen, "SEEN_IN_MEMORY", TINY_CAP):
        asyncio.run(run())
    got = Counter(world.outbox.ids)
    twice = sorted(i for i, n in got.items() if n > 1)
    assert not twice, f"delivered more than once: {twice}"
    missing = world.must - set(got)
    assert not missing, f"never delivered: {sorted(missing)}"
    unexpected = set(got) - world.must - world.may
    assert not unexpected, f"delivered but not due (history, the bot's, ...): {sorted(unexpected)}"


def test_the_oracle_is_not_vacuous() -> None:
    """The model does drive deliveries through live events and catch-up alike."""
    world = World(HOURS_2, 1)
    script: list[tuple[Any, ...]] = [
        ("post", 0, "alice", 0, 5),
        ("gap", "server", 5),
        ("post", 1, "alice", DAY, 5),
        ("post", 0, "bob", 0, 5),
        ("end", 5),
        ("gap", "sidecar", 5),
        ("edit", 1, 5),
        ("react", 0, "tada", "bob", 5),
        ("end", 5),
    ]

    async def run() -> None:
        await world.start()
        for op in script:
            await world.apply(op)

    asyncio.run(run())
    assert len(world.must) == 5 and world.must == set(world.outbox.ids)


def test_the_tiny_cache_evicts_and_asks_the_table() -> None:
    """With TINY_CAP keys in memory, the property test's kind of script evicts keys, asks the
    table for the evicted ones (live and in catch-up, also after a restart that loaded only
    the newest keys), and still delivers each event once."""
    world = World(0, 1)
    script: list[tuple[Any, ...]] = [("post", 0, "alice", 0, 5) for _ in range(5)]
    script += [
        ("react", 0, "tada", "bob", 5),  # on the oldest post: its key is long evicted
        ("gap", "sidecar", 5),
        ("react", 0, "eyes", "alice", 5),
        ("end", 5),  # a restart: the newest TINY_CAP keys loaded, catch-up asks the table
        ("gap", "drop", 5),
        ("post", 0, "bob", 0, 5),
        ("end", 5),  # the resume repeats the last events
    ]

    async def run() -> None:
        await world.start()
        for op in script:
            await world.apply(op)

    with patch.object(seen, "SEEN_IN_MEMORY", TINY_CAP):
        asyncio.run(run())
    assert world.dispatcher is not None
    assert world.dispatcher.progress.seen.floor > 0  # keys were evicted
    assert len(world.dispatcher.progress.seen) <= TINY_CAP + 1
    # Live: bob's reaction; catch-up: alice's (bob's is among the newest keys loaded).
    assert world.state.lookups == 2
    assert len(world.must) == 8
    assert sorted(world.outbox.ids) == sorted(world.must)
