"""The README's config reference matches config.example.toml, key for key."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def example_keys() -> dict[str, set[str]]:
    """Keys of config.example.toml per table, commented-out alternatives included."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in (ROOT / "config.example.toml").read_text().splitlines():
        head = re.match(r"^\[\[?(\w+)\]\]?", line)
        if head:
            section = head.group(1)
            continue
        m = re.match(r"^#? ?([a-z_]+) = ", line)
        if m and section:
            keys.setdefault(section, set()).add(m.group(1))
    return keys


def readme_keys() -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    section = ""
    for line in (ROOT / "README.md").read_text().splitlines():
        head = re.match(r"^### `\[\[?(\w+)\]\]?`", line)
        if head:
            section = head.group(1)
            continue
        if line.startswith("## "):
            section = ""
        m = re.match(r"^\| `([a-z_]+)` \|", line)
        if m and section:
            keys.setdefault(section, set()).add(m.group(1))
    return keys


def test_config_reference_matches_example() -> None:
    example, readme = example_keys(), readme_keys()
    assert set(example) == {"mattermost", "sidecar", "webhook"}
    assert readme == example


def test_readme_shows_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "mm-sidecar demo" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/check" in ci and "pip install -e '.[test]' && scripts/check" in text
