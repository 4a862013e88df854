"""sd_notify without libsystemd: one datagram per state change to ``$NOTIFY_SOCKET``.

The protocol is small (``KEY=value`` lines in one ``AF_UNIX`` datagram; a socket name starting
with ``@`` is in the abstract namespace), so we speak it directly rather than depend on a C
library that is absent from containers and slim images. Without ``NOTIFY_SOCKET`` every method
is a no-op, so the daemon runs the same under systemd, in Docker and in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# systemd drains its notify socket promptly and sizes its buffer generously, so a send only
# waits when the manager is wedged; a short bound keeps that from freezing the event loop.
_SEND_TIMEOUT = 0.5


class Notifier:
    """Tells the service manager about start-up, reloads, liveness and shutdown.

    Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``env`` (default
    ``os.environ``); the constructor does no I/O, the socket is opened on the first send.
    Send failures are logged once at debug level and never raise: a service must not fail
    because its supervisor stopped listening.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            # Abstract namespace: the leading '@' stands for the NUL byte on the wire.
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        elif raw:
            # e.g. systemd ≥ 254's "vsock:CID:PORT", meant for VMs; not a case we run in.
            logger.debug("NOTIFY_SOCKET %r is not a unix socket; notifications off", raw)
        self.enabled: bool = self._address is not None
        self._watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None
        self._failed = False

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None.

        None when the manager did not ask for pings, or asked another process
        (``WATCHDOG_PID`` set to a pid that is not ours).
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str = "") -> None:
        """Start-up (or a reload) is complete; optionally with a new status line."""
        self.send("READY=1", *_status_line(status))

    def status(self, text: str) -> None:
        """Set the free-form status shown by ``systemctl status``."""
        self.send(*_status_line(text))

    def watchdog(self) -> None:
        """Reset the watchdog timer: the service is alive and healthy."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """A configuration reload starts; follow with :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` lets systemd ≥ 253 tie this message to the reload it requested
        (``Type=notify-reload``); older managers ignore the unknown field.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1")

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; True if it was sent."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(_SEND_TIMEOUT)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.debug("sd_notify to NOTIFY_SOCKET failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        """Close the socket; later sends reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    # A newline would end the assignment and start a bogus one.
    return ("STATUS=" + " ".join(text.splitlines()),)


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec
