"""End-to-end harness: the emulator, a recording callback server and a real Sidecar, in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sidecar.app import Sidecar, Tuning
from sidecar.config import Config, parse_config
from sidecar.delivery import DELIVERY_RETRY
from sidecar.replies import REPLY_RETRY
from sidecar.testing.emulator import Emulator
from sidecar.testing.recorder import CallbackRecorder, Recorded

FAST = Tuning(
    ping_interval=1.0,
    pong_timeout=1.0,
    backoff_base=0.05,
    backoff_cap=0.2,
    # The same exponential waits with full jitter, 50 times shorter (a Retry-After still
    # counts in full): a test waits for the retry it expects, not for a production backoff.
    delivery_retry=replace(DELIVERY_RETRY, base=0.02, cap=1.2),
    reply_retry=replace(REPLY_RETRY, base=0.01, cap=0.6),
    history_poll=0.1,
)
WEBHOOK_TOKEN = "zmigewsanbbsdf59xnmduzypjc"


@dataclass
class World:
    """A seeded server: one team, its channels and users, the bot; every user has a token.

    Team "someteam" with alice, bob, carol, the bots "ci-bot" and "sidecar-bot". Public
    "town-square" and "dev" (everyone but carol), private "secret" (everyone but carol) and
    "private-room" (alice, bot), a DM alice ↔ bot, a group alice, bob, bot.
    """

    mm: Emulator
    team: dict[str, Any]
    town: dict[str, Any]  # public, town-square
    dev: dict[str, Any]  # public, dev
    secret: dict[str, Any]  # private, secret
    private: dict[str, Any]  # private, private-room: alice and the bot only
    dm: dict[str, Any]  # alice ↔ bot
    group: dict[str, Any]  # alice, bob, bot
    alice: dict[str, Any]
    bob: dict[str, Any]
    carol: dict[str, Any]  # in the team, in none of its channels
    ci: dict[str, Any]  # another bot
    bot: dict[str, Any]
    tokens: dict[str, str]  # by username

    @property
    def bot_token(self) -> str:
        """The bot's access token."""
        return self.tokens["sidecar-bot"]

    @property
    def ci_token(self) -> str:
        """The other bot's access token."""
        return self.tokens["ci-bot"]

    @property
    def ws_url(self) -> str:
        """The websocket endpoint."""
        return self.mm.url.replace("http://", "ws://", 1) + "/api/v4/websocket"

    def auth(self, username: str = "sidecar-bot") -> dict[str, str]:
        """An Authorization header for that user."""
        return {"Authorization": f"Bearer {self.tokens[username]}"}


def seed(mm: Emulator) -> World:
    """Create the standard world on an emulator."""
    team = mm.create_team("someteam", "Some Team")
    alice = mm.create_user("alice")
    bob = mm.create_user("bob")
    carol = mm.create_user("carol")
    ci = mm.create_user("ci-bot", is_bot=True)
    bot = mm.create_user("sidecar-bot", is_bot=True)
    users = (alice, bob, carol, ci, bot)
    for u in users:
        mm.add_team_member(team["id"], u["id"])
    everyone = [alice["id"], bob["id"], ci["id"], bot["id"]]
    town = mm.create_channel(team["id"], "town-square", "O", "Town Square", members=everyone)
    dev = mm.create_channel(team["id"], "dev", "O", "Dev", members=everyone)
    secret = mm.create_channel(team["id"], "secret", "P", "Secret", members=everyone)
    private = mm.create_channel(team["id"], "private-room", "P", "", [alice["id"], bot["id"]])
    dm = mm.create_direct_channel(alice["id"], bot["id"])
    group = mm.create_group_channel([alice["id"], bob["id"], bot["id"]])
    return World(
        mm=mm,
        team=team,
        town=town,
        dev=dev,
        secret=secret,
        private=private,
        dm=dm,
        group=group,
        alice=alice,
        bob=bob,
        carol=carol,
        ci=ci,
        bot=bot,
        tokens={u["username"]: mm.create_token(u["id"]) for u in users},
    )


def make_config(
    world: World,
    state_dir: Path,
    webhooks: list[Mapping[str, Any]],
    **sidecar: Any,
) -> Config:
    """A validated config for the world's server with the given webhook tables."""
    hooks = []
    for i, w in enumerate(webhooks):
        hook = {"name": f"hook{i}", "token": WEBHOOK_TOKEN, **w}
        hooks.append(hook)
    data = {
        "mattermost": {"url": world.mm.url, "token": world.bot_token},
        "sidecar": {
            "state_dir": str(state_dir),
            "listen": "",
            "allowed_untrusted_internal_connections": ["127.0.0.1", "localhost"],
            **sidecar,
        },
        "webhook": hooks,
    }
    return parse_config(data, path=state_dir / "config.toml", env={})


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def connected(app: Sidecar) -> bool:
    """Whether the dispatcher has processed a connection (the connected gauge is 1)."""
    return app.metrics.registry.get_sample_value("mm_sidecar_websocket_connected") == 1


async def drained(app: Sidecar, *, timeout: float = 10.0) -> None:
    """Wait until every job queued so far is finished (delivered, replied, or given up)."""
    await wait_until(
        lambda: app.pipeline is not None and app.pipeline.outbox.depth == 0,
        timeout=timeout,
        what="drain",
    )


async def drained_after(
    app: Sidecar,
    cb: CallbackRecorder,
    post: Callable[[], object],
    is_marker: Callable[[Recorded], bool],
    *,
    timeout: float = 10.0,
) -> None:
    """Make a last post that fires (``post``), wait for its request, then for an empty outbox.

    The dispatcher handles posts in order, so whatever an earlier post would have fired was
    queued before the marker's job, and delivered once the outbox is empty: a test proves that
    something did not happen without sleeping. The marker's requests are removed from
    ``cb.requests``.
    """
    post()
    await wait_until(lambda: any(is_marker(r) for r in cb.requests), timeout=timeout, what="marker")
    await drained(app)
    cb.requests[:] = [r for r in cb.requests if not is_marker(r)]


@asynccontextmanager
async def running(config: Config, *, tuning: Tuning = FAST) -> AsyncIterator[Sidecar]:
    """A started, connected Sidecar; stopped (drained) on exit."""
    app = Sidecar(config, tuning=tuning)
    stop = asyncio.Event()
    async with app:
        task = asyncio.create_task(app.serve(stop), name="test-sidecar")
        try:
            await wait_until(lambda: app.readiness()[0] or task.done(), what="sidecar ready")
            if task.done():
                task.result()
            # The dispatcher took the first Connected item (it sets the gauge, then handles
            # the gap: on a first start without waiting for anything). A replica (HA) that
            # tried the lease and found it held holds no websocket: it is a standby.
            await wait_until(
                lambda: (
                    connected(app)
                    or (app.ha is not None and app.ha.tries > 0 and not app.ha.lease.active)
                ),
                what="first connection processed (or standing by)",
            )
            yield app
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
