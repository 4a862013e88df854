"""systemd/mm-sidecar.service: the directives we promise, `verify` clean, exposure ≤ 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "mm-sidecar.service"
SHIPPED_BINARY = "/usr/local/bin/mm-sidecar"
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze not installed (.ci/run installs Debian's systemd package)",
)


def directives(text: str) -> dict[str, list[str]]:
    """`Section.Key` → every value in file order (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def one(d: dict[str, list[str]], key: str) -> str:
    values = d.get(f"Service.{key}")
    assert values is not None, f"{key}= missing"
    assert len(values) == 1, f"{key}= set {len(values)} times"
    return values[0]


def analyze_version() -> int:
    assert ANALYZE is not None
    out = subprocess.run(
        [ANALYZE, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here.

    `verify` checks that the binary exists, and the package is not installed in
    /usr/local/bin on a test machine; only the path changes, the arguments stay.
    """
    fake = tmp_path / "bin" / "mm-sidecar"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_BINARY} ") == 1
    unit = tmp_path / "units" / "mm-sidecar.service"
    unit.parent.mkdir()
    unit.write_text(text.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={fake} "))
    return unit


def test_service_directives() -> None:
    d = directives(UNIT.read_text())
    assert one(d, "Type") == "notify"
    assert one(d, "NotifyAccess") == "main"
    assert one(d, "ExecStart") == f"{SHIPPED_BINARY} run -c /etc/mm-sidecar/config.toml"
    assert one(d, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(d, "Restart") == "on-failure"
    assert one(d, "RestartPreventExitStatus") == "78"
    assert one(d, "WatchdogSec") == "30"
    assert one(d, "DynamicUser") == "yes"
    assert one(d, "StateDirectory") == "mm-sidecar"
    assert one(d, "LoadCredential") == "token:/etc/mm-sidecar/token"
    assert one(d, "UMask") == "0077"
    assert d["Install.WantedBy"] == ["multi-user.target"]


def test_hardening_directives() -> None:
    d = directives(UNIT.read_text())
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateUsers": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert one(d, key) == value, key
    assert d["Service.SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    # The sidecar must reach Mattermost and callback URLs anywhere: no IP or network ban.
    assert "Service.IPAddressDeny" not in d
    assert "Service.PrivateNetwork" not in d


@needs_analyze
def test_verify_is_silent(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = runnable_copy(tmp_path)
    result = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_analyze
def test_verify_would_catch_a_bad_unit(tmp_path: Path) -> None:
    # Guards the test above against a systemd-analyze that accepts anything.
    assert ANALYZE is not None
    unit = runnable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=very"))
    result = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # A warning without a failing exit code: hence "no output at all" above.
    assert re.search(r"mm-sidecar\.service:\d+: .*\bvery\b", result.stdout + result.stderr)


@needs_analyze
def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    assert ANALYZE is not None
    version = analyze_version()
    if version < 250:
        pytest.skip(f"systemd-analyze security --offline needs systemd ≥ 250, have {version}")
    unit = runnable_copy(tmp_path)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for mm-sidecar\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
