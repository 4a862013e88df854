"""`mm-sidecar state migrate`: SQLite → PostgreSQL → SQLite keeps everything; a full target
is refused unless --force."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.pgconn import PgTarget
from sidecar.pgstate import PgState
from sidecar.state import Job, Snapshot, State


def job(n: int, **kw: object) -> Job:
    j = Job(
        id=f"msg_{n}/0",
        webhook="build",
        url="https://ci.test/hook",
        webhook_id=f"msg_{n}",
        body=b"token=x&text=%23build \xff",
        content_type="application/x-www-form-urlencoded",
        event="posted",
        post_id=f"post{n}",
        channel_id="chan",
        root_id="",
        created_at=1700000000.25 + n,
    )
    for k, v in kw.items():
        setattr(j, k, v)
    return j


async def fill_sqlite(state_dir: Path) -> Snapshot:
    state = State(state_dir)
    state.open()
    state.start_writer()
    await state.record([job(1), job(2)], "chan", 1000, ["post1", "post2"], 1000)
    await state.record_position("other", 2000, ["post3"], 2000)
    replied = job(2, stage="reply", attempts=1, response=b'{"text": "ok"}')
    await state.update_job(replied)
    retrying = job(3, attempts=4, next_at=1700000123.5)
    await state.add_jobs([retrying])
    await state.update_job(retrying)
    await state.record([job(4)], "chan", 1500, ["post4"], 1500)
    await state.finish_job("msg_4/0")  # finished: not migrated as a job
    await state.close()
    return await asyncio.to_thread(read_sqlite, state_dir)


def read_sqlite(state_dir: Path) -> Snapshot:
    state = State(state_dir)
    try:
        return state.open()
    finally:
        asyncio.run(state.close())


def same(a: Snapshot, b: Snapshot) -> None:
    assert (a.cursors, a.seen, a.jobs) == (b.cursors, b.seen, b.jobs)


async def test_round_trip_with_unfinished_jobs(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = await fill_sqlite(tmp_path / "one")
    assert [j.id for j in before.jobs] == ["msg_1/0", "msg_2/0", "msg_3/0"]
    argv = ["state", "migrate", "--from", f"sqlite://{tmp_path / 'one'}", "--to", pg_url]
    assert await asyncio.to_thread(main, argv) == 0
    assert "3 unfinished jobs" in capsys.readouterr().out
    in_pg = await asyncio.to_thread(PgState(PgTarget(pg_url)).open)
    same(in_pg, before)
    assert not in_pg.fresh
    back = tmp_path / "two" / "state.sqlite3"
    argv = ["state", "migrate", "--from", pg_url, "--to", f"sqlite://{back}"]
    assert await asyncio.to_thread(main, argv) == 0
    same(await asyncio.to_thread(read_sqlite, back.parent), before)


async def test_a_target_holding_state_is_refused_unless_forced(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = await fill_sqlite(tmp_path / "src")
    target = PgState(PgTarget(pg_url))
    await asyncio.to_thread(target.open)
    target.start_writer()
    await target.record([job(9)], "elsewhere", 9, ["post9"], 9)
    await target.close()
    argv = ["state", "migrate", "--from", f"sqlite://{tmp_path / 'src'}", "--to", pg_url]
    assert await asyncio.to_thread(main, argv) == 1
    assert "already holds state" in capsys.readouterr().err
    kept = await asyncio.to_thread(PgState(PgTarget(pg_url)).open)
    assert [j.id for j in kept.jobs] == ["msg_9/0"]  # untouched
    assert await asyncio.to_thread(main, [*argv, "--force"]) == 0
    same(await asyncio.to_thread(PgState(PgTarget(pg_url)).open), source)


def test_a_missing_source_or_a_bad_url_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["state", "migrate", "--from", f"sqlite://{tmp_path}/none", "--to", "sqlite:///x"]
    assert main(argv) == 1
    assert "no state file" in capsys.readouterr().err
    assert main(["state", "migrate", "--from", "mysql://a:pw@b/c", "--to", "sqlite:///x"]) == 1
    err = capsys.readouterr().err
    assert "expected sqlite:///path or postgresql://" in err and "pw" not in err
