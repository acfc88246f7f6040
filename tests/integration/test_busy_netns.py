"""Two client boxes, two servers (meshcc issue 11: the mesh acts as one machine).

Four network namespaces on one bridge (tests/netns.py), each with its own ``meshcc daemon``:
servers s1 and s2 (``--jobs 2``), client boxes c1 and c2 (their only compiler a gcc that
reports another version, so neither is a matching peer for the other: each uses s1, s2 and
its own share). Neither client daemon knows what the other leased, which is exactly how a
server used to end up holding four connections while running two.

1. Held jobs (the servers' gcc waits while the test's hold file exists): c2 fills all four
   server slots; a ``meshcc-gcc`` on c1 compiles in its own share at once while c2's jobs
   still hold the servers (its daemon knows from the live-load channel, or the servers say
   BUSY; the client's BUSY path on its own: integration/test_busy.py). With
   ``DISTCC_FALLBACK=0`` it waits instead, visibly, in c1's daemon (``queued``), not inside
   a server. A stock distcc 3.4 client on c1 sent to s1 still works: it waits inside s1 as
   with distccd, and s1's status shows it (``slot_waiting``). All finish once the hold is released.
2. Real builds: zlib built on c1 and c2 at once with ``CC=meshcc-gcc make -j8`` (leases).
   Sampled every few ms on both servers: running compiles and job slots held never exceed
   ``--jobs``, and no request ever waits inside a server. Both builds match a local build
   and both clients got remote jobs (neither starves).

3. Fairness with indivisible slots (``test_two_clients_share_one_slot_servers_fairly``):
   servers with ``--jobs 1`` and both clients remote only (``DISTCC_FALLBACK=0``), so the
   two slots must be shared between two boxes that each want eight. Sampled: never more than
   one slot held or running per server, nothing waiting inside one; and when the first build
   ends, the other box has had at least a third as many jobs compiled (each box is fair
   game for both servers; before the load records carried what each box holds mesh-wide,
   one box could hold both servers' only slots and the other wait for its whole build).

Time bounds are only against hangs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN, copy_tree, parse_job_summaries, run
from meshcc.wire import control
from meshd import Meshd, mismatched_gcc, private_dir, trusted_dir
from netns import Lan
from slotsample import SlotSampler
from test_build_real_project import OBJECTS_MK, TARGET, _objects

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

SERVER_JOBS = 2

HELD_GCC = """#!/bin/sh
# gcc; a compile (-c) first says it started, then waits while {marks}/hold exists.
for a in "$@"; do
  if [ "$a" = "-c" ]; then
    : > "{marks}/started.$$"
    while [ -e "{marks}/hold" ]; do sleep 0.02; done
    break
  fi
done
exec /usr/bin/gcc "$@"
"""


def _held_gcc(marks: Path) -> list[str]:
    bindir = trusted_dir("slotwait-bin-")
    triplet = run(["gcc", "-dumpmachine"]).stdout.strip()
    paths = []
    for name in ("gcc", f"{triplet}-gcc"):
        gcc = bindir / name
        gcc.write_text(HELD_GCC.format(marks=marks))
        gcc.chmod(0o755)
        paths.append(str(gcc))
    return paths


def _status(d: Meshd) -> control.StatusReply:
    st = control.decode_status_reply(d.status())
    assert isinstance(st, control.StatusReply), st
    return st


def _started(marks: Path) -> int:
    return len(list(marks.glob("started.*")))


def _diagnostics(daemons: list[Meshd]) -> str:
    return "\n".join(f"--- {d.name} log ---\n{d.log_text()[-5000:]}" for d in daemons)


def _finish(proc: subprocess.Popen[str], what: str, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n{out}\n{err}"
    return err


def test_two_clients_two_servers(
    lan: Callable[..., Lan], zlib_source: Path, tmp_path: Path
) -> None:
    net = lan()
    hosts = {n: net.add_host(n) for n in ("c1", "c2", "s1", "s2")}
    work = private_dir("slotwait-netns-")
    marks = private_dir("slotwait-marks-")
    try:
        _run(hosts, work, marks, zlib_source, tmp_path)
    finally:
        (marks / "hold").unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(marks, ignore_errors=True)


def _run(
    hosts: dict[str, netns.Host], work: Path, marks: Path, zlib_source: Path, tmp_path: Path
) -> None:
    held = [a for path in _held_gcc(marks) for a in ("--compiler", path)]
    odd = mismatched_gcc(trusted_dir("slotwait-odd-"), "12.9.9")
    common = ("--interface", "eth0", "--jobs", str(SERVER_JOBS))
    daemons = {
        "s1": Meshd(work, hosts["s1"], *common, *held, name="s1"),
        "s2": Meshd(work, hosts["s2"], *common, *held, name="s2"),
        "c1": Meshd(work, hosts["c1"], *common, "--compiler", str(odd), name="c1"),
        "c2": Meshd(work, hosts["c2"], *common, "--compiler", str(odd), name="c2"),
    }
    for d in daemons.values():
        d.start()
    s1, s2, c1, c2 = (daemons[n] for n in ("s1", "s2", "c1", "c2"))
    everyone = list(daemons.values())
    servers = {hosts["s1"].address, hosts["s2"].address}

    def assembled(d: Meshd) -> bool:
        res = d.cli("hosts", "--cc", "gcc", inside=True)
        return {tok.split(":")[0] for tok in res.stdout.split()} == servers | {"localhost/2"}

    try:
        netns.wait_for(lambda: assembled(c1) and assembled(c2), 60, 0.25, "the mesh")
    except TimeoutError:
        pytest.fail(_diagnostics(everyone))

    tree = tmp_path / "src"
    tree.mkdir()
    for i in range(6):
        (tree / f"f{i}.c").write_text(f"int f{i}(int x) {{ return x + {i}; }}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])

    def client_env(d: Meshd, **extra: str) -> dict[str, str]:
        state = tmp_path / f"state-{d.name}"
        (state / "tmp").mkdir(parents=True, exist_ok=True)
        return (
            dict(env, DISTCC_DIR=str(state), TMPDIR=str(state / "tmp"), MESHCC_SOCKET=str(d.socket))
            | extra
        )

    # ---- 1. held jobs: c2 fills every server slot
    (marks / "hold").touch()
    procs: list[subprocess.Popen[str]] = []

    def start(host: str, argv: list[str], e: dict[str, str]) -> subprocess.Popen[str]:
        p = hosts[host].popen(
            argv, cwd=tree, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(p)
        return p

    try:
        strict2 = client_env(c2, DISTCC_FALLBACK="0")
        fill = [start("c2", ["meshcc-gcc", "-c", f"f{i}.c"], strict2) for i in range(4)]
        try:
            netns.wait_for(lambda: _started(marks) == 4, 60, what="c2's four jobs to start")
        except TimeoutError:
            pytest.fail(_diagnostics(everyone))
        assert [_status(s).slots_held for s in (s1, s2)] == [SERVER_JOBS] * 2

        # c1: compiles in its own share at once while c2 still holds the servers: its
        # daemon knows they are full from the live-load channel, or the servers say BUSY
        # (the window before the load reaches it); never a job waiting inside a server.
        verbose = client_env(c1, MESHCC_VERBOSE="1")
        res = hosts["c1"].run(["meshcc-gcc", "-c", "f4.c", "-o", "c1-f4.o"], cwd=tree, env=verbose)
        assert res.returncode == 0, res.stderr
        assert all(p.poll() is None for p in fill) and (marks / "hold").exists()
        assert "share" in res.stderr and "compiling locally" in res.stderr, res.stderr
        print(f"c1's compile: {res.stderr.count('is busy')} BUSY answer(s)\n{res.stderr}")
        assert (tree / "c1-f4.o").stat().st_size > 0 and _started(marks) == 4
        assert [(_status(s).slots_held, _status(s).slot_waiting) for s in (s1, s2)] == [
            (SERVER_JOBS, 0)
        ] * 2

        # DISTCC_FALLBACK=0 on c1: the job waits in c1's daemon, where it shows.
        strict1 = client_env(c1, DISTCC_FALLBACK="0", MESHCC_VERBOSE="1")
        waiting = start("c1", ["meshcc-gcc", "-c", "f5.c", "-o", "c1-f5.o"], strict1)
        netns.wait_for(lambda: _status(c1).queued == 1, 30, what="c1's daemon to queue f5.c")
        assert [_status(s).slot_waiting for s in (s1, s2)] == [0, 0]

        # Stock distcc on c1, sent to s1 by a static list: waits inside s1, visibly.
        stock = start(
            "c1",
            ["distcc", "gcc", "-c", "f0.c", "-o", "stock-f0.o"],
            client_env(c1, DISTCC_HOSTS=f"{hosts['s1'].address}/4", DISTCC_FALLBACK="0"),
        )
        netns.wait_for(lambda: _status(s1).slot_waiting == 1, 30, what="s1 to show distcc's job")
        assert _status(s1).slots_held == SERVER_JOBS and _started(marks) == 4
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        raise
    finally:
        (marks / "hold").unlink(missing_ok=True)
    for i, p in enumerate(fill):
        _finish(p, f"c2 f{i}.c")
    err = _finish(waiting, "c1 f5.c (DISTCC_FALLBACK=0)")
    assert "job slot reserved" in err, err
    _finish(stock, "stock distcc f0.c")
    assert (tree / "stock-f0.o").stat().st_size > 0 and (tree / "c1-f5.o").stat().st_size > 0
    queued = [j for s in (s1, s2) for j in parse_job_summaries(s.log_text()) if j.queue_ms]
    assert [j.input for j in queued] == ["f0.c"], "only the stock client's job waited in a server"

    # ---- 2. real builds from both client boxes at once
    ref = copy_tree(zlib_source, tmp_path / "zlib-ref")
    (ref / "objects.mk").write_text(OBJECTS_MK)
    local_env = client_env(c1)
    run(["./configure"], cwd=ref, env=dict(local_env, CC="gcc"))
    trees = {c: shutil.copytree(ref, tmp_path / f"zlib-{c}", symlinks=True) for c in ("c1", "c2")}
    run(["make", "-j2", "-f", "Makefile", "-f", "objects.mk", TARGET], cwd=ref, env=local_env)
    reference = _objects(ref)
    before = {s.name: len(parse_job_summaries(s.log_text())) for s in (s1, s2)}
    sampled = {
        s.name: (s.socket, s.proc.pid, 3632, SERVER_JOBS)  # type: ignore[union-attr]
        for s in (s1, s2)
    }
    with SlotSampler(sampled) as sampler:
        builds = {
            c: hosts[c].popen(
                ["make", "-j8", "-f", "Makefile", "-f", "objects.mk", "CC=meshcc-gcc", TARGET],
                cwd=trees[c],
                env=client_env(daemons[c]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in ("c1", "c2")
        }
        for c, p in builds.items():
            _finish(p, f"make on {c}", timeout=900)
    for c in ("c1", "c2"):
        got = _objects(trees[c])
        assert got == reference, f"{c}: objects differ from the local build"
    peaks = {name: p.as_dict() for name, p in sampler.peaks.items()}
    print(f"sampled peaks per server (--jobs {SERVER_JOBS}): {peaks}")
    assert not sampler.errors, sampler.errors[:5]
    for name, p in sampler.peaks.items():
        assert p.samples > 20, (name, p)
        assert p.running <= SERVER_JOBS and p.slots_held <= SERVER_JOBS, (name, p)
        assert not p.over, (name, p.over[:5])
        assert p.slot_waiting == 0, f"{name}: a meshcc job waited inside the server"
    by_client = dict.fromkeys(("c1", "c2"), 0)
    addr = {hosts[c].address: c for c in by_client}
    for s in (s1, s2):
        for j in parse_job_summaries(s.log_text())[before[s.name] :]:
            if j.result == "COMPILE_OK":
                by_client[addr[j.client.rsplit(":", 1)[0]]] += 1
    print(f"remote jobs per client: {by_client}")
    assert all(by_client.values()), f"a client got no remote job: {by_client}"


def test_two_clients_share_one_slot_servers_fairly(
    lan: Callable[..., Lan], zlib_source: Path, tmp_path: Path
) -> None:
    net = lan()
    hosts = {n: net.add_host(n) for n in ("c1", "c2", "s1", "s2")}
    work = private_dir("slotwait-fair-")
    try:
        _fair(hosts, work, zlib_source, tmp_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fair(hosts: dict[str, netns.Host], work: Path, zlib_source: Path, tmp_path: Path) -> None:
    odd = mismatched_gcc(trusted_dir("slotwait-odd-"), "12.9.9")
    common = ("--interface", "eth0")
    daemons = {
        "s1": Meshd(work, hosts["s1"], *common, "--jobs", "1", name="s1"),
        "s2": Meshd(work, hosts["s2"], *common, "--jobs", "1", name="s2"),
        "c1": Meshd(work, hosts["c1"], *common, "--compiler", str(odd), name="c1"),
        "c2": Meshd(work, hosts["c2"], *common, "--compiler", str(odd), name="c2"),
    }
    for d in daemons.values():
        d.start()
    s1, s2 = daemons["s1"], daemons["s2"]
    servers = {hosts["s1"].address, hosts["s2"].address}

    def assembled(d: Meshd) -> bool:
        res = d.cli("hosts", "--cc", "gcc", inside=True)
        return {tok.split(":")[0] for tok in res.stdout.split()} == servers | {"localhost/2"}

    try:
        netns.wait_for(
            lambda: assembled(daemons["c1"]) and assembled(daemons["c2"]), 60, 0.25, "the mesh"
        )
    except TimeoutError:
        pytest.fail(_diagnostics(list(daemons.values())))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
    ref = copy_tree(zlib_source, tmp_path / "zlib-ref")
    (ref / "objects.mk").write_text(OBJECTS_MK)
    run(["./configure"], cwd=ref, env=dict(env, CC="gcc"))
    trees = {c: shutil.copytree(ref, tmp_path / f"zlib-{c}", symlinks=True) for c in ("c1", "c2")}
    addr = {hosts[c].address: c for c in ("c1", "c2")}

    def compiled() -> dict[str, int]:
        """Jobs compiled on the servers so far, per client box."""
        by_client = dict.fromkeys(("c1", "c2"), 0)
        for s in (s1, s2):
            for j in parse_job_summaries(s.log_text()):
                if j.result == "COMPILE_OK":
                    by_client[addr[j.client.rsplit(":", 1)[0]]] += 1
        return by_client

    def client_env(c: str) -> dict[str, str]:
        state = tmp_path / f"state-{c}"
        (state / "tmp").mkdir(parents=True, exist_ok=True)
        return dict(
            env,
            DISTCC_DIR=str(state),
            TMPDIR=str(state / "tmp"),
            MESHCC_SOCKET=str(daemons[c].socket),
            DISTCC_FALLBACK="0",
        )

    sampled = {
        s.name: (s.socket, s.proc.pid, 3632, 1)  # type: ignore[union-attr]
        for s in (s1, s2)
    }
    at_first_end: dict[str, int] | None = None
    first = None
    with SlotSampler(sampled) as sampler:
        builds = {
            c: hosts[c].popen(
                ["make", "-j8", "-f", "Makefile", "-f", "objects.mk", "CC=meshcc-gcc", TARGET],
                cwd=trees[c],
                env=client_env(c),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in ("c1", "c2")
        }
        try:
            first = netns.wait_for(
                lambda: next((c for c, p in builds.items() if p.poll() is not None), None),
                900,
                0.05,
                "a build to end",
            )
            at_first_end = compiled()  # the other's count (a summary may lag: fewer)
        finally:
            for c, p in builds.items():
                _finish(p, f"make on {c}", timeout=900)
    peaks = {name: p.as_dict() for name, p in sampler.peaks.items()}
    final = compiled()
    print(f"sampled peaks per server (--jobs 1): {peaks}")
    print(f"{first} ended first; jobs compiled per client then: {at_first_end}; in all {final}")
    assert not sampler.errors, sampler.errors[:5]
    for name, p in sampler.peaks.items():
        assert p.samples > 20, (name, p)
        assert p.running <= 1 and p.slots_held <= 1 and p.slot_waiting == 0, (name, p)
        assert not p.over, (name, p.over[:5])
    assert at_first_end is not None and first is not None
    other = "c2" if first == "c1" else "c1"
    assert final[first] == final[other] > 0, final  # every job remote (DISTCC_FALLBACK=0)
    assert at_first_end[other] * 3 >= final[first], (
        f"{other} starved: {at_first_end} compiled when {first}'s build ended ({final} in all)"
    )
