#!/usr/bin/env python3
"""One compile at a time: meshcc-gcc -> meshcc daemon vs distcc -> distccd, per job.

Why: a parallel build hides per-job costs behind other jobs. Issue 12 asks where each job's
time goes on both sides, so this replays a real project's compile commands one by one
through each pair and measures, for every job:

- **wall**: from spawning the client to reaping it (the latency a serial build sees);
- **client CPU**: user+sys of the client and everything it waited for (its local
  preprocessor included), from os.wait4;
- **server CPU**: CPU time the daemon's own processes and threads spent on the job, *not*
  counting the compiler it ran. Read as the sum of ``/proc/PID/task/TID/schedstat``'s
  on-CPU nanoseconds over every live task of the daemon's process group, sampled just
  before each job (after a short settle, so each job's clean-up after its reply is counted
  with it). The compiler processes are gone by then, so they are excluded by construction;
  what is left is the daemon's reading, decompressing, writing the job's files, spawning
  and reaping the compiler (the parent's side), compressing and sending the reply, logging.
  distccd: its parent and its pre-forked children; a job during which a distccd child was
  replaced (its counters vanish) is dropped from the server figure and counted. meshcc: the
  daemon process with all its threads (compression runs in worker threads); a job during
  which a thread ended is dropped likewise. The daemons' idle CPU is measured first and
  reported alongside (it is included in the per-job figures, as it would be in a build).

Ways alternate job by job (ABAB, then BABA for the next job), and each way replays the whole
list ``--reps`` times; medians per way are reported, with ratios to distcc. Commands are
recorded once from a real local build (CC set to a recording shell script), so both ways
replay the same argv in the same directory. DISTCC_FALLBACK=0: a job that fails remotely
fails the run rather than compiling locally. Everything talks to 127.0.0.1 only.

    .venv/bin/python benchmarks/bench_serial.py                     # zlib, protocol 2 (,lzo)
    .venv/bin/python benchmarks/bench_serial.py --project xz-utils --reps 3
    .venv/bin/python benchmarks/bench_serial.py --meshcc-prefix /opt/meshcc   # an install
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

TARGET_CLIENT_CPU = 1.3  # meshcc-gcc client CPU per job vs distcc's
TARGET_SERVER_CPU = 1.2  # meshcc daemon CPU per job vs distccd's
TARGET_WALL = 1.0  # one job at a time, meshcc pair vs distcc pair

PROJECTS: dict[str, tuple[list[str], list[str]]] = {
    # configure argv, make targets; as in bench_build.py
    "zlib": (["./configure"], ["static"]),
    "xz-utils": (
        ["./configure", "CFLAGS=-O2", "--disable-nls", "--disable-shared", "--disable-doc"],
        [],
    ),
}
SETTLE_S = 0.03  # after a job, before the next snapshot: the server's post-reply clean-up
RECORDER = """#!/bin/sh
# Records one compiler command (cwd, then argv, NUL-separated) and runs gcc.
{ printf '%s\\0' "$PWD" "$#" "$@"; } >> "$MESHCC_BENCH_LOG"
exec gcc "$@"
"""


@dataclass
class Job:
    cwd: str
    argv: list[str]  # after the compiler name


@dataclass
class WayStats:
    name: str
    walls: list[float] = field(default_factory=list)  # ms
    client_cpu: list[float] = field(default_factory=list)  # ms
    server_cpu: list[float] = field(default_factory=list)  # ms
    server_dropped: int = 0
    idle_cpu_ms_per_s: float = 0.0

    def med(self, xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None


def record_jobs(tree: Path, project: str, work: Path) -> list[Job]:
    """Configure and build once with a recording CC; keep the `-c` compiles of C files."""
    configure, targets = PROJECTS[project]
    recorder = work / "record-cc"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    log = work / "commands.log"
    env = h.clean_env()
    env["CC"] = "gcc"
    out = work / "build.log"
    with open(out, "wb") as o:
        subprocess.run(configure, cwd=tree, env=env, stdout=o, stderr=o, check=True)
        env["MESHCC_BENCH_LOG"] = str(log)
        subprocess.run(
            ["make", "-j2", f"CC={recorder}", *targets],
            cwd=tree,
            env=env,
            stdout=o,
            stderr=o,
            check=True,
        )
    fields = log.read_bytes().split(b"\0")
    jobs: list[Job] = []
    i = 0
    while i + 1 < len(fields):
        cwd = fields[i].decode()
        n = int(fields[i + 1])
        argv = [f.decode() for f in fields[i + 2 : i + 2 + n]]
        i += 2 + n
        if "-c" in argv and any(a.endswith(".c") for a in argv) and "-E" not in argv:
            jobs.append(Job(cwd, argv))
    if not jobs:
        raise h.HarnessError(f"no compile commands recorded (see {out})")
    return jobs


def group_tasks(pgid: int) -> dict[int, int]:
    """{tid: on-CPU ns} for every thread of every live process in process group PGID."""
    tasks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            if int(stat[stat.rindex(b")") + 2 :].split()[2]) != pgid:
                continue
            for tid in os.listdir(f"/proc/{entry}/task"):
                with open(f"/proc/{entry}/task/{tid}/schedstat", "rb") as f:
                    tasks[int(tid)] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return tasks


def server_delta(before: dict[int, int], after: dict[int, int]) -> float | None:
    """ms the tasks present in both snapshots ran; None if a task of `before` is gone
    (its CPU since the snapshot is unknown). New tasks count from zero: a compiler
    would be one, but it has exited by the time of `after`."""
    if not before.keys() <= after.keys():
        return None
    return sum(after[t] - before.get(t, 0) for t in after) / 1e6


def run_client(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, user+sys ms of the client tree); raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, ru = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1e3
    err = proc.stderr.read() if proc.stderr else b""
    if status != 0:
        raise h.HarnessError(f"{' '.join(argv)} in {cwd} failed:\n{err.decode(errors='replace')}")
    return wall, (ru.ru_utime + ru.ru_stime) * 1e3


def idle_rate(pgid: int, seconds: float = 2.0) -> float:
    a = group_tasks(pgid)
    time.sleep(seconds)
    d = server_delta(a, group_tasks(pgid))
    return (d or 0.0) / seconds


def bench(args: argparse.Namespace, work: Path) -> dict:
    src = h.apt_source(args.project)
    tree = work / "tree"
    shutil.copytree(src, tree, symlinks=True)
    jobs = record_jobs(tree, args.project, work)
    print(f"{args.project}: {len(jobs)} compile jobs recorded", file=sys.stderr)

    prefix_bin = Path(args.meshcc_prefix) / "bin" if args.meshcc_prefix else h.VENV_BIN
    meshcc_gcc = str(prefix_bin / "meshcc-gcc")
    lzo = args.protocol == 2
    extra: list[str] = []
    if args.meshcc_prefix:
        # The installed daemon, started by its own launcher (python -m would be the venv's).
        meshccd = _start_installed_meshcc(prefix_bin, work / "meshccd", args.server_jobs)
    else:
        meshccd = h.start_meshcc(work / "meshccd", args.server_jobs, *extra)
    distccd = h.start_distccd(work / "distccd", args.server_jobs)
    daemons = {"meshcc": meshccd, "distcc": distccd}
    try:
        ways: dict[str, tuple[list[str], dict[str, str], h.Daemon]] = {}
        for key, client, daemon in (
            ("meshcc", [meshcc_gcc], meshccd),
            ("distcc", ["distcc", "gcc"], distccd),
        ):
            env = h.client_env(work / f"client-{key}", daemon.host_spec(lzo=lzo, limit=4))
            env["PATH"] = os.pathsep.join(
                [str(prefix_bin)] + [p for p in env["PATH"].split(os.pathsep) if p]
            )
            ways[key] = (client, env, daemon)
        stats = {k: WayStats(k) for k in ways}
        for k, (_, _, d) in ways.items():
            stats[k].idle_cpu_ms_per_s = idle_rate(os.getpgid(d.proc.pid))
        # one untimed pass per way: page cache, .pyc files, distccd's children all warm
        for job in jobs:
            for client, env, _ in ways.values():
                run_client([*client, *job.argv], job.cwd, env)
        order = list(ways)
        n = 0
        for _ in range(args.reps):
            for job in jobs:
                for key in order if n % 2 == 0 else order[::-1]:
                    client, env, daemon = ways[key]
                    pgid = os.getpgid(daemon.proc.pid)
                    time.sleep(SETTLE_S)
                    before = group_tasks(pgid)
                    wall, cpu = run_client([*client, *job.argv], job.cwd, env)
                    time.sleep(SETTLE_S)
                    delta = server_delta(before, group_tasks(pgid))
                    st = stats[key]
                    st.walls.append(wall)
                    st.client_cpu.append(cpu)
                    if delta is None:
                        st.server_dropped += 1
                    else:
                        st.server_cpu.append(delta)
                n += 1
        expected = (args.reps + 1) * len(jobs)
        remote = {k: d.count_jobs() for k, d in daemons.items()}
        for k, d in daemons.items():
            if remote[k] < expected:
                raise h.HarnessError(
                    f"{k}: only {remote[k]} of {expected} jobs logged COMPILE_OK\n"
                    + d.log_text()[-3000:]
                )
    finally:
        for d in daemons.values():
            d.stop()
    return {
        "project": args.project,
        "protocol": args.protocol,
        "jobs": len(jobs),
        "reps": args.reps,
        "meshcc_gcc": meshcc_gcc,
        "ways": {
            k: {
                "wall_ms": s.med(s.walls),
                "client_cpu_ms": s.med(s.client_cpu),
                "server_cpu_ms": s.med(s.server_cpu),
                "server_cpu_mean_ms": statistics.fmean(s.server_cpu) if s.server_cpu else None,
                "server_samples_dropped": s.server_dropped,
                "idle_cpu_ms_per_s": s.idle_cpu_ms_per_s,
                "n": len(s.walls),
            }
            for k, s in stats.items()
        },
    }


def _start_installed_meshcc(prefix_bin: Path, workdir: Path, jobs: int) -> h.Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    port = h.free_port()
    log = workdir / "meshccd.log"
    argv = [
        str(prefix_bin / "meshcc"),
        "daemon",
        "--listen",
        h.LOOPBACK,
        "--no-discovery",
        "--port",
        str(port),
        "--allow",
        h.LOOPBACK,
        "--jobs",
        str(jobs),
        "--log-file",
        str(log),
        "--log-level",
        "info",
    ]
    env = h.clean_env()
    env.pop("TMPDIR", None)
    return h._spawn("meshcc", argv, workdir, port, log, env, workdir / "meshccd.out")


def report(r: dict) -> str:
    m, d = r["ways"]["meshcc"], r["ways"]["distcc"]

    def ratio(key: str) -> str:
        if m[key] is None or not d[key]:
            return "   n/a"
        return f"{m[key] / d[key]:5.2f}x"

    lines = [
        f"{r['project']}: {r['jobs']} jobs x {r['reps']} reps, one at a time, protocol "
        f"{r['protocol']}{' (,lzo)' if r['protocol'] == 2 else ''}; client {r['meshcc_gcc']}",
        f"{'median per job':18s} {'meshcc':>9s} {'distcc':>9s} {'ratio':>7s}  target",
    ]
    for key, label, target in (
        ("wall_ms", "wall ms", TARGET_WALL),
        ("client_cpu_ms", "client CPU ms", TARGET_CLIENT_CPU),
        ("server_cpu_ms", "server CPU ms", TARGET_SERVER_CPU),
        ("server_cpu_mean_ms", "server CPU (mean)", None),
    ):
        t = f"<= {target:.1f}x" if target else ""
        lines.append(f"{label:18s} {m[key]:9.2f} {d[key]:9.2f} {ratio(key):>7s}  {t}")
    lines.append(
        f"idle server CPU: meshcc {m['idle_cpu_ms_per_s']:.2f} ms/s, distccd "
        f"{d['idle_cpu_ms_per_s']:.2f} ms/s; server samples dropped (a task ended): "
        f"meshcc {m['server_samples_dropped']}, distccd {d['server_samples_dropped']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="zlib")
    p.add_argument("--reps", type=int, default=3, help="replays of the job list per way")
    p.add_argument("--protocol", type=int, choices=(1, 2), default=2)
    p.add_argument("--server-jobs", type=int, default=2, help="daemons' --jobs")
    p.add_argument(
        "--meshcc-prefix",
        help="an install.sh prefix: its meshcc-gcc and meshcc daemon (default: this venv)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_serial: run as root (distccd and the daemon drop privileges)", file=sys.stderr)
        return 2
    if not args.meshcc_prefix:
        from bench_build import precompile_meshcc

        precompile_meshcc()
    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-serial-"))
    work.chmod(0o755)  # the daemons' dropped users read the job dirs they make under /tmp
    try:
        r = bench(args, work)
    except (h.HarnessError, subprocess.CalledProcessError) as e:
        print(f"bench_serial: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
