"""The command line: argparse, logging, signals, exit codes.

The only module that touches the process.

Exit codes: 0 success; 78 (EX_CONFIG) bad config, unusable or locked state file, bot token rejected
(systemd must not restart-loop on it); 1 any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from sidecar import __version__
from sidecar.config import Config, ConfigError, load_config, new_token

EX_OK, EX_FAIL, EX_CONFIG = 0, 1, 78
CONFIG_ENV = "MM_SIDECAR_CONFIG"

log = logging.getLogger("sidecar")


# -- logging -----------------------------------------------------------------------------------


# Characters that could forge or hide log lines: C0 (newline, carriage return, ESC…), DEL, C1,
# Unicode line separators and bidi controls. Usernames, URLs, error texts, channel names and
# callback answers all come from outside; each such character is written escaped instead.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


class _Redact(logging.Filter):
    """Defence in depth: no configured secret ever reaches a log line, even by accident; and
    no value from outside can start a line of its own (control characters are escaped, in
    text and JSON alike; a traceback, added by the formatter, still prints as it is)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secrets and any(s in message for s in self.secrets):
            for s in self.secrets:
                message = message.replace(s, "***")
        message = escape_controls(message)
        # Formatted once here; the formatter then does not format the arguments again.
        record.msg, record.args = message, None
        return True


class _JsonFormatter(logging.Formatter):
    """One JSON object per line with stable keys: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """``[HH:MM:SS.mmm ]LEVEL   logger            message``; the time string is made once per
    second, and a line without a traceback is put together directly (a line per decision is
    on the hot path; ``logging.Formatter.format`` does several steps for the same result)."""

    _stamp: tuple[int, str] = (-1, "")

    def __init__(self, *, stamped: bool) -> None:
        stamp = "%(asctime)s.%(msecs)03d " if stamped else ""
        super().__init__(stamp + "%(levelname)-7s %(name)-17s %(message)s", "%H:%M:%S")
        self._stamped = stamped

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if self._stamp[0] != second:
            self._stamp = (second, time.strftime(datefmt or "%H:%M:%S", time.localtime(second)))
        return self._stamp[1]

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        line = f"{record.levelname:<7} {record.name:<17} {record.message}"
        if self._stamped:
            return f"{self.formatTime(record)}.{int(record.msecs):03d} {line}"
        return line


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes each line in one call: stderr is line-buffered, so the
    newline already flushed it (no second flush per line); other streams are flushed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + "\n")
            if not getattr(stream, "line_buffering", False):
                stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return _JsonFormatter()
    # journald stamps every line itself; elsewhere a short local time helps.
    return _TextFormatter(stamped=not os.environ.get("JOURNAL_STREAM"))


def set_log_format(fmt: str) -> None:
    """Switch the handlers ``setup_logging`` installed to ``fmt`` (a reload changed it)."""
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, _Redact) for f in handler.filters):
            handler.setFormatter(_formatter(fmt))


def setup_logging(
    fmt: str = "text", secrets: Sequence[str] = (), level: int = logging.INFO
) -> None:
    """Configure the root logger for the process (libraries never do this)."""
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
    handler.addFilter(_Redact(secrets))
    # A log line per decision is on the hot path: skip what no format here prints (the
    # caller's file and line, thread, process names).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("websockets", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_secrets(config: Config) -> list[str]:
    """Every secret in a config, for the log redaction filter."""
    secrets = [config.mattermost.token]
    for w in config.webhooks:
        secrets.append(w.token)
        secrets.extend(w.signing_secrets)
    if config.sidecar.state_url:  # the PostgreSQL password (HA), wherever it comes from
        from sidecar.pgconn import read_password

        with contextlib.suppress(OSError):
            secrets.append(read_password(config.sidecar.state_password_file) or "")
        secrets.append(os.environ.get("PGPASSWORD", ""))
    return [s for s in secrets if s]


# -- commands ----------------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError([f"no config file: pass -c FILE or set {CONFIG_ENV}"])
    return str(path)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config offline; print every error, or a summary of the webhooks."""
    from sidecar.delivery import check_url

    try:
        config = load_config(_config_path(args))
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return EX_CONFIG
    warnings = list(config.warnings)
    allowed = config.sidecar.allowed_untrusted_internal_connections
    for w in config.webhooks:
        for i, url in enumerate(w.callback_urls):
            problem = check_url(url, allowed, resolve=False)
            if problem:
                warnings.append(f"{config.path}: webhook[{w.index}].callback_urls[{i}]: {problem}")
    print(
        f"{config.path}: OK — {len(config.webhooks)} webhook(s), Mattermost at "
        f"{config.mattermost.url}"
    )
    for w in config.webhooks:
        print(f"  {w.name}: {_describe(w)}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EX_OK


def _describe(w: Any) -> str:
    parts = [",".join(sorted(w.events))]
    if w.trigger_words:
        how = "prefix" if w.trigger_when == 1 else "exact"
        parts.append(f"words {list(w.trigger_words)} ({how})")
    if w.trigger_regex is not None:
        parts.append(f"regex {w.trigger_regex.pattern!r}")
    if not w.trigger_words and w.trigger_regex is None:
        parts.append("every message")
    if w.team:
        parts.append(f"team {w.team}")
    if w.channels:
        parts.append(f"channels {list(w.channels)}")
    types = sorted(w.channel_types) if w.channel_types is not None else "from channels"
    parts.append(f"types {types}")
    if w.users:
        parts.append(f"users {list(w.users)}")
    if w.exclude_users:
        parts.append(f"not {list(w.exclude_users)}")
    parts.append(f"→ {len(w.callback_urls)} URL(s), {w.content_type}")
    if w.signing_secrets:
        parts.append("signed")
    if w.retries:
        parts.append(f"{w.retries} retries")
    return "; ".join(parts)


def cmd_match(args: argparse.Namespace) -> int:
    """Offline dry run: which webhooks match, and the exact request each would send."""
    from sidecar.dryrun import dry_run

    try:
        config = load_config(_config_path(args))
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EX_CONFIG
    print(dry_run(config, args), end="")
    return EX_OK


def cmd_token(args: argparse.Namespace) -> int:
    """Print a new Mattermost-style token."""
    print(new_token())
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon."""
    try:
        path = _config_path(args)
        config = load_config(path)
    except ConfigError as exc:
        setup_logging()
        for line in exc.errors:
            log.error("%s", line)
        return EX_CONFIG
    setup_logging(
        config.sidecar.log_format,
        config_secrets(config),
        logging.DEBUG if args.verbose else logging.INFO,
    )
    for warning in config.warnings:
        log.warning("%s", warning)
    # Each post allocates a few hundred short-lived objects; with the default thresholds the
    # collector runs every ~700 allocations and walks the whole young heap each time: 30 % of
    # the event loop's time in the throughput benchmark (bench/README.md). Fewer, larger
    # young collections cost the same memory bound and a fraction of the time.
    gc.set_threshold(20_000, 50, 100)
    return run_loop(_run(path, config, reset_state=args.reset_state), config.sidecar.event_loop)


def run_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """``asyncio.run(main)`` on the configured event loop: the standard library's, or uvloop
    (the ``[fast]`` extra: about 10 % fewer instructions per post, bench/README.md)."""
    if event_loop == "uvloop":
        import uvloop  # checked by the config: installed

        log.info("event loop: uvloop %s", importlib.metadata.version("uvloop"))
        return uvloop.run(main)
    return asyncio.run(main)


async def _run(path: str, config: Config, *, reset_state: bool) -> int:
    from sidecar.app import Sidecar
    from sidecar.backend import StateUnavailable
    from sidecar.mattermost import MattermostError, Unauthorized
    from sidecar.notify import Notifier
    from sidecar.state import State, StateError, StateWriteError

    if reset_state:
        try:
            aside = State.reset(config.sidecar.state_dir)
        except StateError as exc:
            log.error("--reset-state: %s", exc)
            return EX_CONFIG
        if aside:
            log.warning("--reset-state: moved the old state file to %s", aside)
    loop = asyncio.get_running_loop()
    stop, hup = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    log.info("mm-sidecar %s starting: %d webhooks", __version__, len(config.webhooks))
    app = Sidecar(config, notifier=Notifier())
    reloader = asyncio.create_task(_reloader(app, path, hup), name="reloader")
    try:
        # SIGTERM while start-up still waits for the server: give up cleanly (exit 0).
        starting = asyncio.create_task(app.start(), name="start")
        stopped = asyncio.create_task(stop.wait(), name="stop-during-start")
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log.info("stopped during start-up")
            return EX_OK
        starting.result()  # a start-up error is raised here
        # What start() built lives as long as the process: keep the collector off it.
        gc.freeze()
        await app.serve(stop)
    except Unauthorized as exc:
        log.error("the bot token was rejected by the server (%s): fix the token; not retrying", exc)
        return EX_CONFIG
    except (StateWriteError, StateUnavailable) as exc:
        # Transient (a full disk; PostgreSQL out of reach): let the service manager restart.
        log.error("%s", exc)
        return EX_FAIL
    except StateError as exc:  # the file cannot be opened or used: a restart cannot help
        log.error("%s", exc)
        return EX_CONFIG
    except MattermostError as exc:
        log.error("cannot reach Mattermost: %s", exc)
        return EX_FAIL
    finally:
        await app.close()
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
    return EX_OK


async def _reloader(app: Any, path: str, hup: asyncio.Event) -> None:
    """SIGHUP: load the config again; an invalid one is logged and the old one kept."""
    while True:
        await hup.wait()
        hup.clear()
        log.info("SIGHUP: reloading %s", path)
        try:
            config = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            app.metrics.config_reloads.labels("error").inc()
            for line in exc.errors:
                log.error("reload refused: %s", line)
            log.error("reload refused: keeping the running config (%d errors)", len(exc.errors))
            continue
        for handler in logging.getLogger().handlers:
            for f in handler.filters:
                if isinstance(f, _Redact):
                    f.secrets = sorted(set(f.secrets) | set(config_secrets(config)))
        if config.sidecar.log_format != app.config.sidecar.log_format:
            set_log_format(config.sidecar.log_format)
            log.info("reload: log_format is now %s", config.sidecar.log_format)
        app.reload(config)


def cmd_history(args: argparse.Namespace) -> int:
    """``deliveries`` and ``redeliver`` (deliveries_cli.py)."""
    from sidecar import deliveries_cli

    state_dir = deliveries_cli.state_dir_of(_config_path(args))
    if args.command == "redeliver":
        return deliveries_cli.redeliver(state_dir, args)
    return deliveries_cli.deliveries(state_dir, args)


def cmd_import(args: argparse.Namespace) -> int:
    """Read the server's outgoing webhooks; write [[webhook]] tables with the same tokens."""
    from sidecar.importer import command

    return command(args)


def cmd_emulator(args: argparse.Namespace) -> int:
    """Run the Mattermost emulator alone."""
    from sidecar.testing.__main__ import main as emulator_main

    argv = ["--port", str(args.port)]
    if args.seed:
        argv += ["--seed", args.seed]
    return emulator_main(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on one machine, no setup."""
    from sidecar.demo import demo

    setup_logging(level=logging.WARNING)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await demo(keep_running=args.keep_running, stop=stop)

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    """The ``mm-sidecar`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mm-sidecar",
        description="Mattermost outgoing webhooks, extended: a daemon beside your server.",
    )
    parser.add_argument("--version", action="version", version=f"mm-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help=f"config file (default: ${CONFIG_ENV})")

    p = sub.add_parser("run", help="run the daemon")
    with_config(p)
    p.add_argument(
        "--reset-state",
        action="store_true",
        help="move the state file aside (kept, renamed) and start afresh",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("check", help="validate the config (offline)")
    with_config(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("match", help="offline dry run: which webhooks match, what they send")
    with_config(p)
    p.add_argument("--channel", required=True, help="channel name (or id)")
    p.add_argument("--text", required=True, help="the message text")
    p.add_argument("--user", default="someone", help="the poster's username")
    p.add_argument(
        "--channel-type", default="public", choices=["public", "private", "direct", "group"]
    )
    p.add_argument("--team", default="", help="team name (or id)")
    p.add_argument("--event", default="posted", choices=["posted", "post_edited", "reaction_added"])
    p.add_argument("--emoji", default="thumbsup", help="emoji name for --event reaction_added")
    p.add_argument("--show-secrets", action="store_true", help="show token and signatures")
    p.add_argument(
        "--explain", action="store_true", help="one line per webhook: why it matches or not"
    )
    p.set_defaults(fn=cmd_match)

    p = sub.add_parser("token", help="print a new 26-character Mattermost-style token")
    p.set_defaults(fn=cmd_token)

    p = sub.add_parser("demo", help="the whole loop on this machine, no setup")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the emulator, callback and sidecar up afterwards",
    )
    p.set_defaults(fn=cmd_demo)

    from sidecar.deliveries_cli import add_parsers

    add_parsers(sub, with_config, cmd_history)

    p = sub.add_parser(
        "import", help="write the server's outgoing webhooks as [[webhook]] tables (same tokens)"
    )
    p.add_argument("--url", required=True, help="the Mattermost server's URL")
    p.add_argument(
        "--token-file", help="file holding an admin's token (else $MM_SIDECAR_IMPORT_TOKEN)"
    )
    p.add_argument("--team", default="", help="only this team's hooks (name or id)")
    p.add_argument("-o", "--output", help="write to this file (mode 0600) instead of stdout")
    p.add_argument("--merge", help="append to this config the hooks it does not have yet")
    p.set_defaults(fn=cmd_import)

    from sidecar.migrate import add_parser as add_state_parser  # `state migrate` (HA)

    add_state_parser(sub)

    p = sub.add_parser("emulator", help="run the Mattermost emulator alone")
    p.add_argument("--port", type=int, default=8065)
    p.add_argument("--seed", help="seed file (TOML or JSON)")
    p.set_defaults(fn=cmd_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mm-sidecar`` and ``python -m sidecar``."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return EX_OK
    return code
