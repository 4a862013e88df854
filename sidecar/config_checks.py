"""The checks behind ``config.py``: a table reader that collects errors, value checks, regex safety.

Nothing here raises on bad input: every problem becomes one line of a report, so that the
user sees all of them at once.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import importlib
import ipaddress
import json
import math
import os
import re
import stat
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import regex

# re's own parser (sre_parse): no stubs, and the old public name warns on import from 3.11.
if sys.version_info >= (3, 11):
    _sre: Any = importlib.import_module("re._parser")
    _sre_c: Any = importlib.import_module("re._constants")
else:  # pragma: no cover - exercised by the 3.10 run in .ci/run
    _sre = importlib.import_module("sre_parse")
    _sre_c = importlib.import_module("sre_constants")
# 3.10's parser knows neither possessive repeats nor atomic groups (it refuses them).
_POSSESSIVE = getattr(_sre_c, "POSSESSIVE_REPEAT", object())
_ATOMIC = getattr(_sre_c, "ATOMIC_GROUP", object())
_NEWER_SYNTAX = re.compile(r"\(\?>|[*+?}]\+")

MAX_REGEX_LENGTH = 1000
MAX_SECRET_FILE = 64 * 1024
# Names people bring from Mattermost's own webhook settings, too far apart for difflib.
ALIASES = {"display_name": "name", "channel_id": "channels", "team_id": "team"}
# --- reading tables ---------------------------------------------------------------------------

T = TypeVar("T")
_MISSING: Any = object()


class Report:
    """Collects errors and warnings, each prefixed with the file name and key path."""

    def __init__(self, label: str, base_dir: Path) -> None:
        self.label = label
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.inline_secrets: list[tuple[str, str]] = []  # (key path, what to use instead)

    def add(self, key: str, message: str) -> None:
        self.errors.append(f"{self.label}: {key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.label}: {key}: {message}")

    def read_file(self, key: str, name: str) -> str | None:
        """A secret file's stripped text, or None after reporting why it cannot be read.

        ``name`` is relative to ``base_dir`` (the config file's directory). Only regular files
        are read, and only the first 64 KiB, so a typo such as ``/dev/stdin`` cannot hang us.
        """
        path = self.base_dir / os.path.expanduser(name)
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                self.add(key, f"{show(str(path))} is not a regular file")
                return None
            with path.open("rb") as f:
                raw = f.read(MAX_SECRET_FILE + 1)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.add(key, f"cannot read {show(str(path))}: {reason}")
            return None
        if len(raw) > MAX_SECRET_FILE:
            self.add(key, f"{show(str(path))} is larger than {MAX_SECRET_FILE} bytes")
            return None
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.add(key, f"{show(str(path))} is not UTF-8 text")
            return None
        if not text:
            self.add(key, f"{show(str(path))} is empty")
        return text


class Table:
    """One TOML table: typed getters that record an error and return a default, never raise."""

    def __init__(self, report: Report, data: Any, path: str) -> None:
        self.report = report
        self.path = path
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}

    def key(self, key: str) -> str:
        """The full key path of ``key`` in this table, e.g. ``webhook[2].name``."""
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        """Record a problem with ``key`` of this table."""
        self.report.add(self.key(key), message)

    def check_keys(self, known: tuple[str, ...]) -> None:
        """Report every key not in ``known``, with the closest known one as a hint."""
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                guess = ALIASES.get(key) or (close[0] if close else None)
                hint = f"; did you mean {guess!r}?" if guess else ""
                self.error(_bare(key), f"unknown key{hint}")

    def _get(self, key: str, ok: type | tuple[type, ...], expected: str) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
        if isinstance(value, bool) and bool not in (ok if isinstance(ok, tuple) else (ok,)):
            ok = ()
        if not isinstance(value, ok):
            self.error(key, f"expected {expected}, got {_kind(value)}")
            return _MISSING
        return value

    def table(self, key: str) -> Table:
        """The sub-table ``[key]``, empty when absent."""
        value = self._get(key, Mapping, "a table")
        return Table(self.report, value if value is not _MISSING else {}, self.key(key))

    def tables(self, key: str) -> Iterator[tuple[int, Table]]:
        """The array of tables ``[[key]]``, with each table's position."""
        value = self._get(key, list, f"an array of tables ([[{key}]])")
        for i, item in enumerate(value if value is not _MISSING else []):
            if isinstance(item, Mapping):
                yield i, Table(self.report, item, self.key(f"{key}[{i}]"))
            else:
                self.error(f"{key}[{i}]", f"expected a table, got {_kind(item)}")

    def string(
        self,
        key: str,
        default: str = "",
        *,
        required: bool = False,
        max_bytes: int | None = None,
        expected: str = "a string",
    ) -> str:
        """A string; its value never appears in a message (it may be a secret)."""
        value = self._get(key, str, expected)
        if value is _MISSING:
            if required and key not in self.data:
                self.error(key, "is required")
            return default
        if required and not value:
            self.error(key, "must not be empty")
        if max_bytes is not None:
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                self.error(key, f"must be at most {max_bytes} bytes, got {size}")
        return str(value)

    def strings(
        self,
        key: str,
        *,
        required: bool = False,
        split: bool = False,
        check: Callable[[str], str | None] | None = None,
    ) -> tuple[str, ...] | None:
        """A list of non-empty strings; None when absent or not a list.

        With ``split``, a single string is accepted too and split on spaces and commas.
        ``check`` returns what is wrong with one item, reported at that item's path.
        """
        ok = (list, str) if split else list
        value = self._get(key, ok, "an array of strings")
        if value is _MISSING:
            if required and key not in self.data:
                self.error(key, "is required")
            return None
        if isinstance(value, str):
            value = [s for s in re.split(r"[\s,]+", value) if s]
        elif required and not value:
            self.error(key, "must not be empty")
        items: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.error(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
            elif not item:
                self.error(f"{key}[{i}]", "must not be empty")
            elif check and (problem := check(item)):
                self.error(f"{key}[{i}]", problem)
            else:
                items.append(item)
        return tuple(items)

    def boolean(self, key: str, default: bool) -> bool:
        """A boolean."""
        value = self._get(key, bool, "a boolean (true or false)")
        return default if value is _MISSING else bool(value)

    def integer(self, key: str, default: int, *, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        value = self._get(key, int, "an integer")
        if value is _MISSING:
            return default
        if not lo <= value <= hi:
            self.error(key, f"must be between {lo} and {hi}, got {value}")
            return default
        return int(value)

    def number(
        self, key: str, default: float, *, lo: float, hi: float = math.inf, lo_open: bool = False
    ) -> float:
        """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
        value = self._get(key, (int, float), "a number")
        if value is _MISSING:
            return default
        above = value > lo if lo_open else value >= lo
        if not (math.isfinite(value) and above and value <= hi):
            low = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
            high = f" and at most {hi:g}" if math.isfinite(hi) else ""
            self.error(key, f"must be {low}{high}, got {value}")
            return default
        return float(value)

    def choice(self, key: str, choices: Mapping[Any, T], default: T, *, allowed: str = "") -> T:
        """One of the keys of ``choices``, mapped to its value."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, str | int) and not isinstance(value, bool) and value in choices:
            return choices[value]
        allowed = allowed or " or ".join(f'"{c}"' for c in choices)
        self.error(key, f"must be {allowed}, got {show(value)}{_guess(value, choices)}")
        return default

    def choices(self, key: str, values: tuple[str, ...], choices: Mapping[str, T]) -> list[T]:
        """Each value mapped through ``choices``; at least one."""
        if not values and key in self.data and isinstance(self.data[key], list):
            self.error(key, "must list at least one of " + ", ".join(choices))
        out = []
        for i, value in enumerate(values):
            if value in choices:
                out.append(choices[value])
            else:
                names = ", ".join(f'"{c}"' for c in choices)
                self.error(
                    f"{key}[{i}]",
                    f"must be one of {names}, got {show(value)}{_guess(value, choices)}",
                )
        return out


def _guess(value: Any, choices: Mapping[Any, Any]) -> str:
    names = [c for c in choices if isinstance(c, str)]
    if isinstance(value, str) and (close := difflib.get_close_matches(value, names, n=1)):
        return f"; did you mean {close[0]!r}?"
    return ""


def _kind(value: Any) -> str:
    """The TOML name of a value's type, for "expected …, got …"."""
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (Mapping, "table"),
    ):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def show(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr (TOML's spelling for booleans), shortened."""
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "…" + text[-3:]


def _bare(key: Any) -> str:
    """A key as TOML would write it in a dotted path: bare, or quoted."""
    text = str(key)
    if re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted if len(quoted) <= 80 else quoted[:76] + "…" + quoted[-3:]


def url_problem(url: str, *, allow_query: bool = True) -> str | None:
    """Why ``url`` is not an absolute http(s) URL with a host, or None. Passwords are masked."""
    shown = show(_hide_password(url))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        return f"is not a valid URL ({e}), got {shown}"
    if parts.scheme not in ("http", "https") or not url.lower().startswith(parts.scheme + "://"):
        return f"must be an http:// or https:// URL, got {shown}"
    if not parts.hostname:
        return f"must name a host, got {shown}"
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return f"must not contain spaces or control characters, got {shown}"
    if not allow_query and (parts.query or parts.fragment):
        return f"must not have a query or fragment, got {shown}"
    return None


def _hide_password(url: str) -> str:
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def listen_problem(listen: str) -> str | None:
    """Why ``listen`` is not ``host:port`` / ``[v6]:port``, or None."""
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"got {show(listen)}"
    else:
        host, sep, port = listen.rpartition(":")
        if ":" in host:
            return f"got {show(listen)}; write IPv6 addresses in brackets"
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return f"got {show(listen)}"
    return None


def is_network(entry: str) -> bool:
    """True when ``entry`` is a CIDR network such as ``10.0.0.0/8``."""
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


# --- regex safety -----------------------------------------------------------------------------
# Python's re backtracks. A repeat around another unbounded repeat, as in (a+)+ or (.*a){20},
# can try exponentially many ways to split the text before failing: one hostile message would
# stall the event loop. Such patterns are refused; possessive (a++) and atomic ((?>…)) inner
# repeats never give back what they took, so they are allowed.


def compile_regex(pattern: str) -> tuple[regex.Pattern[str] | None, str]:
    """The compiled pattern, or None and why it is refused (too long, invalid, unsafe).

    The pattern must be valid Python ``re`` syntax (what the docs promise); it is compiled with
    the ``regex`` engine, whose searches take a timeout (see rules.py): the static check below
    refuses the classic blow-ups at load, the timeout bounds whatever it cannot see.
    """
    if len(pattern) > MAX_REGEX_LENGTH:
        return None, f"must be at most {MAX_REGEX_LENGTH} characters"
    try:
        try:
            parsed, ambiguous = _parse(pattern)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # already recorded by _parse
                re.compile(pattern)
        except re.error:
            # 3.10's re cannot read possessive repeats or atomic groups (3.11 syntax), which
            # the regex engine can: no static check then, the search timeout bounds it.
            if sys.version_info < (3, 11) and _NEWER_SYNTAX.search(pattern):
                parsed, ambiguous = None, ""
            else:
                raise
        nested = parsed is not None and _nested_quantifier(parsed)
        compiled = regex.compile(pattern, regex.VERSION0)
    except (re.error, regex.error, OverflowError, RecursionError, ValueError) as e:
        reason = e if isinstance(e, re.error | regex.error) else "pattern is too complex"
        return None, f"invalid regex: {reason}"
    if ambiguous:
        # e.g. [[:digit:]]: a POSIX class for the regex engine that searches, a set then "]"
        # for re, which derives the required literal; refused rather than never matching.
        return None, (
            f"ambiguous regex: {ambiguous}: Python's re and the regex engine read '[' or a "
            "doubled '-', '&', '|', '~' inside a set differently; escape it (e.g. \\[) or "
            "use a class such as \\d or [0-9]"
        )
    if nested:
        return None, "pattern may backtrack catastrophically (nested quantifier); rewrite it"
    return compiled, ""


def _parse(pattern: str) -> tuple[Any, str]:
    """re's parse of ``pattern`` and the FutureWarning re gives on it ("" when none).

    re warns where a future version would read a set differently ("Possible nested set at
    position 1"); the warning is returned, never printed raw on stderr.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = _sre.parse(pattern)
    ambiguous = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    return parsed, "; ".join(ambiguous)


_REPEATS = (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT)


def _subpatterns(av: Any) -> Iterator[_sre.SubPattern]:
    """Every sub-pattern directly inside a node's argument, whatever the node's layout."""
    if isinstance(av, _sre.SubPattern):
        yield av
    elif isinstance(av, tuple | list):
        for item in av:
            yield from _subpatterns(item)


def _nested_quantifier(sub: _sre.SubPattern) -> bool:
    """A repeat that may run more than once around an unbounded, backtracking repeat."""
    for op, av in sub.data:
        # An outer possessive repeat still backtracks inside itself while it has not yet matched
        # (e.g. (a+){30,}+ on 29 a's tries every split), so it counts as a repeat here.
        outer = op in _REPEATS or op == _POSSESSIVE
        if outer and av[1] > 1 and any(_unbounded(s) for s in _subpatterns(av[2])):
            return True
        if any(_nested_quantifier(s) for s in _subpatterns(av)):
            return True
    return False


def _unbounded(sub: _sre.SubPattern) -> bool:
    for op, av in sub.data:
        # Possessive repeats and atomic groups never give back what they took: no blow-up.
        if op in (_POSSESSIVE, _ATOMIC):
            continue
        if op in _REPEATS and av[1] == _sre_c.MAXREPEAT:
            return True
        if any(_unbounded(s) for s in _subpatterns(av)):
            return True
    return False


def required_literal(pattern: str) -> tuple[str, bool]:
    """The longest run of plain characters every match must contain, and whether the pattern
    ignores case. ("", …) when there is none. A cheap ``in`` test on it saves the regex search
    on most messages (see rules.py)."""
    try:
        parsed, ambiguous = _parse(pattern)
    except (re.error, OverflowError, RecursionError, ValueError):
        return "", False
    if ambiguous:
        return "", False  # re and regex may disagree on the literal: no shortcut
    best, run = "", []
    for op, av in [*parsed.data, (None, None)]:
        if op == _sre_c.LITERAL:
            run.append(chr(av))
            continue
        if len(run) > len(best):
            best = "".join(run)
        run = []
    ignore_case = bool(parsed.state.flags & re.IGNORECASE)
    if ignore_case and not best.isascii():
        return "", True  # case-insensitive matching of non-ASCII letters: no safe shortcut
    return (best.casefold() if ignore_case else best), ignore_case


def secret_ok(secret: str) -> bool:
    """A Standard Webhooks secret: ``whsec_`` then non-empty base64."""
    if not secret.startswith("whsec_"):
        return False
    try:
        return bool(base64.b64decode(secret[6:], validate=True))
    except (binascii.Error, ValueError):
        return False


def list_size(items: tuple[str, ...]) -> int:
    """Bytes of a list as Mattermost measures it: Go's ``fmt.Sprintf("%s")``, i.e. "[a b c]"."""
    return len(("[" + " ".join(items) + "]").encode("utf-8", "surrogatepass"))
