"""The internal-address rules (Mattermost's AllowedUntrustedInternalConnections), pure."""

from __future__ import annotations

import ipaddress
import sys

import pytest

from sidecar import guard
from sidecar.guard import Allowed, address_allowed, host_allowed_outright, is_reserved

NOTHING = Allowed()
NO_OWN: frozenset[guard.IPAddress] = frozenset()


def teredo(client: str, server: str = "65.54.227.120") -> str:
    """A Teredo address: 2001:0000:server:flags:port:~client."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= 0xFFFFFFFF ^ int(ipaddress.IPv4Address(client))
    return str(ipaddress.IPv6Address(value))


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "192.0.0.8",
        "198.18.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "2001:db8::1",
        "100::1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        teredo("127.0.0.1"),
        "[::1]",
        "not an address",
    ],
)
def test_reserved(ip: str) -> None:
    assert is_reserved(ip)


@pytest.mark.parametrize(
    "ip",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "172.32.0.1"],
)
def test_not_reserved(ip: str) -> None:
    assert not is_reserved(ip)
    assert address_allowed(ip, NOTHING, NO_OWN)


def test_reserved_accepts_address_objects() -> None:
    assert is_reserved(ipaddress.ip_address("10.0.0.1"))
    assert not is_reserved(ipaddress.ip_address("8.8.4.4"))


def test_teredo_helper_really_encodes_the_client() -> None:
    teredo_info = ipaddress.IPv6Address(teredo("127.0.0.1")).teredo
    assert teredo_info is not None
    assert teredo_info[1] == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    ("ip", "embedded"),
    [
        ("::ffff:10.0.0.1", ["10.0.0.1"]),
        ("::10.0.0.1", ["10.0.0.1"]),
        ("64:ff9b::a00:1", ["10.0.0.1"]),
        ("2002:a00:1::1", ["10.0.0.1"]),
        ("2606:4700::1111", []),
        ("::1", []),
    ],
)
def test_embedded_ipv4(ip: str, embedded: list[str]) -> None:
    found = guard.embedded_ipv4(ipaddress.IPv6Address(ip))
    assert [str(a) for a in found] == embedded


@pytest.mark.parametrize(
    ("entries", "hosts", "networks"),
    [
        (["127.0.0.1"], {"127.0.0.1"}, []),
        (["a, b c"], {"a", "b", "c"}, []),
        (["a,b", "  c  ", ""], {"a", "b", "c"}, []),
        ("LocalHost 10.0.0.0/8", {"localhost"}, ["10.0.0.0/8"]),
        (["10.1.2.3/8"], set(), ["10.0.0.0/8"]),  # host bits allowed, like Go's ParseCIDR
        (["[::1]", "0:0::1"], {"::1"}, []),
        (["fd00::/8,example.com/x"], {"example.com/x"}, ["fd00::/8"]),
    ],
)
def test_parse_allowed(entries: list[str] | str, hosts: set[str], networks: list[str]) -> None:
    parsed = guard.parse_allowed(entries)
    assert parsed.hosts == hosts
    assert [str(n) for n in parsed.networks] == networks


@pytest.mark.parametrize(
    ("host", "entries", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1"], True),
        ("localhost", ["localhost"], True),
        ("LOCALHOST", ["localhost"], True),
        ("localhost", ["LocalHost"], True),
        ("::1", ["[::1]"], True),
        ("[::1]", ["::1"], True),
        ("allowed.test", ["a, allowed.test b"], True),
        ("localhost", ["127.0.0.1"], False),  # the entry is compared with the host, not resolved
        ("127.0.0.1", ["localhost"], False),
        ("localhost.", ["localhost"], False),  # Mattermost compares strings: stricter is safer
        ("sub.allowed.test", ["allowed.test"], False),
        ("127.0.0.1", ["127.0.0.0/8"], False),  # CIDRs apply to addresses, not hosts
        ("", [""], False),
    ],
)
def test_host_allowed_outright(host: str, entries: list[str], expected: bool) -> None:
    assert host_allowed_outright(host, guard.parse_allowed(entries)) is expected


@pytest.mark.parametrize(
    ("ip", "entries", "expected"),
    [
        ("127.0.0.1", [], False),
        ("127.0.0.1", ["127.0.0.0/8"], True),
        ("127.0.0.1", ["127.0.0.1"], False),  # a host entry never allows by address
        ("10.9.8.7", ["10.0.0.0/8"], True),
        ("10.9.8.7", ["10.0.0.0/16"], False),
        ("::ffff:10.9.8.7", ["10.0.0.0/8"], True),  # mapped address is the IPv4 one
        ("::1", ["127.0.0.0/8"], False),
        ("::1", ["::1/128"], True),
        ("fd00::5", ["fd00::/8"], True),
        ("169.254.169.254", ["10.0.0.0/8, 192.168.0.0/16"], False),
        ("garbage", ["0.0.0.0/0"], False),
    ],
)
def test_address_allowed_by_cidr(ip: str, entries: list[str], expected: bool) -> None:
    assert address_allowed(ip, guard.parse_allowed(entries), NO_OWN) is expected


def test_own_address_refused_unless_in_a_cidr() -> None:
    own = frozenset({ipaddress.ip_address("93.184.216.34")})
    assert not address_allowed("93.184.216.34", NOTHING, own)
    assert not address_allowed("::ffff:93.184.216.34", NOTHING, own)
    assert address_allowed("93.184.216.35", NOTHING, own)
    assert address_allowed("93.184.216.34", guard.parse_allowed(["93.184.216.0/24"]), own)


@pytest.mark.parametrize(
    ("host", "literal"),
    [("127.0.0.1", True), ("::1", True), ("2130706433", True), ("127.1", True),
     ("localhost", False), ("1.example", False), ("example.com", False)],
)  # fmt: skip
def test_looks_like_ip_literal(host: str, literal: bool) -> None:
    assert guard.looks_like_ip_literal(host) is literal


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux interfaces")
def test_own_addresses_include_loopback_and_are_cached() -> None:
    found = guard.own_addresses()
    assert ipaddress.ip_address("127.0.0.1") in found
    assert guard.cached_own_addresses() is found
    assert guard.own_addresses() is found
