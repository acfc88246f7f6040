"""Rogue announcements: every field is validated, and a full peer table keeps the live peers.

Pure: records are parsed from TXT maps as python-zeroconf hands them over; the table runs
on a fake clock.
"""

from __future__ import annotations

import pytest

from meshcc.mesh.peers import Liveness, LivenessTimings, PeerTable
from meshcc.mesh.records import (
    MAX_CPUS,
    MAX_JOBS,
    PeerKind,
    PeerRecord,
    RecordError,
    ToolchainInfo,
    parse_distcc,
    parse_meshcc,
)
from meshcc.wire import control

GOOD = {
    "v": "1",
    "id": "0123456789ab",
    "host": "box",
    "cpus": "8",
    "jobs": "10",
    "proto": "1,2",
    "caps": "lzo",
    "mv": "0.1.0",
    "t0": "gcc;12.2.0;x86_64-linux-gnu;2.40;gcc,~-gcc-12",
}
INSTANCE = "meshcc@box._meshcc._tcp.local."


def meshcc_record(**changes: str | None) -> PeerRecord:
    props = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    return parse_meshcc(INSTANCE, props, ["10.0.0.2"], 3632)


def test_a_good_record_parses() -> None:
    r = meshcc_record()
    assert (r.cpus, r.jobs, r.limit, r.protocols) == (8, 10, 10, (1, 2))
    assert r.toolchains[0].names == ("gcc", "x86_64-linux-gnu-gcc-12")


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("jobs", "99999999999999999999", "not a number"),
        ("jobs", str(MAX_JOBS + 1), "outside"),
        ("jobs", "-3", "outside"),
        ("cpus", str(10**30), "not a number"),
        ("cpus", "0", "outside"),
        ("cpus", "-1", "outside"),
        ("free", "-7", "outside"),
        ("cpus", "1e3", "not a number"),
        ("proto", "1,2,99", "proto"),
        ("caps", ",".join(f"c{i}" for i in range(40)), "capabilities"),
        ("caps", "lzo,\x07bell", "characters"),
        ("host", "x" * 300, "longer"),
        ("host", "evil\x1b[2Jbox", "characters"),
        ("mv", "1" * 100, "longer"),
        ("t0", "python;12.2.0;x86_64-linux-gnu;2.40;gcc", "driver"),
        ("t0", "gcc;12 .2;x86_64-linux-gnu;2.40;gcc", "characters"),
        ("t0", "gcc;12.2.0;x86 64;2.40;gcc", "characters"),
        ("t0", "gcc;12.2.0;x86_64-linux-gnu;2.40;" + ",".join(["gcc"] * 70), "names"),
        ("id", "not-hex", "node id"),
    ],
)
def test_bad_fields_reject_the_record(field: str, value: str, why: str) -> None:
    with pytest.raises(RecordError, match=why):
        meshcc_record(**{field: value})


def test_common_fields_are_bounded() -> None:
    with pytest.raises(RecordError, match="port"):
        parse_meshcc(INSTANCE, GOOD, ["10.0.0.2"], 0)
    with pytest.raises(RecordError, match="addresses"):
        parse_meshcc(INSTANCE, GOOD, [f"10.0.0.{i}" for i in range(40)], 3632)
    with pytest.raises(RecordError, match="no address"):
        parse_meshcc(INSTANCE, GOOD, [], 3632)


def test_stock_distcc_records_keep_distccs_rules_within_bounds() -> None:
    props = {"txtvers": "1", "cpus": "4", "jobs": "0", "distcc": "3.4"}
    r = parse_distcc("distcc@old._distcc._tcp.local.", props, ["10.0.0.9"], 3632)
    assert r.limit == 6  # jobs <= 0: cpus + 2, as distcc's client reads it
    with pytest.raises(RecordError):
        parse_distcc("d._distcc._tcp.local.", {"cpus": str(MAX_CPUS * 10)}, ["10.0.0.9"], 3632)
    with pytest.raises(RecordError):
        parse_distcc("d._distcc._tcp.local.", {"jobs": "99999999999"}, ["10.0.0.9"], 3632)


def test_any_accepted_record_fits_a_control_reply() -> None:
    """The largest record validation lets through still encodes (one peer can never
    break `meshcc hosts`)."""
    big = meshcc_record(
        cpus=str(MAX_CPUS),
        jobs=str(MAX_JOBS),
        free=str(MAX_JOBS),
        host="h" * 255,
        **{f"t{i}": GOOD["t0"] for i in range(64)},
    )
    from meshcc.mesh.matching import Verdict
    from meshcc.mesh.peers import PeerState

    state = PeerState(big, Liveness.UP, 0.0, 0.0, None, None, 0.001, 0, 0, 0, None)
    verdict = Verdict(state, True, "ok", "10.0.0.2", "gcc")
    reply = control.HostsReply("x", [verdict.to_dict()] * 8, control.StatusReply())
    reader = control.MessageReader()
    reader.feed(control.encode(reply.to_message()))
    message = reader.next_message()
    assert message is not None and control.decode_hosts_reply(message) == reply


# ---------------------------------------------------------------- a full table


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def junk(i: int) -> PeerRecord:
    address = f"10.9.{i // 250}.{i % 250 + 1}"  # distinct endpoints: distinct daemons
    return parse_meshcc(
        f"meshcc@j{i}._meshcc._tcp.local.", dict(GOOD, id=f"{i:012x}"), [address], 3632
    )


def real(i: int) -> PeerRecord:
    return parse_meshcc(
        f"meshcc@real{i}._meshcc._tcp.local.",
        dict(GOOD, id=f"fff{i:09x}"),
        [f"10.0.1.{i + 1}"],
        3632,
    )


def test_a_flood_of_junk_never_shuts_out_real_peers() -> None:
    clock = Clock()
    table = PeerTable(LivenessTimings(max_peers=8, jitter=0.0), clock=clock, wallclock=clock)
    live = real(1)
    assert table.upsert(live)
    for target in table.due():
        table.probe_done(target, True, None, 0.001)  # the real peer answers: UP
    for i in range(100):
        clock.t += 0.01
        table.upsert(junk(i))
    assert len(table) == 8
    assert live.key in table  # live peers are never displaced
    clock.t += 0.01
    newcomer = real(2)
    assert table.upsert(newcomer)
    assert newcomer.key in table and live.key in table  # a later real peer still gets in
    assert junk(99).key in table  # the oldest junk went, not the latest arrivals


def test_a_table_full_of_live_peers_ignores_newcomers() -> None:
    clock = Clock()
    table = PeerTable(LivenessTimings(max_peers=3, jitter=0.0), clock=clock, wallclock=clock)
    for i in range(3):
        table.upsert(real(i))
    for target in table.due():
        table.probe_done(target, True, None, 0.001)
    assert not table.upsert(junk(1)) and junk(1).key not in table
    assert [table.record(k).kind for k in table.keys()] == [PeerKind.MESHCC] * 3  # type: ignore[union-attr]


def test_what_we_announce_passes_our_own_validation() -> None:
    """A box with several toolchains, names target-prefixed, announces a valid record."""
    from meshcc.mesh.records import LocalNode, build_meshcc_service

    gcc = ToolchainInfo(
        "gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc", "cc", "x86_64-linux-gnu-gcc-12")
    )
    cross = ToolchainInfo("g++", "13.2.0", "aarch64-linux-gnu", None, ("aarch64-linux-gnu-g++-13",))
    node = LocalNode(
        "0123456789ab", "box", 3632, 64, 66, (gcc, cross), "0.1.0", caps=frozenset({"lzo"})
    )
    spec, _ = build_meshcc_service(node)
    r = parse_meshcc(spec.name, spec.properties, ["10.0.0.2"], spec.port)
    assert r.toolchains == (gcc, cross) and (r.cpus, r.jobs) == (64, 66)
