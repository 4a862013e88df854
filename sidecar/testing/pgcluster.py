"""A throw-away PostgreSQL cluster for tests and benchmarks (not used by the daemon).

``initdb`` refuses root, so as root the cluster runs as the ``postgres`` user (Debian's
package creates it) through ``runuser``, in a temp dir it owns, on a free loopback port.
Debian keeps ``initdb``/``pg_ctl`` in ``/usr/lib/postgresql/N/bin`` (not on PATH).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

#: Settings of a cluster for tests: no fsync (speed), room for many test connections.
FAST = {"fsync": "off", "full_page_writes": "off", "max_connections": "200"}


class ClusterUnavailable(Exception):
    """PostgreSQL's server binaries are not installed here."""


def find_bin(name: str) -> str | None:
    """``name`` on PATH, else in Debian's versioned directory (the newest version)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
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
    settings: dict[str, str]
    host: str = "127.0.0.1"
    counter: int = field(default=0)

    @classmethod
    def create(cls, settings: dict[str, str] | None = None) -> Cluster:
        """initdb (~1 s) and start a new cluster in a new temp dir."""
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise ClusterUnavailable("initdb/pg_ctl not found (Debian package postgresql)")
        base = Path(tempfile.mkdtemp(prefix="mmsc-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:
            as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(base, "postgres", "postgres")
        cluster = cls(
            base, free_port(), pg_ctl, as_user, dict(FAST if settings is None else settings)
        )
        try:
            subprocess.run(
                [*as_user, initdb, "-D", str(base / "data"), "-A", "trust", "-U", "postgres"],
                check=True,
                capture_output=True,
                timeout=120,
            )
            cluster.start()
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        return cluster

    def destroy(self) -> None:
        """Stop the server at once and delete its directory."""
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

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
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses={self.host}"
        opts += "".join(f" -c {k}={v}" for k, v in self.settings.items())
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
        """Create an empty database; return its name."""
        self.counter += 1
        name = f"t{os.getpid()}_{self.counter}"
        self.sql(f"CREATE DATABASE {name}")
        return name
