"""A user's channels in a team, and the user JSON."""

from __future__ import annotations

from harness import World
from tests.emulator_helpers import ERROR_KEYS, call


async def test_user_with_no_channels_in_the_team_gets_404(emulator: World) -> None:
    w = emulator
    path = f"/api/v4/users/me/teams/{w.team['id']}/channels"
    status, err, _ = await call(w, "GET", path, user="carol")  # carol is in no channel
    assert status == 404 and list(err) == ERROR_KEYS
    assert err["id"] == "app.channel.get_channels.not_found.app_error"
    status, channels, _ = await call(w, "GET", path)
    assert status == 200
    assert [c["display_name"] for c in channels] == sorted(c["display_name"] for c in channels)


async def test_users_me_has_notify_props_and_a_real_users_fields(emulator: World) -> None:
    w = emulator
    for who in ("alice", "sidecar-bot"):
        status, me, _ = await call(w, "GET", "/api/v4/users/me", user=who)
        assert status == 200
        assert me["notify_props"]["desktop"] == "mention"
        assert me["notify_props"]["push"] == "mention"
        for key in ("props", "email_verified", "last_password_update", "locale", "timezone"):
            assert key in me, key
    assert "is_bot" not in (await call(w, "GET", "/api/v4/users/me", user="alice"))[1]
