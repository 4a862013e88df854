"""The exception tree: one root, re-exported where the errors were defined before."""

from __future__ import annotations

import pytest

import sidecar.config
import sidecar.delivery
import sidecar.events
import sidecar.history
import sidecar.mattermost
import sidecar.migrate
import sidecar.models
import sidecar.reply
import sidecar.state
from sidecar import errors
from sidecar.backend import Fenced, StateUnavailable
from sidecar.gateway import Desync
from sidecar.importer import ImportFailed


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (sidecar.config, "ConfigError"),
        (sidecar.events, "FrameError"),
        (sidecar.models, "ObjectError"),
        (sidecar.reply, "ReplyError"),
        (sidecar.delivery, "Forbidden"),
        (sidecar.mattermost, "MattermostError"),
        (sidecar.mattermost, "BadAnswer"),
        (sidecar.mattermost, "Unauthorized"),
        (sidecar.state, "StateError"),
        (sidecar.state, "StateWriteError"),
        (sidecar.history, "HistoryError"),
        (sidecar.migrate, "MigrateError"),
    ],
)
def test_every_error_is_one_class_under_the_root(module: object, name: str) -> None:
    cls = getattr(module, name)
    assert cls is getattr(errors, name)
    assert issubclass(cls, errors.SidecarError)
    assert name in (errors.__doc__ or "")


def test_the_module_local_errors_share_the_root() -> None:
    assert issubclass(Desync, errors.SidecarError)
    assert issubclass(ImportFailed, errors.SidecarError)
    assert issubclass(Fenced, errors.StateError) and issubclass(StateUnavailable, errors.StateError)
    assert "Fenced" in (errors.__doc__ or "") and "StateUnavailable" in (errors.__doc__ or "")


def test_value_errors_stay_value_errors() -> None:
    for cls in (errors.FrameError, errors.ObjectError, errors.ReplyError):
        assert issubclass(cls, ValueError)
