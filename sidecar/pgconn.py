"""Connecting to PostgreSQL (the shared state of an HA install): parameters, password, names.

Every connection is made with libpq's client keepalives and ``tcp_user_timeout`` (a dead
server is noticed in seconds, not hours) and, once open, the same bounds on the server side
(``tcp_keepalives_*``, ``tcp_user_timeout``: a vanished replica's session, and so its lease,
ends within seconds) plus ``idle_in_transaction_session_timeout`` (a partitioned writer cannot
hold the fencing row). All connections run in autocommit; transactions are explicit.

The password never goes in the URL: it comes from ``state_password_file``, ``$PGPASSWORD``
(read by libpq itself) or the systemd credential ``state_password``; URLs are logged redacted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: Name of the systemd credential (``LoadCredential=state_password:…``).
PASSWORD_CREDENTIAL = "state_password"
DEFAULT_SCHEMA = "mm_sidecar"
CONNECT_TIMEOUT = 5  # seconds

# libpq (client side): probe an idle connection after 1 s, every 1 s, give up after 2 probes;
# unacknowledged data fails the connection after 3 s.
CLIENT_PARAMS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 3000,
    "application_name": "mm-sidecar",
}
# The server side of the same session (ignored by PostgreSQL on Unix sockets).
SERVER_SETTINGS: dict[str, str] = {
    "tcp_keepalives_idle": "1",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "2",
    "tcp_user_timeout": "3000",
    "idle_in_transaction_session_timeout": "5000",
}


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for a log line or an error.

    Works on the raw netloc: libpq URLs may list several ``host:port`` pairs.
    """
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def read_password(password_file: Path | None, env: Mapping[str, str] | None = None) -> str | None:
    """The password from ``password_file``, else the systemd credential, else None.

    None leaves libpq to its own sources (``$PGPASSWORD``, ``~/.pgpass``).
    """
    env = os.environ if env is None else env
    if password_file is not None:
        return password_file.read_text().strip()
    if "PGPASSWORD" in env:
        return None
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        cred = Path(cred_dir) / PASSWORD_CREDENTIAL
        if cred.is_file():
            return cred.read_text().strip()
    return None


@dataclass(frozen=True, slots=True)
class PgTarget:
    """Where the shared state lives: URL, schema, and the password (never in ``repr``)."""

    url: str
    schema: str = DEFAULT_SCHEMA
    password: str | None = field(default=None, repr=False)

    def kwargs(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for ``psycopg[.AsyncConnection].connect`` besides the URL."""
        params: dict[str, Any] = {**CLIENT_PARAMS, "autocommit": True, **extra}
        if self.password is not None:
            params["password"] = self.password
        return params

    def setup_sql(self) -> list[str]:
        """Statements run on each new connection: server-side bounds and the search path."""
        from psycopg import sql

        stmts = [f"SET {k} = {v}" for k, v in SERVER_SETTINGS.items()]
        path = sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
        return [*stmts, path.as_string()]

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)
