"""End to end, the edges: names, reload semantics, log injection."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest

from harness import World, make_config, running, wait_until
from sidecar.history import Query
from sidecar.history_sqlite import SqliteHistory
from sidecar.testing.recorder import CallbackRecorder, Reply


def form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}


# --- item 4: names are lowercase, unknown ones are warned about ---------------------------------


async def test_team_and_user_names_match_in_any_case(
    world: World, cb: CallbackRecorder, tmp_path: Path
) -> None:
    config = make_config(
        world,
        tmp_path,
        [
            {
                "team": "SomeTeam",
                "users": ["@Alice"],
                "trigger_words": ["#go"],
                "callback_urls": [cb.url_for("/named")],
            },
            {
                "exclude_users": ["ALICE"],
                "trigger_words": ["#go"],
                "callback_urls": [cb.url_for("/excluded")],
            },
        ],
    )
    async with running(config):
        world.mm.post(world.alice["id"], world.town["id"], "#go now")
        await cb.wait_for(1)
        # bob's post reaches only the second webhook: then alice's was judged by both
        world.mm.post(world.bob["id"], world.town["id"], "#go too")
        await cb.wait_for(2)
    assert [(r.path, form(r.body)["user_name"]) for r in cb.requests] == [
        ("/named", "alice"),
        ("/excluded", "bob"),
    ]


async def test_startup_warns_about_unknown_teams_and_users(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    url = "http://127.0.0.1:9/"
    config = make_config(
        world,
        tmp_path,
        [
            {"team": "nosuchteam", "trigger_words": ["x"], "callback_urls": [url]},
            {"users": ["nobody", "Alice"], "trigger_words": ["x"], "callback_urls": [url]},
            {
                "exclude_users": ["ghost", world.bob["id"]],
                "trigger_words": ["x"],
                "callback_urls": [url],
            },
            {
                "team": world.team["id"],
                "users": ["bob"],
                "trigger_words": ["x"],
                "callback_urls": [url],
            },
            {"team": "SOMETEAM", "trigger_words": ["x"], "callback_urls": [url]},
        ],
    )
    async with running(config):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "hook0" in m and "team 'nosuchteam' matches none of the bot's teams (someteam)" in m
        for m in warnings
    ), warnings
    assert any("hook1" in m and "users: no user 'nobody' on the server" in m for m in warnings)
    assert any("hook2" in m and "exclude_users: no user 'ghost'" in m for m in warnings)
    assert not any("alice" in m or world.bob["id"] in m for m in warnings), warnings
    assert not any("hook3" in m or "hook4" in m for m in warnings), warnings


# --- item 5: a reload that removes a callback URL stops its traffic -------------------------------


async def test_reload_stops_retries_to_a_removed_callback_url(
    world: World, cb: CallbackRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    # Retry-After: 1 keeps the retry behind the reload below.
    cb.script(Reply(503, headers={"Retry-After": "1"}), path="/old")
    hook = {"name": "build", "trigger_words": ["#build"], "retries": 5}
    old = make_config(world, tmp_path, [{**hook, "callback_urls": [cb.url_for("/old")]}])
    new = make_config(world, tmp_path, [{**hook, "callback_urls": [cb.url_for("/new")]}])
    async with running(old) as app:
        world.mm.post(world.alice["id"], world.town["id"], "#build now")
        await cb.wait_for(1)
        app.reload(new)
        assert app.pipeline is not None
        outbox = app.pipeline.outbox
        await wait_until(lambda: outbox.depth == 0, what="the queued job to finish")
        world.mm.post(world.alice["id"], world.town["id"], "#build again")
        await cb.wait_for(2)
        store = SqliteHistory.connect(app.state.path)
        try:
            await wait_until(lambda: len(store.find(Query(failed=True))) == 1, what="dead letter")
            [dead] = store.find(Query(failed=True))
        finally:
            store.close()
    assert [r.path for r in cb.requests] == ["/old", "/new"]
    assert outbox.counters.dropped == 1
    # Recorded as a dead letter (not delivered), so `redeliver` can still send it on purpose.
    assert (dead.outcome, dead.url, dead.error) == (
        "failed",
        cb.url_for("/old"),
        "no longer configured (reload)",
    )
    dropped = [r.getMessage() for r in caplog.records if "delivery dropped" in r.getMessage()]
    assert dropped == [
        f"delivery dropped webhook=build post={_post_id(cb)} "
        f"url={cb.url_for('/old')}: this callback URL is no longer configured; "
        "not delivered (1 attempt(s) made)"
    ]


def _post_id(cb: CallbackRecorder) -> str:
    return form(cb.requests[0].body)["post_id"]
