"""Unit test of housekeeping: pruning reads the catch-up window of the current runtime."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from fakes import BOT, config

from sidecar.housekeeping import PRUNE_MARGIN_MS, Housekeeping
from sidecar.notify import Notifier
from sidecar.runtime import Live, Runtime


def runtime() -> Runtime:
    return Runtime.build(config(), bot_user_id=BOT.id)


async def test_housekeeping_prunes_with_the_current_catch_up_window() -> None:
    pruned: list[int] = []

    class Dispatcher:
        def server_now(self) -> int:
            return 10_000_000

        def prune(self, horizon: int) -> None:
            pruned.append(horizon)

    live = Live(runtime())
    keeping = Housekeeping(
        gateway=cast(Any, None),
        dispatcher=cast(Any, Dispatcher()),
        notifier=Notifier({}),
        live=live,
    )
    keeping.prune()
    live.runtime = replace(live.runtime, catch_up_window=60.0)
    keeping.prune()
    window = int(runtime().catch_up_window * 1000)
    assert pruned == [
        10_000_000 - window - PRUNE_MARGIN_MS,
        10_000_000 - 60_000 - PRUNE_MARGIN_MS,
    ]
