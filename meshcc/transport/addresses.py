"""Client addresses and allowed networks, shared by every listener (compile port, status
port) and the mesh's peer filter: one rule for who may talk to this box.

IPv6 link-local addresses (fe80::/10) are only unique per link, so an allowed network may
carry a scope (``fe80::%eth0/64``, as the mesh derives it from the interfaces it runs
on): a link-local client is then admitted only if it arrived on that interface. An
unscoped link-local network (``--allow fe80::/10``) admits such clients from any link,
as the user asked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def normalize_client_ip(host: str) -> IPAddress:
    """The client's address, IPv4-mapped IPv6 (``::ffff:a.b.c.d``) turned into IPv4.

    A link-local IPv6 address keeps its scope (``fe80::1%eth0``, as the kernel reports
    the peer), which :func:`client_allowed` compares with scoped networks."""
    bare, _, scope = host.partition("%")
    addr = ipaddress.ip_address(bare)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if scope and addr.is_link_local:
            return ipaddress.IPv6Address(f"{bare}%{scope}")
    return addr


def peer_ip(peername: object) -> tuple[IPAddress, int]:
    """(address, port) of a socket's peer name as Python gives it, ValueError if it is
    none. A link-local IPv6 peer gets its scope from the 4-tuple's scope id (Python's
    address string has none), by interface name: ``fe80::1%eth0``."""
    if not isinstance(peername, tuple) or len(peername) < 2:
        raise ValueError(f"not an IP peer: {peername!r}")
    host, port = str(peername[0]), int(peername[1])
    scope = peername[3] if len(peername) >= 4 and "%" not in host else 0
    if isinstance(scope, int) and scope:
        try:
            host = f"{host}%{socket.if_indextoname(scope)}"
        except OSError:
            host = f"{host}%{scope}"
    return normalize_client_ip(host), port


def _same_link(a: str, b: str) -> bool:
    """True if two scope ids (interface names or indexes) name the same interface."""
    if a == b:
        return True

    def index(scope: str) -> int | None:
        if scope.isdigit():
            return int(scope)
        try:
            return socket.if_nametoindex(scope)
        except OSError:
            return None

    ia = index(a)
    return ia is not None and ia == index(b)


def client_allowed(addr: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    """True if ``addr`` (already normalized) is inside one of the allowed networks."""
    mapped = (
        ipaddress.IPv6Address(f"::ffff:{addr}") if isinstance(addr, ipaddress.IPv4Address) else None
    )
    for net in allowed:
        if addr.version == net.version and addr in net:
            net_scope = getattr(net.network_address, "scope_id", None)
            if net_scope and addr.is_link_local:
                addr_scope = getattr(addr, "scope_id", None)
                if not addr_scope or not _same_link(addr_scope, net_scope):
                    continue  # the same fe80:: prefix, but another link
            return True
        if mapped is not None and net.version == 6 and mapped in net:
            return True
    return False
