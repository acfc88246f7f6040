"""IPv6 in interface selection, announced addresses, dial order and the access check.

Interfaces are built from ifaddr-shaped data (no machine interface is read); the access
check's link comparison uses the real ``lo`` (index 1 everywhere on Linux)."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest

from meshcc.mesh import discovery, netif
from meshcc.transport.addresses import client_allowed, normalize_client_ip, peer_ip

UP_MCAST = 0x1003


def adapter(name: str, index: int, *ips: tuple[object, int]) -> SimpleNamespace:
    return SimpleNamespace(
        nice_name=name,
        name=name,
        index=index,
        ips=[SimpleNamespace(ip=ip, network_prefix=prefix) for ip, prefix in ips],
    )


def ifaces(
    *adapters: SimpleNamespace, flags: dict[str, int] | None = None
) -> list[netif.Interface]:
    table = {"lo": 0x9, **(flags or {})}
    return netif.list_interfaces(
        adapters, flags_of=lambda n: table.get(n, UP_MCAST), mac_of=lambda n: None
    )


LO = adapter("lo", 1, ("127.0.0.1", 8), (("::1", 0, 0), 128))
V6ONLY = adapter(
    "eth0", 2, (("fe80::a", 0, 2), 64), (("fd77::b", 0, 0), 64), (("2001:db8::b", 0, 0), 64)
)
LL_ONLY = adapter("eth1", 3, (("fe80::c", 0, 3), 64))
DUAL = adapter("eth2", 4, ("10.77.0.11", 24), (("fe80::d", 0, 4), 64), (("fd78::d", 0, 0), 64))


def test_ipv6_only_interface_is_chosen_by_default_and_by_name() -> None:
    for sel in (
        netif.select_interfaces(ifaces(LO, V6ONLY)),
        netif.select_interfaces(ifaces(LO, V6ONLY), ["eth0"]),
    ):
        assert [i.name for i in sel.chosen] == ["eth0"] and sel.off_reason is None
        assert sel.warnings == ()
        # Routable first, then link-local, never scoped: receivers scope by their link.
        assert sel.announce_addresses == ["fd77::b", "2001:db8::b", "fe80::a"]
        assert sel.mdns_interfaces == [2]  # IPv6 mDNS joins ff02::fb by interface index


def test_dual_stack_keeps_ipv4_mdns_and_ipv4_records() -> None:
    sel = netif.select_interfaces(ifaces(LO, DUAL, V6ONLY))
    assert [i.name for i in sel.chosen] == ["eth2", "eth0"]
    assert sel.mdns_interfaces == ["10.77.0.11", 2]  # eth2 over IPv4 as before; eth0 over v6
    assert sel.announce_addresses == ["10.77.0.11", "fd77::b", "2001:db8::b", "fe80::a"]
    only_dual = netif.select_interfaces(ifaces(LO, DUAL))
    assert only_dual.mdns_interfaces == ["10.77.0.11"]
    assert only_dual.announce_addresses == ["10.77.0.11"]


def test_link_local_only_interfaces_only_when_nothing_better() -> None:
    # A bridge port / container veth (fe80:: alone) never joins a real NIC by default ...
    assert [i.name for i in netif.select_interfaces(ifaces(LO, DUAL, LL_ONLY)).chosen] == ["eth2"]
    assert [i.name for i in netif.select_interfaces(ifaces(LO, V6ONLY, LL_ONLY)).chosen] == ["eth0"]
    # ... but a link-local-only LAN still gets discovery, and -i takes such a link.
    sel = netif.select_interfaces(ifaces(LO, LL_ONLY))
    assert [i.name for i in sel.chosen] == ["eth1"] and sel.announce_addresses == ["fe80::c"]
    assert netif.select_interfaces(ifaces(LO, DUAL, LL_ONLY), ["eth1"]).mdns_interfaces == [3]


def test_interface_without_any_address_is_refused_by_name_and_explained() -> None:
    bare = adapter("eth3", 5)
    with pytest.raises(netif.InterfaceError, match="eth3: it has no IPv4 or IPv6 address"):
        netif.select_interfaces(ifaces(LO, bare), ["eth3"])
    sel = netif.select_interfaces(ifaces(LO, bare))
    assert sel.off_reason is not None and "eth3: no IPv4 or IPv6 address" in sel.off_reason


def test_announced_addresses_are_capped_at_what_peers_accept() -> None:
    many = adapter("eth0", 2, *((((f"fd77::{n:x}", 0, 0), 64)) for n in range(1, 40)))
    sel = netif.select_interfaces(ifaces(LO, many))
    assert len(sel.announce_addresses) == netif.MAX_ANNOUNCED == 16


def test_networks_scope_link_local_to_its_interface() -> None:
    nets = netif.networks_of(ifaces(V6ONLY, LL_ONLY))
    assert [str(n) for n in nets] == [
        "fe80::%eth0/64",
        "fd77::/64",
        "2001:db8::/64",
        "fe80::%eth1/64",
    ]


def test_dial_order_and_ip_version() -> None:
    got = discovery._dial_order(["fe80::1%1", "fd77::c", "10.0.0.1", "fe80::2", "2001:db8::c"])
    # IPv4, routable IPv6, then link-local with its scope by name; unscoped fe80:: dropped.
    assert got == ("10.0.0.1", "fd77::c", "2001:db8::c", "fe80::1%lo")
    assert discovery._ip_version(["10.0.0.1"]) is discovery.IPVersion.V4Only
    assert discovery._ip_version([2]) is discovery.IPVersion.V6Only
    assert discovery._ip_version(["10.0.0.1", 2]) is discovery.IPVersion.All


def test_link_local_client_admitted_only_from_the_allowed_link() -> None:
    this_link = [ipaddress.ip_network("fe80::%lo/64")]
    assert client_allowed(normalize_client_ip("fe80::9%lo"), this_link)
    assert client_allowed(normalize_client_ip("fe80::9%1"), this_link)  # index of lo
    assert not client_allowed(normalize_client_ip("fe80::9%999"), this_link)  # other link
    assert not client_allowed(normalize_client_ip("fe80::9"), this_link)  # link unknown
    any_link = [ipaddress.ip_network("fe80::/10")]  # what `--allow fe80::/10` asks for
    assert client_allowed(normalize_client_ip("fe80::9%999"), any_link)
    ula = [ipaddress.ip_network("fd77::/64")]
    assert client_allowed(normalize_client_ip("fd77::9"), ula)
    assert not client_allowed(normalize_client_ip("fd78::9"), ula)


def test_peer_ip_takes_the_scope_from_the_socket_address() -> None:
    addr, port = peer_ip(("fe80::9", 4000, 0, 1))
    assert str(addr) == "fe80::9%lo" and port == 4000
    assert str(peer_ip(("fd77::9", 1, 0, 0))[0]) == "fd77::9"
    assert str(peer_ip(("::ffff:10.0.0.5", 1, 0, 0))[0]) == "10.0.0.5"
    assert str(peer_ip(("10.0.0.5", 1))[0]) == "10.0.0.5"
    with pytest.raises(ValueError):
        peer_ip(None)
