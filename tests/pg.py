"""A throw-away PostgreSQL cluster for the tests: one per session, one database per test.

The cluster lives in a temp dir on a free loopback port. ``initdb`` refuses root, so as root
it runs as the ``postgres`` user (Debian's package creates it) through ``runuser``. Without
PostgreSQL (or psycopg) the tests that need it are skipped with the reason, except in CI
(``CI=true``), where that is a failure: `.ci/run` installs Debian's ``postgresql`` package.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_counter = itertools.count()


def find_bin(name: str) -> str | None:
    """``name`` on PATH, else in Debian's versioned directory (not on PATH by default)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    """A running server; ``url(db)`` is a libpq URL for one of its databases."""

    dir: Path
    port: int
    pg_ctl: str
    as_user: list[str]
    host: str = "127.0.0.1"
    databases: list[str] = field(default_factory=list)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{db}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.dir / "data"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._ctl("-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def sql(self, query: str, db: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement as the superuser (autocommit); return its rows, if any."""
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            cur = conn.execute(query.encode())
            return cur.fetchall() if cur.description else []

    def require_password(self, role: str) -> None:
        """Make ``role`` authenticate with a password over TCP (the others stay on trust)."""
        hba = self.dir / "data" / "pg_hba.conf"
        rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        if rule not in hba.read_text():
            hba.write_text(rule + hba.read_text())
        assert self.sql("SELECT pg_reload_conf()") == [(True,)]

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(_counter)}"
        self.sql(f"CREATE DATABASE {name}")
        self.databases.append(name)
        return name


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
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("initdb/pg_ctl not found (Debian package postgresql)")
    assert initdb is not None and pg_ctl is not None
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="mmsc-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres", "postgres")
    cluster = Cluster(dir=base, port=_free_port(), pg_ctl=pg_ctl, as_user=as_user)
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(base / "data"), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        detail = getattr(exc, "stderr", b"") or b""
        pytest.fail(f"could not start PostgreSQL: {exc} {detail.decode(errors='replace')}")
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database of the session's cluster, for this test only."""
    return pg_cluster.url(pg_cluster.new_database())
