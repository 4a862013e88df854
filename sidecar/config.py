"""TOML → frozen dataclasses.

Every error at once, each with its key path (``config.toml: webhook[2].callback_urls[0]: …``);
unknown keys with a did-you-mean; secrets never in ``repr``; regexes compiled here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.models import ChannelType, EventName

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


class ConfigError(Exception):
    """The config is invalid; ``errors`` lists every problem, each with its key path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One ``[[webhook]]`` table, validated."""

    index: int  # position in the file, for messages: webhook[index]
    name: str
    callback_urls: tuple[str, ...]
    token: str = field(repr=False)
    description: str = ""
    team: str = ""  # team name or id; "" = every team the bot is in
    channels: tuple[str, ...] = ()  # names or ids; () = every channel the bot is in
    # None = not set in the file: resolved at start-up from the named channels' types.
    channel_types: frozenset[ChannelType] | None = None
    trigger_words: tuple[str, ...] = ()
    trigger_when: int = 0  # 0 exact, 1 prefix (Mattermost's numbers)
    trigger_regex: re.Pattern[str] | None = None
    case_insensitive: bool = False
    users: tuple[str, ...] = ()
    exclude_users: tuple[str, ...] = ()
    ignore_bots: bool = False
    events: frozenset[EventName] = frozenset({"posted"})
    content_type: str = FORM
    signing_secrets: tuple[str, ...] = field(default=(), repr=False)
    username: str = ""
    icon_url: str = ""
    timeout: float = 30.0
    retries: int = 0
    extended_payload: bool = False


@dataclass(frozen=True, slots=True)
class MattermostConfig:
    """The ``[mattermost]`` table."""

    url: str  # without a trailing slash; may include a sub-path
    token: str = field(repr=False)
    verify_tls: bool = True
    max_post_size: int = 16383


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """The ``[sidecar]`` table."""

    state_dir: Path = Path("/var/lib/mm-sidecar")
    listen: str = "127.0.0.1:9181"
    log_format: str = "text"
    allowed_untrusted_internal_connections: tuple[str, ...] = ()
    enable_post_username_override: bool = False
    enable_post_icon_override: bool = False
    max_in_flight: int = 64
    catch_up_window: float = 3600.0
    shutdown_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated config file."""

    path: Path
    mattermost: MattermostConfig
    sidecar: SidecarConfig
    webhooks: tuple[WebhookConfig, ...]
    warnings: tuple[str, ...] = ()


def load_config(path: str | Path, *, env: dict[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    raise NotImplementedError
