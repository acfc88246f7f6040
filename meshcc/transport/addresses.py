"""Client addresses and allowed networks, shared by every listener (compile port, status
port) and the mesh's peer filter: one rule for who may talk to this box."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def normalize_client_ip(host: str) -> IPAddress:
    """The client's address, IPv4-mapped IPv6 (``::ffff:a.b.c.d``) turned into IPv4."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_allowed(addr: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    """True if ``addr`` (already normalized) is inside one of the allowed networks."""
    mapped = (
        ipaddress.IPv6Address(f"::ffff:{addr}") if isinstance(addr, ipaddress.IPv4Address) else None
    )
    for net in allowed:
        if addr.version == net.version and addr in net:
            return True
        if mapped is not None and net.version == 6 and mapped in net:
            return True
    return False
