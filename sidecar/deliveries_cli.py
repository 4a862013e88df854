"""``mm-sidecar deliveries`` and ``mm-sidecar redeliver``: the history from the command line.

Both open the state directly (no daemon API, no lock: the daemon may be running): the state
file of the config's ``state_dir`` (WAL lets a second process read and write), or, with
``state_url`` (HA), the PostgreSQL schema the replicas share. ``redeliver`` only writes
outbox rows; the daemon takes them up within its poll interval, or at its next start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from sidecar.compat import tomllib
from sidecar.history import (
    BODY_LIMIT,
    Delivery,
    HistoryError,
    HistoryStore,
    Query,
    parse_since,
)
from sidecar.history_sqlite import SqliteHistory
from sidecar.state import DB_NAME


def safe_url(url: str) -> str:
    """outbox.safe_url, imported late (the outbox pulls in aiohttp)."""
    from sidecar.outbox import safe_url

    return safe_url(url)


EX_OK, EX_FAIL = 0, 1
SECRET_HEADERS = ("webhook-signature",)


def add_parsers(sub: Any, with_config: Any, fn: Any) -> None:
    """The two sub-commands, on the ``mm-sidecar`` parser's subparsers."""
    p = sub.add_parser(
        "deliveries",
        help="delivery history, newest first; `deliveries show ID` for one with its bodies",
    )
    with_config(p)
    p.add_argument("what", nargs="*", metavar="show ID", help="show one delivery in full")
    p.add_argument("--failed", action="store_true", help="dead letters only")
    p.add_argument("--webhook", help="only this webhook")
    p.add_argument("--post", help="only this post id")
    p.add_argument("--since", help="only the last 30m, 2h, 7d…")
    p.add_argument("--limit", type=int, default=50, help="at most N rows (0: all; default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--show-secrets", action="store_true", help="show token and signatures")
    p.set_defaults(fn=fn)

    p = sub.add_parser(
        "redeliver", help="send deliveries again (same body and webhook-id) through the outbox"
    )
    with_config(p)
    p.add_argument("ids", nargs="*", metavar="ID", help="delivery ids (from `deliveries`)")
    p.add_argument("--failed", action="store_true", help="every dead letter not redelivered yet")
    p.add_argument("--webhook", help="with --failed: only this webhook")
    p.add_argument("--since", help="with --failed: only the last 30m, 2h, 7d…")
    p.set_defaults(fn=fn)


@dataclass(frozen=True, slots=True)
class PgSource:
    """``[sidecar] state_url`` (HA): the history lives in PostgreSQL."""

    url: str
    schema: str = "mm_sidecar"
    password_file: Path | None = None


def state_dir_of(path: str) -> Path | PgSource:
    """``[sidecar] state_dir`` of a config file, read without the rest of it.

    The history needs no token: a ``token_file`` or systemd credential that only the service
    can read must not stop an operator. An unreadable or invalid file is reported by the full
    loader, with its usual messages (ConfigError).
    """
    from sidecar.config import SidecarConfig, load_config

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return load_config(path).sidecar.state_dir
    table = data.get("sidecar")
    url = table.get("state_url") if isinstance(table, dict) else None
    if isinstance(url, str) and url:
        schema = table.get("state_schema") if isinstance(table, dict) else None
        pw = table.get("state_password_file") if isinstance(table, dict) else None
        return PgSource(
            url,
            schema if isinstance(schema, str) and schema else "mm_sidecar",
            Path(path).parent / os.path.expanduser(pw) if isinstance(pw, str) and pw else None,
        )
    value = table.get("state_dir") if isinstance(table, dict) else None
    if not isinstance(value, str) or not value:
        return SidecarConfig().state_dir
    return Path(path).parent / os.path.expanduser(value)


def open_history(state_dir: Path | PgSource) -> HistoryStore:
    """The history of the state file in ``state_dir``, or of the PostgreSQL state (HA);
    HistoryError when there is none."""
    if isinstance(state_dir, PgSource):
        try:
            from sidecar.history_pg import PgHistory
            from sidecar.pgconn import PgTarget, read_password
        except ImportError as exc:
            raise HistoryError(
                "state_url needs psycopg: pip install 'mattermost-webhook-sidecar[postgresql]'"
            ) from exc
        try:
            password = read_password(state_dir.password_file)
        except OSError as exc:
            raise HistoryError(f"cannot read state_password_file: {exc}") from exc
        target = PgTarget(state_dir.url, schema=state_dir.schema, password=password)
        return PgHistory.connect(target)
    return SqliteHistory.connect(state_dir / DB_NAME)


def deliveries(state_dir: Path | PgSource, args: argparse.Namespace) -> int:
    """``mm-sidecar deliveries``."""
    if args.what and (args.what[0] != "show" or len(args.what) != 2):
        print("usage: mm-sidecar deliveries [filters] | deliveries show ID", file=sys.stderr)
        return EX_FAIL
    try:
        since = None if args.since is None else parse_since(args.since)
        store = open_history(state_dir)
    except (ValueError, HistoryError) as exc:
        print(exc, file=sys.stderr)
        return EX_FAIL
    try:
        if args.what:
            found = store.get(args.what[1])
            if found is None:
                print(f"no delivery {args.what[1]}", file=sys.stderr)
                return EX_FAIL
            print(show(found, show_secrets=args.show_secrets), end="")
            return EX_OK
        query = Query(
            failed=args.failed,
            webhook=args.webhook,
            post_id=args.post,
            since=since,
            limit=args.limit,
        )
        rows = store.find(query)
    finally:
        store.close()
    if args.json:
        for d in rows:
            entry = d.summary()
            if not args.show_secrets:
                entry["url"] = safe_url(d.url)
            print(json.dumps(entry, ensure_ascii=False))
    else:
        print(table(rows), end="")
    return EX_OK


def redeliver(state_dir: Path | PgSource, args: argparse.Namespace) -> int:
    """``mm-sidecar redeliver``."""
    if bool(args.ids) == bool(args.failed):
        print("redeliver takes delivery ids or --failed (not both)", file=sys.stderr)
        return EX_FAIL
    if args.ids and (args.webhook or args.since):
        print("--webhook and --since go with --failed", file=sys.stderr)
        return EX_FAIL
    try:
        since = None if args.since is None else parse_since(args.since)
        store = open_history(state_dir)
    except (ValueError, HistoryError) as exc:
        print(exc, file=sys.stderr)
        return EX_FAIL
    code = EX_OK
    try:
        chosen: list[Delivery] = []
        if args.failed:
            query = Query(
                failed=True, webhook=args.webhook, since=since, limit=0, not_redelivered=True
            )
            for d in reversed(store.find(query)):  # oldest first: the order they happened
                full = store.get(d.id)
                if full is not None:
                    chosen.append(full)
        for delivery_id in args.ids:
            full = store.get(delivery_id)
            if full is None:
                print(f"no delivery {delivery_id}", file=sys.stderr)
                code = EX_FAIL
            else:
                chosen.append(full)
        results = store.redeliver(chosen, time.time()) if chosen else []
    finally:
        store.close()
    queued = 0
    for r in results:
        d = r.delivery
        if r.queued:
            queued += 1
            print(
                f"queued {d.id}: webhook {d.webhook}, post {d.post_id}, {safe_url(d.url)}, "
                f"webhook-id {d.webhook_id} (was {d.outcome})"
            )
        else:
            print(f"skipped {d.id}: {r.reason}", file=sys.stderr)
            code = EX_FAIL
    print(
        f"{queued} delivery(ies) queued; a running daemon sends them within seconds, "
        "a stopped one at its next start"
    )
    return code


# -- rendering ---------------------------------------------------------------------------------


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def table(rows: Sequence[Delivery]) -> str:
    """The ``deliveries`` table, newest first."""
    head = ("time", "id", "webhook", "outcome", "status", "attempts", "duration", "channel")
    lines = [(*head, "post", "error")]
    for d in rows:
        lines.append(
            (
                _when(d.finished_at),
                d.id,
                d.webhook,
                d.outcome + (" (redelivered)" if d.redelivered_at else ""),
                "-" if d.status is None else str(d.status),
                str(d.attempts),
                f"{d.duration_ms:.0f} ms",
                d.channel_id,
                d.post_id,
                d.error[:80],
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head) + 1)]
    out = []
    for row in lines:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    if not rows:
        out.append("(no deliveries)")
    return "\n".join(out) + "\n"


def show(d: Delivery, *, show_secrets: bool) -> str:
    """One delivery in full: what was sent (headers, body) and what came back."""
    url = d.url if show_secrets else safe_url(d.url)
    lines = [
        f"delivery {d.id}  job {d.job_id}",
        f"webhook {d.webhook}  event {d.event}  post {d.post_id}  channel {d.channel_id}",
        f"outcome {d.outcome}  status {'-' if d.status is None else d.status}  "
        f"attempts {d.attempts}  duration {d.duration_ms:.0f} ms",
        f"created {_when(d.created_at)}  finished {_when(d.finished_at)}",
    ]
    if d.error:
        lines.append(f"error: {d.error}")
    if d.redelivery_of:
        lines.append(f"redelivery of {d.redelivery_of}")
    if d.redelivered_at:
        lines.append(f"redelivered at {_when(d.redelivered_at)}")
    lines += ["", f"POST {url}"]
    headers = dict(d.request_headers) or {
        "Content-Type": d.content_type,
        "webhook-id": d.webhook_id,
    }
    for name, value in headers.items():
        secret = name.lower() in SECRET_HEADERS and not show_secrets
        lines.append(f"{name}: {'***' if secret else value}")
    body = d.request_body.decode("utf-8", errors="replace")
    if not show_secrets:
        body = hide_body_token(body, d.content_type)
    lines += ["", body]
    if d.request_truncated:
        lines.append(f"[request body cut at {BODY_LIMIT // 1024} KiB]")
    lines += ["", f"response ({'no answer' if d.status is None else f'status {d.status}'}):"]
    if d.response_body:
        lines.append(d.response_body.decode("utf-8", errors="replace"))
    return "\n".join(lines) + "\n"


def hide_body_token(body: str, content_type: str) -> str:
    """The body with its ``token`` field shown as ``***``, read from the body itself (the
    config may have changed since it was sent)."""
    token = ""
    if content_type == "application/json":
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and isinstance(decoded.get("token"), str):
            token = decoded["token"]
    else:
        token = (parse_qs(body, keep_blank_values=True).get("token") or [""])[0]
    from sidecar.dryrun import hide_token

    return hide_token(body, token) if token else body
