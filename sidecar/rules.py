"""Event → matches: which webhooks fire for a post, and with which trigger word.

Pure. Mattermost's semantics (first word, exact/prefix trigger words, first configured word
sent) plus ours (private channels, DMs, regexes, user filters, each webhook its own trigger
word). Webhooks are indexed by trigger word and by channel so that a post only looks at the
few webhooks that could fire: 10,000 webhooks cost what 10 do.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sidecar.config import WebhookConfig
from sidecar.config_checks import required_literal
from sidecar.models import EVENT_NAMES, Channel, EventName, Post, Reaction, Team, User

log = logging.getLogger(__name__)

# A trigger regex search on one message may take this long (seconds) before it is abandoned:
# the regex engine's own timeout, so that no pattern and no message can stall the event loop.
REGEX_TIMEOUT = 0.05
# All the trigger regex searches of one message together may take this long (seconds): with
# many regex webhooks, one long message must not stall the event loop N × REGEX_TIMEOUT.
REGEX_BUDGET = 0.2

# Go's unicode.IsSpace (the White_Space property), which strings.Fields splits on.
# Python's str.split() differs: it also splits on U+001C..U+001F.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_FIRST_FIELD = re.compile(f"[^{_GO_SPACE}]+")


def first_word(text: str) -> str:
    """The first whitespace-separated field of ``text`` (Go ``strings.Fields``), or ""."""
    m = _FIRST_FIELD.search(text)
    return m.group(0) if m else ""


@dataclass(frozen=True, slots=True)
class Context:
    """What a webhook is matched against.

    ``actor`` is the poster, or the reactor for ``reaction_added``; ``post`` is the post
    as posted, as edited, or as reacted to. ``team`` is None for direct and group messages.
    """

    event: EventName
    post: Post
    channel: Channel
    team: Team | None
    actor: User
    reaction: Reaction | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """A webhook that fires, with its own trigger word and the regex's named groups."""

    webhook: WebhookConfig
    trigger_word: str
    groups: Mapping[str, str] = field(default_factory=dict)


def _fold(word: str, webhook: WebhookConfig) -> str:
    return word.casefold() if webhook.case_insensitive else word


def _word_trigger(webhook: WebhookConfig, word: str) -> str | None:
    """The first configured trigger word that ``word`` (the post's first word) satisfies."""
    if not word:
        return None
    word = _fold(word, webhook)
    for trigger in webhook.trigger_words:
        key = _fold(trigger, webhook)
        if (webhook.trigger_when == 1 and word.startswith(key)) or word == key:
            return trigger
    return None


class _Text:
    """The message, with its case-folded form made at most once per event."""

    __slots__ = ("_folded", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._folded: str | None = None

    @property
    def folded(self) -> str:
        if self._folded is None:
            self._folded = self.text.casefold()
        return self._folded


class _Budget:
    """The regex time left for one message; started by its first search."""

    __slots__ = ("deadline", "skipped")

    def __init__(self) -> None:
        self.deadline = 0.0
        self.skipped = 0  # regex webhooks not tried once the budget was spent

    def left(self) -> float:
        now = time.monotonic()
        if not self.deadline:
            self.deadline = now + REGEX_BUDGET
        return self.deadline - now


def _trigger(
    webhook: WebhookConfig,
    message: str,
    word: str,
    literal: tuple[str, bool],
    text: _Text,
    budget: _Budget,
) -> Match | None:
    matched = _word_trigger(webhook, word)
    if matched is not None:
        return Match(webhook, matched, {})
    if webhook.trigger_regex is not None:
        needle, folded = literal
        if needle and needle not in (text.folded if folded else message):
            return None  # the regex needs this literal: no search can match
        left = budget.left()
        if left <= 0:
            budget.skipped += 1
            return None
        try:
            m = webhook.trigger_regex.search(message, timeout=min(REGEX_TIMEOUT, left))
        except TimeoutError:
            log.warning(
                "webhook=%s: trigger_regex gave up after %.0f ms on a %d-character message; "
                "treated as no match (simplify the pattern)",
                webhook.name,
                REGEX_TIMEOUT * 1000,
                len(message),
            )
            return None
        if m is None:
            return None
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        return Match(webhook, m.group(0), groups)
    if webhook.trigger_words:
        return None
    return Match(webhook, "", {})  # no trigger at all: everything in scope fires


def _channel_in_scope(webhook: WebhookConfig, channel: Channel, team: Team | None) -> bool:
    # Team only limits public and private channels: DMs and group messages have no team.
    teamed = channel.type in ("O", "P")
    if webhook.team and teamed and (team is None or webhook.team not in (team.id, team.name)):
        return False
    named = webhook.channels
    if named and channel.id not in named and channel.name not in named:
        return False
    types = webhook.channel_types
    if types is None:
        # Omitted: public only, unless channels are named — then they define the types.
        return bool(webhook.channels) or channel.type == "O"
    return channel.type in types


def _actor_in_scope(webhook: WebhookConfig, ctx: Context) -> bool:
    actor = ctx.actor
    if webhook.users and actor.id not in webhook.users and actor.username not in webhook.users:
        return False
    if actor.id in webhook.exclude_users or actor.username in webhook.exclude_users:
        return False
    # For a reaction, from_bot describes the post's author, not the reactor.
    bot = actor.is_bot or (ctx.event != "reaction_added" and ctx.post.from_bot)
    return not (webhook.ignore_bots and bot)


def _never_fires(ctx: Context, bot_user_id: str) -> bool:
    post = ctx.post
    own = bool(bot_user_id) and bot_user_id in (post.user_id, ctx.actor.id)
    return own or post.from_webhook or post.is_system or post.burn_on_read or post.delete_at != 0


class _EventIndex:
    """Candidate lookup for the webhooks that listen to one event.

    Trigger-word webhooks are found by the post's first word; webhooks that must be looked
    at whatever the first word (regex or no trigger) are found by channel id/name, with one
    list for those that name no channel. Candidates are positions in config order.
    """

    def __init__(self) -> None:
        self.exact: dict[str, list[int]] = {}
        self.exact_folded: dict[str, list[int]] = {}
        self.prefix: dict[str, list[int]] = {}
        self.prefix_folded: dict[str, list[int]] = {}
        self.prefix_lengths: list[int] = []
        self.prefix_folded_lengths: list[int] = []
        self.by_channel: dict[str, list[int]] = {}
        self.any_channel: list[int] = []
        # Regex webhooks of any channel whose matches all contain a literal (config_checks
        # .required_literal): found by one trigram of it, so 10,000 regexes are not all tried.
        self._literal_hooks: list[tuple[int, str, bool]] = []
        self.trigrams: dict[str, list[int]] = {}
        self.trigrams_folded: dict[str, list[int]] = {}

    def add(
        self, pos: int, webhook: WebhookConfig, literal: tuple[str, bool] = ("", False)
    ) -> None:
        if webhook.trigger_words:
            if webhook.trigger_when == 1:
                table = self.prefix_folded if webhook.case_insensitive else self.prefix
            else:
                table = self.exact_folded if webhook.case_insensitive else self.exact
            for key in {_fold(w, webhook) for w in webhook.trigger_words}:
                table.setdefault(key, []).append(pos)
        if webhook.trigger_regex is not None or not webhook.trigger_words:
            if webhook.trigger_regex is not None and not webhook.channels and len(literal[0]) >= 3:
                self._literal_hooks.append((pos, *literal))
            elif webhook.channels:
                for key in set(webhook.channels):
                    self.by_channel.setdefault(key, []).append(pos)
            else:
                self.any_channel.append(pos)

    def freeze(self) -> None:
        self.prefix_lengths = sorted({len(k) for k in self.prefix})
        self.prefix_folded_lengths = sorted({len(k) for k in self.prefix_folded})
        # Each literal is filed under its rarest trigram, so that no bucket is crowded.
        counts: dict[str, int] = {}
        for _, literal, _ in self._literal_hooks:
            for tri in _trigrams(literal):
                counts[tri] = counts.get(tri, 0) + 1
        for pos, literal, folded in self._literal_hooks:
            rarest = min(_trigrams(literal), key=lambda t: (counts[t], t))
            table = self.trigrams_folded if folded else self.trigrams
            table.setdefault(rarest, []).append(pos)
        self._literal_hooks = []

    def candidates(self, word: str, channel: Channel, text: _Text) -> set[int]:
        found: set[int] = set(self.any_channel)
        for key in {channel.id, channel.name}:
            found.update(self.by_channel.get(key, ()))
        if self.trigrams:
            for tri in _trigrams(text.text):
                found.update(self.trigrams.get(tri, ()))
        if self.trigrams_folded:
            for tri in _trigrams(text.folded):
                found.update(self.trigrams_folded.get(tri, ()))
        if not word:
            return found
        found.update(self.exact.get(word, ()))
        _probe_prefixes(found, self.prefix, self.prefix_lengths, word)
        if self.exact_folded or self.prefix_folded:
            folded = word.casefold()
            found.update(self.exact_folded.get(folded, ()))
            _probe_prefixes(found, self.prefix_folded, self.prefix_folded_lengths, folded)
        return found


def _trigrams(text: str) -> set[str]:
    return {text[i : i + 3] for i in range(len(text) - 2)}


def _probe_prefixes(
    found: set[int], table: Mapping[str, list[int]], lengths: Iterable[int], word: str
) -> None:
    # Only the lengths some trigger word has: a 10,000-character first word costs a few probes.
    for n in lengths:
        if n > len(word):
            break
        found.update(table.get(word[:n], ()))


class RuleSet:
    """The configured webhooks, indexed for matching. Immutable once built."""

    def __init__(self, webhooks: Sequence[WebhookConfig], *, bot_user_id: str) -> None:
        """Index ``webhooks``; posts and reactions by ``bot_user_id`` never fire."""
        self._webhooks = tuple(webhooks)
        self._bot_user_id = bot_user_id
        self._indexes: dict[EventName, _EventIndex] = {}
        # For each regex webhook, a literal every match contains: tested before the search.
        self._literals = [
            required_literal(w.trigger_regex.pattern)
            if w.trigger_regex is not None
            else ("", False)
            for w in self._webhooks
        ]
        for event in EVENT_NAMES:
            index = _EventIndex()
            for pos, webhook in enumerate(self._webhooks):
                if event in webhook.events:
                    index.add(pos, webhook, self._literals[pos])
            index.freeze()
            if any(event in w.events for w in self._webhooks):
                self._indexes[event] = index
        self._scope_by_channel: dict[str, list[int]] = {}
        self._scope_any_channel: list[int] = []
        for pos, webhook in enumerate(self._webhooks):
            if webhook.channels:
                for key in set(webhook.channels):
                    self._scope_by_channel.setdefault(key, []).append(pos)
            else:
                self._scope_any_channel.append(pos)

    @property
    def webhooks(self) -> tuple[WebhookConfig, ...]:
        """The webhooks, in config order."""
        return self._webhooks

    @property
    def bot_user_id(self) -> str:
        """The sidecar's own bot user id."""
        return self._bot_user_id

    def listens_for(self, event: EventName) -> bool:
        """Whether any webhook wants this event (so the caller can skip look-ups)."""
        return event in self._indexes

    def in_scope(self, channel: Channel, team: Team | None) -> bool:
        """Whether any webhook could fire in ``channel`` (used to pick channels to catch up)."""
        positions = set(self._scope_any_channel)
        for key in {channel.id, channel.name}:
            positions.update(self._scope_by_channel.get(key, ()))
        return any(_channel_in_scope(self._webhooks[p], channel, team) for p in positions)

    def match(self, ctx: Context) -> list[Match]:
        """Every webhook that fires for ``ctx``, in config order, each with its trigger word."""
        index = self._indexes.get(ctx.event)
        if index is None or _never_fires(ctx, self._bot_user_id):
            return []
        message = ctx.post.message
        word = first_word(message)
        matches: list[Match] = []
        text = _Text(message)
        budget = _Budget()
        for pos in sorted(index.candidates(word, ctx.channel, text)):
            webhook = self._webhooks[pos]
            if not _channel_in_scope(webhook, ctx.channel, ctx.team):
                continue
            if not _actor_in_scope(webhook, ctx):
                continue
            found = _trigger(webhook, message, word, self._literals[pos], text, budget)
            if found is not None:
                matches.append(found)
        if budget.skipped:
            log.warning(
                "post=%s: trigger regexes used up their %.0f ms budget on a %d-character "
                "message; %d regex webhooks not tried (treated as no match)",
                ctx.post.id,
                REGEX_BUDGET * 1000,
                len(message),
                budget.skipped,
            )
        return matches
