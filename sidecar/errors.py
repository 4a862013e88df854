"""Every error the sidecar raises on purpose, in one tree rooted at :class:`SidecarError`.

The tree (indentation is inheritance)::

    SidecarError                 anything the sidecar raises on purpose
    ├── ConfigError              the config is invalid; ``errors`` lists every problem (exit 78)
    ├── FrameError               a websocket frame could not be decoded (skipped, seq counted)
    ├── ObjectError              a Mattermost object (post, user, …) has the wrong shape
    ├── ReplyError               a callback's response cannot become a reply (no post made)
    ├── Forbidden                the internal-address guard refused a callback address
    ├── MattermostError          a REST call failed; ``retryable`` says if asking again may help
    │   ├── BadAnswer            a successful answer of the wrong shape (never retryable)
    │   └── Unauthorized         401: the bot token was rejected (fatal, exit 78)
    ├── StateError               the state file cannot be used (exit 78)
    │   ├── StateWriteError      commits kept failing (exit 1: restart and catch up)
    │   ├── Fenced               (backend.py) a write refused: another replica took the lease
    │   └── StateUnavailable     (backend.py) PostgreSQL cannot be reached; try again later
    ├── MigrateError             ``mm-sidecar state migrate`` cannot copy the state (exit 1)
    ├── HistoryError             the delivery history cannot be read or written
    ├── Desync                   (gateway.py) the websocket's seq went backwards or leapt
    └── ImportFailed             (importer.py) ``mm-sidecar import`` cannot go on

``FrameError``, ``ObjectError`` and ``ReplyError`` are also ``ValueError``\\s (they were before
the tree existed; code catching ``ValueError`` keeps working).

What is retried is decided by :mod:`sidecar.retry`: a :class:`MattermostError` whose
``retryable`` is true. :class:`Unauthorized` is never retried: its ``retryable`` is false and
:func:`sidecar.retry.retrying` re-raises it before looking, so no catch-all for retryable
errors can swallow a rejected token.

``Desync``, ``ImportFailed``, ``Fenced`` and ``StateUnavailable`` live in the one module that
raises and handles them. Each other class is re-exported by the module that raises it
(``sidecar.mattermost.MattermostError``, ``sidecar.events.FrameError``, …), so either import
works.
"""

from __future__ import annotations

from sidecar.guard import FORBIDDEN_MESSAGE


class SidecarError(Exception):
    """The root of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """The config is invalid; ``errors`` lists every problem, each with its key path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class ObjectError(SidecarError, ValueError):
    """A Mattermost object (post, reaction, user, …) did not have the expected shape."""


class FrameError(SidecarError, ValueError):
    """A frame could not be decoded; ``seq`` is its sequence number when it was readable.

    The gateway logs the reason once and skips the frame, but still counts its ``seq``
    so that a resume asks for the right next event.
    """

    def __init__(self, reason: str, *, seq: int | None = None, event_name: str = "") -> None:
        super().__init__(reason)
        self.seq = seq
        self.event_name = event_name


class ReplyError(SidecarError, ValueError):
    """The callback's response is invalid; the message says why (no post is made)."""


class Forbidden(SidecarError):
    """A callback address refused by the internal-address guard."""

    def __init__(self, host: str, address: str) -> None:
        self.host = host
        self.address = address
        where = address if host == address else f"{host} resolves to {address}"
        super().__init__(f"{FORBIDDEN_MESSAGE} ({where})")


class MattermostError(SidecarError):
    """The server refused a call or answered something we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_id: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Connection errors, timeouts, 429 and 5xx may succeed later; other 4xx never will."""
        return self.status is None or self.status == 429 or self.status >= 500


class BadAnswer(MattermostError):
    """A successful answer of the wrong shape. Not retryable: asking again gets the same."""

    @property
    def retryable(self) -> bool:
        """Never: the server did answer."""
        return False


class Unauthorized(MattermostError):
    """401: the bot token was rejected. Fatal (exit 78): retrying cannot help."""

    @property
    def retryable(self) -> bool:
        """Never: the same token is refused again."""
        return False


class StateError(SidecarError):
    """The state file cannot be used; the message says what to do (exit 78)."""


class StateWriteError(StateError):
    """Commits kept failing for WRITE_RETRY_FOR seconds (disk full, I/O error): exit 1, so
    the service manager restarts the daemon, which catches up from what was committed."""


class MigrateError(SidecarError):
    """``state migrate`` cannot be done (bad URL, no state at the source, a destination that
    already holds state without ``--force``); the message says why."""


class HistoryError(SidecarError):
    """The history cannot be read or written; the message says why."""
