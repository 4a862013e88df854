"""Start-up checks against the server: the online half of ``check`` (``dryrun.py`` is the
offline ``match``). Each only warns; none stops the start.

- the reply overrides the config enables but the server's settings switch off;
- teams and users (``users``, ``exclude_users``) webhooks name that the server does not know;
- channels webhooks name that the bot is not in, or whose type ``channel_types`` excludes.

Names are compared in lowercase, as Mattermost stores them (config.py lowercases them at
load); a name that matches nothing on the server would make a webhook silently never fire,
so it is worth a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sidecar.config import Config, WebhookConfig, is_mattermost_id
from sidecar.mattermost import MattermostError, RestClient, Unauthorized
from sidecar.models import Channel

log = logging.getLogger(__name__)


async def run_startup_checks(rest: RestClient, config: Config) -> None:
    """Every check below, in order; logs warnings, raises only ``Unauthorized``."""
    await check_server_settings(rest, config)
    await check_teams(rest, config.webhooks)
    await check_users(rest, config.webhooks)


async def check_server_settings(rest: RestClient, config: Config) -> None:
    """Warn when the config enables a reply override that the server's settings switch off."""
    s = config.sidecar
    if not (s.enable_post_username_override or s.enable_post_icon_override):
        return
    try:
        server = await rest.client_config()
    except Unauthorized:
        raise
    except MattermostError as exc:
        log.warning("could not read the server's client config: %s", exc)
        return
    for ours, theirs in (
        (s.enable_post_username_override, "EnablePostUsernameOverride"),
        (s.enable_post_icon_override, "EnablePostIconOverride"),
    ):
        if ours and server.get(theirs) != "true":
            log.warning(
                "the server's %s is off: replies will not show the overridden %s",
                theirs,
                "username" if "Username" in theirs else "icon",
            )


async def check_channels(rest: RestClient, webhooks: Sequence[WebhookConfig]) -> None:
    """Warn about named channels the bot cannot see, or whose type channel_types excludes.

    Run once public channels are joined (``check`` works offline and cannot know a channel's
    type; this is its online half).
    """
    if not any(w.channels for w in webhooks):
        return
    seen: dict[str, dict[str, Channel]] = {}
    try:
        for team in await rest.my_teams():
            for channel in await rest.my_channels(team.id):
                for key in (channel.id, channel.name):
                    seen.setdefault(key, {})[channel.id] = channel
    except Unauthorized:
        raise
    except MattermostError as exc:
        log.warning("could not list the bot's channels to check the webhooks: %s", exc)
        return
    for w in webhooks:
        for name in w.channels:
            found = seen.get(name)
            if not found:
                log.warning(
                    "webhook[%d] %s: the bot is not a member of channel %r: it sees no "
                    "events there until it is added",
                    w.index,
                    w.name,
                    name,
                )
                continue
            for c in found.values():
                if w.channel_types is not None and c.type not in w.channel_types:
                    log.warning(
                        "webhook[%d] %s: channel %r is of type %s, which its channel_types "
                        "exclude: it never fires there",
                        w.index,
                        w.name,
                        name,
                        c.type,
                    )


async def check_teams(rest: RestClient, webhooks: Sequence[WebhookConfig]) -> None:
    """Warn about each webhook whose ``team`` is none of the bot's teams (by id or name)."""
    if not any(w.team for w in webhooks):
        return
    try:
        teams = await rest.my_teams()
    except Unauthorized:
        raise
    except MattermostError as exc:
        log.warning("could not list the bot's teams to check the webhooks: %s", exc)
        return
    known = {t.id for t in teams} | {t.name for t in teams}
    for w in webhooks:
        if w.team and w.team not in known:
            log.warning(
                "webhook[%d] %s: team %r matches none of the bot's teams (%s): it never fires "
                "in public or private channels",
                w.index,
                w.name,
                w.team,
                ", ".join(sorted(t.name for t in teams)) or "none",
            )


async def check_users(rest: RestClient, webhooks: Sequence[WebhookConfig]) -> None:
    """Warn about each name in ``users`` / ``exclude_users`` that is no user on the server."""
    missing: dict[str, bool] = {}
    for w in webhooks:
        for key, names in (("users", w.users), ("exclude_users", w.exclude_users)):
            for name in names:
                if name not in missing:
                    found = await _exists(rest, name)
                    if found is None:
                        return  # the server cannot tell: logged once, no more lookups
                    missing[name] = not found
                if missing[name]:
                    log.warning(
                        "webhook[%d] %s: %s: no user %r on the server: that entry never matches",
                        w.index,
                        w.name,
                        key,
                        name,
                    )


async def _exists(rest: RestClient, name: str) -> bool | None:
    """Whether a user has this id or username; None when the server could not say."""
    try:
        if is_mattermost_id(name):
            try:
                await rest.user(name)
                return True
            except MattermostError as exc:
                if exc.status != 404:
                    raise
        await rest.user_by_username(name)
        return True
    except Unauthorized:
        raise
    except MattermostError as exc:
        if exc.status == 404:
            return False
        log.warning("could not look users up to check the webhooks: %s", exc)
        return None
