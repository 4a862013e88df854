"""``python -m sidecar.testing [--host H] [--port N] [--seed FILE]``: the emulator alone.

Prints its URL and the seeded users' tokens, then serves until SIGINT/SIGTERM. Without
``--seed`` it holds `sidecar.testing.seed.DEFAULT_SEED`. A seed file is TOML (JSON when it ends
in ``.json``); the full format is in sidecar.testing.seed::

    [settings]
    EnablePostUsernameOverride = true
    [[users]]
    username = "somename"
    [[bots]]
    username = "sidecar-bot"
    token = "zmigewsanbbsdf59xnmduzypjc"      # optional; generated when absent
    [[teams]]
    name = "someteam"                          # members default to everyone
    [[channels]]
    team = "someteam"
    name = "town-square"
    type = "O"                                 # O, P, D or G; members = ["…"] optional for O/P

The HTTP control surface (post as a user, drop sockets, …) is in sidecar.testing.control.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from sidecar.testing.emulator import Emulator
from sidecar.testing.seed import DEFAULT_SEED, SeedError, apply_seed, load_seed


def build_parser(prog: str = "python -m sidecar.testing") -> argparse.ArgumentParser:
    """The emulator's command line (reused by ``mm-sidecar emulator``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Run the Mattermost emulator.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8065, help="port to bind (8065; 0 = any)")
    parser.add_argument("--seed", help="TOML or JSON seed file (users, bots, teams, channels)")
    return parser


async def serve(host: str, port: int, seed_path: str | None) -> None:
    """Run an emulator until SIGINT or SIGTERM."""
    seed = load_seed(seed_path) if seed_path else DEFAULT_SEED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Emulator(host=host, port=port) as mm:
        tokens = apply_seed(mm, seed)
        print(f"Mattermost emulator at {mm.url}", flush=True)
        bots = {u.username for u in mm.store.users.values() if u.is_bot}
        for username, token in tokens.items():
            kind = " (bot)" if username in bots else ""
            print(f"  token for {username}{kind}: {token}", flush=True)
        print(f"  state: GET {mm.url}/_emulator/state", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args.host, args.port, args.seed))
    except SeedError as error:
        for line in error.errors:
            print(f"emulator: {line}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as error:
        print(f"emulator: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
