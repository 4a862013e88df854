"""The PostgreSQL fixtures: one throw-away cluster per test session, one database per test.

The cluster (``sidecar.testing.pgcluster``) lives in a temp dir on a free loopback port, run
as the ``postgres`` user when the tests run as root. Without PostgreSQL (or psycopg) the tests
that need it are skipped with the reason, except in CI (``CI=true``), where that is a failure:
`.ci/run` installs Debian's ``postgresql`` package.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from sidecar.testing.pgcluster import Cluster, ClusterUnavailable

__all__ = ["Cluster", "pg_cluster", "pg_url"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason} (`.ci/run` installs it)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """Start the session's cluster (initdb ~1 s), stop and delete it at the end."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    try:
        cluster = Cluster.create()
    except ClusterUnavailable as exc:
        _unavailable(str(exc))
        raise
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.fail(f"could not start PostgreSQL: {exc} {detail.decode(errors='replace')}")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database of the session's cluster, for this test only."""
    return pg_cluster.url(pg_cluster.new_database())
