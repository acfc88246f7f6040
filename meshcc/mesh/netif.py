"""Which interfaces the mesh announces and browses on, and what they imply.

ifaddr lists addresses but not link flags or MAC addresses, so those come from
``/sys/class/net/<name>/{flags,address}`` (Linux; elsewhere flags are unknown and only
the 127/8 check marks loopback). Everything is injectable so selection is unit-tested
without touching the machine's interfaces.

Default selection: interfaces that are up, multicast-capable, not loopback and have an
IPv4 address (mDNS runs over IPv4; see discovery.py). ``--interface NAME`` picks exactly
the named ones, loopback included (useful for one-box tests; a warning says only this
machine can reach such addresses).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshcc.transport.addresses import IPNetwork

__all__ = [
    "IFF_LOOPBACK",
    "IFF_MULTICAST",
    "IFF_UP",
    "Interface",
    "InterfaceError",
    "Selection",
    "identity_material",
    "list_interfaces",
    "networks_of",
    "select_interfaces",
]


IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000

_SYS_NET = "/sys/class/net"


class InterfaceError(ValueError):
    """``--interface`` names something unusable; str(e) is for the user."""


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface as the mesh sees it."""

    name: str
    index: int
    flags: int | None  # None: unknown (no /sys)
    mac: str | None
    ipv4: tuple[ipaddress.IPv4Interface, ...] = ()
    ipv6: tuple[ipaddress.IPv6Interface, ...] = ()

    @property
    def loopback(self) -> bool:
        if self.flags is not None:
            return bool(self.flags & IFF_LOOPBACK)
        return any(i.ip.is_loopback for i in self.ipv4) or any(i.ip.is_loopback for i in self.ipv6)

    @property
    def up(self) -> bool:
        return self.flags is None or bool(self.flags & IFF_UP)

    @property
    def multicast(self) -> bool:
        return self.flags is None or bool(self.flags & IFF_MULTICAST)

    def describe(self) -> str:
        addrs = ", ".join(str(i) for i in (*self.ipv4, *self.ipv6)) or "no addresses"
        return f"{self.name} ({addrs})"


@dataclass(frozen=True, slots=True)
class Selection:
    """The interfaces chosen, or why there are none (discovery is then off)."""

    chosen: tuple[Interface, ...]
    off_reason: str | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def ipv4_addresses(self) -> list[str]:
        return [str(i.ip) for iface in self.chosen for i in iface.ipv4]


def _read_sys(name: str, leaf: str) -> str | None:
    try:
        with open(os.path.join(_SYS_NET, name, leaf)) as f:
            return f.read().strip()
    except OSError:
        return None


def _sys_flags(name: str) -> int | None:
    raw = _read_sys(name, "flags")
    try:
        return int(raw, 16) if raw else None
    except ValueError:
        return None


def _sys_mac(name: str) -> str | None:
    mac = _read_sys(name, "address")
    if not mac or mac.strip("0:") == "":
        return None
    return mac.lower()


class AdapterIP(Protocol):
    """One address of an :class:`Adapter` (``ifaddr.IP``)."""

    @property
    def ip(self) -> str | tuple[str, int, int]: ...  # IPv6: (address, flowinfo, scope_id)

    @property
    def network_prefix(self) -> int: ...


class Adapter(Protocol):
    """What :func:`list_interfaces` reads of a network adapter (``ifaddr.Adapter``)."""

    @property
    def name(self) -> str: ...

    @property
    def nice_name(self) -> str: ...

    @property
    def index(self) -> int | None: ...

    @property
    def ips(self) -> Sequence[AdapterIP]: ...


def list_interfaces(
    adapters: Iterable[Adapter] | None = None,
    flags_of: Callable[[str], int | None] = _sys_flags,
    mac_of: Callable[[str], str | None] = _sys_mac,
) -> list[Interface]:
    """Every interface with its addresses (ifaddr adapters unless given), flags and MAC."""
    if adapters is None:
        import ifaddr

        adapters = ifaddr.get_adapters()
    result = []
    for ad in adapters:
        name = ad.nice_name or ad.name
        v4: list[ipaddress.IPv4Interface] = []
        v6: list[ipaddress.IPv6Interface] = []
        for ip in ad.ips:
            raw, prefix = ip.ip, ip.network_prefix
            try:
                if isinstance(raw, tuple):  # (address, flowinfo, scope_id)
                    scope = f"%{raw[2]}" if raw[2] else ""
                    v6.append(ipaddress.IPv6Interface(f"{raw[0]}{scope}/{prefix}"))
                else:
                    v4.append(ipaddress.IPv4Interface(f"{raw}/{prefix}"))
            except ValueError:
                continue
        result.append(
            Interface(
                name=name,
                index=ad.index or 0,
                flags=flags_of(name),
                mac=mac_of(name),
                ipv4=tuple(v4),
                ipv6=tuple(v6),
            )
        )
    return result


def select_interfaces(interfaces: Sequence[Interface], names: Sequence[str] = ()) -> Selection:
    """Pick interfaces: exactly ``names`` (InterfaceError if unusable) or the default rule."""
    if names:
        by_name = {i.name: i for i in interfaces}
        chosen, warnings = [], []
        for n in dict.fromkeys(names):
            iface = by_name.get(n)
            if iface is None:
                have = ", ".join(sorted(by_name)) or "none"
                raise InterfaceError(f"--interface {n}: no such interface (have: {have})")
            if not iface.ipv4:
                raise InterfaceError(f"--interface {n}: it has no IPv4 address, mDNS needs one")
            if not iface.up:
                warnings.append(f"interface {n} is down; announcing on it anyway")
            if iface.loopback:
                warnings.append(
                    f"interface {n} is loopback: only this machine will see the announcement"
                )
            elif not iface.multicast:
                warnings.append(f"interface {n} is not multicast-capable; discovery may not work")
            chosen.append(iface)
        return Selection(tuple(chosen), None, tuple(warnings))
    chosen = [i for i in interfaces if i.up and i.multicast and not i.loopback and i.ipv4]
    if chosen:
        return Selection(tuple(chosen))
    others = [i for i in interfaces if not i.loopback]
    if not others:
        why = "no multicast-capable interface (only loopback)"
    else:

        def why_not(i: Interface) -> str:
            return "down" if not i.up else "no multicast" if not i.multicast else "no IPv4"

        detail = "; ".join(f"{i.name}: {why_not(i)}" for i in others)
        why = f"no usable multicast-capable interface ({detail})"
    return Selection((), why + "; use --interface NAME to choose one")


def networks_of(interfaces: Iterable[Interface]) -> tuple[IPNetwork, ...]:
    """The subnets of these interfaces (IPv6 scope dropped): the default allowed networks."""
    nets: list[IPNetwork] = []
    for iface in interfaces:
        for i4 in iface.ipv4:
            if i4.network not in nets:
                nets.append(i4.network)
        for i6 in iface.ipv6:
            bare = str(i6.ip).split("%")[0]
            net6 = ipaddress.IPv6Network(f"{bare}/{i6.network.prefixlen}", strict=False)
            if net6 not in nets:
                nets.append(net6)
    return tuple(nets)


def identity_material(
    interfaces: Sequence[Interface], machine_id_path: str = "/etc/machine-id"
) -> tuple[list[str], str, str]:
    """(MACs of the non-loopback interfaces, machine-id, host name) for records.node_id."""
    macs = [i.mac for i in interfaces if i.mac and not i.loopback]
    try:
        with open(machine_id_path) as f:
            machine_id = f.read().strip()
    except OSError:
        machine_id = ""
    return macs, machine_id, socket.gethostname()
