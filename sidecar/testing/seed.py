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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.compat import tomllib

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


class SeedError(ValueError):
    """An invalid seed: one line per problem, each with its key path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_seed(path: str | Path) -> dict[str, Any]:
    """Read and check a seed file (TOML, or JSON by extension); raise SeedError if invalid."""
    path = Path(path)
    data: Any
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSON and TOML errors are ValueErrors
        raise SeedError([f"{path}: {exc}"]) from None
    check_seed(data, str(path))
    return data  # type: ignore[no-any-return]


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    if isinstance(value, dict):
        return "a table"
    return "an array" if isinstance(value, list) else names.get(type(value), type(value).__name__)


def check_seed(seed: Any, label: str = "seed") -> None:
    """Raise SeedError listing every problem of a seed's shape, each with its key path."""
    errors: list[str] = []

    def error(key: str, message: str) -> None:
        errors.append(f"{label}: {key}: {message}" if key else f"{label}: {message}")

    def table(value: Any, key: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        error(key, f"expected a table, got {_kind(value)}")
        return None

    def tables(key: str) -> list[tuple[str, dict[str, Any]]]:
        value = seed.get(key, [])
        if not isinstance(value, list):
            error(key, f"expected an array of tables, got {_kind(value)}")
            return []
        found = [(f"{key}[{i}]", table(v, f"{key}[{i}]")) for i, v in enumerate(value)]
        return [(k, t) for k, t in found if t is not None]

    def string(t: dict[str, Any], where: str, key: str, *, required: bool = False) -> str | None:
        if key not in t:
            if required:
                error(f"{where}.{key}", "is required")
            return None
        if not isinstance(t[key], str) or (required and not t[key]):
            error(f"{where}.{key}", f"expected a non-empty string, got {_kind(t[key])}")
            return None
        return str(t[key])

    def names(t: dict[str, Any], where: str, known: dict[str, str], what: str) -> list[str]:
        value = t.get("members", [])
        if not isinstance(value, list):
            error(f"{where}.members", f"expected an array of {what} names, got {_kind(value)}")
            return []
        found = []
        for i, name in enumerate(value):
            if not isinstance(name, str):
                error(f"{where}.members[{i}]", f"expected a string, got {_kind(name)}")
            elif name.lower() not in known:
                error(f"{where}.members[{i}]", f"unknown {what} {name!r}")
            else:
                found.append(name)
        return found

    if not isinstance(seed, dict):
        error("", f"a seed holds a table (object), got {_kind(seed)}")
        raise SeedError(errors)
    for key in seed:
        if key not in ("settings", "users", "bots", "teams", "channels"):
            error(key, "unknown key (expected settings, users, bots, teams, channels)")
    if "settings" in seed:
        table(seed["settings"], "settings")
    users: dict[str, str] = {}
    for key in ("users", "bots"):
        for where, t in tables(key):
            name = string(t, where, "username", required=True)
            string(t, where, "token")
            if name is not None and name.lower() in users:
                error(
                    f"{where}.username", f"duplicate username {name!r} (also {users[name.lower()]})"
                )
            elif name is not None:
                users[name.lower()] = where
    teams: dict[str, str] = {}
    for where, t in tables("teams"):
        name = string(t, where, "name", required=True)
        string(t, where, "display_name")
        if name is not None and name.lower() in teams:
            error(f"{where}.name", f"duplicate team name {name!r} (also {teams[name.lower()]})")
        elif name is not None:
            teams[name.lower()] = where
        names(t, where, users, "user")
    for where, t in tables("channels"):
        ctype = t.get("type", "O")
        if ctype not in ("O", "P", "D", "G"):
            error(f"{where}.type", f'expected "O", "P", "D" or "G", got {ctype!r}')
            continue
        members = names(t, where, users, "user")
        string(t, where, "display_name")
        if ctype in ("O", "P"):
            team = string(t, where, "team", required=True)
            string(t, where, "name", required=True)
            if team is not None and team.lower() not in teams:
                error(f"{where}.team", f"unknown team {team!r}")
        elif ctype == "D" and len(members) != 2:
            error(f"{where}.members", f"a D channel has 2 members, got {len(members)}")
        elif ctype == "G" and not 3 <= len(members) <= 8:
            error(f"{where}.members", f"a G channel has 3 to 8 members, got {len(members)}")
    if errors:
        raise SeedError(errors)


def apply_seed(emu: Emulator, seed: dict[str, Any]) -> dict[str, str]:
    """Create everything the seed names; returns each user's token by username.

    Raise SeedError, before creating anything, when the seed's shape is invalid."""
    check_seed(seed)
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
