"""meshcc.mesh.records and netif: announcement data, parsing, identity, interface choice."""

from __future__ import annotations

import ipaddress
import sys
from types import SimpleNamespace

import pytest

from meshcc.mesh import netif
from meshcc.mesh.records import (
    DISTCC_TYPE,
    MESHCC_TYPE,
    TXT_BUDGET,
    DistccId,
    LocalNode,
    PeerKind,
    RecordError,
    ToolchainInfo,
    build_distcc_services,
    build_meshcc_service,
    distcc_subtype,
    instance_label,
    node_id,
    parse_distcc,
    parse_meshcc,
    server_name,
    txt_size,
)

GCC = ToolchainInfo(
    "gcc",
    "12.2.0",
    "x86_64-linux-gnu",
    "2.40",
    ("gcc", "cc", "gcc-12", "x86_64-linux-gnu-gcc", "x86_64-linux-gnu-gcc-12"),
)
GXX = ToolchainInfo("g++", "12.2.0", "x86_64-linux-gnu", "2.40", ("g++", "c++"))
CROSS = ToolchainInfo("gcc", "13.2.0", "aarch64-linux-gnu", None, ("aarch64-linux-gnu-gcc-13",))


def node(*tcs: ToolchainInfo, **kw: object) -> LocalNode:
    args: dict[str, object] = {
        "node_id": "0123456789ab",
        "hostname": "build-box.lan",
        "port": 3632,
        "cpus": 8,
        "jobs": 10,
        "toolchains": tcs or (GCC, GXX, CROSS),
        "meshcc_version": "0.1.0",
        "protocols": (1, 2),
        "caps": frozenset({"lzo", "lz4", "errm"}),
        "distcc_id": DistccId("x86_64-linux-gnu", "12"),
    }
    args.update(kw)
    return LocalNode(**args)  # type: ignore[arg-type]


def test_distcc_subtype_is_distccs_format() -> None:
    assert distcc_subtype(DistccId("x86_64-linux-gnu", "12")) == (
        "_x86-64-linux-gnu--12._sub._distcc._tcp.local."
    )
    assert distcc_subtype(DistccId("Aarch64-Unknown-Linux-GNU", "13.2.1")) == (
        "_aarch64-unknown-linux-gnu--13-2-1._sub._distcc._tcp.local."
    )


def test_distcc_records_keys_order_and_subtype_instance() -> None:
    base, sub = build_distcc_services(node())
    assert base.type_ == DISTCC_TYPE
    assert sub.type_ == "_x86-64-linux-gnu--12._sub._distcc._tcp.local."
    assert list(base.properties.items()) == [
        ("txtvers", "1"),
        ("cpus", "8"),
        ("jobs", "10"),
        ("distcc", "3.4"),
        ("gnuhost", "x86_64-linux-gnu"),
        ("cc_version", "12"),
        ("cc_machine", "x86_64-linux-gnu"),
    ]
    assert sub.properties == base.properties
    assert base.name == "meshcc@build-box-0123456789ab._distcc._tcp.local."
    assert sub.name == "meshcc@build-box-0123456789ab-cc._distcc._tcp.local."
    assert base.server == sub.server == "build-box-0123456789ab.local."


def test_distcc_record_without_cc_has_no_subtype_and_no_cc_keys() -> None:
    [only] = build_distcc_services(node(distcc_id=None))
    assert only.type_ == DISTCC_TYPE
    assert list(only.properties) == ["txtvers", "cpus", "jobs", "distcc"]


def test_meshcc_record_round_trip() -> None:
    spec, warnings = build_meshcc_service(node(), free=3)
    assert warnings == []
    assert spec.type_ == MESHCC_TYPE
    assert spec.properties["t0"] == "gcc;12.2.0;x86_64-linux-gnu;2.40;gcc,cc,gcc-12,~-gcc,~-gcc-12"
    assert spec.properties["t2"] == "gcc;13.2.0;aarch64-linux-gnu;-;~-gcc-13"
    rec = parse_meshcc(spec.name, spec.properties, ["10.0.0.2", "fe80::1%2"], 3632, spec.server)
    assert rec.key == "m:0123456789ab" and rec.kind is PeerKind.MESHCC
    assert rec.toolchains == (GCC, GXX, CROSS)
    assert (rec.cpus, rec.jobs, rec.limit, rec.free) == (8, 10, 10, 3)
    assert rec.protocols == (1, 2) and rec.caps == {"lzo", "lz4", "errm"} and rec.lzo
    assert rec.host == "build-box.lan" and rec.version == "0.1.0"
    assert not rec.verified  # the cross compiler's binutils are unknown
    assert rec.endpoints() == {("10.0.0.2", 3632), ("fe80::1%2", 3632)}


def test_status_port_is_announced_else_compile_port_plus_one() -> None:
    spec, _ = build_meshcc_service(node(status_port=9633))
    assert spec.properties["sport"] == "9633"
    rec = parse_meshcc(spec.name, spec.properties, ["10.0.0.2"], 3632, spec.server)
    assert rec.status_port == 9633
    # A daemon without a status port announces none; a peer from before ``sport`` (or
    # without one) is looked for on distccd's pairing.
    spec, _ = build_meshcc_service(node())
    assert "sport" not in spec.properties
    rec = parse_meshcc(spec.name, spec.properties, ["10.0.0.2"], 4000, spec.server)
    assert rec.status_port == 4001


def test_every_txt_string_within_255_bytes_and_total_within_budget() -> None:
    many = tuple(
        ToolchainInfo(
            "gcc",
            f"{v}.1.0",
            f"{arch}-unknown-linux-gnu",
            "2.41",
            tuple(f"{arch}-unknown-linux-gnu-gcc-{v}-alias{i}" for i in range(12)),
        )
        for v in (10, 11, 12, 13, 14)
        for arch in ("x86_64", "aarch64", "riscv64")
    )
    spec, warnings = build_meshcc_service(node(*many))
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in spec.properties.items())
    assert txt_size(spec.properties) <= TXT_BUDGET
    assert warnings  # it says what it left out
    rec = parse_meshcc(spec.name, spec.properties, ["10.0.0.2"], 3632)
    assert rec.toolchains and all(t.names for t in rec.toolchains)  # each keeps a name


def test_one_huge_toolchain_is_trimmed_to_255() -> None:
    big = ToolchainInfo(
        "gcc",
        "12.2.0",
        "x86_64-linux-gnu",
        "2.40",
        tuple(f"gcc-wrapper-name-{i:03d}" for i in range(40)),
    )
    spec, warnings = build_meshcc_service(node(big))
    assert len("t0=" + spec.properties["t0"]) <= 255
    assert any("only" in w for w in warnings)


@pytest.mark.parametrize(
    "props, why",
    [
        ({}, "schema"),
        ({"v": "1"}, "node id"),
        ({"v": "1", "id": "not-hex!"}, "node id"),
        ({"v": "1", "id": "abcdef", "cpus": "many"}, "cpus"),
        ({"v": "1", "id": "abcdef", "t0": "gcc;12"}, "toolchain entry"),
        ({"v": "1", "id": "abcdef", "sport": "0"}, "sport"),
        ({"v": "1", "id": "abcdef", "sport": "70000"}, "sport"),
        ({"v": "1", "id": "abcdef", "sport": "http"}, "sport"),
    ],
)
def test_unreadable_meshcc_records_say_why(props: dict[str, str], why: str) -> None:
    with pytest.raises(RecordError, match=why):
        parse_meshcc("x._meshcc._tcp.local.", props, ["10.0.0.2"], 3632)


def test_newer_schema_is_read_for_known_keys() -> None:
    rec = parse_meshcc(
        "x._meshcc._tcp.local.",
        {"v": "2", "id": "abcdef", "future": "yes", "t0": GCC_TXT},
        ["10.0.0.2"],
        3632,
    )
    assert rec.schema == 2 and rec.toolchains[0].version == "12.2.0"


GCC_TXT = "gcc;12.2.0;x86_64-linux-gnu;2.40;gcc"


def test_parse_stock_distcc_record() -> None:
    props = {
        "txtvers": "1",
        "cpus": "4",
        "jobs": "6",
        "distcc": "3.4",
        "gnuhost": "x86_64-pc-linux-gnu",
        "cc_version": "12",
        "cc_machine": "x86_64-linux-gnu",
    }
    rec = parse_distcc("distcc@old._distcc._tcp.local.", props, ["10.0.0.9"], 3632)
    assert rec.key == "d:distcc@old._distcc._tcp.local." and rec.kind is PeerKind.DISTCC
    assert rec.host == "distcc@old" and not rec.verified and rec.lzo
    assert rec.toolchains == (ToolchainInfo("cc", "12", "x86_64-linux-gnu", None, ("cc",)),)
    assert rec.limit == 6


@pytest.mark.parametrize(
    "props, limit",
    [
        ({"cpus": "4"}, 4),
        ({"cpus": "4", "jobs": "0"}, 6),
        ({"cpus": "2", "jobs": "-1"}, 4),
        ({}, 4),
    ],
)
def test_distcc_limit_rules(props: dict[str, str], limit: int) -> None:
    """distcc's zeroconf.c: no jobs key -> 4; jobs <= 0 -> cpus + 2."""
    assert parse_distcc("d._distcc._tcp.local.", props, ["10.0.0.9"], 3632).limit == limit


def test_node_id_distinct_for_clones_stable_across_restart() -> None:
    a = node_id(["02:00:00:00:00:01"], 3632, "same-machine-id", "clone")
    b = node_id(["02:00:00:00:00:02"], 3632, "same-machine-id", "clone")
    assert a != b
    assert a == node_id(["02:00:00:00:00:01"], 3632, "same-machine-id", "clone")
    assert a != node_id(["02:00:00:00:00:01"], 3633, "same-machine-id", "clone")
    assert len(a) == 12 and int(a, 16) >= 0


def test_names_are_valid_labels_and_contain_the_id() -> None:
    n = node(hostname="A Very_Long.Host.Name" + "x" * 80)
    label = instance_label(n)
    assert label.endswith("-0123456789ab") and len((label + "-cc").encode()) <= 63
    host = server_name(n)[: -len(".local.")]
    assert host.endswith("-0123456789ab") and len(host) <= 63
    assert all(c.isalnum() or c == "-" for c in host) and host == host.lower()


# --------------------------------------------------------------------------- netif


def adapter(name: str, index: int, *ips: tuple[object, int]) -> SimpleNamespace:
    return SimpleNamespace(
        nice_name=name,
        name=name,
        index=index,
        ips=[SimpleNamespace(ip=ip, network_prefix=prefix) for ip, prefix in ips],
    )


FLAGS = {"lo": 0x9, "eth0": 0x1003, "eth1": 0x1002, "tun0": 0x91, "docker0": 0x1003}
MACS = {"eth0": "02:00:00:00:00:01", "eth1": "02:00:00:00:00:02", "docker0": "02:42:00:00:00:01"}


def interfaces(*names: str) -> list[netif.Interface]:
    table = {
        "lo": adapter("lo", 1, ("127.0.0.1", 8), (("::1", 0, 0), 128)),
        "eth0": adapter("eth0", 2, ("10.77.0.11", 24), (("fe80::1", 0, 2), 64)),
        "eth1": adapter("eth1", 3, ("192.168.5.2", 24)),
        "tun0": adapter("tun0", 4, ("10.8.0.2", 24)),
        "docker0": adapter("docker0", 5, ("172.17.0.1", 16)),
    }
    return netif.list_interfaces([table[n] for n in names], flags_of=FLAGS.get, mac_of=MACS.get)


def test_list_interfaces_reads_addresses_flags_macs() -> None:
    lo, eth0 = interfaces("lo", "eth0")
    assert lo.loopback and not lo.multicast and lo.mac is None
    assert eth0.up and eth0.multicast and not eth0.loopback and eth0.mac == MACS["eth0"]
    assert eth0.ipv4 == (ipaddress.IPv4Interface("10.77.0.11/24"),)
    assert eth0.ipv6[0].network == ipaddress.ip_network("fe80::/64")


def test_default_selection_up_multicast_non_loopback() -> None:
    sel = netif.select_interfaces(interfaces("lo", "eth0", "eth1", "tun0"))
    assert [i.name for i in sel.chosen] == ["eth0"]  # eth1 down, tun0 no multicast
    assert sel.ipv4_addresses == ["10.77.0.11"]
    assert netif.networks_of(sel.chosen) == (
        ipaddress.ip_network("10.77.0.0/24"),
        ipaddress.ip_network("fe80::%eth0/64"),  # link-local: this link's only
    )


def test_only_loopback_turns_discovery_off_with_a_reason() -> None:
    sel = netif.select_interfaces(interfaces("lo"))
    assert sel.chosen == ()
    assert sel.off_reason is not None
    assert sel.off_reason.startswith("no multicast-capable interface (only loopback)")
    other = netif.select_interfaces(interfaces("lo", "eth1"))
    assert other.off_reason is not None and "eth1: down" in other.off_reason


def test_explicit_interfaces() -> None:
    all_ = interfaces("lo", "eth0", "eth1")
    sel = netif.select_interfaces(all_, ["eth1", "lo"])
    assert [i.name for i in sel.chosen] == ["eth1", "lo"]
    assert any("down" in w for w in sel.warnings) and any("loopback" in w for w in sel.warnings)
    with pytest.raises(netif.InterfaceError, match=r"no such interface.*have: eth0, eth1, lo"):
        netif.select_interfaces(all_, ["wlan0"])


def test_identity_material_uses_non_loopback_macs() -> None:
    macs, machine_id, _host = netif.identity_material(
        interfaces("lo", "eth0"), machine_id_path="/nonexistent/machine-id"
    )
    assert macs == [MACS["eth0"]] and machine_id == ""


def test_records_and_matching_do_not_import_zeroconf() -> None:
    """The CLI may read records without paying for zeroconf/asyncio."""
    import subprocess

    code = (
        "import sys, meshcc.mesh.records, meshcc.mesh.matching, meshcc.mesh.peers; "
        "print(sorted(m for m in ('zeroconf', 'asyncio', 'ifaddr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
