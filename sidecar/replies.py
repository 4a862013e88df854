"""The reply stage: a callback's answer → posts in Mattermost (job → delivery → **reply**).

Parsing and building the posts is pure (``reply.py``); this class does the I/O around it: the
usernames of ``<@USERID>`` mentions (cached, then one ``POST /users/ids``), ``POST /posts``
retried on 429/5xx with a stable ``pending_post_id`` so the server de-duplicates our retries,
and a periodic check that the server keeps the webhook props.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

from sidecar import history
from sidecar.config import WebhookConfig
from sidecar.errors import MattermostError, Unauthorized
from sidecar.health import Metrics
from sidecar.models import Post, User
from sidecar.reply import ReplyError, ReplySettings, build_reply, parse_response, response_user_ids
from sidecar.retry import RetryPolicy, retrying
from sidecar.state import Job

log = logging.getLogger(__name__)

REPLY_ATTEMPTS = 6  # posting a reply: 429/5xx/connection errors, then it is given up
REPLY_RETRY = RetryPolicy(base=0.5, cap=30.0, max_attempts=REPLY_ATTEMPTS)
"""How posting a reply is retried: full jitter from 0.5 s to 30 s, REPLY_ATTEMPTS in all."""
PROPS_CHECK_EVERY = 64  # replies between two checks that the server kept the webhook props
MAX_MENTIONS = 200  # distinct <@ID> looked up per reply (in one POST /users/ids); others stay
_MENTION = re.compile(r"<@([a-zA-Z0-9]+)>")


class ReplyApi(Protocol):
    """What the reply stage needs of the REST client (``mattermost.RestClient``)."""

    async def create_post(self, body: Mapping[str, Any], *, decode: bool = True) -> dict[str, Any]:
        """``POST /posts``."""

    def cached_user(self, user_id: str) -> User | None:
        """A user from the cache, if fresh."""

    async def users_by_ids(self, user_ids: list[str]) -> list[User]:
        """``POST /users/ids``."""


class Replier:
    """Posts the replies of delivered jobs. Constructing it does no I/O."""

    def __init__(
        self, *, rest: ReplyApi, metrics: Metrics, retry: RetryPolicy = REPLY_RETRY
    ) -> None:
        self._rest = rest
        self._metrics = metrics
        self._retry = retry
        self.posted = 0  # replies posted (for the shutdown summary)
        self._props_warned = False

    async def reply(
        self, job: Job, webhook: WebhookConfig, settings: ReplySettings, delivered: str
    ) -> tuple[history.Outcome, str]:
        """Turn the callback's answer into posts, as Mattermost does for an outgoing webhook.

        ``webhook`` and ``settings`` come from the runtime the job started with; ``delivered``
        opens the one log line of the outcome. Returns the history outcome and its error text.
        """
        try:
            response = parse_response(job.response or b"")
        except ReplyError as exc:
            self._metrics.child(self._metrics.replies, "rejected").inc()
            log.warning("%s; no reply webhook=%s: %s", delivered, webhook.name, exc)
            return history.NO_REPLY, str(exc)
        if response is None:
            self._metrics.child(self._metrics.replies, "none").inc()
            log.info("%s; no reply webhook=%s: empty response", delivered, webhook.name)
            return history.DELIVERED, ""
        post = Post(
            id=job.post_id, channel_id=job.channel_id, user_id="", create_at=0, root_id=job.root_id
        )
        usernames = await self._usernames(response)
        try:
            plan = build_reply(
                response,
                webhook=webhook,
                post=post,
                settings=settings,
                usernames=usernames,
            )
        except ReplyError as exc:
            self._metrics.child(self._metrics.replies, "rejected").inc()
            log.warning("%s; reply refused webhook=%s: %s", delivered, webhook.name, exc)
            return history.NO_REPLY, str(exc)
        for warning in plan.warnings:
            log.warning("reply webhook=%s post=%s: %s", webhook.name, job.post_id, warning)
        if not plan.posts:
            self._metrics.child(self._metrics.replies, "none").inc()
            log.info("%s; no reply webhook=%s: nothing to post", delivered, webhook.name)
            return history.DELIVERED, ""
        for i, body in enumerate(plan.posts):
            body = dict(body)
            body["pending_post_id"] = _pending_id(job.id + job.redelivery_of, i)
            # Whether the server keeps the webhook props is checked on the first reply and on
            # one in PROPS_CHECK_EVERY after it (a server upgrade may change it at any time).
            check = not self._props_warned and self.posted % PROPS_CHECK_EVERY == 0
            created = await self._create_post(body, webhook, job, delivered, decode=check)
            if isinstance(created, MattermostError):
                return history.REPLY_FAILED, str(created)
            if check:
                self._check_props(created)
        self.posted += 1
        self._metrics.child(self._metrics.replies, "posted").inc()
        first = plan.posts[0]
        props = first.get("props") or {}
        log.info(
            "%s; replied webhook=%s as %s in channel %s%s (%d post%s)",
            delivered,
            webhook.name,
            props.get("override_username") or "the bot",
            job.channel_id,
            f" thread {first['root_id']}" if first.get("root_id") else "",
            len(plan.posts),
            "" if len(plan.posts) == 1 else "s",
        )
        return history.DELIVERED, ""

    async def _create_post(
        self,
        body: dict[str, Any],
        webhook: WebhookConfig,
        job: Job,
        delivered: str,
        *,
        decode: bool,
    ) -> dict[str, Any] | MattermostError:
        """The created post, or the error that made us give up."""

        def failed(exc: MattermostError, _attempts: int, delay: float) -> None:
            log.warning(
                "reply failed webhook=%s post=%s: %s; retrying in %.1f s",
                webhook.name,
                job.post_id,
                exc,
                delay,
            )

        try:
            return await retrying(
                lambda: self._rest.create_post(body, decode=decode),
                self._retry,
                on_retry=failed,
            )
        except Unauthorized:
            raise
        except MattermostError as exc:
            self._metrics.child(self._metrics.replies, "failed").inc()
            log.error("%s; reply not posted webhook=%s: %s", delivered, webhook.name, exc)
            return exc

    async def _usernames(self, response: dict[str, Any]) -> dict[str, str]:
        """Usernames for the ``<@USERID>`` mentions in text and attachments.

        Cached users first; the rest in one ``POST /users/ids`` of at most MAX_MENTIONS ids
        (the first mentioned), so an answer full of mentions costs one call, not one each.
        """
        wanted = response_user_ids(response)
        if not wanted:
            return {}
        names: dict[str, str] = {}
        missing: list[str] = []
        # In order of first mention, so the cap keeps the first ones.
        for user_id in dict.fromkeys(_MENTION.findall(json.dumps(response))):
            if user_id not in wanted:
                continue
            user = self._rest.cached_user(user_id)
            if user is not None:
                names[user_id] = user.username
            else:
                missing.append(user_id)
        if len(missing) > MAX_MENTIONS:
            log.warning(
                "reply mentions %d users not known yet; looking up the first %d, the others "
                "stay written <@ID>",
                len(missing),
                MAX_MENTIONS,
            )
            missing = missing[:MAX_MENTIONS]
        if missing:
            try:
                for user in await self._rest.users_by_ids(missing):
                    names[user.id] = user.username
            except Unauthorized:
                raise
            except MattermostError as exc:
                log.warning("no usernames for %d mentions: %s", len(missing), exc)
        return names

    def _check_props(self, created: dict[str, Any]) -> None:
        props = created.get("props")
        if self._props_warned or (isinstance(props, dict) and props.get("from_webhook") == "true"):
            return
        self._props_warned = True
        log.warning(
            "the server dropped the webhook props (from_webhook, override_username, …) from a "
            "reply: replies will show as ordinary bot posts"
        )


def _pending_id(job_id: str, part: int) -> str:
    """A stable ``pending_post_id`` per reply part, so the server de-duplicates our retries."""
    return hashlib.sha256(f"{job_id}/{part}".encode()).hexdigest()[:26]
