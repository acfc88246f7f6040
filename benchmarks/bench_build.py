#!/usr/bin/env python3
"""Build a real Debian C project five ways on loopback and compare meshcc with distcc.

Why: meshcc's promise is "as fast as distcc, with a Python client". The only honest check
is the same project, the same -j, the same box and the same run for every combination:

  local gcc | distcc -> distccd | meshcc-gcc -> meshcc | distcc -> meshcc | meshcc-gcc -> distccd

Per way it reports the median wall time over N repetitions, its ratio to distcc -> distccd
(same protocol), and the client CPU per compile job: user+sys of `make` and everything it
waited for (make, shells, libtool, the compile client, the local preprocessor, links;
daemons are not make's descendants, so server-side compiles are excluded), from os.wait4.
A startup benchmark measures what `meshcc-gcc` adds to a local-only command.

Everything runs on 127.0.0.1. Usage (as root, after `bash tests/run.sh` set up deb-src):

    .venv/bin/python benchmarks/bench_build.py [--project xz-utils|zlib] [--reps 3]
        [-j 4] [--protocols 2|1,2] [--startup-runs 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

TARGET_WALL_RATIO = 1.15  # meshcc-gcc -> meshcc wall vs distcc -> distccd
TARGET_CPU_RATIO = 1.5  # meshcc-gcc client CPU per job vs distcc's
TARGET_STARTUP_MS = 15.0  # median added by meshcc-gcc on a local-only command


@dataclass(frozen=True)
class Project:
    """How to configure and build one Debian source package with a given CC."""

    package: str
    configure: list[str]
    build: list[str]  # make targets/args after `make -jN CC=...`
    clean: list[str] = field(default_factory=lambda: ["make", "clean"])


PROJECTS: dict[str, Project] = {
    # ~106 compiles through libtool and automake dependency tracking (-MD -MP -MF); -O2 without
    # -g so that objects compiled in another directory are byte-identical to local ones.
    "xz-utils": Project(
        "xz-utils",
        ["./configure", "CFLAGS=-O2", "--disable-nls", "--disable-shared", "--disable-doc"],
        [],
    ),
    # 19 compiles, plain Makefile: quick smoke run.
    "zlib": Project("zlib", ["./configure"], ["static", "all64"]),
}


@dataclass(frozen=True)
class Way:
    client: str  # "gcc", "distcc" or "meshcc-gcc"
    server: str | None  # None (local), "distccd" or "meshcc"
    protocol: int  # 1 or 2 (,lzo); 0 for local

    @property
    def label(self) -> str:
        if self.server is None:
            return "local gcc"
        return f"{self.client} -> {self.server} (p{self.protocol})"

    @property
    def key(self) -> str:
        """Short name for --ways: local, distcc-distccd, meshcc-meshcc, distcc-meshcc, ..."""
        if self.server is None:
            return "local"
        return f"{self.client.removesuffix('-gcc')}-{self.server}"

    @property
    def cc(self) -> str:
        return {"gcc": "gcc", "distcc": "distcc gcc", "meshcc-gcc": "meshcc-gcc"}[self.client]


ALL_WAYS = ("local", "distcc-distccd", "meshcc-meshcc", "distcc-meshcc", "meshcc-distccd")


@dataclass
class WayResult:
    way: str
    client: str
    server: str | None
    protocol: int
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)  # seconds user+sys of make's tree
    remote_jobs: list[int] = field(default_factory=list)
    objects_identical: bool | None = None
    objects_differing: list[str] = field(default_factory=list)
    error: str | None = None

    def wall(self) -> float | None:
        return statistics.median(self.walls) if self.walls else None

    def cpu_per_job(self, jobs: int) -> float | None:
        return statistics.median(self.cpus) / jobs if self.cpus else None


def _run_quiet(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with open(log, "ab") as out:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    if proc.returncode:
        raise h.HarnessError(
            f"{' '.join(cmd)} failed ({proc.returncode}), see {log}:\n"
            + log.read_text(errors="replace")[-3000:]
        )


def _timed_make(
    cmd: list[str], cwd: Path, env: dict[str, str], log: Path
) -> tuple[float, float, int]:
    """Run make; return (wall s, user+sys s of make and all it waited for, exit status)."""
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def _hash_objects(tree: Path) -> dict[str, str]:
    return {
        str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tree.rglob("*.o"))
        if p.is_file()
    }


def _wait_jobs(daemon: h.Daemon, target: int, timeout: float = 5.0) -> int:
    """COMPILE_OK count once it reaches target (servers log after replying) or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        n = daemon.count_jobs()
        if n >= target or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def bench_build(args: argparse.Namespace, work: Path) -> dict:
    project = PROJECTS[args.project]
    pristine = h.apt_source(project.package)
    tree = work / "tree"
    shutil.copytree(pristine, tree, symlinks=True)
    base_env = h.client_env(work / "configure-state")
    print(f"configuring {project.package} ({tree}) ...", flush=True)
    _run_quiet(project.configure, tree, dict(base_env, CC="gcc"), work / "configure.log")

    jobs = args.jobs
    make = ["make", f"-j{jobs}"]
    # Warm-up local build: page cache, and the reference objects and job count.
    print("reference local build ...", flush=True)
    _run_quiet([*make, "CC=gcc", *project.build], tree, base_env, work / "reference.log")
    reference = _hash_objects(tree)
    n_jobs = len(reference)
    if n_jobs == 0:
        raise h.HarnessError("the reference build produced no objects")

    ways = [Way("gcc", None, 0)]
    for proto in args.protocols:
        ways += [
            Way("distcc", "distccd", proto),
            Way("meshcc-gcc", "meshcc", proto),
            Way("distcc", "meshcc", proto),
            Way("meshcc-gcc", "distccd", proto),
        ]
    ways = [w for w in ways if w.key in args.ways]
    daemons: dict[str, h.Daemon] = {}
    if any(w.server == "distccd" for w in ways):
        daemons["distccd"] = h.start_distccd(work / "distccd", jobs)
    if any(w.server == "meshcc" for w in ways):
        daemons["meshcc"] = h.start_meshcc(work / "meshccd", jobs)
    results = {w: WayResult(w.label, w.client, w.server, w.protocol) for w in ways}
    try:
        for rep in range(args.reps):
            order = ways[rep % len(ways) :] + ways[: rep % len(ways)]  # rotate against order bias
            for way in order:
                res = results[way]
                if res.error:
                    continue
                _run_quiet(project.clean, tree, base_env, work / "clean.log")
                state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
                daemon = daemons.get(way.server or "")
                hosts = daemon.host_spec(lzo=way.protocol >= 2, limit=jobs) if daemon else None
                env = h.client_env(state, hosts)
                before = daemon.count_jobs() if daemon else 0
                log = work / f"make-{way.client}-{way.server}-p{way.protocol}-{rep}.log"
                wall, cpu, rc = _timed_make([*make, f"CC={way.cc}", *project.build], tree, env, log)
                if rc != 0:
                    res.error = (
                        f"make exited {rc}; tail of {log}:\n"
                        + log.read_text(errors="replace")[-2500:]
                    )
                    print(f"  {way.label}: FAILED (see {log})", flush=True)
                    continue
                remote = (_wait_jobs(daemon, before + n_jobs) - before) if daemon else 0
                res.walls.append(wall)
                res.cpus.append(cpu)
                res.remote_jobs.append(remote)
                if res.objects_identical is None:
                    got = _hash_objects(tree)
                    res.objects_differing = sorted(
                        k for k in reference | got if reference.get(k) != got.get(k)
                    )
                    res.objects_identical = not res.objects_differing
                print(
                    f"  rep {rep + 1}/{args.reps} {way.label:32s} wall {wall:6.2f}s "
                    f"cpu {cpu:6.2f}s remote {remote}/{n_jobs if daemon else 0}",
                    flush=True,
                )
    finally:
        for d in daemons.values():
            d.stop()

    return {
        "project": project.package,
        "source": str(pristine),
        "jobs_flag": jobs,
        "compile_jobs": n_jobs,
        "reps": args.reps,
        "ways": [
            asdict(r) | {"wall_median": r.wall(), "cpu_per_job": r.cpu_per_job(n_jobs)}
            for r in results.values()
        ],
    }


def _median_ms(cmd: list[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        times.append((time.perf_counter() - t) * 1000)
    return times


def bench_startup(args: argparse.Namespace, work: Path) -> dict:
    """Median wall of local-only commands: plain gcc vs meshcc-gcc (and distcc for context)."""
    d = work / "startup"
    d.mkdir()
    (d / "tiny.c").write_text(
        "#include <stddef.h>\nint main(void) { return (int)sizeof(size_t) - 8; }\n"
    )
    env = h.client_env(d / "state")
    daemon = h.start_meshcc(work / "meshccd-startup", 2)
    try:
        env["DISTCC_HOSTS"] = daemon.host_spec(lzo=True)
        env.pop("DISTCC_FALLBACK")
        subprocess.run(["gcc", "-c", "tiny.c", "-o", "tiny.o"], cwd=d, check=True)
        commands = {
            "gcc -E": ["gcc", "-E", "tiny.c", "-o", "tiny.i"],
            "meshcc-gcc -E": ["meshcc-gcc", "-E", "tiny.c", "-o", "tiny.i"],
            "distcc gcc -E": ["distcc", "gcc", "-E", "tiny.c", "-o", "tiny.i"],
            "gcc link": ["gcc", "-o", "a.out", "tiny.o"],
            "meshcc-gcc link": ["meshcc-gcc", "-o", "a.out", "tiny.o"],
            "distcc gcc link": ["distcc", "gcc", "-o", "a.out", "tiny.o"],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        samples: dict[str, list[float]] = {k: [] for k in commands}
        for cmd in commands.values():  # warm-up; also fails loudly if a command is broken
            _median_ms(cmd, env, d, 3)
        # Interleave in chunks so drifting machine load hits every command alike.
        for _ in range(max(1, args.startup_runs // 5)):
            for name, cmd in commands.items():
                samples[name] += _median_ms(cmd, env, d, 5)
    finally:
        daemon.stop()
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "runs": len(samples["gcc -E"]),
        "median_ms": med,
        "added_ms": {
            "meshcc-gcc -E": med["meshcc-gcc -E"] - med["gcc -E"],
            "distcc gcc -E": med["distcc gcc -E"] - med["gcc -E"],
            "meshcc-gcc link": med["meshcc-gcc link"] - med["gcc link"],
            "distcc gcc link": med["distcc gcc link"] - med["gcc link"],
        },
    }


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def report(build: dict | None, startup: dict | None) -> str:
    lines: list[str] = []
    if build:
        n = build["compile_jobs"]
        lines.append(
            f"\n{build['project']}: {n} compile jobs, make -j{build['jobs_flag']}, "
            f"median of {build['reps']}, all on 127.0.0.1"
        )
        base = {
            w["protocol"]: w
            for w in build["ways"]
            if w["client"] == "distcc" and w["server"] == "distccd"
        }
        hdr = (
            f"{'way':32s} {'wall s':>7s} {'x distcc':>8s} {'cpu/job ms':>10s} "
            f"{'x distcc':>8s} {'+ms/job':>7s} {'remote':>9s} {'objs':>5s}  target"
        )
        lines += [hdr, "-" * len(hdr)]
        for w in build["ways"]:
            if w["error"]:
                lines.append(f"{w['way']:32s} FAILED: {w['error'].splitlines()[0]}")
                continue
            b = base.get(w["protocol"]) or base.get(2) or next(iter(base.values()), None)
            wall, cpu = w["wall_median"], w["cpu_per_job"] * 1000
            bw = b["wall_median"] if b and not b["error"] else None
            bc = b["cpu_per_job"] * 1000 if b and not b["error"] else None
            wr = wall / bw if bw else float("nan")
            cr = cpu / bc if bc else float("nan")
            remote = f"{min(w['remote_jobs'])}/{n}" if w["server"] else "-"
            objs = {True: "same", False: "DIFF", None: "?"}[w["objects_identical"]]
            target = ""
            if w["client"] == "meshcc-gcc":
                target = f"cpu/job <= {TARGET_CPU_RATIO}x: {_verdict(cr <= TARGET_CPU_RATIO)}"
                if w["server"] == "meshcc":
                    target = (
                        f"wall <= {TARGET_WALL_RATIO}x: {_verdict(wr <= TARGET_WALL_RATIO)}; "
                        + target
                    )
            extra = cpu - bc if bc else float("nan")  # absolute, not diluted by shared work
            lines.append(
                f"{w['way']:32s} {wall:7.2f} {wr:8.2f} {cpu:10.1f} {cr:8.2f} "
                f"{extra:+7.1f} {remote:>9s} {objs:>5s}  {target}"
            )
            if w["objects_differing"]:
                lines.append(f"    objects differing from local: {w['objects_differing'][:8]}")
        lines.append(
            "  (x distcc: vs distcc -> distccd with the same protocol; +ms/job: client "
            "CPU "
            "per job minus distcc's; remote: COMPILE_OK jobs in the daemon's log, min "
            "over reps; objs: objects byte-identical to the local build)"
        )
    if startup:
        lines.append(f"\nlocal-only startup, median of {startup['runs']} runs (ms)")
        for k, v in startup["median_ms"].items():
            lines.append(f"  {k:18s} {v:7.1f}")
        for k, v in startup["added_ms"].items():
            t = ""
            if k == "meshcc-gcc -E":
                t = f"   target <= {TARGET_STARTUP_MS:.0f} ms: {_verdict(v <= TARGET_STARTUP_MS)}"
            lines.append(f"  added by {k:16s} {v:+7.1f}{t}")
    return "\n".join(lines)


def precompile_meshcc() -> str:
    """Byte-compile meshcc's modules so clients load .pyc files, as an installed copy does.

    An editable install run with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every
    module from source in every client process (measured: ~10 ms per start on this box).
    """
    import importlib.util

    spec = importlib.util.find_spec("meshcc")
    if spec is None or not spec.submodule_search_locations:
        raise h.HarnessError("meshcc is not importable from this interpreter")
    pkg = next(iter(spec.submodule_search_locations))
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", pkg], check=True, stdout=subprocess.DEVNULL
    )
    return pkg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="xz-utils")
    p.add_argument("--reps", type=int, default=3, help="repetitions per way (median reported)")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="make -j, daemons' --jobs and the host limit (default 2x CPUs)",
    )
    p.add_argument(
        "--protocols",
        default="2",
        help="comma list of distcc protocols for the remote ways: 2 (,lzo), 1",
    )
    p.add_argument(
        "--ways", default=",".join(ALL_WAYS), help=f"comma list, subset of {','.join(ALL_WAYS)}"
    )
    p.add_argument("--startup-runs", type=int, default=50)
    p.add_argument("--no-build", action="store_true", help="only the startup benchmark")
    p.add_argument("--no-startup", action="store_true", help="only the build benchmark")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, tree)")
    args = p.parse_args(argv)
    args.protocols = [int(x) for x in args.protocols.split(",") if x.strip()]
    if not set(args.protocols) <= {1, 2}:
        p.error("--protocols takes 1 and/or 2")
    args.ways = [x.strip() for x in args.ways.split(",") if x.strip()]
    if not set(args.ways) <= set(ALL_WAYS):
        p.error(f"--ways takes {','.join(ALL_WAYS)}")

    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-"))
    build = startup = None
    try:
        print(f"byte-compiled {precompile_meshcc()}", flush=True)
        if not args.no_build:
            build = bench_build(args, work)
        if not args.no_startup:
            startup = bench_startup(args, work)
    except h.HarnessError as e:
        print(f"benchmark aborted: {e}", file=sys.stderr)
        print(f"work dir kept: {work}", file=sys.stderr)
        return 2
    print(report(build, startup))
    if args.json:
        data = json.dumps({"build": build, "startup": startup}, indent=2)
        if args.json == "-":
            print(data)
        else:
            Path(args.json).write_text(data + "\n")
    if args.keep:
        print(f"\nwork dir: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
