"""The throw-away PostgreSQL cluster: it runs, and each test gets its own empty database."""

from __future__ import annotations

from pg import Cluster


def test_each_test_gets_an_empty_database(pg_cluster: Cluster, pg_url: str) -> None:
    db = pg_url.rsplit("/", 1)[1]
    assert pg_cluster.sql("SELECT current_setting('server_version_num')::int")[0][0] >= 130000
    tables = pg_cluster.sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema='public'", db
    )
    assert tables == [(0,)]
    pg_cluster.sql("CREATE TABLE mine (x int)", db)


def test_the_next_test_does_not_see_the_previous_ones_tables(
    pg_cluster: Cluster, pg_url: str
) -> None:
    db = pg_url.rsplit("/", 1)[1]
    assert pg_cluster.sql("SELECT to_regclass('public.mine') IS NULL", db) == [(True,)]
