"""Which callback addresses may be called: Mattermost's AllowedUntrustedInternalConnections rules.

Pure rules (plus a cached read of the host's own interface addresses). The HTTP client in
``delivery.py`` applies them to the address it actually connects to.

Mattermost's rule (``httpservice``): an entry equal to the URL's host allows it outright;
otherwise every resolved IP must be neither reserved nor one of the host's own addresses, or
lie inside an entry written as CIDR. We add one hardening: IPv6 addresses that embed an IPv4
address (mapped, compatible, NAT64, 6to4, Teredo) are also judged by that IPv4 address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = [
    "FORBIDDEN_MESSAGE",
    "Allowed",
    "IPAddress",
    "IPNetwork",
    "address_allowed",
    "cached_own_addresses",
    "embedded_ipv4",
    "host_allowed_outright",
    "is_reserved",
    "looks_like_ip_literal",
    "own_addresses",
    "parse_address",
    "parse_allowed",
]

FORBIDDEN_MESSAGE = (
    "address forbidden, you may need to set AllowedUntrustedInternalConnections to allow an "
    "integration access to your internal network"
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_RESERVED_V4 = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_RESERVED_V6 = tuple(
    IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "64:ff9b::/96",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)
_NAT64 = IPv6Network("64:ff9b::/96")
_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True, slots=True)
class Allowed:
    """Parsed AllowedUntrustedInternalConnections: bare hosts and CIDR networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()


def parse_address(text: str | IPAddress) -> IPAddress | None:
    """Parse an IP literal (brackets and a zone id are dropped); ``None`` if it is not one."""
    if isinstance(text, IPv4Address | IPv6Address):
        if isinstance(text, IPv6Address) and text.scope_id:
            # A zone does not change where the address points; comparisons ignore it.
            return IPv6Address(int(text))
        return text
    bare = text.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    bare = bare.split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return None


def _normalise_host(host: str) -> str:
    """Lower-case a host; an IP literal is written in its canonical form."""
    addr = parse_address(host)
    if addr is not None:
        return str(addr)
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    return bare.lower()


def parse_allowed(entries: Iterable[str] | str) -> Allowed:
    """Parse the setting; each entry may itself hold several, split on spaces or commas.

    An entry containing ``/`` that parses as a network is a CIDR (host bits allowed, as Go's
    ``net.ParseCIDR``); anything else is a host name or IP literal compared with the URL's host.
    """
    if isinstance(entries, str):
        entries = [entries]
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in entries:
        for item in _SPLIT.split(entry):
            if not item:
                continue
            if "/" in item:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    pass
                else:
                    continue
            hosts.add(_normalise_host(item))
    return Allowed(frozenset(hosts), tuple(networks))


def host_allowed_outright(host: str, allowed: Allowed) -> bool:
    """Whether an entry equals the URL's host (no port; case-insensitive; brackets ignored)."""
    if not host:
        return False
    return _normalise_host(host) in allowed.hosts


def embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, compatible, NAT64, 6to4, Teredo)."""
    found: list[IPv4Address] = []
    value = int(ip)
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    elif value >> 32 == 0 and value > 1:
        # IPv4-compatible ::a.b.c.d (deprecated, but some stacks still route it to IPv4).
        found.append(IPv4Address(value & 0xFFFFFFFF))
    if ip in _NAT64:
        found.append(IPv4Address(value & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    return found


def _direct_ipv4(ip: IPAddress) -> list[IPv4Address]:
    """IPv4 forms a socket would really connect to (mapped and compatible only)."""
    if isinstance(ip, IPv4Address):
        return []
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    value = int(ip)
    if value >> 32 == 0 and value > 1:
        return [IPv4Address(value & 0xFFFFFFFF)]
    return []


def _in_reserved_lists(ip: IPAddress) -> bool:
    if isinstance(ip, IPv4Address):
        return any(ip in net for net in _RESERVED_V4)
    return any(ip in net for net in _RESERVED_V6)


def is_reserved(ip: str | IPAddress) -> bool:
    """Whether an address is in Mattermost's reserved ranges, or embeds a reserved IPv4 address.

    A string that is not an IP address counts as reserved: when in doubt, refuse.
    """
    addr = parse_address(ip)
    if addr is None:
        return True
    if _in_reserved_lists(addr):
        return True
    if isinstance(addr, IPv6Address):
        return any(_in_reserved_lists(v4) for v4 in embedded_ipv4(addr))
    return False


def address_allowed(
    ip: str | IPAddress, allowed: Allowed, own_addresses: Collection[IPAddress]
) -> bool:
    """Whether a resolved address may be connected to (the host-name entries aside)."""
    addr = parse_address(ip)
    if addr is None:
        return False
    forms: list[IPAddress] = [addr]
    if isinstance(addr, IPv6Address):
        forms.extend(embedded_ipv4(addr))
    if not is_reserved(addr) and not any(form in own_addresses for form in forms):
        return True
    # Go treats an IPv4-mapped address as IPv4, so an IPv4 CIDR covers it.
    candidates = [addr, *_direct_ipv4(addr)]
    return any(c in net for net in allowed.networks for c in candidates)


def looks_like_ip_literal(host: str) -> bool:
    """aiohttp's own test for "this host is an IP literal, skip the resolver".

    Kept identical to ``aiohttp.helpers.is_ip_address`` so that every host aiohttp does not
    resolve is checked as a literal by the caller, and nothing slips between the two.
    """
    return ":" in host or host.replace(".", "").isdigit()


_OWN_TTL = 60.0
_own_lock = threading.Lock()
_own_cache: tuple[float, frozenset[IPAddress]] | None = None


def cached_own_addresses() -> frozenset[IPAddress] | None:
    """The cached own addresses if still fresh, else ``None`` (call ``own_addresses`` then)."""
    cached = _own_cache
    if cached is not None and time.monotonic() - cached[0] < _OWN_TTL:
        return cached[1]
    return None


def own_addresses() -> frozenset[IPAddress]:
    """The host's own interface addresses, cached for a minute (may block: name lookup)."""
    global _own_cache
    fresh = cached_own_addresses()
    if fresh is not None:
        return fresh
    with _own_lock:
        found = frozenset(_collect_own_addresses())
        _own_cache = (time.monotonic(), found)
        return found


def _collect_own_addresses() -> set[IPAddress]:
    found: set[IPAddress] = set()
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addr = parse_address(str(info[4][0]))
            if addr is not None:
                found.add(addr)
    # IPv6 interface addresses, one per line: 32 hex digits then index, prefix, scope, flags, name.
    with contextlib.suppress(OSError, ValueError), open("/proc/net/if_inet6") as lines:
        for line in lines:
            fields = line.split()
            if fields and len(fields[0]) == 32:
                found.add(IPv6Address(int(fields[0], 16)))
    found.update(_ipv4_interface_addresses())
    return found


def _ipv4_interface_addresses() -> set[IPAddress]:
    """Each interface's primary IPv4 address, by ioctl (no ``ip`` binary, no extra package)."""
    found: set[IPAddress] = set()
    if not sys.platform.startswith("linux"):
        return found
    import fcntl

    siocgifaddr = 0x8915
    try:
        names = [name for _, name in socket.if_nameindex()]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return found
    with sock:
        for name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), siocgifaddr, request)
            except OSError:
                continue  # interface without an IPv4 address
            found.add(IPv4Address(reply[20:24]))
    return found
