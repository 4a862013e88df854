"""Where a request's token comes from, as the server's ``ParseAuthTokenFromRequest`` reads it.

In order: ``Authorization: Bearer|Token …``, the ``MMAUTHTOKEN`` cookie, ``?access_token=``.
A session token (not OAuth) given in the query string is refused with 401; a cookie session on
a request that changes something needs ``X-Requested-With: XMLHttpRequest`` or the session's
``X-CSRF-Token`` (the server's CSRF check).
"""

from __future__ import annotations

from enum import Enum

from aiohttp import web

from sidecar.testing.model import ApiError

COOKIE = "MMAUTHTOKEN"


class Location(Enum):
    """Where the token was found."""

    NONE = "none"
    HEADER = "header"
    COOKIE = "cookie"
    QUERY = "query"


def request_token(request: web.Request) -> tuple[str, Location]:
    """The request's token and where it was found."""
    header = request.headers.get("Authorization", "")
    if len(header) > 7 and header[:7].lower() == "bearer ":
        return header[7:].strip(), Location.HEADER
    if len(header) > 6 and header[:6].lower() == "token ":
        return header[6:].strip(), Location.HEADER
    cookie = request.cookies.get(COOKIE, "")
    if cookie:
        return cookie, Location.COOKIE
    query = request.query.get("access_token", "")
    if query:
        return query, Location.QUERY
    return "", Location.NONE


def token_in_query() -> ApiError:
    """The server's answer to a valid session token passed as ``?access_token=``."""
    return ApiError(
        401,
        "api.context.token_provided.app_error",
        "Session is not OAuth but token was provided in the query string.",
    )


def session_expired(detail: str = "") -> ApiError:
    """The server's answer to a missing, bad or CSRF-suspect session."""
    return ApiError(
        401,
        "api.context.session_expired.app_error",
        "Invalid or expired session, please login again.",
        detail,
    )


def csrf_ok(request: web.Request, csrf_token: str) -> bool:
    """A cookie session may change things only with the XHR header or its CSRF token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return True
    if csrf_token and request.headers.get("X-CSRF-Token") == csrf_token:
        return True
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"
