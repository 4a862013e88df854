"""Test doubles that speak real protocols: a Mattermost emulator and a callback recorder.

`Emulator` reproduces the Mattermost REST API and websocket the sidecar relies on (see
sidecar.testing.emulator); `CallbackRecorder` is the HTTP receiver of outgoing webhooks.
Both bind 127.0.0.1 on port 0 by default and are used with ``async with``.
"""

from sidecar.testing.emulator import DEFAULT_SETTINGS, Emulator
from sidecar.testing.model import ApiError, go_json, new_id
from sidecar.testing.recorder import CallbackRecorder, Recorded, Reply

__all__ = [
    "DEFAULT_SETTINGS",
    "ApiError",
    "CallbackRecorder",
    "Emulator",
    "Recorded",
    "Reply",
    "go_json",
    "new_id",
]
