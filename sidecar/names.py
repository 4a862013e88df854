"""Start-up checks of the team and user names webhooks give (the online half of ``check``).

Names are compared in lowercase, as Mattermost stores them (config.py lowercases them at
load); a name that matches nothing on the server would make a webhook silently never fire,
so it is worth a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sidecar.config import WebhookConfig, is_mattermost_id
from sidecar.mattermost import MattermostError, RestClient, Unauthorized

log = logging.getLogger(__name__)


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
