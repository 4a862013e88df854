"""Public channels as the built-in outgoing webhook sees them: the bot joins each one in scope.

Mattermost's built-in webhook fires in every public channel of its team without being a
member; the bot sees only the channels it is in, and the server does not tell team members
about a new public channel (``channel_created`` goes to its creator only). So, with
``join_public_channels`` on, the :class:`Joiner` lists the public channels of every team some
webhook covers, at start and every ``join_interval``, joins each one in scope that the bot is
not in, and hands the joined channels to the dispatcher to be caught up from
:func:`catch_up_from` — so a post made before the join is still delivered, once. It reacts at
once to ``channel_converted`` / ``channel_restored`` and to the bot being added to a team or
a channel. Private channels are never joined (they need an invitation).

The choices are pure functions (:func:`teams_in_scope`, :func:`channels_to_join`,
:func:`catch_up_from`); the Joiner does the REST calls. The catch-up itself runs in the
dispatcher's task (a :class:`Joined` item on its queue), so it never interleaves with the
processing of a websocket event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from sidecar.config import WebhookConfig
from sidecar.events import ChannelOpened, MemberAdded
from sidecar.health import Metrics
from sidecar.mattermost import BadAnswer, MattermostError, RestClient, Unauthorized
from sidecar.models import Channel, ObjectError, Team, User
from sidecar.rules import RuleSet

log = logging.getLogger(__name__)

PER_PAGE = 200  # the server's maximum per_page
REFUSED_RETRY = 3600.0  # seconds before a channel whose join was refused (403) is tried again


# -- pure --------------------------------------------------------------------------------------


def covers_public(webhook: WebhookConfig) -> bool:
    """Whether the webhook may fire in public channels (``channel_types`` includes public)."""
    types = webhook.channel_types
    return types is None or "O" in types


def teams_in_scope(
    webhooks: Iterable[WebhookConfig], my_teams: Sequence[Team]
) -> tuple[list[Team], list[str]]:
    """The bot's teams whose public channels some webhook covers; and the teams that webhooks
    name but the bot is not a member of (it cannot add itself to a team)."""
    every_team = False
    named: dict[str, None] = {}
    for w in webhooks:
        if not covers_public(w):
            continue
        if w.team:
            named[w.team] = None
        else:
            every_team = True
    found: dict[str, Team] = {}
    missing: list[str] = []
    for key in named:
        team = next((t for t in my_teams if key in (t.id, t.name)), None)
        if team is None:
            missing.append(key)
        else:
            found[team.id] = team
    if every_team:
        found.update((t.id, t) for t in my_teams)
    return list(found.values()), missing


def channels_to_join(
    rules: RuleSet,
    team: Team,
    public: Iterable[Channel],
    members: Collection[str],
    skip: Collection[str] = (),
) -> list[Channel]:
    """The public, live channels of ``team`` where some webhook may fire and the bot is not."""
    return [
        c
        for c in public
        if c.type == "O"
        and not c.delete_at
        and c.id not in members
        and c.id not in skip
        and rules.in_scope(c, team)
    ]


def _joinable(rules: RuleSet, channel: Channel, team: Team) -> bool:
    """A live public channel of ``team`` where some webhook may fire."""
    return channel.type == "O" and not channel.delete_at and rules.in_scope(channel, team)


def catch_up_from(channel: Channel, *, now: int, window: float, floor: int) -> int:
    """Where a joined channel's catch-up starts (ms): its creation, bounded by the window and
    by ``floor`` (where the sidecar's processing began: a first start replays no history)."""
    return max(channel.create_at, now - int(window * 1000), floor)


# -- I/O ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    """Channels the bot just joined (or was added to), each with its catch-up start (ms)."""

    channels: tuple[tuple[Channel, Team | None, int], ...]


class Joiner:
    """Keeps the bot in every public channel in scope. Constructing it does no I/O."""

    def __init__(
        self,
        *,
        rest: RestClient,
        me: User,
        metrics: Metrics,
        rules: Callable[[], RuleSet],
        enabled: Callable[[], bool],
        interval: Callable[[], float],
        window: Callable[[], float],
        floor: Callable[[], int],
        submit: Callable[[Joined], Awaitable[None]],
    ) -> None:
        self._rest = rest
        self._me = me
        self._metrics = metrics
        # Read at each use: a reload swaps the rules and settings.
        self._rules = rules
        self._enabled = enabled
        self._interval = interval
        self._window = window
        self._floor = floor
        self._submit = submit
        self._members: set[str] = set()  # channels the bot is known to be in
        # Channels already caught up after the bot came in (joined by us, or added by someone):
        # the user_added that follows is not news. Kept apart from _members, which a listing
        # fills, so that a pass running when someone adds the bot cannot hide that event.
        self._caught_up: set[str] = set()
        self._refused: dict[str, float] = {}  # channel id → when its join was refused
        self._warned: set[str] = set()  # refused channels already logged (once each)
        self._hints: dict[str, str] = {}  # channel id → the event that named it
        self._full = False  # a hint asks for a whole pass (added to a team)
        self._wake = asyncio.Event()
        self.passes = 0  # finished passes, full or hinted (tests wait on it)
        self.joined = 0

    def __repr__(self) -> str:
        return f"Joiner({len(self._members)} channels known)"

    # -- hints from the websocket ------------------------------------------------------------

    def hint(self, event: ChannelOpened | MemberAdded) -> None:
        """A websocket event that may mean a channel to join or to catch up: look at once."""
        if isinstance(event, ChannelOpened):
            self._hints[event.channel_id] = event.event_name
        elif event.user_id != self._me.id:
            return
        elif event.channel_id:
            self._hints[event.channel_id] = "user_added"
        else:
            self._full = True  # added_to_team: a new team's channels
        self._wake.set()

    def hint_full(self) -> None:
        """Ask for a whole pass now (as at each ``join_interval``)."""
        self._full = True
        self._wake.set()

    # -- passes --------------------------------------------------------------------------------

    async def start(self) -> None:
        """The start-up pass: join (or, when off, count what is not joined) and warn."""
        try:
            if self._enabled():
                await self.reconcile(startup=True)
            else:
                await count_unjoined(self._rest, self._rules())
        except Unauthorized:
            raise
        except MattermostError as exc:
            log.warning("could not list public channels at start-up: %s; trying again later", exc)

    async def run(self) -> None:
        """Every ``join_interval``, and at once on a hint: another pass. Runs until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval())
            except asyncio.TimeoutError:
                self._full = True
            self._wake.clear()
            if not self._enabled():
                self._hints.clear()
                self._full = False
                continue
            hints, self._hints = self._hints, {}
            full, self._full = self._full, False
            try:
                # Hints first: a user_added must not be taken for known by the listing.
                if hints or not full:
                    await self._consider_hints(hints)
                if full:
                    await self.reconcile()
            except Unauthorized:
                raise
            except MattermostError as exc:
                log.warning("public channel pass failed: %s; trying again later", exc)
                self.passes += 1

    async def reconcile(self, *, startup: bool = False) -> None:
        """List every team's public channels in scope and join those the bot is not in."""
        rules = self._rules()
        if not any(covers_public(w) for w in rules.webhooks):
            self.passes += 1
            return
        teams, missing = teams_in_scope(rules.webhooks, await self._rest.my_teams())
        if startup:
            for name in missing:
                log.warning(
                    "team %r: the bot is not a member, so its public channels are not covered "
                    "(add the bot to the team; it cannot add itself)",
                    name,
                )
        now = time.monotonic()
        skip = {c for c, at in self._refused.items() if now - at < REFUSED_RETRY}
        for team in teams:
            public = await public_channels(self._rest, team.id)
            members = await member_channels(self._rest, team.id)
            self._members |= members
            todo = channels_to_join(rules, team, public, members, skip)
            await self._join_all(todo, team, "listed")
        self.passes += 1

    async def _consider_hints(self, hints: dict[str, str]) -> None:
        # The bot's own joins come back as user_added: nothing to do for channels it knows.
        hints = {c: e for c, e in hints.items() if not (e == "user_added" and c in self._caught_up)}
        if not hints:
            self.passes += 1
            return
        rules = self._rules()
        teams = {t.id: t for t in await self._rest.my_teams()}
        for channel_id, event in hints.items():
            channel = await self._hinted_channel(channel_id, event)
            team = None if channel is None else teams.get(channel.team_id)
            if channel is None or team is None or not _joinable(rules, channel, team):
                continue
            if event == "user_added":
                # Someone added the bot (or this is our own join): catch up what came before.
                if channel.id not in self._caught_up:
                    self._caught_up.add(channel.id)
                    self._members.add(channel.id)
                    log.info("added to public channel ~%s (team %s)", channel.name, team.name)
                    await self._submit(Joined(((channel, team, self._since(channel)),)))
                continue
            if channel.id in self._members:
                continue
            self._refused.pop(channel.id, None)
            await self._join_all([channel], team, event)
        self.passes += 1

    async def _hinted_channel(self, channel_id: str, event: str) -> Channel | None:
        """The channel a hint names, read afresh; None when the server refuses it (logged)."""
        self._rest.forget_channel(channel_id)
        try:
            return await self._rest.channel(channel_id)
        except Unauthorized:
            raise
        except MattermostError as exc:
            if exc.retryable:
                raise
            log.info("%s: channel %s cannot be read (%s); not joined", event, channel_id, exc)
            return None

    def _since(self, channel: Channel, *, converted: bool = False) -> int:
        floor = self._floor()
        if converted:
            # Posts made while the channel was private stay private: start after the
            # conversion (update_at; one in the same millisecond is taken as before it).
            floor = max(floor, channel.update_at + 1)
        now = int(time.time() * 1000)
        return catch_up_from(channel, now=now, window=self._window(), floor=floor)

    async def _join_all(self, channels: Sequence[Channel], team: Team, why: str) -> None:
        joined: list[tuple[Channel, Team | None, int]] = []
        for channel in channels:
            if await self._join(channel, team):
                since = self._since(channel, converted=why == "channel_converted")
                log.info(
                    "joined public channel ~%s (team %s, %s) to see its posts; catching up from %d",
                    channel.name,
                    team.name,
                    why,
                    since,
                )
                joined.append((channel, team, since))
        if joined:
            await self._submit(Joined(tuple(joined)))

    async def _join(self, channel: Channel, team: Team) -> bool:
        path = f"/channels/{channel.id}/members"
        try:
            await self._rest.call("POST", path, body={"user_id": self._me.id}, decode=False)
        except Unauthorized:
            raise
        except MattermostError as exc:
            if exc.retryable:
                raise
            if exc.status == 403:
                self._metrics.child(self._metrics.channel_joins, "refused").inc()
                if channel.id not in self._warned:
                    self._warned.add(channel.id)
                    log.warning(
                        "cannot join public channel ~%s (team %s): %s; give the bot the "
                        "'join public channels' permission, or add it to the channel by hand; "
                        "its webhooks do not fire there until then",
                        channel.name,
                        team.name,
                        exc,
                    )
                self._refused[channel.id] = time.monotonic()
            else:
                self._metrics.child(self._metrics.channel_joins, "failed").inc()
                log.warning("could not join public channel ~%s: %s", channel.name, exc)
            return False
        self._metrics.child(self._metrics.channel_joins, "joined").inc()
        self._members.add(channel.id)
        self._caught_up.add(channel.id)
        self._refused.pop(channel.id, None)
        self.joined += 1
        return True


async def count_unjoined(rest: RestClient, rules: RuleSet) -> None:
    """With ``join_public_channels`` off: warn how many public channels in scope the bot is
    not in (their posts never reach the webhooks)."""
    if not any(covers_public(w) for w in rules.webhooks):
        return
    teams, _ = teams_in_scope(rules.webhooks, await rest.my_teams())
    count = 0
    for team in teams:
        public = await public_channels(rest, team.id)
        members = await member_channels(rest, team.id)
        count += len(channels_to_join(rules, team, public, members))
    if count:
        log.warning(
            "join_public_channels is off: %d public channels in scope the bot is not a "
            "member of; their posts never reach the webhooks",
            count,
        )


async def public_channels(rest: RestClient, team_id: str) -> list[Channel]:
    """``GET /teams/{id}/channels``, every page: the team's public channels."""
    found: list[Channel] = []
    page = 0
    while True:
        params = {"page": str(page), "per_page": str(PER_PAGE)}
        data = await rest.call("GET", f"/teams/{team_id}/channels", params=params)
        if not isinstance(data, list):
            raise BadAnswer("team channels: expected a list")
        try:
            found.extend(Channel.from_dict(c) for c in data)
        except ObjectError as exc:
            raise BadAnswer(f"bad channel from server: {exc}") from exc
        if len(data) < PER_PAGE:
            return found
        page += 1


async def member_channels(rest: RestClient, team_id: str) -> set[str]:
    """The ids of the bot's channels in the team (not through the channel cache: only the
    ids are needed, and a lookup made later must still ask the server)."""
    try:
        data = await rest.call("GET", f"/users/me/teams/{team_id}/channels")
    except MattermostError as exc:
        if exc.status == 404:  # the server's answer when the bot has no channel there
            return set()
        raise
    if not isinstance(data, list):
        raise BadAnswer("channels for user: expected a list")
    return {c["id"] for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)}
