"""Seed files: the users, bots, teams, channels and settings an emulator starts with.

A seed file is TOML (or JSON when its name ends in ``.json``) with these tables, all optional::

    [settings]                        # any of Emulator.settings' keys
    EnablePostUsernameOverride = true

    [[users]]
    username = "somename"
    token = "…"                       # optional fixed token; one is generated when absent
    password = "…"                    # optional (users only): log in with POST /users/login

    [[bots]]                          # like users, with is_bot
    username = "sidecar-bot"

    [[teams]]
    name = "someteam"
    display_name = "Some Team"        # optional
    members = ["somename"]            # optional; default: every user and bot

    [[channels]]
    team = "someteam"                 # team name; not for D and G
    name = "town-square"              # not for D and G
    display_name = "Town Square"      # optional
    type = "O"                        # O (default), P, D (2 members) or G (3 to 8 members)
    members = ["somename", "sidecar-bot"]   # usernames; O/P default: every team member

Without a seed file the emulator starts with `DEFAULT_SEED`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.testing.emulator import Emulator

DEFAULT_SEED: dict[str, Any] = {
    "users": [{"username": "somename"}, {"username": "othername"}],
    "bots": [{"username": "sidecar-bot"}],
    "teams": [{"name": "someteam", "display_name": "Some Team"}],
    "channels": [
        {"team": "someteam", "name": "town-square", "display_name": "Town Square"},
        {"team": "someteam", "name": "off-topic", "display_name": "Off-Topic"},
        {"team": "someteam", "name": "private-room", "type": "P"},
        {"type": "D", "members": ["somename", "sidecar-bot"]},
    ],
}


def load_seed(path: str | Path) -> dict[str, Any]:
    """Read a seed file (TOML, or JSON by extension)."""
    path = Path(path)
    data: Any
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a seed file holds a table/object")
    return data


def apply_seed(emu: Emulator, seed: dict[str, Any]) -> dict[str, str]:
    """Create everything the seed names; returns each user's token by username."""
    emu.settings.update(seed.get("settings", {}))
    ids: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for key, is_bot in (("users", False), ("bots", True)):
        for entry in seed.get(key, []):
            password = entry.get("password")  # users only: POST /users/login
            user = emu.create_user(str(entry["username"]), is_bot=is_bot, password=password)
            ids[user["username"]] = user["id"]
            token = emu.store.add_token(user["id"], entry.get("token"))
            tokens[user["username"]] = token

    def user_ids(names: list[str]) -> list[str]:
        try:
            return [ids[str(n).lower()] for n in names]
        except KeyError as missing:
            raise ValueError(f"seed: unknown user {missing}") from None

    teams: dict[str, str] = {}
    for entry in seed.get("teams", []):
        team = emu.create_team(str(entry["name"]), str(entry.get("display_name", "")))
        teams[team["name"]] = team["id"]
        for uid in user_ids(entry.get("members", list(ids))):
            emu.add_team_member(team["id"], uid)
    for entry in seed.get("channels", []):
        ctype = str(entry.get("type", "O"))
        if ctype == "D":
            emu.create_direct_channel(*user_ids(entry["members"]))
        elif ctype == "G":
            emu.create_group_channel(user_ids(entry["members"]))
        else:
            team_id = teams[str(entry["team"])]
            default = sorted(emu.store.teams[team_id].members)
            members = user_ids(entry["members"]) if "members" in entry else default
            emu.create_channel(
                team_id, str(entry["name"]), ctype, str(entry.get("display_name", "")), members
            )
    return tokens
