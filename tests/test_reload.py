"""SIGHUP reload: what it applies at once and what it says needs a restart."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sidecar.app import Session, Sidecar
from sidecar.cli import _reloader, setup_logging
from sidecar.config import Config, load_config, parse_config
from sidecar.models import User
from sidecar.runtime import Live, Runtime

BOT_TOKEN = "zmigewsanbbsdf59xnmduzypjc"
OTHER_TOKEN = "zmigewsanbbsdf59xnmduzypjd"
HOOK = {
    "name": "build",
    "trigger_words": ["#build"],
    "callback_urls": ["https://ci.example.com/hook"],
    "token": "zmigewsanbbsdf59xnmduzypje",
}


def config(tmp_path: Path, mattermost: dict[str, Any] | None = None, **sidecar: Any) -> Config:
    mm = {"url": "https://chat.example.com", "token": BOT_TOKEN, **(mattermost or {})}
    mm = {k: v for k, v in mm.items() if v is not None}
    data = {
        "mattermost": mm,
        "sidecar": {"state_dir": str(tmp_path), "listen": "", **sidecar},
        "webhook": [HOOK],
    }
    return parse_config(data, path=tmp_path / "config.toml", env={})


def restart_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "after a restart" in r.getMessage()]


@pytest.mark.parametrize(
    ("change", "warning"),
    [
        ({"max_post_size": 4000}, None),
        ({"url": "https://other.example.com"}, "url takes"),
        ({"verify_tls": False}, "verify_tls takes"),
        ({"token": OTHER_TOKEN}, "token takes"),
        ({"url": "https://o.example.com", "token": OTHER_TOKEN}, "url, token take"),
    ],
)
def test_mattermost_restart_warning_names_exactly_the_keys_that_need_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict[str, Any], warning: str | None
) -> None:
    caplog.set_level("INFO")
    app = Sidecar(config(tmp_path))
    app.reload(config(tmp_path, change))
    expected = (
        [] if warning is None else [f"reload: [mattermost] {warning} effect only after a restart"]
    )
    assert restart_warnings(caplog) == expected
    assert not any(OTHER_TOKEN in r.getMessage() for r in caplog.records)


def test_ha_state_keys_need_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    app = Sidecar(config(tmp_path))
    app.reload(config(tmp_path, state_schema="other", lease_check_interval=2))
    assert restart_warnings(caplog) == [
        "reload: [sidecar] state_schema takes effect only after a restart",
        "reload: [sidecar] lease_check_interval takes effect only after a restart",
    ]


def test_a_reload_swaps_the_runtime_in_one_assignment(tmp_path: Path) -> None:
    app = Sidecar(config(tmp_path))
    bot = User(id="b" * 26, username="sidecar-bot")
    live = Live(Runtime.build(app.config, bot_user_id=bot.id))
    app.session = Session(bot, live)  # as connect() leaves it
    before = live.runtime
    app.reload(config(tmp_path, {"max_post_size": 4000}))
    # max_post_size applies to the next reply at once; the old runtime is left as it was,
    # for the jobs that started with it.
    assert live.runtime is not before
    assert live.runtime.reply.max_post_size == 4000
    assert before.reply.max_post_size == 16383


def test_token_from_a_file_with_the_same_value_needs_no_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    (tmp_path / "token").write_text(BOT_TOKEN)
    app = Sidecar(config(tmp_path))
    app.reload(config(tmp_path, {"token": None, "token_file": str(tmp_path / "token")}))
    assert restart_warnings(caplog) == []
    (tmp_path / "token").write_text(OTHER_TOKEN)
    app.reload(config(tmp_path, {"token": None, "token_file": str(tmp_path / "token")}))
    assert restart_warnings(caplog) == [
        "reload: [mattermost] token takes effect only after a restart"
    ]


# --- log_format is applied by a reload -----------------------------------------------------------


class FakeApp:
    """What _reloader uses of the Sidecar."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Sidecar(config).metrics
        self.reloaded = asyncio.Event()

    def reload(self, config: Config) -> None:
        self.config = config
        self.reloaded.set()


async def test_reload_applies_log_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_root: None
) -> None:
    path = tmp_path / "config.toml"
    text = (
        f'[mattermost]\nurl = "https://chat.example.com"\ntoken = "{BOT_TOKEN}"\n'
        f'[sidecar]\nstate_dir = "{tmp_path}"\nlisten = ""\nlog_format = "text"\n'
        f'[[webhook]]\nname = "build"\ntrigger_words = ["#build"]\n'
        f'callback_urls = ["https://ci.example.com/hook"]\ntoken = "{HOOK["token"]}"\n'
    )
    path.write_text(text)
    path.chmod(0o600)
    setup_logging("text", [])
    app = FakeApp(load_config(path))
    path.write_text(text.replace('log_format = "text"', 'log_format = "json"'))
    hup = asyncio.Event()
    reloader = asyncio.create_task(_reloader(app, str(path), hup))
    try:
        hup.set()
        await asyncio.wait_for(app.reloaded.wait(), 10)
    finally:
        reloader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reloader
    logging.getLogger("sidecar.outbox").info("after the reload")
    lines = capsys.readouterr().err.splitlines()
    assert json.loads(lines[-1])["msg"] == "after the reload"
    assert json.loads(lines[-2])["msg"] == "reload: log_format is now json"
