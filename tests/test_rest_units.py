"""Unit tests of the REST client, one aiohttp call each, answered by aioresponses.

aioresponses 0.7.x builds ``ClientResponse`` without the ``stream_writer`` argument that
aiohttp 3.12+ requires (aioresponses issue #289); ``_Response`` below supplies it.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from aioresponses import core as aioresponses_core

from sidecar.errors import BadAnswer, MattermostError, Unauthorized
from sidecar.mattermost import RestClient

URL = "http://mm.example.com"
ME = re.compile(r"^http://mm\.example\.com/api/v4/users/me$")
POSTS = re.compile(r"^http://mm\.example\.com/api/v4/channels/c1/posts\?since=5$")


class _NoWriter:
    output_size = 0


class _Response(aiohttp.ClientResponse):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoWriter())
        super().__init__(*args, **kwargs)


@pytest.fixture
def mocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    monkeypatch.setattr(aioresponses_core, "ClientResponse", _Response)
    with aioresponses() as m:
        yield m


@pytest.fixture
async def rest() -> AsyncIterator[RestClient]:
    async with RestClient(URL, "tok") as client:
        yield client


async def test_me_is_parsed_and_sent_with_the_token(mocked: aioresponses, rest: RestClient) -> None:
    mocked.get(ME, payload={"id": "u" * 26, "username": "bot", "is_bot": True})
    me = await rest.me()
    assert me.username == "bot"
    [call] = [c for calls in mocked.requests.values() for c in calls]
    assert call.kwargs.get("params") is None


async def test_401_is_unauthorized_and_never_retryable(
    mocked: aioresponses, rest: RestClient
) -> None:
    mocked.get(ME, status=401, payload={"id": "api.context.session_expired.app_error"})
    with pytest.raises(Unauthorized) as caught:
        await rest.me()
    assert not caught.value.retryable


async def test_503_with_an_http_date_retry_after_is_retryable_with_its_wait(
    mocked: aioresponses, rest: RestClient
) -> None:
    # One parser for both forms: the REST client used to understand only seconds.
    when = email.utils.formatdate(10**10, usegmt=True)  # far ahead: a long wait
    mocked.get(ME, status=503, body="down", headers={"Retry-After": when})
    with pytest.raises(MattermostError) as caught:
        await rest.me()
    assert caught.value.retryable and caught.value.status == 503
    assert caught.value.retry_after is not None and caught.value.retry_after > 3600


async def test_a_malformed_post_list_is_a_bad_answer(
    mocked: aioresponses, rest: RestClient
) -> None:
    mocked.get(POSTS, payload={"order": "p1", "posts": {}})
    with pytest.raises(BadAnswer) as caught:
        await rest.posts_since("c1", 5)
    assert not caught.value.retryable


async def test_posts_since_keeps_only_the_posts_in_order(
    mocked: aioresponses, rest: RestClient
) -> None:
    post = {"id": "p1", "channel_id": "c1", "user_id": "u1", "create_at": 7, "update_at": 7}
    root = {**post, "id": "root"}
    mocked.get(POSTS, payload={"order": ["p1"], "posts": {"p1": post, "root": root}})
    assert [p.id for p in await rest.posts_since("c1", 5)] == ["p1"]
