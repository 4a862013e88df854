"""The PostgreSQL backend beyond the shared suite: schema, versions, fencing, reconnects."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from fakes import numbered_job

from pg import Cluster
from sidecar.backend import StateUnavailable
from sidecar.pgconn import PgTarget, read_password, redact_url
from sidecar.pgstate import SCHEMA_VERSION, Fenced, PgState
from sidecar.state import Job, StateError


def job(n: int) -> Job:
    return numbered_job(n, body=b"x", content_type="application/json")


def db_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def test_tables_live_in_their_own_schema(pg_cluster: Cluster, pg_url: str) -> None:
    state = PgState(PgTarget(pg_url, schema="sidecar_ha"))
    assert state.open().fresh
    tables = pg_cluster.sql(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 2",
        db_of(pg_url),
    )
    assert tables == [
        ("sidecar_ha", name)
        for name in ("cursor", "deliveries", "leader", "meta", "outbox", "seen")
    ]
    version = pg_cluster.sql(
        "SELECT value FROM sidecar_ha.meta WHERE key='schema_version'", db_of(pg_url)
    )
    assert version == [(str(SCHEMA_VERSION),)]
    # A second schema in the same database is a separate state.
    state.start_writer()
    await state.record_position("chan", 5, ["k"], 5)
    await state.close()
    assert PgState(PgTarget(pg_url, schema="other")).open().cursors == {}
    assert not PgState(PgTarget(pg_url, schema="sidecar_ha")).open().fresh


async def test_fresh_until_something_is_processed(pg_url: str) -> None:
    """A standby creates the schema; the first active must still see a first start."""
    assert PgState(PgTarget(pg_url)).open().fresh
    state = PgState(PgTarget(pg_url))
    assert state.open().fresh  # schema there, nothing processed yet
    state.start_writer()
    await state.record_position("position", 5, [], 5)
    await state.close()
    assert not PgState(PgTarget(pg_url)).open().fresh


def test_replicas_opening_at_once_all_succeed(pg_cluster: Cluster, pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # the migration lock serialises them
        snaps = list(pool.map(lambda _: PgState(PgTarget(pg_url)).open(), range(4)))
    assert all(s.fresh for s in snaps)
    assert pg_cluster.sql("SELECT count(*) FROM mm_sidecar.leader", db_of(pg_url)) == [(1,)]


def test_a_newer_schema_version_is_refused(pg_cluster: Cluster, pg_url: str) -> None:
    PgState(PgTarget(pg_url)).open()
    pg_cluster.sql(
        "UPDATE mm_sidecar.meta SET value='99' WHERE key='schema_version'", db_of(pg_url)
    )
    with pytest.raises(StateError, match="schema version 99"):
        PgState(PgTarget(pg_url)).open()


async def test_a_write_with_a_stale_epoch_is_refused(pg_cluster: Cluster, pg_url: str) -> None:
    state = PgState(PgTarget(pg_url))
    state.open()
    refused: list[Fenced] = []
    state.on_fenced = refused.append
    state.epoch = 0  # the leader row starts at epoch 0
    state.start_writer()
    await state.add_jobs([job(1)])
    pg_cluster.sql("UPDATE mm_sidecar.leader SET epoch = epoch + 1", db_of(pg_url))
    with pytest.raises(Fenced, match="epoch 1"):
        await state.record([job(2)], "chan", 100, ["post2"], 100)
    await state.close()
    assert len(refused) == 1
    snap = PgState(PgTarget(pg_url)).open()
    assert [j.id for j in snap.jobs] == ["msg_1/0"] and snap.cursors == {}


async def test_a_lost_connection_is_retried(pg_cluster: Cluster, pg_url: str) -> None:
    state = PgState(PgTarget(pg_url))
    state.open()
    state.start_writer()
    await state.add_jobs([job(1)])
    killed = pg_cluster.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{db_of(pg_url)}' AND application_name = 'mm-sidecar'"
    )
    assert killed == [(True,)]
    await state.add_jobs([job(2)])
    await state.close()
    assert [j.id for j in PgState(PgTarget(pg_url)).open().jobs] == ["msg_1/0", "msg_2/0"]


async def test_an_unreachable_server_fails_the_write_after_the_retry_bound(
    pg_cluster: Cluster,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/no_such_db"
    state = PgState(PgTarget(url), retry_for=0.3)
    with pytest.raises(StateError, match="cannot connect"):
        state.open()
    state.start_writer()
    with pytest.raises(StateUnavailable, match="state write failed"):  # exit 1, not 78
        await asyncio.wait_for(state.finish_job("x"), 10)
    await state.close()


def test_password_sources_and_redaction(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "state_password").write_text("fromsystemd")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert read_password(secret, env) == "s3cret"
    assert read_password(None, env) == "fromsystemd"
    assert read_password(None, {**env, "PGPASSWORD": "x"}) is None  # libpq reads it itself
    assert read_password(None, {}) is None
    url = "postgresql://sidecar:hunter2@db.example:5433/mm?sslmode=require"
    assert redact_url(url) == "postgresql://sidecar:***@db.example:5433/mm?sslmode=require"
    assert (
        redact_url("postgresql://u:p@h1:5432,h2:5432/d") == "postgresql://u:***@h1:5432,h2:5432/d"
    )
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
    target = PgTarget("postgresql://sidecar@127.0.0.1:1/mm", password="hunter2")
    assert "hunter2" not in repr(target) and "hunter2" not in repr(PgState(target))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StateError) as err:
        PgState(PgTarget(url.replace("db.example:5433", "127.0.0.1:1", 1))).open()
    assert "hunter2" not in str(err.value) and "hunter2" not in caplog.text


def test_the_password_reaches_the_server(pg_cluster: Cluster, pg_url: str) -> None:
    db = db_of(pg_url)
    pg_cluster.sql("CREATE ROLE sidecar LOGIN PASSWORD 'pw-123'")
    pg_cluster.sql(f"GRANT CREATE ON DATABASE {db} TO sidecar")
    pg_cluster.require_password("sidecar")
    url = pg_url.replace("postgres@", "sidecar@")
    try:
        with pytest.raises(StateError, match="password authentication failed") as err:
            PgState(PgTarget(url, password="wrong-pw")).open()
        assert "wrong-pw" not in str(err.value)
        assert PgState(PgTarget(url, password="pw-123")).open().fresh
    finally:
        pg_cluster.sql("DROP OWNED BY sidecar", db)
        pg_cluster.sql(f"REVOKE ALL ON DATABASE {db} FROM sidecar")
        pg_cluster.sql("DROP ROLE sidecar")


def test_the_password_is_redacted_from_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecar.cli import config_secrets
    from sidecar.config import parse_config

    (tmp_path / "pg.pw").write_text("pg-secret-1\n")
    monkeypatch.setenv("PGPASSWORD", "pg-secret-2")
    data = {
        "mattermost": {"url": "https://chat.example.com", "token": "t" * 26},
        "sidecar": {"state_url": "postgresql://u@db/mm", "state_password_file": "pg.pw"},
        "webhook": [
            {
                "name": "h",
                "trigger_words": ["#x"],
                "callback_urls": ["https://ci.example.com/"],
                "token": "w" * 26,
            }
        ],
    }
    config = parse_config(data, path=tmp_path / "config.toml", env={})
    secrets = config_secrets(config)
    assert "pg-secret-1" in secrets and "pg-secret-2" in secrets
