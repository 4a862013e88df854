"""What the state holds: an outbox job, and the snapshot a start-up reads back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sidecar.payload import dumps_strings


@dataclass(slots=True)
class Job:
    """One delivery (one callback URL of one webhook for one event) and its reply.

    ``stage`` is ``deliver`` until the callback answered, then ``reply`` (with the answer
    kept in ``response``) until the reply is posted; the row is deleted when finished.
    """

    id: str
    webhook: str
    url: str
    webhook_id: str
    body: bytes
    content_type: str
    event: str
    post_id: str
    channel_id: str
    root_id: str
    created_at: float = field(default_factory=time.time)
    stage: str = "deliver"
    attempts: int = 0
    response: bytes | None = None
    next_at: float = 0.0  # wall-clock time of the next attempt after a failure (0: now)
    # -- delivery history (history.py, history_sqlite.py) --
    redelivery_of: str = ""  # the history row this job sends again (kept in the outbox row)
    delivery_id: str = ""  # its own history row, once named (not kept: a restart renames it)
    headers: dict[str, str] | None = None  # the last attempt's request headers (not kept)

    def meta(self) -> str:
        meta = {
            "url": self.url,
            "webhook_id": self.webhook_id,
            "content_type": self.content_type,
            "event": self.event,
            "post_id": self.post_id,
            "channel_id": self.channel_id,
            "root_id": self.root_id,
        }
        if self.redelivery_of:
            meta["redelivery_of"] = self.redelivery_of
        return dumps_strings(meta)


@dataclass(slots=True)
class Snapshot:
    """What a start-up reads back: cursors, recent keys, unfinished jobs."""

    fresh: bool
    cursors: dict[str, int]
    seen: dict[str, int]
    jobs: list[Job]
    #: Where processing began (server ms), once saved: the cursor of channels without one.
    start: int | None = None
    #: Read with a limit (the daemon's start): every key whose ``at`` is at or after this
    #: (server ms) is in ``seen``; older ones may be only in the table (0: all were read).
    seen_floor: int = 0


def job_from_row(row: tuple[Any, ...]) -> Job:
    job_id, webhook, stage, attempts, meta, body, response, created_at, next_at = row
    m = json.loads(meta)
    return Job(
        id=job_id,
        webhook=webhook,
        url=m["url"],
        webhook_id=m["webhook_id"],
        body=bytes(body),
        content_type=m["content_type"],
        event=m["event"],
        post_id=m["post_id"],
        channel_id=m["channel_id"],
        root_id=m["root_id"],
        created_at=created_at,
        stage=stage,
        attempts=attempts,
        response=None if response is None else bytes(response),
        next_at=next_at,
        redelivery_of=m.get("redelivery_of", ""),
    )
