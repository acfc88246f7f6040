"""Which interfaces the mesh announces and browses on, and what they imply.

ifaddr lists addresses but not link flags or MAC addresses, so those come from
``/sys/class/net/<name>/{flags,address}`` (Linux; elsewhere flags are unknown and only
the 127/8 check marks loopback). Everything is injectable so selection is unit-tested
without touching the machine's interfaces.

Default selection: interfaces that are up, multicast-capable, not loopback and have an
IPv4 address or a routable (global or ULA) IPv6 address; when none has either, the ones
with an IPv6 link-local address only (a link-local-only IPv6 LAN). Bridge ports and
container veths carry nothing but fe80:: on a normal box, so link-local alone never
qualifies an interface while a better one exists. ``--interface NAME`` picks exactly the
named ones, loopback included (useful for one-box tests; a warning says only this machine
can reach such addresses), as long as they have an IPv4 or IPv6 address.

Address families: mDNS runs over each family a chosen interface has: IPv4 where it has
an IPv4 address, IPv6 where it has an IPv6 address (a link-local one is enough, as with
Avahi). So on one wire a dual-stack box hears and answers both its IPv4-only and its
IPv6-only neighbours, and those two hear it (never each other: nothing relays). The
records carry every IPv4 address, then the stable routable IPv6 addresses (SLAAC
privacy addresses expire under a running daemon, so they are left out when a stable one
exists), then the link-local ones. Loopback with IPv4 (``-i lo``) stays IPv4-only: ::1
takes no multicast.

Which announced addresses can this box dial at all? :func:`dialable` says: IPv4 only if
it has IPv4 somewhere, routable IPv6 only if it has a routable IPv6 address, link-local
only with the scope of the link it was heard on. The peer table then picks the first
allowed one (IPv4 first): an IPv6-only peer is reached at its IPv6 address, a dual-stack
peer from an IPv6-only box too.

Link-local networks are per link: ``fe80::/64`` on eth0 and on docker0 are different
networks that print the same. :func:`networks_of` therefore scopes them
(``fe80::%eth0/64``), and :func:`meshcc.transport.addresses.client_allowed` only admits a
link-local client that arrived on that interface.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshcc.mesh.records import MAX_ADDRESSES
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
    # IPv6 addresses (bare) the kernel marks temporary, deprecated or DAD-failed: not
    # worth announcing when a stable one exists (see :func:`ipv6_address_flags`).
    unstable_ipv6: frozenset[str] = frozenset()
    # IPv6 addresses that failed duplicate address detection: left out of ``ipv6``
    # (unusable), kept here so the daemon can say why.
    failed_ipv6: frozenset[str] = frozenset()

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

    @property
    def routable_ipv6(self) -> tuple[ipaddress.IPv6Interface, ...]:
        """The global and ULA addresses: usable beyond this link, no scope needed."""
        return tuple(i for i in self.ipv6 if not (i.ip.is_link_local or i.ip.is_loopback))

    @property
    def link_local_ipv6(self) -> tuple[ipaddress.IPv6Interface, ...]:
        return tuple(i for i in self.ipv6 if i.ip.is_link_local)

    @property
    def announced_routable_ipv6(self) -> tuple[ipaddress.IPv6Interface, ...]:
        """The routable addresses worth announcing: the stable ones, or all when every one
        is unstable (better a privacy address than no IPv6 address at all)."""
        routable = self.routable_ipv6
        stable = tuple(i for i in routable if _bare(i) not in self.unstable_ipv6)
        return stable or routable

    @property
    def mdns_ipv6(self) -> bool:
        """mDNS runs over IPv6 here: the interface has an IPv6 address, link-local included
        (see the module docstring), unless it is a loopback with IPv4 (``-i lo``)."""
        return bool(self.ipv6) and not (self.loopback and self.ipv4)

    def describe(self) -> str:
        addrs = ", ".join(str(i) for i in (*self.ipv4, *self.ipv6)) or "no addresses"
        return f"{self.name} ({addrs})"


@dataclass(frozen=True, slots=True)
class Selection:
    """The interfaces chosen, or why there are none (discovery is then off)."""

    chosen: tuple[Interface, ...]
    off_reason: str | None = None
    warnings: tuple[str, ...] = field(default=())
    # Link-local addresses found on more than one interface (VLANs on one NIC share its
    # MAC, hence its fe80:: address): they cannot name a link.
    shared_link_local: frozenset[str] = frozenset()

    @property
    def ipv4_addresses(self) -> list[str]:
        return [str(i.ip) for iface in self.chosen for i in iface.ipv4]

    @property
    def announce_addresses(self) -> list[str]:
        """What the A/AAAA records carry: every IPv4 address, then the IPv6 addresses of
        the interfaces where mDNS runs over IPv6 (stable routable first, then link-local;
        no scope: a receiver scopes fe80:: by the interface it heard it on). At most
        :data:`MAX_ANNOUNCED` (peers refuse records with too many addresses), IPv4 first:
        a dual-stack box is dialed over IPv4 by every peer that has IPv4."""
        v4 = self.ipv4_addresses
        v6 = [
            _bare(i)
            for iface in self.chosen
            if iface.mdns_ipv6
            for i in iface.announced_routable_ipv6
        ]
        v6 += [_bare(i) for iface in self.chosen if iface.mdns_ipv6 for i in iface.link_local_ipv6]
        return list(dict.fromkeys([*v4, *v6]))[:MAX_ANNOUNCED]

    @property
    def families(self) -> str:
        """``IPv4``, ``IPv6`` or ``IPv4+IPv6``: what mDNS runs over (for the log)."""
        v4 = any(i.ipv4 for i in self.chosen)
        v6 = any(i.mdns_ipv6 for i in self.chosen)
        return "+".join(f for f, on in (("IPv4", v4), ("IPv6", v6)) if on) or "nothing"

    @property
    def mdns_interfaces(self) -> list[str | int]:
        """python-zeroconf's ``interfaces=``: IPv4 addresses and, for mDNS over IPv6, each
        such interface's link-local address (python-zeroconf joins ff02::fb on its
        interface and sends from it: stable, unlike a SLAAC privacy address that
        expires), or its index when it has none or shares it with another interface
        (python-zeroconf maps an address to the first interface holding it; given an
        index it sends from that interface's first address). A mix of both makes
        python-zeroconf run IPv4 and IPv6 side by side (``IPVersion.All``)."""
        v6: list[str | int] = []
        for iface in self.chosen:
            if iface.mdns_ipv6:
                ll = [_bare(i) for i in iface.link_local_ipv6]
                ll = [a for a in ll if a not in self.shared_link_local]
                v6.append(ll[0] if ll else iface.index)
        return [*self.ipv4_addresses, *dict.fromkeys(v6)]


MAX_ANNOUNCED = MAX_ADDRESSES  # the most a peer accepts in one record


def _bare(i: ipaddress.IPv6Interface) -> str:
    """The address without its ``%scope``."""
    return str(i.ip).split("%", 1)[0]


# linux/if_addr.h
IFA_F_TEMPORARY = 0x01  # a SLAAC privacy address: replaced daily, deleted within days
IFA_F_DADFAILED = 0x08  # duplicate address detection found a duplicate: unusable
IFA_F_DEPRECATED = 0x20  # preferred lifetime over: not for new connections
IFA_F_TENTATIVE = 0x40  # duplicate address detection still running
UNSTABLE_IPV6_FLAGS = IFA_F_TEMPORARY | IFA_F_DEPRECATED
_IF_INET6 = "/proc/net/if_inet6"


def ipv6_address_flags(path: str = _IF_INET6) -> dict[ipaddress.IPv6Address, int]:
    """Each IPv6 address's kernel flags (Linux; empty elsewhere). An address on several
    interfaces (a VLAN's fe80::) gets the union of its flags. Lines read
    ``<32 hex> <ifindex> <prefix> <scope> <flags> <name>``."""
    found: dict[ipaddress.IPv6Address, int] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        try:
            if len(fields) >= 5:
                ip = ipaddress.IPv6Address(int(fields[0], 16))
                found[ip] = found.get(ip, 0) | int(fields[4], 16)
        except ValueError:
            continue
    return found


def tentative_ipv6(path: str = _IF_INET6) -> set[ipaddress.IPv6Address]:
    """IPv6 addresses still in duplicate address detection (Linux; empty elsewhere).

    Why: a tentative address cannot be bound, so mDNS started in the second or so after
    a link comes up (a boot, a plugged cable) would bind nothing and stay silent for
    good."""
    return {ip for ip, flags in ipv6_address_flags(path).items() if flags & IFA_F_TENTATIVE}


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
    ipv6_flags: Mapping[ipaddress.IPv6Address, int] | None = None,
) -> list[Interface]:
    """Every interface with its addresses (ifaddr adapters unless given), flags and MAC.

    ``ipv6_flags`` (address -> kernel flags) marks the unstable IPv6 addresses and drops
    the ones that failed duplicate address detection; by default read from the kernel
    along with the machine's adapters, and empty with given adapters (a test's addresses
    are not the machine's)."""
    if adapters is None:
        import ifaddr

        adapters = ifaddr.get_adapters()
        if ipv6_flags is None:
            ipv6_flags = ipv6_address_flags()
    flags6 = ipv6_flags or {}
    result = []
    for ad in adapters:
        name = ad.nice_name or ad.name
        v4: list[ipaddress.IPv4Interface] = []
        v6: list[ipaddress.IPv6Interface] = []
        failed: list[str] = []
        for ip in ad.ips:
            raw, prefix = ip.ip, ip.network_prefix
            try:
                if isinstance(raw, tuple):  # (address, flowinfo, scope_id)
                    if flags6.get(ipaddress.IPv6Address(raw[0]), 0) & IFA_F_DADFAILED:
                        failed.append(raw[0])  # a duplicate on the LAN: kept, unusable
                        continue
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
                unstable_ipv6=frozenset(
                    _bare(i)
                    for i in v6
                    if flags6.get(ipaddress.IPv6Address(_bare(i)), 0) & UNSTABLE_IPV6_FLAGS
                ),
                failed_ipv6=frozenset(failed),
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
            if not iface.ipv4 and not iface.ipv6:
                raise InterfaceError(
                    f"--interface {n}: it has no IPv4 or IPv6 address (is it up, and is "
                    "IPv6 enabled on it?)"
                )
            if not iface.up:
                warnings.append(f"interface {n} is down; announcing on it anyway")
            if iface.loopback:
                warnings.append(
                    f"interface {n} is loopback: only this machine will see the announcement"
                )
            elif not iface.multicast:
                warnings.append(f"interface {n} is not multicast-capable; discovery may not work")
            chosen.append(iface)
        warnings += _dad_failures(chosen)
        return Selection(tuple(chosen), None, tuple(warnings), _shared_link_local(interfaces))
    usable = [i for i in interfaces if i.up and i.multicast and not i.loopback]
    chosen = [i for i in usable if i.ipv4 or i.routable_ipv6]
    if not chosen:  # a link-local-only IPv6 LAN (bridge ports etc. never win over a real NIC)
        chosen = [i for i in usable if i.link_local_ipv6]
    if chosen:
        return Selection(
            tuple(chosen),
            warnings=tuple(_dad_failures(chosen)),
            shared_link_local=_shared_link_local(interfaces),
        )
    others = [i for i in interfaces if not i.loopback]
    if not others:
        why = "no multicast-capable interface (only loopback)"
    else:

        def why_not(i: Interface) -> str:
            if not i.up:
                return "down"
            return "no multicast" if not i.multicast else "no IPv4 or IPv6 address"

        detail = "; ".join(f"{i.name}: {why_not(i)}" for i in others)
        why = f"no usable multicast-capable interface ({detail})"
    return Selection((), why + "; use --interface NAME to choose one")


def _dad_failures(chosen: Sequence[Interface]) -> list[str]:
    return [
        f"interface {i.name}: IPv6 address {a} failed duplicate address detection (another "
        "box on the LAN has it; `ip -6 addr` shows dadfailed): not used"
        for i in chosen
        for a in sorted(i.failed_ipv6)
    ]


def _shared_link_local(interfaces: Sequence[Interface]) -> frozenset[str]:
    seen: dict[str, int] = {}
    for iface in interfaces:
        for a in {_bare(i) for i in iface.link_local_ipv6}:
            seen[a] = seen.get(a, 0) + 1
    return frozenset(a for a, n in seen.items() if n > 1)


def networks_of(interfaces: Iterable[Interface]) -> tuple[IPNetwork, ...]:
    """The subnets of these interfaces: the default allowed networks.

    A link-local subnet is scoped to its interface by name (``fe80::%eth0/64``): every
    link has the same fe80::/64, and only this link's is meant (see the module docstring).
    Global and ULA subnets carry no scope."""
    nets: list[IPNetwork] = []
    for iface in interfaces:
        for i4 in iface.ipv4:
            if i4.network not in nets:
                nets.append(i4.network)
        for i6 in iface.ipv6:
            prefix = i6.network.prefixlen
            net6 = ipaddress.IPv6Network(f"{_bare(i6)}/{prefix}", strict=False)
            if i6.ip.is_link_local and not iface.loopback:  # strict=False drops a scope
                net6 = ipaddress.IPv6Network(f"{net6.network_address}%{iface.name}/{prefix}")
            if net6 not in nets:
                nets.append(net6)
    return tuple(nets)


def dialable(interfaces: Sequence[Interface]) -> Callable[[str], bool]:
    """Whether this box (with these interfaces: all of them, not only the mesh's) can dial
    an announced address at all: IPv4 needs an IPv4 address here, a routable IPv6 address
    a routable one here (an IPv6-only box cannot reach a dual-stack peer's IPv4, nor an
    IPv4-only box anyone's IPv6), a link-local one the scope of a link we have (the one
    it was heard on). Loopback addresses always pass (``-i lo`` on one box). Which of the
    dialable addresses is used is the allowed subnets' call (matching.pick_address)."""
    v4 = any(i.ipv4 for i in interfaces if not i.loopback)
    v6 = any(i.routable_ipv6 for i in interfaces if not i.loopback)
    links = {i.name for i in interfaces} | {str(i.index) for i in interfaces if i.index}

    def check(text: str) -> bool:
        bare, _, scope = text.partition("%")
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            return False
        if ip.is_loopback:
            return True
        if ip.version == 4:
            return v4
        if ip.is_link_local:
            return scope in links
        return v6

    return check


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
