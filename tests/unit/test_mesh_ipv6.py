"""IPv6 in interface selection, announced addresses, dial order and the access check.

Interfaces are built from ifaddr-shaped data (no machine interface is read); the access
check's link comparison uses the real ``lo`` (index 1 everywhere on Linux)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path
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
        assert sel.mdns_interfaces == ["fe80::a"]  # IPv6 mDNS on the link-local address


def test_dual_stack_runs_mdns_over_both_and_announces_both() -> None:
    sel = netif.select_interfaces(ifaces(LO, DUAL, V6ONLY))
    assert [i.name for i in sel.chosen] == ["eth2", "eth0"]
    # eth2 over IPv4 and over IPv6 (its link-local address), eth0 over IPv6.
    assert sel.mdns_interfaces == ["10.77.0.11", "fe80::d", "fe80::a"]
    assert discovery._ip_version(sel.mdns_interfaces) is discovery.IPVersion.All
    # IPv4 first (every peer with IPv4 dials that), then routable IPv6, then link-local.
    assert sel.announce_addresses == [
        "10.77.0.11",
        "fd78::d",
        "fd77::b",
        "2001:db8::b",
        "fe80::d",
        "fe80::a",
    ]
    assert sel.families == "IPv4+IPv6"
    only_dual = netif.select_interfaces(ifaces(LO, DUAL))
    assert only_dual.mdns_interfaces == ["10.77.0.11", "fe80::d"]
    assert only_dual.announce_addresses == ["10.77.0.11", "fd78::d", "fe80::d"]
    # An IPv4 LAN box (fe80:: beside its IPv4, as almost every Linux box has) speaks
    # IPv6 mDNS too, so a link-local-only IPv6 neighbour still finds it.
    v4_ll = adapter("eth5", 8, ("10.77.0.12", 24), (("fe80::e", 0, 8), 64))
    assert netif.select_interfaces(ifaces(LO, v4_ll)).mdns_interfaces == ["10.77.0.12", "fe80::e"]
    # IPv6 turned off on the interface: IPv4 alone, as before.
    v4 = adapter("eth6", 9, ("10.77.0.13", 24))
    sel4 = netif.select_interfaces(ifaces(LO, v4))
    assert sel4.mdns_interfaces == ["10.77.0.13"] and sel4.families == "IPv4"
    assert discovery._ip_version(sel4.mdns_interfaces) is discovery.IPVersion.V4Only
    # -i lo (one-box tests): ::1 takes no multicast, so loopback stays IPv4-only.
    sel_lo = netif.select_interfaces(ifaces(LO, DUAL), ["lo"])
    assert sel_lo.mdns_interfaces == ["127.0.0.1"] and sel_lo.announce_addresses == ["127.0.0.1"]


def test_unstable_ipv6_addresses_are_not_announced_beside_stable_ones() -> None:
    slaac = adapter(
        "eth0",
        2,
        (("fe80::a", 0, 2), 64),
        (("2001:db8::7e3:1", 0, 0), 64),  # temporary (privacy): gone within days
        (("2001:db8::a", 0, 0), 64),  # stable
        (("fd77::9", 0, 0), 64),  # deprecated
        (("fd77::dead", 0, 0), 64),  # failed DAD: a duplicate elsewhere on the LAN
    )
    flags = {
        ipaddress.IPv6Address("2001:db8::7e3:1"): netif.IFA_F_TEMPORARY,
        ipaddress.IPv6Address("fd77::9"): netif.IFA_F_DEPRECATED,
        ipaddress.IPv6Address("2001:db8::a"): 0x80,  # permanent
        ipaddress.IPv6Address("fd77::dead"): netif.IFA_F_DADFAILED | netif.IFA_F_TENTATIVE,
    }
    table = {"lo": 0x9}
    machine = netif.list_interfaces(
        [LO, slaac],
        flags_of=lambda n: table.get(n, UP_MCAST),
        mac_of=lambda n: None,
        ipv6_flags=flags,
    )
    assert machine[1].unstable_ipv6 == {"2001:db8::7e3:1", "fd77::9"}
    assert "fd77::dead" not in {str(i.ip) for i in machine[1].ipv6}  # unusable: not listed
    assert machine[1].failed_ipv6 == {"fd77::dead"}
    sel = netif.select_interfaces(machine)
    assert sel.announce_addresses == ["2001:db8::a", "fe80::a"]
    assert sel.warnings == (
        "interface eth0: IPv6 address fd77::dead failed duplicate address detection (another "
        "box on the LAN has it; `ip -6 addr` shows dadfailed): not used",
    )
    assert netif.select_interfaces(machine, ["eth0"]).warnings == sel.warnings
    # Only unstable ones: announced all the same (better than no IPv6 address at all).
    temp_only = netif.list_interfaces(
        [adapter("eth0", 2, (("2001:db8::7e3:1", 0, 0), 64))],
        flags_of=lambda n: UP_MCAST,
        mac_of=lambda n: None,
        ipv6_flags=flags,
    )
    assert netif.select_interfaces(temp_only).announce_addresses == ["2001:db8::7e3:1"]


def test_dialable_keeps_only_families_this_box_has() -> None:
    dual = netif.dialable(ifaces(LO, DUAL))
    v6_only = netif.dialable(ifaces(LO, V6ONLY))
    ll_only = netif.dialable(ifaces(LO, LL_ONLY))
    v4_only = netif.dialable(ifaces(LO, adapter("eth6", 9, ("10.77.0.13", 24))))
    peer = ["10.77.0.12", "fd77::c", "fe80::c%eth2", "fe80::c%4", "fe80::c%eth9", "fe80::c"]
    assert [a for a in peer if dual(a)] == ["10.77.0.12", "fd77::c", "fe80::c%eth2", "fe80::c%4"]
    # IPv6-only: a dual-stack peer's IPv4 cannot be reached from here (no IPv4 at all,
    # loopback's 127.0.0.1 does not count).
    assert [a for a in peer if v6_only(a)] == ["fd77::c"]
    assert [a for a in peer if ll_only(a)] == []  # fe80::c%eth1 would be: eth1 is its link
    assert ll_only("fe80::c%eth1") and ll_only("fe80::c%3")
    assert [a for a in peer if v4_only(a)] == ["10.77.0.12"]
    assert v4_only("127.0.0.1") and v6_only("127.0.0.1") and not v4_only("not an address")
    # In discovery's dial order, with the filter.
    got = discovery._dial_order(["fe80::1%eth7", "fd77::c", "10.0.0.1", "fe80::2"], v6_only)
    assert got == ("fd77::c",)
    # A dual-stack peer seen from a box with IPv4 and link-local IPv6 only: its IPv4.
    v4_ll = netif.dialable(
        ifaces(LO, adapter("eth0", 2, ("10.0.0.9", 24), (("fe80::9", 0, 2), 64)))
    )
    assert discovery._dial_order(["fe80::1%eth0", "fd77::c", "10.0.0.1"], v4_ll) == ("10.0.0.1",)
    # An IPv6-only peer seen from there: its ULA is out of reach, its fe80:: is the way.
    assert discovery._dial_order(["fd77::c", "fe80::1%eth0"], v4_ll) == ("fe80::1%eth0",)
    # And that box seen from the IPv6-only peer (fe80:: only as link-local survives).
    assert discovery._dial_order(["10.0.0.9", "fe80::9%eth0"], v6_only) == ("fe80::9%eth0",)
    # A box in another IPv4 subnet on the same wire is judged by that address, which
    # the allowed subnets keep out: not let in through its fe80:: address.
    assert discovery._dial_order(["10.78.0.11", "fe80::7%eth0"], v4_ll) == ("10.78.0.11",)


def test_link_local_only_interfaces_only_when_nothing_better() -> None:
    # A bridge port / container veth (fe80:: alone) never joins a real NIC by default ...
    assert [i.name for i in netif.select_interfaces(ifaces(LO, DUAL, LL_ONLY)).chosen] == ["eth2"]
    assert [i.name for i in netif.select_interfaces(ifaces(LO, V6ONLY, LL_ONLY)).chosen] == ["eth0"]
    # ... but a link-local-only LAN still gets discovery, and -i takes such a link.
    sel = netif.select_interfaces(ifaces(LO, LL_ONLY))
    assert [i.name for i in sel.chosen] == ["eth1"] and sel.announce_addresses == ["fe80::c"]
    assert netif.select_interfaces(ifaces(LO, DUAL, LL_ONLY), ["eth1"]).mdns_interfaces == [
        "fe80::c"
    ]
    # A VLAN on eth0 shares its MAC, hence its fe80:: address: that names no link, so
    # python-zeroconf gets the index.
    vlan = adapter("eth0.10", 7, (("fe80::a", 0, 7), 64), (("fd80::1", 0, 0), 64))
    sel = netif.select_interfaces(ifaces(LO, V6ONLY, vlan), ["eth0.10"])
    assert sel.mdns_interfaces == [7] and sel.announce_addresses == ["fd80::1", "fe80::a"]
    # No link-local address (addr_gen_mode none): python-zeroconf gets the index.
    no_ll = adapter("eth4", 6, (("fd79::1", 0, 0), 64))
    assert netif.select_interfaces(ifaces(LO, no_ll)).mdns_interfaces == [6]


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
    # IPv4, then routable IPv6; link-local only for a peer with nothing else.
    assert got == ("10.0.0.1", "fd77::c", "2001:db8::c")
    # ... then with its scope by name; unscoped fe80:: dropped (it cannot be dialed).
    assert discovery._dial_order(["fe80::2", "fe80::1%1"]) == ("fe80::1%lo",)
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


IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 c0     eth0
fd770000000000000000000000000001 02 40 00 40     eth0
fd770000000000000000000000000002 02 40 00 80     eth0
20010db8000000000000000000000003 02 40 00 01     eth0
fe800000000000000000000000000001 03 40 20 20   eth0.7
garbage
"""


def test_tentative_ipv6_reads_the_dad_flag(tmp_path: Path) -> None:
    f = tmp_path / "if_inet6"
    f.write_text(IF_INET6)
    assert netif.tentative_ipv6(str(f)) == {
        ipaddress.IPv6Address("fe80::1"),
        ipaddress.IPv6Address("fd77::1"),
    }
    assert netif.tentative_ipv6(str(tmp_path / "missing")) == set()
    flags = netif.ipv6_address_flags(str(f))
    assert flags[ipaddress.IPv6Address("2001:db8::3")] == netif.IFA_F_TEMPORARY
    # An address on two interfaces (a VLAN's fe80::) gets both lines' flags.
    assert flags[ipaddress.IPv6Address("fe80::1")] == 0xC0 | netif.IFA_F_DEPRECATED


def test_discovery_waits_for_dad_then_gives_up_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def tentative_for(n: int) -> Callable[[], set[ipaddress.IPv6Address]]:
        def check() -> set[ipaddress.IPv6Address]:
            calls.append(1)
            return {ipaddress.IPv6Address("fd77::1")} if len(calls) <= n else set()

        return check

    d = discovery.Discovery(
        ["fd77::1", "fe80::1"], lambda e: None, interfaces=["fe80::1"], tentative=tentative_for(3)
    )
    asyncio.run(d._wait_dad())
    assert len(calls) == 4  # polled until DAD finished

    calls.clear()
    stuck = discovery.Discovery(
        ["fd77::1"],
        lambda e: None,
        dad_wait_s=0.3,
        tentative=lambda: {ipaddress.IPv6Address("fd77::1")},
    )
    asyncio.run(stuck._wait_dad())
    assert "duplicate address detection has not finished for fd77::1" in caplog.text

    ipv4 = discovery.Discovery(["10.0.0.1"], lambda e: None, tentative=tentative_for(10**6))
    calls.clear()
    asyncio.run(ipv4._wait_dad())
    assert calls == []  # nothing of ours is IPv6: no wait, not even a look


def test_daemon_fallback_allow_list_scopes_link_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allow list of a daemon whose mesh chose no interface: every interface's subnets,
    with fe80::/64 per link, never a bare fe80::/64 that would admit every link."""
    from meshcc.daemon import main

    machine = ifaces(LO, V6ONLY, DUAL)
    monkeypatch.setattr(netif, "list_interfaces", lambda: machine)
    got = [str(n) for n in main.default_allowed_networks()]
    assert got == [
        "127.0.0.0/8",
        "::1/128",
        "fe80::%eth0/64",
        "fd77::/64",
        "2001:db8::/64",
        "10.77.0.0/24",
        "fe80::%eth2/64",
        "fd78::/64",
    ]
