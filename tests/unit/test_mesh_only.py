"""A mesh-only node (a meshcc daemon on a box without gcc, e.g. a LiveCD): what it
announces, and that peers never list it as a compile host nor probe its closed port."""

from __future__ import annotations

import ipaddress
import random

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.mesh.matching import MESH_ONLY_REASON, MatchPolicy, hosts_line, judge_all
from meshcc.mesh.peers import Liveness, LivenessTimings, PeerTable
from meshcc.mesh.records import (
    LocalNode,
    PeerKind,
    ToolchainInfo,
    build_distcc_services,
    build_meshcc_service,
    parse_meshcc,
)

GCC = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc", "cc"))
CLIENT = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", "gcc")
POLICY = MatchPolicy((ipaddress.ip_network("10.77.0.0/24"),))


def _announce(nid: str, addr: str, *tcs: ToolchainInfo):  # type: ignore[no-untyped-def]
    node = LocalNode(nid, f"h{nid}", 3632, 2, 0 if not tcs else 4, tcs, "0.1.0")
    spec, warnings = build_meshcc_service(node)
    assert warnings == []
    return node, parse_meshcc(spec.name, spec.properties, [addr], spec.port, spec.server)


class _Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_node_without_compilers_announces_an_empty_toolchain_list() -> None:
    node, record = _announce("aaaaaa", "10.77.0.11")
    spec, _ = build_meshcc_service(node)
    assert not any(k.startswith("t") and k[1:].isdigit() for k in spec.properties)
    assert record.kind is PeerKind.MESHCC and record.toolchains == ()
    # No distcc subtype without a cc (daemon/service.py publishes no _distcc._tcp at all).
    assert [s.type_ for s in build_distcc_services(node)] == ["_distcc._tcp.local."]


def test_peers_never_list_a_mesh_only_node_with_or_without_a_compiler_check() -> None:
    clock = _Clock()
    table = PeerTable(LivenessTimings(jitter=0.0), clock=clock, rng=random.Random(1))
    _, live_cd = _announce("aaaaaa", "10.77.0.11")
    _, builder = _announce("bbbbbb", "10.77.0.12", GCC)
    table.upsert(live_cd)
    table.upsert(builder)
    # Only the builder is probed: nothing listens on the mesh-only node's compile port.
    targets = table.due()
    assert [t.key for t in targets] == ["m:bbbbbb"]
    for t in targets:
        table.probe_done(t, True, None, 0.001)
    clock.t += 3600
    assert all(t.key != "m:aaaaaa" for t in table.due())
    for fp in (CLIENT, None):
        verdicts = judge_all(fp, table.snapshot(), POLICY)
        by_key = {v.peer.record.key: v for v in verdicts}
        assert by_key["m:bbbbbb"].included
        out = by_key["m:aaaaaa"]
        assert not out.included and out.reason == MESH_ONLY_REASON
        assert "offers no compilers" in out.reason and "announces no compiler" in out.reason
        assert hosts_line(verdicts) == "10.77.0.12:3632/4"


def test_a_mesh_only_node_that_gains_gcc_is_probed_and_used() -> None:
    clock = _Clock()
    table = PeerTable(LivenessTimings(jitter=0.0), clock=clock, rng=random.Random(1))
    _, before = _announce("aaaaaa", "10.77.0.11")
    table.upsert(before)
    assert table.due() == []
    _, after = _announce("aaaaaa", "10.77.0.11", GCC)  # same node id, restarted with gcc
    assert table.upsert(after)
    [target] = table.due()
    assert table.probe_done(target, True, None, 0.001) is Liveness.UP
    [v] = judge_all(CLIENT, table.snapshot(), POLICY)
    assert v.included
