"""meshcc.mesh.matching: in/out with a reason for each peer, ranking, DISTCC_HOSTS line."""

from __future__ import annotations

import ipaddress
import time

import pytest

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.compiler.toolchain import Driver, Toolchain
from meshcc.mesh.matching import (
    MatchPolicy,
    format_host_spec,
    hosts_line,
    judge,
    judge_all,
    pick_address,
)
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo

NET = (ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("fd00::/64"))
POLICY = MatchPolicy(NET)
GCC12 = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc", "cc", "gcc-12"))
GXX12 = ToolchainInfo("g++", "12.2.0", "x86_64-linux-gnu", "2.40", ("g++", "c++"))
GCC13 = ToolchainInfo("gcc", "13.2.0", "x86_64-linux-gnu", "2.40", ("gcc-13",))
CROSS = ToolchainInfo("gcc", "13.2.0", "aarch64-linux-gnu", "2.40", ("aarch64-linux-gnu-gcc",))
CLIENT = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", "gcc")


def peer(
    host: str = "a",
    addrs: tuple[str, ...] = ("10.77.0.11",),
    tcs: tuple[ToolchainInfo, ...] = (GCC12, GXX12),
    liveness: Liveness = Liveness.UP,
    kind: PeerKind = PeerKind.MESHCC,
    **kw: object,
) -> PeerState:
    rec_args: dict[str, object] = {
        "key": f"m:{host}",
        "kind": kind,
        "instance": f"{host}._meshcc._tcp.local.",
        "host": host,
        "addresses": addrs,
        "port": 3632,
        "cpus": 4,
        "jobs": 6,
        "toolchains": tcs,
        "node_id": host,
        "protocols": (1, 2),
        "caps": frozenset({"lzo"}),
    }
    state_args: dict[str, object] = {
        "liveness": liveness,
        "first_seen": 0.0,
        "last_ok": None,
        "down_since": None,
        "down_detail": None,
        "rtt_s": 0.001,
        "probe_failures": 0,
        "job_failures": 0,
        "backoffs": 0,
        "backoff_until": None,
    }
    for k, v in kw.items():
        (state_args if k in state_args else rec_args)[k] = v
    return PeerState(record=PeerRecord(**rec_args), **state_args)  # type: ignore[arg-type]


def stock(version: str = "12", machine: str = "x86_64-linux-gnu", **kw: object) -> PeerState:
    return peer(
        "distcc@old",
        kind=PeerKind.DISTCC,
        verified=False,
        node_id=None,
        tcs=(ToolchainInfo("cc", version, machine, None, ("cc",)),),
        **kw,
    )


def reason(p: PeerState, fp: ClientCompiler | None = CLIENT, policy: MatchPolicy = POLICY) -> str:
    v = judge(fp, p, policy)
    assert not v.included, v
    return v.reason


def test_exact_match_is_in_with_remote_name() -> None:
    v = judge(CLIENT, peer(), POLICY)
    assert v.included and v.address == "10.77.0.11" and v.remote_name == "gcc"
    assert v.host_spec == "10.77.0.11:3632/6,lzo"
    assert "matches gcc 12.2.0" in v.reason


def test_invoked_name_not_offered_maps_to_one_that_is() -> None:
    fp = ClientCompiler("x86_64-linux-gnu-gcc-12", "12.2.0", "x86_64-linux-gnu", "2.40", "gcc")
    assert judge(fp, peer(), POLICY).remote_name == "gcc"
    assert (
        judge(
            ClientCompiler("c++", "12.2.0", "x86_64-linux-gnu", "2.40", "g++"), peer(), POLICY
        ).remote_name
        == "c++"
    )


def test_version_mismatch() -> None:
    fp = ClientCompiler("gcc-13", "13.2.0", "x86_64-linux-gnu", "2.40", "gcc")
    assert reason(peer(), fp) == "gcc 13.2.0 ≠ 12.2.0"
    assert judge(fp, peer(tcs=(GCC12, GCC13)), POLICY).remote_name == "gcc-13"


def test_target_mismatch_for_a_cross_compiler() -> None:
    fp = ClientCompiler("aarch64-linux-gnu-gcc", "13.2.0", "aarch64-linux-gnu", "2.40", "gcc")
    assert (
        reason(peer(), fp) == "no compiler for target aarch64-linux-gnu (offers x86_64-linux-gnu)"
    )
    assert judge(fp, peer(tcs=(GCC12, CROSS)), POLICY).included


def test_binutils_mismatch_and_unknown() -> None:
    assert reason(peer(tcs=(ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.41"),))) == (
        "binutils 2.40 ≠ 2.41"
    )
    unknown = peer(tcs=(ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", None, ("gcc",)),))
    assert reason(unknown) == "binutils unknown on the peer — pass --accept-unverified"
    v = judge(CLIENT, unknown, MatchPolicy(NET, accept_unverified=True))
    assert v.included and v.unverified


def test_gxx_needs_a_gxx_driver() -> None:
    fp = ClientCompiler("g++", "12.2.0", "x86_64-linux-gnu", "2.40", "g++")
    assert reason(peer(tcs=(GCC12,)), fp) == "no g++ for x86_64-linux-gnu (only gcc 12.2.0)"
    assert judge(fp, peer(), POLICY).included


def test_stock_distccd_is_unverified_unless_accepted() -> None:
    assert reason(stock()) == (
        "binutils unknown (stock distccd, gcc 12 known only as -dumpversion)"
        " — pass --accept-unverified"
    )
    assert reason(stock("12.2.0")) == "binutils unknown (stock distccd) — pass --accept-unverified"
    assert reason(stock("11")) == "gcc 12.2.0 ≠ 11 (stock distccd's cc)"
    assert reason(stock("1")) == "gcc 12.2.0 ≠ 1 (stock distccd's cc)"
    v = judge(CLIENT, stock(), MatchPolicy(NET, accept_unverified=True))
    assert v.included and v.unverified and "accepted by --accept-unverified" in v.reason
    assert reason(peer("distcc@x", kind=PeerKind.DISTCC, tcs=())) == (
        "announces no compiler (stock distccd without cc_version)"
    )


def test_outside_allowed_subnets() -> None:
    assert reason(peer(addrs=("192.168.5.7",))) == (
        "announced from 192.168.5.7, outside allowed 10.77.0.0/24, fd00::/64"
    )
    # the toolchain does not matter when the address is refused
    assert reason(peer(addrs=("192.168.5.7",), tcs=(GCC13,))).startswith("announced from")


def test_own_endpoint_is_never_dialled() -> None:
    """A peer announcing an address we also have (docker0) with our port would reach us."""
    p = peer(addrs=("10.77.0.1", "10.77.0.11"))
    own = MatchPolicy(NET, own_endpoints=frozenset({("10.77.0.1", 3632)}))
    assert pick_address(p.record, own) == "10.77.0.11"


def test_address_choice_prefers_ipv4_and_brackets_ipv6() -> None:
    assert pick_address(peer(addrs=("fd00::5", "10.77.0.5")).record, POLICY) == "10.77.0.5"
    v = judge(CLIENT, peer(addrs=("fd00::5",)), POLICY)
    assert v.host_spec == "[fd00::5]:3632/6,lzo"
    assert format_host_spec("10.0.0.1", 3632, 4, False) == "10.0.0.1:3632/4"


def test_liveness_and_backoff_reasons() -> None:
    down_at = time.mktime((2025, 1, 1, 12, 1, 3, 0, 0, -1))
    assert reason(
        peer(liveness=Liveness.DOWN, down_since=down_at, down_detail="connection refused")
    ) == ("not responding since 12:01:03 (connection refused)")
    assert reason(peer(liveness=Liveness.PENDING)) == "announced, reachability not yet confirmed"
    until = time.mktime((2025, 1, 1, 12, 6, 0, 0, 0, -1))
    assert reason(peer(job_failures=3, backoff_until=until)) == (
        "backed off after 3 failed jobs (until 12:06:00)"
    )


def test_no_fingerprint_judges_only_policy_and_liveness() -> None:
    v = judge(None, peer(tcs=(GCC13,)), POLICY)
    assert v.included and v.remote_name is None


def test_ranking_and_hosts_line() -> None:
    peers = [
        peer("small", addrs=("10.77.0.2",), jobs=2),
        peer("big", addrs=("10.77.0.3",), jobs=16),
        peer("busy", addrs=("10.77.0.4",), jobs=16, free=1),
        peer("flaky", addrs=("10.77.0.5",), jobs=32, job_failures=1),
        peer("dead", addrs=("10.77.0.6",), liveness=Liveness.DOWN),
        peer("old", addrs=("10.77.0.7",), tcs=(GCC13,)),
        peer("v6", addrs=("fd00::8",), jobs=4),
    ]
    verdicts = judge_all(CLIENT, peers, POLICY)
    assert [v.peer.record.host for v in verdicts if v.included] == [
        "big",
        "v6",
        "small",
        "busy",
        "flaky",
    ]
    assert [v.peer.record.host for v in verdicts if not v.included] == ["dead", "old"]
    assert hosts_line(verdicts) == (
        "10.77.0.3:3632/16,lzo [fd00::8]:3632/4,lzo 10.77.0.2:3632/2,lzo "
        "10.77.0.4:3632/16,lzo 10.77.0.5:3632/32,lzo"
    )


def test_unverified_rank_after_verified() -> None:
    policy = MatchPolicy(NET, accept_unverified=True)
    verdicts = judge_all(CLIENT, [stock(addrs=("10.77.0.9",), jobs=64), peer(jobs=2)], policy)
    assert [v.peer.record.host for v in verdicts] == ["a", "distcc@old"]


def test_client_compiler_from_toolchain() -> None:
    tc = Toolchain(
        path="/usr/bin/g++",
        realpath="/usr/bin/x86_64-linux-gnu-g++-12",
        names=("g++", "c++"),
        version="12.2.0",
        target="x86_64-linux-gnu",
        binutils="2.40",
        driver=Driver.GXX,
    )
    fp = ClientCompiler.from_toolchain(tc, "c++")
    assert fp == ClientCompiler("c++", "12.2.0", "x86_64-linux-gnu", "2.40", "g++")
    assert ClientCompiler.from_toolchain(tc).name == "g++"


@pytest.mark.parametrize("as_dict", [True])
def test_verdict_to_dict(as_dict: bool) -> None:
    import json

    d = json.loads(json.dumps(judge(CLIENT, peer(), POLICY).to_dict()))
    assert d["included"] and d["host_spec"] == "10.77.0.11:3632/6,lzo"
