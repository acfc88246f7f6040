"""Which peers a client may use for its compiler, why (not), and in what order.

Pure functions over :class:`~meshcc.mesh.peers.PeerState` snapshots. A client matches on
the compiler it was invoked as (``gcc-13``, ``aarch64-linux-gnu-gcc``, ``g++``), given as a
:class:`ClientCompiler` fingerprint. A peer is in when, checked in this order (the first
failure is the reason printed by ``meshcc hosts --explain``):

1. it announced an address inside the allowed subnets (that is not one of ours);
2. it offers a compiler at all: a meshcc daemon that announces no toolchain is a
   *mesh-only* node (a LiveCD without gcc: discovery, leases and ``meshcc.pyz`` only, no
   compile service behind its port), out for every client, with or without a compiler
   check;
3. it offers a toolchain with the same driver (gcc/g++), target triplet, full version and
   binutils version. Stock distccd peers announce only their default ``cc`` and no binutils
   (and often only the major version): they are *unverified* and out unless
   ``accept_unverified``;
4. our own probes confirm it is reachable (``UP``);
5. it is not backed off after repeated failed jobs.

Ranking, best first: fewer recent job failures, more free slots (the peer's published
``free``, else its job limit), then more jobs, lower probe RTT, then name, so the line is
stable between calls.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo
from meshcc.transport.addresses import IPNetwork

__all__ = [
    "MESH_ONLY_REASON",
    "MatchPolicy",
    "Verdict",
    "format_host_spec",
    "hosts_line",
    "judge",
    "judge_all",
    "mesh_only",
    "pick_address",
    "toolchain_verdict",
]


@dataclass(frozen=True, slots=True)
class MatchPolicy:
    """The rules a daemon applies: allowed subnets, own addresses, unverified peers."""

    allowed: tuple[IPNetwork, ...]
    own_endpoints: frozenset[tuple[str, int]] = frozenset()  # (our address, our port)
    accept_unverified: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """One peer's judgement for one compiler."""

    peer: PeerState
    included: bool
    reason: str
    address: str | None = None  # the address to connect to
    remote_name: str | None = None  # compiler name to send it (one it offers)
    unverified: bool = False

    @property
    def host_spec(self) -> str | None:
        """``ADDR:PORT/LIMIT[,lzo]`` in distcc's grammar (None if it has no usable address)."""
        if self.address is None:
            return None
        r = self.peer.record
        return format_host_spec(self.address, r.port, r.limit, r.lzo)

    def to_dict(self) -> dict[str, object]:
        return {
            "peer": self.peer.to_dict(),
            "included": self.included,
            "reason": self.reason,
            "address": self.address,
            "host_spec": self.host_spec,
            "remote_name": self.remote_name,
            "unverified": self.unverified,
        }


def format_host_spec(address: str, port: int, limit: int, lzo: bool) -> str:
    """distcc host grammar: IPv6 literals bracketed, ``/LIMIT`` after the port."""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}/{limit}" + (",lzo" if lzo else "")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def pick_address(record: PeerRecord, policy: MatchPolicy) -> str | None:
    """The first announced address inside the allowed subnets (IPv4 first), never ours."""
    best: list[tuple[int, int, str]] = []
    for i, text in enumerate(record.addresses):
        ip = _ip(text)
        if ip is None or (text.split("%", 1)[0], record.port) in policy.own_endpoints:
            continue  # dialing it would reach this daemon, not the peer (a shared docker0 IP)
        if any(ip.version == n.version and ip in n for n in policy.allowed):
            best.append((0 if ip.version == 4 else 1, i, text))
    return min(best)[2] if best else None


def _clock_time(wall: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall)) if wall is not None else "?"


def _version_prefix(short: str, full: str) -> bool:
    """distccd announces ``cc -dumpversion``: "12" or "12.2" is a prefix of "12.2.0"."""
    a, b = short.split("."), full.split(".")
    return len(a) < len(b) and b[: len(a)] == a


def _drivers_compatible(client: str, peer: str) -> bool:
    return client == peer or "cc" in (client, peer)


MESH_ONLY_REASON = (
    "offers no compilers (a mesh-only meshcc daemon, e.g. a LiveCD without gcc: it "
    "announces no compiler)"
)


def mesh_only(record: PeerRecord) -> bool:
    """A meshcc daemon that announced no toolchain: it runs no compile server."""
    return record.kind is PeerKind.MESHCC and not record.toolchains


def toolchain_verdict(
    fp: ClientCompiler, record: PeerRecord, accept_unverified: bool
) -> tuple[bool, str, str | None, bool]:
    """(ok, reason, remote compiler name, unverified) for this compiler on this peer."""
    tcs = record.toolchains
    if mesh_only(record):
        return False, MESH_ONLY_REASON, None, False
    if not tcs:
        return (
            False,
            "announces no compiler"
            + (" (stock distccd without cc_version)" if record.kind is PeerKind.DISTCC else ""),
            None,
            False,
        )
    same_target = [t for t in tcs if t.target == fp.target]
    if not same_target:
        offered = ", ".join(sorted({t.target for t in tcs}))
        return False, f"no compiler for target {fp.target} (offers {offered})", None, False
    drivers = [t for t in same_target if _drivers_compatible(fp.driver, t.driver)]
    if not drivers:
        have = ", ".join(sorted({f"{t.driver} {t.version}" for t in same_target}))
        return False, f"no {fp.driver} for {fp.target} (only {have})", None, False

    if record.kind is PeerKind.DISTCC:
        t = drivers[0]
        if t.version != fp.version and not _version_prefix(t.version, fp.version):
            return False, f"gcc {fp.version} ≠ {t.version} (stock distccd's cc)", None, False
        loose = "" if t.version == fp.version else f", gcc {t.version} known only as -dumpversion"
        if not accept_unverified:
            return (
                False,
                f"binutils unknown (stock distccd{loose}) — pass --accept-unverified",
                None,
                True,
            )
        return (
            True,
            f"unverified stock distccd (binutils unknown{loose}), accepted by --accept-unverified",
            fp.name,
            True,
        )

    versions = [t for t in drivers if t.version == fp.version]
    if not versions:
        have = ", ".join(sorted({t.version for t in drivers}))
        return False, f"gcc {fp.version} ≠ {have}", None, False
    exact = [t for t in versions if t.binutils is not None and t.binutils == fp.binutils]
    if exact:
        return True, "", _remote_name(fp, exact), False
    if fp.binutils is None or any(t.binutils is None for t in versions):
        where = "here" if fp.binutils is None else "on the peer"
        if accept_unverified:
            return (
                True,
                f"binutils unknown {where}, accepted by --accept-unverified",
                _remote_name(fp, versions),
                True,
            )
        return False, f"binutils unknown {where} — pass --accept-unverified", None, True
    have = ", ".join(sorted({t.binutils or "?" for t in versions}))
    return False, f"binutils {fp.binutils} ≠ {have}", None, False


def _remote_name(fp: ClientCompiler, matches: Sequence[ToolchainInfo]) -> str:
    """The invoked name if the peer offers it for a matching toolchain, else one it does."""
    for t in matches:
        if fp.name in t.names:
            return fp.name
    for t in matches:
        if t.names:
            return t.names[0]
    return fp.name


def judge(fp: ClientCompiler | None, peer: PeerState, policy: MatchPolicy) -> Verdict:
    """In or out, with the reason (``fp`` None: every compiler, liveness and policy only)."""
    r = peer.record
    address = pick_address(r, policy)
    if address is None:
        shown = ", ".join(r.addresses) or "no address"
        allowed = ", ".join(str(n) for n in policy.allowed) or "nothing"
        return Verdict(peer, False, f"announced from {shown}, outside allowed {allowed}")
    remote_name: str | None = None
    unverified = False
    note = ""
    if mesh_only(r):  # even without a compiler check: nothing serves compiles there
        return Verdict(peer, False, MESH_ONLY_REASON, address)
    if fp is not None:
        ok, why, remote_name, unverified = toolchain_verdict(fp, r, policy.accept_unverified)
        if not ok:
            return Verdict(peer, False, why, address, None, unverified)
        note = why
    if peer.liveness is Liveness.PENDING:
        return Verdict(
            peer,
            False,
            "announced, reachability not yet confirmed",
            address,
            remote_name,
            unverified,
        )
    if peer.liveness is Liveness.DOWN:
        detail = f" ({peer.down_detail})" if peer.down_detail else ""
        return Verdict(
            peer,
            False,
            f"not responding since {_clock_time(peer.down_since)}{detail}",
            address,
            remote_name,
            unverified,
        )
    if peer.backoff_until is not None:
        return Verdict(
            peer,
            False,
            f"backed off after {peer.job_failures} failed jobs "
            f"(until {_clock_time(peer.backoff_until)})",
            address,
            remote_name,
            unverified,
        )
    free = r.free if r.free is not None else r.limit
    reason = note or (
        f"matches gcc {fp.version} {fp.target} binutils {fp.binutils}" if fp else "up"
    )
    reason += f"; {free} free of {r.limit} jobs" if r.free is not None else f"; {r.limit} jobs"
    return Verdict(peer, True, reason, address, remote_name, unverified)


def _rank_key(v: Verdict) -> tuple[object, ...]:
    r = v.peer.record
    free = r.free if r.free is not None else r.limit
    rtt = v.peer.rtt_s if v.peer.rtt_s is not None else float("inf")
    return (v.peer.job_failures, v.unverified, -free, -r.limit, rtt, r.host, r.key)


def judge_all(
    fp: ClientCompiler | None, peers: Iterable[PeerState], policy: MatchPolicy
) -> list[Verdict]:
    """Every peer judged; included ones first, best first; excluded ones after, by name."""
    verdicts = [judge(fp, p, policy) for p in peers]
    inc = sorted((v for v in verdicts if v.included), key=_rank_key)
    exc = sorted(
        (v for v in verdicts if not v.included),
        key=lambda v: (v.peer.record.host, v.peer.record.key),
    )
    return inc + exc


def hosts_line(verdicts: Iterable[Verdict]) -> str:
    """DISTCC_HOSTS text of the included peers, in the given (ranked) order."""
    return " ".join(v.host_spec for v in verdicts if v.included and v.host_spec)
