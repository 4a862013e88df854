"""mm-sidecar import: the server's outgoing webhooks become [[webhook]] tables that
keep each hook's token, so a receiver sees byte for byte what the built-in webhook sent it."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from harness import World, running
from sidecar.cli import main
from sidecar.compat import tomllib
from sidecar.config import load_config
from sidecar.testing.hooks import builtin_request
from sidecar.testing.recorder import CallbackRecorder

JSON = "application/json"


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


def token_file(world: World, tmp_path: Path, user: dict[str, Any]) -> Path:
    path = tmp_path / f"{user['username']}.token"
    path.write_text(world.mm.create_token(user["id"]) + "\n")
    return path


def make_hooks(world: World, cb: CallbackRecorder) -> dict[str, dict[str, Any]]:
    mm, team = world.mm, world.team["id"]
    return {
        "/a": mm.hooks.create(
            world.bob["id"],
            team,
            trigger_words=["#build", "#b"],
            callback_urls=[cb.url_for("/a")],
            display_name="Build",
            description='CI "main" <pipeline>',
            content_type=JSON,
            username="ci",
            icon_url="https://example.com/ci.png",
        ),
        "/b": mm.hooks.create(
            world.alice["id"],
            team,
            channel_id=world.town["id"],
            callback_urls=[cb.url_for("/b")],
            display_name="Build",  # the same display name: made unique
        ),
        "/c": mm.hooks.create(
            world.bob["id"],
            team,
            trigger_words=["!dep"],
            trigger_when=1,
            callback_urls=[cb.url_for("/c")],
            content_type="text/plain",  # the server sends a form for anything but JSON
        ),
    }


async def test_import_round_trip_is_byte_identical_to_the_builtin(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mm = world.mm
    hooks = make_hooks(world, cb)
    mm.hooks.grant(world.alice["id"], "others")
    out = tmp_path / "imported.toml"
    url = mm.url
    assert (
        await cli(
            "import",
            "--url",
            url,
            "--token-file",
            str(token_file(world, tmp_path, world.alice)),
            "-o",
            str(out),
        )
        == 0
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    for hook in hooks.values():
        assert f"#   mmctl webhook delete {hook['id']}" in text
    tables = tomllib.loads(text)["webhook"]
    assert [t["name"] for t in tables] == ["Build", "Build-2", f"hook-{hooks['/c']['id'][:8]}"]
    assert tables[0]["trigger_words"] == ["#build", "#b"]
    assert tables[0]["description"] == 'CI "main" <pipeline>'
    assert tables[1]["channels"] == ["town-square"]
    assert tables[2]["trigger_when"] == "prefix"
    assert tables[2]["content_type"] == "application/x-www-form-urlencoded"
    assert all(t["team"] == "someteam" for t in tables)

    # `check` accepts the file unchanged (the bot token comes from the environment).
    monkeypatch.setenv("MM_SIDECAR_TOKEN", world.bot_token)
    assert await cli("check", "-c", str(out)) == 0

    # `run` it: each receiver gets exactly the built-in's body, token included.
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        text
        + f'\n[sidecar]\nstate_dir = "{tmp_path / "state"}"\nlisten = ""\n'
        + 'allowed_untrusted_internal_connections = ["127.0.0.1"]\n'
    )
    config = load_config(run_file)
    async with running(config):
        p1 = mm.post(world.alice["id"], world.town["id"], "#build <now> & later")  # a, b
        p2 = mm.post(world.bob["id"], world.dev["id"], "!deploy prod")  # c
        p3 = mm.post(world.alice["id"], world.dev["id"], "#b x", file_ids=["f" * 26])  # a
        got = await cb.wait_for(4)
    expected = {
        ("/a", p1["id"]),
        ("/b", p1["id"]),
        ("/c", p2["id"]),
        ("/a", p3["id"]),
    }
    seen = set()
    for request in got:
        stored = mm.store.posts
        post = next(stored[p["id"]] for p in (p1, p2, p3) if p["id"] in request.body.decode())
        content_type, body = builtin_request(mm, mm.hooks.hooks[hooks[request.path]["id"]], post)
        assert request.body == body
        assert request.headers["Content-Type"] == content_type
        seen.add((request.path, post.id))
    assert seen == expected


async def test_import_without_permission_says_which_one(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.mm.hooks.create(
        world.bob["id"], world.team["id"], trigger_words=["#x"], callback_urls=["http://h/"]
    )
    bob_token = token_file(world, tmp_path, world.bob)
    out = tmp_path / "out.toml"
    assert (
        await cli("import", "--url", world.mm.url, "--token-file", str(bob_token), "-o", str(out))
        == 1
    )
    err = capsys.readouterr().err
    assert "403" in err and "manage others' outgoing webhooks" in err
    assert not out.exists()
    # With 'manage own outgoing webhooks' only, the user's own hooks are listed.
    world.mm.hooks.grant(world.bob["id"], "own")
    world.mm.hooks.create(
        world.alice["id"], world.team["id"], trigger_words=["#y"], callback_urls=["http://h/"]
    )
    assert await cli("import", "--url", world.mm.url, "--token-file", str(bob_token)) == 0
    printed = capsys.readouterr().out
    assert tomllib.loads(printed)["webhook"][0]["trigger_words"] == ["#x"]
    assert len(tomllib.loads(printed)["webhook"]) == 1


async def test_import_merge_appends_only_new_hooks(
    world: World,
    cb: CallbackRecorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hooks = make_hooks(world, cb)
    world.mm.hooks.grant(world.alice["id"], "others")
    admin = token_file(world, tmp_path, world.alice)
    existing = tmp_path / "config.toml"
    existing.write_text(
        f'[mattermost]\nurl = "{world.mm.url}"\n\n'
        "[[webhook]]\n"
        'name = "Build"\n'
        'trigger_words = ["#build"]\n'
        'callback_urls = ["https://ci.example.com/hook"]\n'
        f'token = "{hooks["/a"]["token"]}"  # typed by hand earlier\n'
    )
    existing.chmod(0o600)
    monkeypatch.setenv(
        "MM_SIDECAR_IMPORT_TOKEN", admin.read_text().strip()
    )  # the token from the environment this time
    assert await cli("import", "--url", world.mm.url, "--merge", str(existing)) == 0
    tables = tomllib.loads(existing.read_text())["webhook"]
    assert [t["name"] for t in tables] == ["Build", "Build-2", f"hook-{hooks['/c']['id'][:8]}"]
    assert "1 already there" in capsys.readouterr().err
    # Again: every hook is there (by id in the comments now): nothing is added.
    before = existing.read_text()
    assert await cli("import", "--url", world.mm.url, "--merge", str(existing)) == 0
    assert existing.read_text() == before
    monkeypatch.setenv("MM_SIDECAR_TOKEN", world.bot_token)
    assert await cli("check", "-c", str(existing)) == 0


async def test_import_pages_through_every_hook(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(205):
        world.mm.hooks.create(
            world.bob["id"], world.team["id"], trigger_words=[f"#w{i}"], callback_urls=["http://h/"]
        )
    world.mm.hooks.grant(world.alice["id"], "others")
    admin = token_file(world, tmp_path, world.alice)
    assert (
        await cli("import", "--url", world.mm.url, "--token-file", str(admin), "--team", "someteam")
        == 0
    )
    tables = tomllib.loads(capsys.readouterr().out)["webhook"]
    assert [t["trigger_words"][0] for t in tables] == [f"#w{i}" for i in range(205)]
    pages = [c for c in world.mm.rest_calls if c[1] == "/api/v4/hooks/outgoing"]
    assert len(pages) == 2
