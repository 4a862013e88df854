"""The Dockerfile, parsed: no container engine runs here, so check what it promises."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev)\b")
SLIM_PYTHON = re.compile(
    r"^(docker\.io/)?(library/)?python:3\.\d+(\.\d+)?-slim(-\w+)?(@sha256:.*)?$"
)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Dockerfile → instructions: comments dropped, backslash continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        # Comment lines may sit inside a continuation; Docker drops them there too.
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        assert result, f"{ins.keyword} before the first FROM"
        result[-1].append(ins)
    return result


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on shell form."""
    value = json.loads(args)
    assert isinstance(value, list), args
    assert value, args
    assert all(isinstance(v, str) for v in value), args
    return value


def strip_flags(args: str) -> str:
    """Drop leading ``--flag=value`` options (RUN --mount, HEALTHCHECK --interval, …)."""
    return re.sub(r"^(--\S+\s+)+", "", args + " ").strip()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip().lstrip("/").removeprefix("./").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    return stages(parse((ROOT / "Dockerfile").read_text()))


@pytest.fixture(scope="module")
def final(dockerfile: list[list[Instruction]]) -> list[Instruction]:
    return dockerfile[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = 'FROM a AS b\nRUN one \\\n  # note\n  two\n# c\nCMD ["x"]\n'
    assert parse(text) == [
        Instruction("FROM", "a AS b"),
        Instruction("RUN", "one  two"),
        Instruction("CMD", '["x"]'),
    ]


def test_multi_stage_on_slim_python(dockerfile: list[list[Instruction]]) -> None:
    assert len(dockerfile) >= 2
    for stage in dockerfile:
        image = stage[0].args.split()[0]
        assert SLIM_PYTHON.match(image), image
    # The runtime starts again from the base image, not from the builder.
    first_alias = dockerfile[0][0].args.split()
    assert first_alias[1:2] == ["AS"] or first_alias[1:2] == ["as"]
    assert dockerfile[-1][0].args.split()[0] != first_alias[2]


def test_wheel_built_in_first_stage_installed_offline(
    dockerfile: list[list[Instruction]], final: list[Instruction]
) -> None:
    assert any(i.keyword == "RUN" and "pip wheel" in i.args for i in dockerfile[0])
    installs = [i for i in final if i.keyword == "RUN" and "pip install" in i.args]
    assert len(installs) == 1
    assert "--no-index" in installs[0].args
    assert "from=build" in installs[0].args


def test_no_build_tools_in_runtime(final: list[Instruction]) -> None:
    for ins in final:
        if ins.keyword == "RUN":
            assert not BUILD_TOOLS.search(ins.args), ins.args
            assert "apt-get install" not in ins.args, ins.args


def test_runs_as_non_root(final: list[Instruction]) -> None:
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # Nothing after USER may switch back.
    last_user = max(n for n, i in enumerate(final) if i.keyword == "USER")
    assert all(i.keyword != "USER" for i in final[last_user + 1 :])


def test_state_volume_and_config_env(final: list[Instruction]) -> None:
    volume = only(final, "VOLUME").args
    paths = exec_form(volume) if volume.startswith("[") else volume.split()
    assert paths == ["/var/lib/mm-sidecar"]
    envs = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "MM_SIDECAR_CONFIG=/etc/mm-sidecar/config.toml" in envs


def test_healthcheck_hits_healthz(final: list[Instruction]) -> None:
    args = strip_flags(only(final, "HEALTHCHECK").args)
    assert args.startswith("CMD ")
    command = exec_form(args.removeprefix("CMD ").strip())
    assert command[0] == "python"
    assert "http://127.0.0.1:9181/healthz" in " ".join(command)
    compile(command[-1], "<healthcheck>", "exec")


def test_exec_form_entrypoint(final: list[Instruction]) -> None:
    assert exec_form(only(final, "ENTRYPOINT").args) == ["mm-sidecar"]
    assert exec_form(only(final, "CMD").args) == ["run"]
    assert only(final, "STOPSIGNAL").args == "SIGTERM"
    assert only(final, "EXPOSE").args == "9181"


def test_build_context_has_what_copy_needs(dockerfile: list[list[Instruction]]) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    copied: list[str] = []
    for stage in dockerfile:
        for ins in stage:
            if ins.keyword == "COPY" and "--from" not in ins.args:
                copied += strip_flags(ins.args).split()[:-1]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    assert not dockerignored("sidecar/health.py", patterns)
    for kept_out in (".git/config", "tests/test_health.py", "sidecar/__pycache__/x.pyc"):
        assert dockerignored(kept_out, patterns), kept_out
    assert dockerignored("config.toml", patterns), "a local config (with secrets) would be sent"
