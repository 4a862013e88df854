"""Delivery history and dead letters: its tables in the state file, queries, pruning.

Every finished job leaves one row in ``deliveries`` (written by the state writer thread in the
same transaction that deletes the job's outbox row, so a burst of finished jobs costs no extra
commit). Rows whose outcome is in :data:`DEAD` are *dead letters*. ``redeliver`` puts a row
back in the outbox with the same body and ``webhook-id``, under its job's id with
``stage = 'redeliver'``: a second redelivery of the same job while the first is queued or
running is ignored (the outbox id is taken), and a running daemon picks the row up on its next
poll (:mod:`sidecar.redelivery`); a stopped one at its next start.

:class:`HistoryStore` is what the CLI and the daemon use of a backend; the one backend today
are SQLite (:mod:`sidecar.history_sqlite`, tables in the state file) and PostgreSQL
(:mod:`sidecar.history_pg`, tables in the state schema, with HA).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from sidecar.compat import StrEnum
from sidecar.errors import HistoryError as HistoryError

if TYPE_CHECKING:
    from sidecar.state import Job

BODY_LIMIT: Final = 64 * 1024  # request and response bodies kept per delivery


class Outcome(StrEnum):
    """What became of a finished job; stored (and printed) as its value."""

    DELIVERED = "delivered"  # answered (not 5xx/429); the reply, if any, was posted
    FAILED = "failed"  # no answer after the retries, or a final 5xx/429
    REFUSED = "refused"  # the internal-address guard refused the callback URL
    NO_REPLY = "no_reply"  # answered, but the answer could not be used as a reply
    REPLY_FAILED = "reply_failed"  # answered; the server did not take the reply


DELIVERED: Final = Outcome.DELIVERED
FAILED: Final = Outcome.FAILED
REFUSED: Final = Outcome.REFUSED
NO_REPLY: Final = Outcome.NO_REPLY
REPLY_FAILED: Final = Outcome.REPLY_FAILED
# Not delivered: dead letters. An outcome added later that means "never reached the receiver"
# (e.g. a callback URL removed by a reload) belongs here.
DEAD: Final = frozenset({FAILED, REFUSED})

REDELIVER_STAGE: Final = "redeliver"  # outbox rows queued by the CLI, not yet claimed


@dataclass(frozen=True, slots=True)
class Retention:
    """``[sidecar] history_days``, ``dead_letter_days``, ``history_max_rows``."""

    history_days: float = 7.0
    dead_letter_days: float = 30.0
    max_rows: int = 100_000


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of the history."""

    id: str
    job_id: str
    webhook: str
    event: str
    post_id: str
    channel_id: str
    root_id: str
    url: str
    webhook_id: str
    content_type: str
    attempts: int
    outcome: str
    status: int | None
    duration_ms: float
    error: str
    created_at: float
    finished_at: float
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: bytes = b""
    request_truncated: bool = False
    response_body: bytes | None = None
    redelivery_of: str | None = None
    redelivered_at: float | None = None

    @property
    def dead(self) -> bool:
        """A dead letter: never delivered."""
        return self.outcome in DEAD

    def summary(self) -> dict[str, Any]:
        """The fields of ``deliveries --json`` (no bodies, no headers)."""
        return {
            "id": self.id,
            "webhook": self.webhook,
            "event": self.event,
            "post_id": self.post_id,
            "channel_id": self.channel_id,
            "url": self.url,
            "webhook_id": self.webhook_id,
            "attempts": self.attempts,
            "outcome": self.outcome,
            "status": self.status,
            "duration_ms": round(self.duration_ms, 1),
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "redelivery_of": self.redelivery_of,
            "redelivered_at": self.redelivered_at,
        }


@dataclass(frozen=True, slots=True)
class Query:
    """The filters of ``deliveries`` and ``redeliver --failed``."""

    failed: bool = False
    webhook: str | None = None
    post_id: str | None = None
    since: float | None = None  # epoch seconds
    limit: int = 50
    not_redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Queued:
    """What ``redeliver`` did with one delivery."""

    delivery: Delivery
    queued: bool
    reason: str = ""  # why not, when not queued


def entry(
    job: Job,
    delivery_id: str,
    outcome: Outcome,
    status: int | None,
    duration_ms: float,
    error: str,
    response: bytes | None,
    finished_at: float,
) -> tuple[Any, ...]:
    """A history row for a finished job, cheap to build on the event loop.

    The request headers stay a dict here; the writer thread encodes them. A dead letter keeps
    its whole request body, so that ``redeliver`` can send it again unchanged.
    """
    body = job.body
    truncated = len(body) > BODY_LIMIT and outcome not in DEAD
    return (
        delivery_id,
        job.id,
        job.webhook,
        job.event,
        job.post_id,
        job.channel_id,
        job.root_id,
        job.url,
        job.webhook_id,
        job.content_type,
        job.attempts,
        outcome,
        status,
        duration_ms,
        error,
        job.created_at,
        finished_at,
        job.headers or {},
        body[:BODY_LIMIT] if truncated else body,
        int(truncated),
        None if response is None else response[:BODY_LIMIT],
        job.redelivery_of or None,
        None,
    )


def parse_since(text: str, *, now: float | None = None) -> float:
    """``"2h"``, ``"30m"``, ``"45s"``, ``"7d"`` (or plain seconds) → an epoch time that long ago."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"--since takes a duration like 30m, 2h or 7d, got {text!r}")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return (time.time() if now is None else now) - float(m.group(1)) * unit


class HistoryStore(Protocol):
    """What the CLI and the daemon need of a history backend."""

    def find(self, query: Query) -> list[Delivery]:
        """Matching deliveries, newest first, without bodies."""

    def get(self, delivery_id: str) -> Delivery | None:
        """One delivery with its headers and bodies."""

    def redeliver(self, deliveries: Iterable[Delivery], now: float) -> list[Queued]:
        """Queue deliveries again in the outbox (same body and ``webhook-id``)."""

    def pending(self) -> list[Job]:
        """Outbox rows queued by ``redeliver`` and not claimed yet."""

    def pending_nowait(self) -> list[Job] | None:
        """``pending()`` if it can be answered at once, without waiting for a lock or the
        network (the daemon then asks on its event loop); None when it cannot."""

    def dead_letters(self) -> dict[str, int]:
        """Dead letters not redelivered yet, by webhook."""

    def prune(self, now: float, retention: Retention) -> int:
        """Delete what retention no longer keeps; returns how many rows went."""

    def close(self) -> None:
        """Release the connection."""


DEAD_SQL: Final = "outcome IN ({})".format(", ".join(f"'{o}'" for o in sorted(DEAD)))
"""The SQL condition of a dead letter (the same in SQLite and PostgreSQL)."""


def where_clause(query: Query, mark: str) -> tuple[str, tuple[Any, ...]]:
    """The ``WHERE`` of ``query`` (or "") and its arguments; ``mark`` is the driver's
    placeholder (``?`` for sqlite3, ``%s`` for psycopg)."""
    clauses: list[str] = []
    args: list[Any] = []
    if query.failed:
        clauses.append(DEAD_SQL)
    if query.not_redelivered:
        clauses.append("redelivered_at IS NULL")
    for condition, value in (
        ("webhook = ", query.webhook),
        ("post_id = ", query.post_id),
        ("finished_at >= ", query.since),
    ):
        if value is not None:
            clauses.append(condition + mark)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def delivery_from_row(row: Sequence[Any], *, bodies: bool) -> Delivery:
    """A ``deliveries`` row (the columns in ``Delivery``'s field order) as a Delivery."""
    headers, request_body, truncated, response_body, redelivery_of, redelivered_at = row[17:]
    return Delivery(  # type: ignore[call-arg]  # the columns are the fields, in order
        *row[:17],
        json.loads(headers) if bodies else {},
        bytes(request_body) if bodies else b"",
        bool(truncated),
        None if response_body is None or not bodies else bytes(response_body),
        redelivery_of,
        redelivered_at,
    )


def redelivery_job(d: Delivery, now: float) -> Job:
    """The outbox row that sends ``d`` again: the same body and ``webhook-id``, queued by
    ``redeliver`` (stage REDELIVER_STAGE) and linked to the delivery it repeats."""
    from sidecar.state import Job

    return Job(
        id=d.job_id,
        webhook=d.webhook,
        url=d.url,
        webhook_id=d.webhook_id,
        body=d.request_body,
        content_type=d.content_type,
        event=d.event,
        post_id=d.post_id,
        channel_id=d.channel_id,
        root_id=d.root_id,
        created_at=now,
        stage=REDELIVER_STAGE,
        redelivery_of=d.id,
    )
