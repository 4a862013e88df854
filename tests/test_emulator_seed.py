"""Emulator seed files: every problem reported with its key path, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.testing.emulator import Emulator
from sidecar.testing.seed import DEFAULT_SEED, SeedError, apply_seed, check_seed, load_seed

REPO = Path(__file__).resolve().parent.parent
ALICE = {"users": [{"username": "alice"}]}


@pytest.mark.parametrize(
    ("seed", "errors"),
    [
        ({"users": "alice"}, ["users: expected an array of tables, got a string"]),
        ({"users": [1]}, ["users[0]: expected a table, got an integer"]),
        ({"users": [{}]}, ["users[0].username: is required"]),
        (
            {"users": [{"username": 5}]},
            ["users[0].username: expected a non-empty string, got an integer"],
        ),
        (
            {"users": [{"username": "alice"}], "bots": [{"username": "Alice"}]},
            ["bots[0].username: duplicate username 'Alice' (also users[0])"],
        ),
        (
            {**ALICE, "teams": [{"name": "t", "members": 5}]},
            ["teams[0].members: expected an array of user names, got an integer"],
        ),
        (
            {**ALICE, "teams": [{"name": "t", "members": ["alice", "bob"]}]},
            ["teams[0].members[1]: unknown user 'bob'"],
        ),
        (
            {**ALICE, "teams": [{"name": "t"}], "channels": [{"team": "nosuch", "name": "c"}]},
            ["channels[0].team: unknown team 'nosuch'"],
        ),
        ({**ALICE, "channels": [{"name": "c"}]}, ["channels[0].team: is required"]),
        (
            {**ALICE, "channels": [{"type": "X"}]},
            ['channels[0].type: expected "O", "P", "D" or "G", got \'X\''],
        ),
        (
            {**ALICE, "channels": [{"type": "D", "members": ["alice"]}]},
            ["channels[0].members: a D channel has 2 members, got 1"],
        ),
        ({"teams": {"name": "t"}}, ["teams: expected an array of tables, got a table"]),
        (
            {"settings": [1], "usrs": []},
            [
                "usrs: unknown key (expected settings, users, bots, teams, channels)",
                "settings: expected a table, got an array",
            ],
        ),
        ([1], ["a seed holds a table (object), got an array"]),
    ],
)
def test_seed_errors_name_their_key_paths(seed: Any, errors: list[str]) -> None:
    with pytest.raises(SeedError) as caught:
        check_seed(seed, "seed.json")
    assert sorted(caught.value.errors) == sorted(f"seed.json: {e}" for e in errors)


def test_the_default_seed_is_valid() -> None:
    check_seed(DEFAULT_SEED)


async def test_an_invalid_seed_creates_nothing() -> None:
    async with Emulator(port=0) as mm:
        with pytest.raises(SeedError):
            apply_seed(mm, {"users": [{"username": "alice"}, {"username": "alice"}]})
        assert not mm.store.users


def test_load_seed_reports_a_syntax_error_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "seed.toml"
    path.write_text("users = [\n")
    with pytest.raises(SeedError) as caught:
        load_seed(path)
    [line] = caught.value.errors
    assert line.startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("seed", "line"),
    [
        ({"users": "alice"}, "users: expected an array of tables, got a string"),
        ({"users": [1]}, "users[0]: expected a table, got an integer"),
        (
            {**ALICE, "channels": [{"team": "nosuch", "name": "c"}]},
            "channels[0].team: unknown team 'nosuch'",
        ),
    ],
)
def test_emulator_command_prints_seed_errors_without_a_traceback(
    tmp_path: Path, seed: dict[str, Any], line: str
) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "emulator", "--port", "0", "--seed", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert done.stderr == f"emulator: {path}: {line}\n"
