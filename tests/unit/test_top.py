"""``meshcc top``'s pure parts: the distcc state-file reader (records packed here by
distcc's layout, struct dcc_task_state from distcc 3.4's src/state.h) and the rendering of
a snapshot. The live screen, a real daemon and real distcc jobs:
integration/test_top_terminal.py."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshcc.cli import distccstate, topview
from meshcc.cli.distccstate import Compile

# distcc's struct, written out field by field (not taken from the module under test):
# size_t struct_size; unsigned long magic, cpid; char file[128], host[128]; int slot;
# enum dcc_phase curr_phase; struct dcc_task_state *next.
LAYOUT = "@NLL128s128siiP"
SIZE = struct.calcsize(LAYOUT)


def pack(
    pid: int,
    file: bytes = b"hello.c",
    host: bytes = b"10.0.0.2",
    slot: int = 0,
    phase: int = 5,
    *,
    magic: int = 0x44494800,
    size: int = SIZE,
) -> bytes:
    return struct.pack(LAYOUT, size, magic, pid, file, host, slot, phase, 0xDEADBEEF)


def write(state: Path, pid: int, data: bytes, name: str | None = None) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    path = state / (name or f"binstate_{pid}")
    path.write_bytes(data)
    return path


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.skipif(sys.maxsize < 2**32, reason="offsets below are the LP64 ones")
def test_record_layout_matches_distcc_on_lp64() -> None:
    # distcc 3.4 on x86-64, checked with offsetof: 296 bytes, file at 24, host at 152,
    # slot at 280, curr_phase at 284 (shared/reference/distcc-3.4.md, section 3.9).
    assert distccstate.SIZE == SIZE == 296
    data = pack(1234, b"a.c", b"h", 7, 3)
    assert data[24:27] == b"a.c" and data[152:153] == b"h"
    assert int.from_bytes(data[280:284], sys.byteorder) == 7
    assert int.from_bytes(data[284:288], sys.byteorder) == 3


def test_reads_a_live_compile(tmp_path: Path) -> None:
    me = os.getpid()
    path = write(tmp_path / "state", me, pack(me, b"zlib/deflate.c", b"10.77.0.12", 2, 5))
    [c] = distccstate.read_dir(str(tmp_path))
    assert (c.pid, c.file, c.host, c.slot, c.phase_name) == (
        me,
        "zlib/deflate.c",
        "10.77.0.12",
        2,
        "Compile",
    )
    assert c.path == str(path)
    assert abs(c.mtime - path.stat().st_mtime) < 1e-6


def test_skips_what_distccmon_skips(tmp_path: Path) -> None:
    state = tmp_path / "state"
    me = os.getpid()
    gone = dead_pid()
    write(state, gone, pack(gone, b"dead.c"))  # its client is gone (ESRCH)
    write(state, 1, pack(me, b"magic.c", magic=0x12345678), "binstate_1")
    write(state, 2, pack(me, b"size.c", size=SIZE + 8), "binstate_2")
    write(state, 3, pack(me, b"short.c")[:-1], "binstate_3")
    write(state, 4, pack(me, b"long.c") + b"x", "binstate_4")
    write(state, 5, b"", "binstate_5")  # distcc truncates before rewriting: bad timing
    write(state, 6, pack(me, b"done.c", phase=7), "binstate_6")  # finished
    write(state, 7, pack(me, b"other.c"), "lock_7")  # not a state file
    write(state, 8, pack(0, b"zero.c"), "binstate_8")  # kill(0, 0) is our own group
    write(state, 9, pack(me, b"ok.c"), "binstate_9")
    assert [c.file for c in distccstate.read_dir(str(tmp_path))] == ["ok.c"]


def test_another_users_live_process_counts(tmp_path: Path) -> None:
    """kill(pid, 0) failing with EPERM means alive (distccmon assumes the same)."""
    write(tmp_path / "state", 4242, pack(4242))
    found = distccstate.read_dir(str(tmp_path), alive=lambda pid: pid == 4242)
    assert [c.pid for c in found] == [4242]
    if os.geteuid() != 0:
        assert distccstate.pid_alive(1)  # init: not ours, alive


def test_phase_out_of_range_reads_as_compile_and_names_are_cstrings(tmp_path: Path) -> None:
    me = os.getpid()
    write(tmp_path / "state", me, pack(me, b"x.c\0garbage", b"host\0more", 1, 42))
    [c] = distccstate.read_dir(str(tmp_path))
    assert (c.file, c.host, c.phase, c.phase_name) == ("x.c", "host", 5, "Compile")
    write(tmp_path / "state", me, pack(me, phase=-1))
    assert distccstate.read_dir(str(tmp_path))[0].phase_name == "Compile"
    full = b"f" * 128  # no NUL at all: distccmon forces one in the last byte; we stop there
    write(tmp_path / "state", me, pack(me, full))
    assert distccstate.read_dir(str(tmp_path))[0].file == "f" * 128


def test_every_phase_has_distccs_name(tmp_path: Path) -> None:
    me = os.getpid()
    names = []
    for phase in range(7):
        write(tmp_path / "state", me, pack(me, phase=phase))
        names.append(distccstate.read_dir(str(tmp_path))[0].phase_name)
    assert names == ["Startup", "Blocked", "Connect", "Preprocess", "Send", "Compile", "Receive"]


def test_terminal_escapes_in_names_are_neutralised(tmp_path: Path) -> None:
    me = os.getpid()
    write(tmp_path / "state", me, pack(me, b"\x1b[2Jevil\n.c", b"h\x07\xff"))
    [c] = distccstate.read_dir(str(tmp_path))
    assert c.file == "?[2Jevil?.c"
    assert c.host == "h?\ufffd"
    assert all(ch.isprintable() for ch in c.file + c.host)


def test_sorted_by_host_then_slot_like_distccmon(tmp_path: Path) -> None:
    me = os.getpid()
    state = tmp_path / "state"
    for i, (host, slot) in enumerate([(b"b", 0), (b"a", 1), (b"a", 0), (b"localhost", 0)]):
        write(state, i, pack(me, f"{i}.c".encode(), host, slot), f"binstate_{100 + i}")
    found = distccstate.read_dir(str(tmp_path))
    assert [(c.host, c.slot) for c in found] == [("a", 0), ("a", 1), ("b", 0), ("localhost", 0)]


def test_a_file_older_than_its_pids_process_is_a_dead_clients(tmp_path: Path) -> None:
    """A client killed with SIGKILL leaves its file; when its pid is reused, the file was
    written before the new process started: skipped (real /proc, this very process)."""
    me = os.getpid()
    path = write(tmp_path / "state", me, pack(me))
    assert len(distccstate.read_dir(str(tmp_path))) == 1
    started = distccstate.process_start(me, distccstate._boot_time())
    assert started is not None and started <= time.time() + 1
    old = started - 3600
    os.utime(path, (old, old))
    assert distccstate.read_dir(str(tmp_path)) == []
    # a long phase of a live process (over distccmon's 60 s) is still shown
    recent = max(started, time.time() - 120)
    os.utime(path, (recent, recent))
    assert len(distccstate.read_dir(str(tmp_path))) == 1


def test_a_fifo_or_symlink_does_not_hang_or_mislead(tmp_path: Path) -> None:
    me = os.getpid()
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / "binstate_1")
    real = write(tmp_path / "elsewhere", me, pack(me))
    (state / "binstate_2").symlink_to(real)
    write(state, me, pack(me, b"real.c"))
    assert [c.file for c in distccstate.read_dir(str(tmp_path))] == ["real.c"]


def test_missing_state_dir_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        distccstate.read_dir(str(tmp_path))


def test_default_dirs() -> None:
    env = {"HOME": "/home/u"}
    assert distccstate.default_dirs(env) == ["/home/u/.distcc", "/var/tmp/portage/.distcc"]
    env = {"HOME": "/home/u", "DISTCC_DIR": "/d", "PORTAGE_TMPDIR": "/big"}
    assert distccstate.default_dirs(env) == ["/d", "/big/portage/.distcc"]
    env = {"DISTCC_DIR": "/var/tmp/portage/.distcc/"}  # inside emerge: once
    assert distccstate.default_dirs(env) == ["/var/tmp/portage/.distcc/"]


# ---------------------------------------------------------------- rendering

NOW = 1_700_000_000.0


def _verdict(host: str, address: str, **extra: object) -> dict[str, object]:
    peer: dict[str, object] = {
        "host": host,
        "kind": "meshcc",
        "addresses": [address],
        "port": 3632,
        "cpus": 8,
        "jobs": 10,
        "free": None,
        "liveness": "up",
        "toolchains": [
            {"driver": "gcc", "version": "12.2.0", "target": "x86_64-linux-gnu"},
            {"driver": "g++", "version": "12.2.0", "target": "x86_64-linux-gnu"},
            {"driver": "gcc", "version": "13.1.0", "target": "aarch64-linux-gnu"},
        ],
    }
    peer.update(extra.pop("peer", {}))  # type: ignore[call-overload]
    return {"peer": peer, "included": True, "reason": "", "address": address, **extra}


def _status(**extra: object) -> dict[str, object]:
    return {
        "ok": True,
        "node": "alpha",
        "version": "0.9",
        "discovery": True,
        "interfaces": ["eth0"],
        "addresses": ["10.77.0.11"],
        "port": 3632,
        "jobs": 4,
        "running": 1,
        "leases": 3,
        "queued": 2,
        **extra,
    }


def _compile(pid: int, phase: int, mtime: float, host: str = "10.77.0.12") -> Compile:
    return Compile(pid, f"f{pid}.c", host, 1, phase, mtime, f"/x/binstate_{pid}")


def _snap(**kw: object) -> topview.Snapshot:
    base: dict[str, object] = {
        "at": NOW,
        "socket": "/run/meshcc/control.sock",
        "status": _status(),
        "verdicts": [],
        "daemon_error": None,
        "compiles": [],
        "dirs": [topview.StateDir("/root/.distcc", "", 0)],
        "cpus": 2,
        "hostname": "alpha.lan",
    }
    base.update(kw)
    return topview.Snapshot(**base)  # type: ignore[arg-type]


def _text(snap: topview.Snapshot) -> list[str]:
    return topview.render_text(snap).splitlines()


def _cells(lines: list[str], first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first`` (not a "not used" note)."""
    [row] = [line for line in lines if line.split()[:1] == [first] and "not used:" not in line]
    return row.split()


def test_render_header_and_peers_without_live_load() -> None:
    snap = _snap(verdicts=[_verdict("beta", "10.77.0.12"), _verdict("gamma", "10.77.0.13")])
    lines = _text(snap)
    assert "daemon alpha (meshcc 0.9) on /run/meshcc/control.sock" in lines[0]
    # cores and slots: this box (2 cpus, 4 slots) + two peers (8, 10 each); the peers'
    # running and waiting are unknown without the live load channel: "+?"
    assert "this box + 2 peers (2 up); 18 cores, 24 slots; running 1+?, waiting 2+?" in lines[1]
    assert "4 slots, 1 compiling for the mesh" in lines[2]
    assert "hold 3 leases, 2 waiting; discovery on (eth0)" in lines[2]
    head = next(line for line in lines if line.startswith("HOST"))
    assert head.split() == [
        "HOST", "ADDRESS", "CPUS", "JOBS", "RUN", "WAIT", "FREE", "SPEED", "HELD", "STATE",
        "TOOLCHAINS",
    ]  # fmt: skip
    assert _cells(lines, "alpha.lan")[:11] == [
        "alpha.lan", "10.77.0.11:3632", "2", "4", "1", "-", "-", "-", "-", "here", "-",
    ]  # fmt: skip
    beta = _cells(lines, "beta")
    assert beta[:10] == ["beta", "10.77.0.12:3632", "8", "10", "-", "-", "-", "-", "-", "up"]
    assert " ".join(beta[10:]) == "gcc,g++ 12.2.0 x86_64-linux-gnu; gcc 13.1.0 aarch64-linux-gnu"


def test_render_shows_live_load_when_the_daemon_reports_it() -> None:
    load = {"running": 3, "queued": 5, "free": 0, "speed": 3_500_000, "held": 2}
    v = _verdict("beta", "10.77.0.12", load=load)
    st = _status(free=1, speed=900_000, loads=[load])
    lines = _text(_snap(status=st, verdicts=[v]))
    assert _cells(lines, "beta")[:10] == [
        "beta", "10.77.0.12:3632", "8", "10", "3", "5", "0", "3.3M/s", "2", "up",
    ]  # fmt: skip
    assert _cells(lines, "alpha.lan")[4:9] == ["1", "-", "1", "879K/s", "-"]
    assert "running 4, waiting 7" in lines[1]


def test_render_peer_free_slots_from_its_announcement_and_states() -> None:
    free = _verdict("beta", "10.77.0.12", peer={"free": 6})
    down = _verdict("gamma", "10.77.0.13", peer={"liveness": "down"})
    out = _verdict(
        "delta",
        "10.78.0.1",
        included=False,
        reason="announced from 10.78.0.1, outside allowed 10.77.0.0/24",
    )
    distccd = _verdict("eps", "10.77.0.15", peer={"kind": "distcc", "cpus": None})
    lines = _text(_snap(verdicts=[free, down, out, distccd]))
    assert _cells(lines, "beta")[6] == "6"
    assert _cells(lines, "gamma")[9] == "down"
    assert _cells(lines, "delta")[9] == "out"
    assert "  delta not used: announced from 10.78.0.1, outside allowed 10.77.0.0/24" in lines
    assert _cells(lines, "eps")[1:4] == ["(distccd)", "10.77.0.15:3632", "-"]
    # gamma is down and delta unusable: not counted; eps's cores are unknown
    assert "this box + 4 peers (2 up); 10+? cores, 24 slots" in lines[1]


def test_render_compiles_with_phase_host_slot_and_age() -> None:
    compiles = [_compile(11462, 5, NOW - 2.5), _compile(11470, 3, NOW - 75, "localhost")]
    lines = _text(_snap(compiles=compiles, first_seen={11470: NOW - 130}))
    assert "this box's compiles: 2  [state: /root/.distcc]" in lines
    assert _cells(lines, "PID") == ["PID", "PHASE", "FILE", "HOST[SLOT]", "AGE"]
    assert _cells(lines, "11462") == ["11462", "Compile", "f11462.c", "10.77.0.12[1]", "2.5s"]
    assert _cells(lines, "11470") == ["11470", "Preprocess", "f11470.c", "localhost[1]", "2m10s"]


def test_render_without_daemon_still_shows_local_compiles() -> None:
    snap = _snap(
        status=None,
        socket=None,
        daemon_error="no meshcc daemon answers (no meshcc daemon at /x: No such file)",
        compiles=[_compile(77, 5, NOW)],
        dirs=[
            topview.StateDir("/h/.distcc", "absent"),
            topview.StateDir("/p/.distcc", "Permission denied"),
        ],
    )
    lines = _text(snap)
    assert lines[0].endswith("no meshcc daemon answers (no meshcc daemon at /x: No such file)")
    assert not any(line.startswith("HOST") for line in lines)
    assert (
        "this box's compiles: 1  [state: /h/.distcc (absent), /p/.distcc (Permission denied)]"
        in lines
    )
    assert _cells(lines, "77")[:4] == ["77", "Compile", "f77.c", "10.77.0.12[1]"]


def test_render_tells_peers_with_one_hostname_apart() -> None:
    twins = [
        _verdict("vm", "10.77.0.12", peer={"node_id": "b755753e9155"}),
        _verdict("vm", "10.77.0.13", peer={"node_id": "e244371832fb"}),
        _verdict("other", "10.77.0.14", peer={"node_id": "0123456789ab"}),
    ]
    lines = _text(_snap(verdicts=twins, hostname="vm", status=_status(node="c0ffee000000")))
    assert _cells(lines, "vm#c0ffee")[9] == "here"
    assert _cells(lines, "vm#b75575")[0:2] == ["vm#b75575", "10.77.0.12:3632"]
    assert _cells(lines, "vm#e24437")[0:2] == ["vm#e24437", "10.77.0.13:3632"]
    assert _cells(lines, "other")[0:2] == ["other", "10.77.0.14:3632"]


def test_render_clips_long_cells_and_escapes_names() -> None:
    v = _verdict(
        "a-very-long-host-name-indeed.example", "10.77.0.12", peer={"host": "x\x1b]0;t\x07"}
    )
    lines = _text(_snap(verdicts=[v]))
    assert all(line.isprintable() for line in lines)
    lines = _text(_snap(verdicts=[_verdict("a-very-long-host-name-indeed.example", "10.0.0.1")]))
    assert _cells(lines, "a-very-long-host-~")


def test_human_units() -> None:
    assert [topview.human_rate(v) for v in (None, 0, 999, 1500, 3_500_000, 5 * 1024**4)] == [
        "-", "0B/s", "999B/s", "1.5K/s", "3.3M/s", "5120G/s",
    ]  # fmt: skip
    assert [topview.human_age(s) for s in (-1, 0.04, 59.9, 61, 3599, 7322)] == [
        "0.0s", "0.0s", "59.9s", "1m01s", "59m59s", "2h02m",
    ]  # fmt: skip


def test_peer_load_is_the_one_place_reading_live_fields() -> None:
    assert topview.peer_load({"peer": {"free": 3}}) == topview.Load(free=3)
    assert topview.peer_load({"peer": {}, "load": {"running": 1, "speed": 0}}) == topview.Load(
        running=1
    )
    assert topview.peer_load({"peer": {}, "load": "junk"}) == topview.Load()
    assert topview.own_load({"running": 2, "free": 0}) == topview.Load(running=2)  # no load channel
    assert topview.own_load({"running": 2, "free": 0, "loads": []}) == topview.Load(
        running=2, free=0
    )
