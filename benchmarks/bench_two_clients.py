#!/usr/bin/env python3
"""Two client boxes building a real project at once against two servers (root needed).

    .venv/bin/python benchmarks/bench_two_clients.py [--rounds 3] [--server-jobs 1]
        [--local-share] [--make-j 8] [--ways meshcc,distcc] [--reserve]
        [--base-src DIR] [--server-nice N] [--json FILE]

meshcc issue 11 ("the mesh acts as one machine"): with two boxes building at once, a stock
distcc setup (static host lists) makes each server hold more connections than it runs, the
rest waiting inside it; meshcc's servers answer BUSY instead, so a server never holds more
than ``--jobs``. This measures both on the same LAN of network namespaces (tests/netns.py,
nothing touches the real interfaces): servers s1 and s2 (``meshcc daemon --jobs J``), client
boxes c1 and c2 (``meshcc daemon`` whose only compiler reports another gcc version, so they
are no peers for each other), zlib (Debian source, cached) configured once per client.

Each round runs, in alternating order:

* **meshcc**: ``make -jN CC=meshcc-gcc`` on c1 and c2 at once, hosts from each box's own
  daemon (leases);
* **distcc**: ``make -jN CC="distcc gcc"`` on c1 and c2 at once, ``DISTCC_HOSTS`` the static
  list ``s1/J,lzo s2/J,lzo`` (the servers are the same meshcc daemons, which serve stock
  distcc as distccd would, queueing its jobs inside, now counted).

Other ways (``--ways``): **meshcc-list** (``meshcc-gcc`` on the static list: the client's
own cost without leases) and **meshcc-base** (``--base-src DIR``: another version's
``meshcc-gcc``, e.g. ``git archive main meshcc | tar -x -C DIR``, run through PYTHONPATH
against the same daemons, so a client change is compared within one run). ``--reserve``
starts the daemons with ``MESHCC_RESERVE_NEXT=1`` (meshcc.mesh.leases: one request per
full peer queued in it ahead of time, counted there as waiting).

By default clients compile remotely only (``DISTCC_FALLBACK=0``, no ``localhost`` in the
list) and the servers run ``--jobs 1``: 2 slots in all, as many as this machine's cores, so
"ideal" means something. ``--local-share`` adds each box's own share (meshcc: the daemon's
``localhost/2``; distcc: ``localhost/2`` in the list, fallback allowed).

Figures (medians over rounds): makespan (both builds done), each client's build time;
the ideal = total work / min(total slots, cores), where total work is two local serial
builds (``make -j1 CC=gcc``, the same objects, measured first); per server, sampled every
few ms: most compiles running, most job slots held (meshcc's count: reserved, compiling,
or replying... see below), most requests waiting for a slot inside the server, most TCP
connections on the compile port (ESTABLISHED, from /proc: includes the daemons' 1 s
liveness probes and BUSY answers in flight); remote jobs per client (neither starves).

All namespaces share this machine's cores: clients' preprocessors, makes and the servers'
compilers compete, so the ideal is a bound, not a target one can reach exactly. So each way
also reports its CPU seconds by role (benchmarks/cpusample.py: daemons, remote compilers,
compile clients, their preprocessors) and its makespan against its own CPU floor (CPU used /
cores: the makespan if the cores never idled and nothing else ran, the honest ideal on one
shared machine), and how far apart the two clients finished (last / first: fairness).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import VENV_BIN, apt_source, clean_env  # noqa: E402
from bench_cache_mesh import _checkout, _make_argv, _no_lan, _run  # noqa: E402
from cpusample import CpuSampler  # noqa: E402

import meshcc  # noqa: E402
import netns  # noqa: E402
from harness import parse_job_summaries  # noqa: E402
from meshd import Mesh, mismatched_gcc, private_dir, trusted_dir  # noqa: E402
from slotsample import SlotSampler  # noqa: E402

PORT = 3632


def _serial_work(tree: Path, env: dict[str, str], runs: int = 2) -> float:
    """Wall seconds of one local serial build (the whole work of one client)."""
    times = []
    for _ in range(runs):
        _run(["make", "-f", "Makefile", "clean"], tree, env)
        t0 = time.monotonic()
        _run(_make_argv(1, "gcc"), tree, env)
        times.append(time.monotonic() - t0)
    return min(times)


def _compile_bytecode(dirs: list[Path]) -> None:
    """Write the .pyc files of the code the clients run. An installed package has them (pip
    compiles at install time), a source tree may not: with PYTHONDONTWRITEBYTECODE set (as on
    the development box) every meshcc-gcc would compile its modules again, on every job."""
    for d in dirs:
        if not compileall.compile_dir(str(d), quiet=1):
            raise SystemExit(f"cannot compile the Python files under {d}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server-jobs", type=int, default=1)
    ap.add_argument("--make-j", type=int, default=8)
    ap.add_argument("--local-share", action="store_true", help="also each box's own share")
    ap.add_argument(
        "--ways",
        default="meshcc,distcc",
        help="meshcc, distcc, meshcc-list (meshcc-gcc with the static list: no leases, "
        "no BUSY; separates the client's own cost from the scheduling), and meshcc-base "
        "(see --base-src)",
    )
    ap.add_argument(
        "--base-src",
        metavar="DIR",
        help="a copy of another version's meshcc package (its parent directory, e.g. from "
        "`git archive main meshcc`): the way meshcc-base runs that version's meshcc-gcc "
        "against the same daemons (PYTHONPATH), so a client change is compared in one run",
    )
    ap.add_argument(
        "--reserve",
        action="store_true",
        help="the daemons queue one request per full peer ahead of time (MESHCC_RESERVE_NEXT=1, "
        "meshcc.mesh.leases): the lease handover leaves the critical path",
    )
    ap.add_argument(
        "--server-nice",
        type=int,
        help="the servers' --nice (default: the daemon's, 5, for the daemon and its compilers)",
    )
    ap.add_argument(
        "--server-log-level",
        default="notice",
        help="the servers' --log-level (debug: count their BUSY answers; costs some CPU)",
    )
    ap.add_argument("--json", metavar="FILE")
    ns = ap.parse_args()
    if _no_lan():
        return 2

    if ns.reserve:
        os.environ["MESHCC_RESERVE_NEXT"] = "1"  # the daemons' environment (tests/meshd.py)
    _compile_bytecode([Path(meshcc.__file__).parent] + ([Path(ns.base_src)] if ns.base_src else []))
    src = apt_source("zlib")
    work = private_dir("slotwait-bench-")
    env0 = clean_env()
    env0["PATH"] = os.pathsep.join([str(VENV_BIN), env0.get("PATH", os.defpath)])
    cores = os.cpu_count() or 1
    J = ns.server_jobs
    try:
        ref = _checkout(src, work / "zlib-ref", env0)
        with netns.Lan() as lan, _mesh(lan, ns, work) as mesh:
            res = _bench(mesh, ns, work, src, env0, ref, cores)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["server_jobs"] = J
    res["reserve"] = ns.reserve
    if ns.json:
        Path(ns.json).write_text(json.dumps(res, indent=2))
    return 0


def _mesh(lan: netns.Lan, ns: argparse.Namespace, work: Path) -> Mesh:
    """Servers s1 and s2, and client boxes c1 and c2 whose only compiler reports another gcc
    version (so they are no peers for each other)."""
    hosts = {n: lan.add_host(n) for n in ("c1", "c2", "s1", "s2")}
    odd = mismatched_gcc(trusted_dir("slotwait-odd-"), "12.9.9")
    client = ("--log-level", "notice", "--compiler", str(odd))
    serving: tuple[str, ...] = ("--log-level", ns.server_log_level)
    serving += ("--jobs", str(ns.server_jobs))
    if ns.server_nice is not None:
        serving += ("--nice", str(ns.server_nice))
    return Mesh(work, hosts, own={"s1": serving, "s2": serving, "c1": client, "c2": client})


def _bench(
    mesh: Mesh,
    ns: argparse.Namespace,
    work: Path,
    src: Path,
    env0: dict[str, str],
    ref: Path,
    cores: int,
) -> dict[str, object]:
    J = ns.server_jobs
    hosts, daemons = mesh.hosts, mesh.daemons
    servers = {hosts["s1"].address, hosts["s2"].address}
    # each client box: the two servers, then its own share (distcc's localhost/2), no more
    mesh.wait_listed({c: servers | {"localhost/2"} for c in ("c1", "c2")}, exact=True)
    trees = {c: _checkout(src, work / f"zlib-{c}", env0) for c in ("c1", "c2")}
    static = " ".join(f"{hosts[s].address}/{J},lzo" for s in ("s1", "s2"))
    if ns.local_share:
        static += " localhost/2"
    slots = 2 * J + (4 if ns.local_share else 0)
    addr = {hosts[c].address: c for c in ("c1", "c2")}

    def env_for(c: str, way: str) -> dict[str, str]:
        state = work / f"state-{c}-{way}"
        shutil.rmtree(state, ignore_errors=True)
        (state / "tmp").mkdir(parents=True)
        e = dict(env0, DISTCC_DIR=str(state), TMPDIR=str(state / "tmp"))
        if not ns.local_share:
            e["DISTCC_FALLBACK"] = "0"
        if way in ("meshcc", "meshcc-base"):
            e["MESHCC_SOCKET"] = str(daemons[c].socket)
            if way == "meshcc-base":
                if not ns.base_src:
                    raise SystemExit("the way meshcc-base needs --base-src DIR")
                e["PYTHONPATH"] = str(Path(ns.base_src).resolve())
        else:
            e["DISTCC_HOSTS"] = static
            e["MESHCC_SOCKET"] = str(work / "none.sock")
        return e

    def one(way: str) -> dict[str, object]:
        cc = "distcc gcc" if way == "distcc" else "meshcc-gcc"
        for c in ("c1", "c2"):
            _run(["make", "-f", "Makefile", "clean"], trees[c], env0)
        before = {s: len(parse_job_summaries(daemons[s].log_text())) for s in ("s1", "s2")}
        busy_before = {s: daemons[s].log_text().count(": busy (") for s in ("s1", "s2")}
        sampled = {
            s: (daemons[s].socket, daemons[s].proc.pid, PORT, J)  # type: ignore[union-attr]
            for s in ("s1", "s2")
        }
        done: dict[str, float] = {}
        pids = {n: daemons[n].proc.pid for n in daemons}  # type: ignore[union-attr]
        roles = {pids[n]: "server daemons" if n[0] == "s" else "client daemons" for n in pids}
        cpu = CpuSampler(roles, {pids["s1"], pids["s2"]})
        with cpu, SlotSampler(sampled, interval=0.002) as sampler:
            t0 = time.monotonic()
            procs = {
                c: hosts[c].popen(
                    _make_argv(ns.make_j, cc),
                    cwd=trees[c],
                    env=env_for(c, way),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for c in ("c1", "c2")
            }
            pending = dict(procs)
            while pending:
                for c, p in list(pending.items()):
                    if p.poll() is not None:
                        done[c] = time.monotonic() - t0
                        del pending[c]
                time.sleep(0.01)
        for c, p in procs.items():
            err = p.stderr.read() if p.stderr else ""
            if p.returncode != 0:
                raise SystemExit(f"{way}: make on {c} failed ({p.returncode}):\n{err[-3000:]}")
        time.sleep(0.5)  # summaries trail the replies
        remote = dict.fromkeys(("c1", "c2"), 0)
        queued = 0
        busy = 0
        for s in ("s1", "s2"):
            for j in parse_job_summaries(daemons[s].log_text())[before[s] :]:
                if j.result == "COMPILE_OK":
                    remote[addr[j.client.rsplit(":", 1)[0]]] += 1
                    queued += j.queue_ms is not None
            busy += daemons[s].log_text().count(": busy (") - busy_before[s]
        used = cpu.by_role()
        total = sum(used.values())
        return {
            "makespan_s": max(done.values()),
            "client_s": done,
            "cpu_s": used,
            # The makespan if the cores never idled and nothing else ran: this way's own CPU
            # (real work and its machinery) over the cores; what a shared box cannot beat.
            "cpu_floor_s": round(total / cores, 2),
            "remote_jobs": remote,
            "jobs_queued_in_server": queued,
            # BUSY answers (the servers log them at debug only: --server-log-level debug)
            "busy_answers": busy,
            "peaks": {s: p.as_dict() for s, p in sampler.peaks.items()},
        }

    # The machine's load changes (other work shares its cores): the total work is measured
    # in every round, next to the two ways, and each makespan is judged against its round's.
    ways = [w.strip() for w in ns.ways.split(",") if w.strip()]
    runs: dict[str, list[dict[str, object]]] = {w: [] for w in ways}
    serials: list[float] = []
    for r in range(ns.rounds):
        serial = _serial_work(ref, env0, runs=1)
        serials.append(serial)
        print(f"round {r + 1} local serial build: {serial:.2f} s", flush=True)
        order = ways if r % 2 == 0 else ways[::-1]
        for way in order:
            got = one(way)
            got["ideal_s"] = 2 * serial / min(slots, cores)
            got["x_ideal"] = float(got["makespan_s"]) / got["ideal_s"]  # type: ignore[arg-type]
            got["x_cpu_floor"] = float(got["makespan_s"]) / float(got["cpu_floor_s"])  # type: ignore[arg-type]
            runs[way].append(got)
            print(f"round {r + 1} {way}: {json.dumps(got)}", flush=True)
    serial = statistics.median(serials)
    ideal_slots = 2 * serial / slots
    ideal_cores = 2 * serial / min(slots, cores)

    print(
        f"\nservers --jobs {J} x2, {'with' if ns.local_share else 'no'} local share: "
        f"{slots} slots, {cores} cores; make -j{ns.make_j} on each client; {ns.rounds} rounds"
    )
    print(
        f"ideal (2 x serial / min(slots, cores)), median serial {serial:.2f} s "
        f"(rounds: {', '.join(f'{s:.2f}' for s in serials)}) = {ideal_cores:.2f} s"
    )
    print(f"ideal over slots alone (2 x serial / {slots}) = {ideal_slots:.2f} s")
    summary: dict[str, object] = {}
    for way, rs in runs.items():
        mk = statistics.median(float(x["makespan_s"]) for x in rs)  # type: ignore[arg-type]
        x_ideal = statistics.median(float(x["x_ideal"]) for x in rs)  # type: ignore[arg-type]
        util = {
            s: statistics.median(float(x["peaks"][s]["mean_running"]) for x in rs) / J  # type: ignore[index]
            for s in ("s1", "s2")
        }
        peak = {
            s: {
                k: max(int(x["peaks"][s][k]) for x in rs)  # type: ignore[index]
                for k in ("running", "slots_held", "slot_waiting", "connections")
            }
            for s in ("s1", "s2")
        }
        remote = [x["remote_jobs"] for x in rs]
        x_floor = statistics.median(float(x["x_cpu_floor"]) for x in rs)  # type: ignore[arg-type]
        roles = sorted({k for x in rs for k in x["cpu_s"]})  # type: ignore[attr-defined]
        cpu_med = {
            k: statistics.median(float(x["cpu_s"].get(k, 0.0)) for x in rs)  # type: ignore[attr-defined]
            for k in roles
        }
        spread = [
            round(max(x["client_s"].values()) / min(x["client_s"].values()), 2)  # type: ignore[attr-defined]
            for x in rs
        ]
        summary[way] = {
            "makespan_median_s": mk,
            "x_ideal_median": x_ideal,
            "x_cpu_floor_median": x_floor,
            "cpu_median_s": cpu_med,
            "client_finish_ratio": spread,
            "server_busy_fraction": util,
            "peaks_max": peak,
            "remote_jobs": remote,
        }
        print(
            f"{way:7s} makespan median {mk:6.2f} s, {x_ideal:4.2f} x its round's ideal; "
            f"servers busy {', '.join(f'{s} {u:.0%}' for s, u in util.items())}; "
            f"per server max running/held/waiting/tcp: "
            + ", ".join(
                f"{s} {p['running']}/{p['slots_held']}/{p['slot_waiting']}/{p['connections']}"
                for s, p in peak.items()
            )
            + f"; remote jobs per client {remote}"
        )
        print(
            f"{'':7s} {x_floor:4.2f} x its own CPU floor (CPU used / cores); CPU s by role "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu_med.items())
            + f"; last / first client to finish: {spread}"
        )
    if "distcc" in summary:
        dd = summary["distcc"]["makespan_median_s"]  # type: ignore[index]
        for way in summary:
            if way != "distcc":
                m = summary[way]["makespan_median_s"]  # type: ignore[index]
                print(f"{way} / distcc makespan: {m / dd:.2f}")
    return {
        "runs": runs,
        "summary": summary,
        "serial_s": serials,
        "ideal_s": ideal_cores,
        "ideal_slots_s": ideal_slots,
        "slots": slots,
        "cores": cores,
    }


if __name__ == "__main__":
    sys.exit(main())
