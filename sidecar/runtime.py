"""The running configuration: one immutable ``Runtime`` behind one reference (``Live``).

Everything the pipeline reads from the config at run time (rules, webhooks by name and by
callback URL, reply settings, catch-up window, retention, join settings) is in a ``Runtime``,
built once from a validated ``Config`` and the bot's user id. A reload (SIGHUP) builds a new
one and swaps it in with a single assignment, ``live.runtime = new``; nothing else holds config.

Which runtime each step reads:

- the dispatcher pins the current runtime at the start of each step (one websocket event, one
  catch-up) and matches the whole step with it;
- a job pins the runtime current when it starts (``Outbox.submit``): its webhook and its reply
  (reply settings, username, icon) come from that runtime;
- except, per delivery attempt, the *current* runtime decides whether the callback URL is still
  configured (a URL a reload removed gets no further traffic) and gives the timeout, retries
  and signing secrets of that attempt;
- the joiner and the history keeper read the current runtime at each pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sidecar.config import Config, WebhookConfig
from sidecar.history import Retention
from sidecar.reply import ReplySettings
from sidecar.rules import RuleSet

log = logging.getLogger(__name__)

# [mattermost] keys a reload cannot apply (the token also when it comes from token_file).
RESTART_MATTERMOST_KEYS = ("url", "token", "verify_tls")
# [sidecar] keys a reload cannot apply: chosen when the process starts.
RESTART_SIDECAR_KEYS = (
    "state_dir",
    "listen",
    "max_in_flight",
    "event_loop",
    "allowed_untrusted_internal_connections",
    "state_url",
    "state_schema",
    "state_password_file",
    "lease_check_interval",
)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the running pipeline reads of one config. Immutable; build with ``build``."""

    config: Config
    rules: RuleSet
    webhooks: Mapping[str, WebhookConfig]
    by_url: Mapping[str, WebhookConfig]  # the first webhook calling each callback URL
    reply: ReplySettings
    catch_up_window: float
    retention: Retention
    join_public_channels: bool
    join_interval: float

    @classmethod
    def build(cls, config: Config, *, bot_user_id: str) -> Runtime:
        """The runtime of ``config`` for the bot ``bot_user_id`` (its posts never fire)."""
        s = config.sidecar
        by_url: dict[str, WebhookConfig] = {}
        for w in config.webhooks:
            for url in w.callback_urls:
                by_url.setdefault(url, w)
        return cls(
            config=config,
            rules=RuleSet(config.webhooks, bot_user_id=bot_user_id),
            webhooks=MappingProxyType({w.name: w for w in config.webhooks}),
            by_url=MappingProxyType(by_url),
            reply=ReplySettings(
                enable_post_username_override=s.enable_post_username_override,
                enable_post_icon_override=s.enable_post_icon_override,
                max_post_size=config.mattermost.max_post_size,
            ),
            catch_up_window=s.catch_up_window,
            retention=Retention(s.history_days, s.dead_letter_days, s.history_max_rows),
            join_public_channels=s.join_public_channels,
            join_interval=s.join_interval,
        )

    def webhook_of(self, name: str, url: str) -> WebhookConfig | None:
        """A job's webhook: by name, or (renamed since the job was queued) by callback URL.

        The job keeps its stored URL and body either way; the webhook found gives the
        retries, timeout, signing secrets and reply settings.
        """
        by_name = self.webhooks.get(name)
        if by_name is not None and url in by_name.callback_urls:
            return by_name
        return self.by_url.get(url) or by_name

    def __repr__(self) -> str:
        return f"Runtime({len(self.webhooks)} webhooks)"


class Live:
    """The one reference to the current ``Runtime``; a reload assigns ``runtime`` once."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def restart_warnings(old: Config, new: Config) -> list[str]:
    """The log lines naming what ``new`` changes that only a restart applies."""
    lines = []
    changed = [
        key
        for key in RESTART_MATTERMOST_KEYS
        if getattr(new.mattermost, key) != getattr(old.mattermost, key)
    ]
    if changed:
        lines.append(
            f"reload: [mattermost] {', '.join(changed)} take{'s' if len(changed) == 1 else ''} "
            "effect only after a restart"
        )
    for key in RESTART_SIDECAR_KEYS:
        if getattr(new.sidecar, key) != getattr(old.sidecar, key):
            lines.append(f"reload: [sidecar] {key} takes effect only after a restart")
    return lines
