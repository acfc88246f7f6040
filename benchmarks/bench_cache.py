#!/usr/bin/env python3
"""The result cache's figures (issue 13), one run, loopback: what a repeat build costs.

Ways, per repetition, the same tree, `make clean` (untimed) before each:

  distcc -> distccd                  the baseline every ratio is against
  meshcc-gcc -> meshcc --no-cache    cache off
  meshcc-gcc -> meshcc, cold-cpp     as cold (below), with MESHCC_DIRECT=0: what the
                                     result cache alone costs a cold build
  meshcc-gcc -> meshcc, cold cache   the cache emptied (and the daemon restarted, so its
                                     direct-mode manifests are gone): every job a miss,
                                     stored, and its manifest recorded
  meshcc-gcc -> meshcc, warm-cpp     MESHCC_DIRECT=0: the client preprocesses, the
                                     daemon answers from its result cache
  meshcc-gcc -> meshcc, warm         direct mode: the client asks its local daemon's
                                     manifests, no preprocessor, no remote job

Reported: median wall per way; warm / distcc (issue target <= 0.2), warm-cpp / distcc
(what a hit costs with the preprocessor), cold / off (target <= 1.05: what storing and
recording manifests cost on a cold mesh), the hit counts of the warm builds, and the
cache's disk per 1000 objects and its in-memory index estimate. Also CPU seconds per way,
which the box's load moves far less than walls: the client side (make's whole tree:
the wrappers, their preprocessors, make and the shells, from wait4) and the daemon the
way used (its own CPU, and its reaped children's: the compilers; from /proc). On this
loopback set-up one daemon is both the compile server and the clients' local daemon, so
"daemon own" holds the result cache's store and direct mode's manifest puts. Objects of both warm
builds are checked byte-identical to a local build. The clients of the cache ways talk to
the daemon's control socket (MESHCC_SOCKET) for direct mode and to its compile port
(DISTCC_HOSTS) for jobs.

What loopback does not show: box B in the issue asks the key's home peer (one LAN round
trip per job, ~0.1-0.3 ms) when its serving daemon does not hold the entry; the namespace
test (tests/integration/test_result_cache_netns.py) proves that path, this measures the
rest. Direct mode's manifests live in the client's local daemon: "warm" is a rebuild on
a box whose daemon saw the tree built (here: the same tree, `make clean` between), and
box B's first build of a tree is a "warm-cpp" build (manifests are not shared across the
mesh).

    .venv/bin/python benchmarks/bench_cache.py [--project zlib|xz-utils] [--reps 3] [-j 4]
        [--ways off,cold]   (a subset of the ways, in this order; ratios need their ways)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
from bench_build import PROJECTS, _hash_objects, _run_quiet, _timed_make, precompile_meshcc

TARGET_WARM = 0.2
TARGET_COLD = 1.05
WAYS = ("distcc", "off", "cold-cpp", "cold", "warm-cpp", "warm")
SETTLE_S = 0.5  # after each build, before the daemon's CPU is read (every way alike)


def _cache_disk(root: Path) -> tuple[int, int]:
    files = [p for p in (root / "v1").glob("*/*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _hit_count(daemon: h.Daemon, way: str) -> int:
    """Hits so far in the daemon's log: direct-mode answers for "warm", else the result
    cache's job lines."""
    text = daemon.log_text()
    if way == "warm":
        return sum("direct: " in line and ": hit for " in line for line in text.splitlines())
    return text.count(" rcache:hit")


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of a live process, from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    f = raw.rpartition(b")")[2].split()  # f[0] is field 3 (state); utime is field 14
    return (int(f[11]) + int(f[12])) / _TICK, (int(f[13]) + int(f[14])) / _TICK


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _index_bytes(n: int) -> int:
    """Memory of the store's in-memory LRU index for n entries, measured (tracemalloc)."""
    import tracemalloc

    from meshcc.cache.store import DiskStore

    store = DiskStore(tempfile.gettempdir())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        store._index[f"{i:064x}"] = 50_000 + i
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used


def bench(args: argparse.Namespace, work: Path) -> dict[str, object]:
    project = PROJECTS[args.project]
    tree = work / "tree"
    shutil.copytree(h.apt_source(project.package), tree, symlinks=True)
    env0 = h.client_env(work / "configure-state")
    _run_quiet(project.configure, tree, dict(env0, CC="gcc"), work / "configure.log")
    make = ["make", f"-j{args.jobs}", *project.build]
    _run_quiet([*make, "CC=gcc"], tree, env0, work / "local.log")
    reference = _hash_objects(tree)

    cache_root = Path(tempfile.mkdtemp(prefix="meshcc-bench-cache-"))
    cache_root.chmod(0o755)
    cache = cache_root / "results"
    distccd = h.start_distccd(work / "distccd", args.jobs)
    off = h.start_meshcc(work / "off", args.jobs, "--no-cache")
    sock = cache_root / "control.sock"
    on_args = ("--cache-dir", str(cache), "--socket", str(sock))
    on = h.start_meshcc(work / "on", args.jobs, *on_args)
    ways = args.ways
    walls: dict[str, list[float]] = {w: [] for w in ways}
    cpus: dict[str, list[tuple[float, float, float]]] = {w: [] for w in ways}
    disk = (0, 0)
    hits = {"warm-cpp": 0, "warm": 0}
    try:
        for rep in range(args.reps):
            for way in ways:
                daemon = {"distcc": distccd, "off": off}.get(way, on)
                if way in ("cold", "cold-cpp"):
                    shutil.rmtree(cache / "v1", ignore_errors=True)
                    on.stop()  # a restart re-reads the (now empty) directory
                    on = h.start_meshcc(work / "on", args.jobs, *on_args)
                    daemon = on
                cc = "distcc gcc" if way == "distcc" else "meshcc-gcc"
                env = h.client_env(work / f"state-{way}-{rep}", daemon.host_spec(lzo=True))
                if daemon is on:
                    env["MESHCC_SOCKET"] = str(sock)
                if way in ("warm-cpp", "cold-cpp"):
                    env["MESHCC_DIRECT"] = "0"
                _run_quiet(project.clean, tree, env, work / "clean.log")
                before = _hit_count(on, way)
                own0, kids0 = _proc_cpu(daemon.proc.pid)
                wall, client, rc = _timed_make([*make, f"CC={cc}"], tree, env, work / f"{way}.log")
                if rc:
                    raise h.HarnessError(f"{way} build failed, see {work / f'{way}.log'}")
                time.sleep(SETTLE_S)  # the daemon's last puts end after make does
                own1, kids1 = _proc_cpu(daemon.proc.pid)
                walls[way].append(wall)
                cpus[way].append((client, own1 - own0, kids1 - kids0))
                if way in hits:
                    hits[way] = _hit_count(on, way) - before
                    got = _hash_objects(tree)
                    if got != reference:
                        raise h.HarnessError(f"{way} build objects differ from the local build")
                    disk = _cache_disk(cache)
                print(
                    f"rep {rep + 1} {way:>8}: {wall:.2f} s; cpu client {client:.2f} s, "
                    f"daemon {own1 - own0:.2f} s, compilers {kids1 - kids0:.2f} s",
                    flush=True,
                )
    finally:
        for d in (distccd, off, on):
            d.stop()
        shutil.rmtree(cache_root, ignore_errors=True)
    med = {w: statistics.median(v) for w, v in walls.items()}
    cpu = {
        w: {
            part: statistics.median(c[i] for c in v)
            for i, part in enumerate(("client", "daemon", "compilers"))
        }
        for w, v in cpus.items()
    }
    entries, size = disk

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if a in med and b in med else None

    return {
        "project": project.package,
        "jobs": args.jobs,
        "reps": args.reps,
        "objects": len(reference),
        "ways": list(ways),
        "wall_s": med,
        "cpu_s": cpu,
        "load": _load(),
        "warm_vs_distcc": ratio("warm", "distcc"),
        "warm_cpp_vs_distcc": ratio("warm-cpp", "distcc"),
        "cold_vs_off": ratio("cold", "off"),
        "cold_cpp_vs_off": ratio("cold-cpp", "off"),
        "warm_hits": hits["warm"],
        "warm_cpp_hits": hits["warm-cpp"],
        "cache_entries": entries,
        "disk_per_1000_objects_mib": size / max(entries, 1) * 1000 / 1024**2,
        "index_per_1000_objects_kib": _index_bytes(1000) / 1024,
    }


def report(r: dict[str, object]) -> str:
    med = r["wall_s"]
    cpu = r["cpu_s"]
    ways = r["ways"]
    assert isinstance(med, dict) and isinstance(cpu, dict) and isinstance(ways, list)
    n = r["objects"]
    assert isinstance(n, int)
    lines = [
        f"{r['project']}: {n} objects, -j{r['jobs']}, median of {r['reps']} ({r['load']} "
        "at the end)",
        *(
            f"  {w:>8}: {med[w]:.2f} s; cpu client {cpu[w]['client']:.2f} s "
            f"({cpu[w]['client'] / max(n, 1) * 1000:.1f} ms/object), daemon "
            f"{cpu[w]['daemon']:.2f} s, compilers {cpu[w]['compilers']:.2f} s"
            for w in ways
        ),
    ]
    if r["warm_vs_distcc"] is not None:
        lines.append(
            f"warm (direct mode) / distcc: {r['warm_vs_distcc']:.2f} (target <= {TARGET_WARM}); "
            f"direct hits: {r['warm_hits']} of {n} objects"
        )
    if r["warm_cpp_vs_distcc"] is not None:
        lines.append(
            f"warm-cpp / distcc: {r['warm_cpp_vs_distcc']:.2f}; "
            f"result cache hits: {r['warm_cpp_hits']} of {n} objects"
        )
    if r["cold_vs_off"] is not None:
        lines.append(
            f"cold / cache off: {r['cold_vs_off']:.3f} (target <= {TARGET_COLD}); client cpu "
            f"{cpu['cold']['client'] / max(cpu['off']['client'], 1e-9):.3f}, daemon cpu "
            f"+{cpu['cold']['daemon'] - cpu['off']['daemon']:.2f} s"
        )
    if r["cold_cpp_vs_off"] is not None:
        lines.append(
            f"cold-cpp (no direct mode) / cache off: {r['cold_cpp_vs_off']:.3f}; client cpu "
            f"{cpu['cold-cpp']['client'] / max(cpu['off']['client'], 1e-9):.3f}, daemon cpu "
            f"+{cpu['cold-cpp']['daemon'] - cpu['off']['daemon']:.2f} s"
        )
    if r["cache_entries"]:
        lines.append(
            f"disk per 1000 objects: {r['disk_per_1000_objects_mib']:.1f} MiB "
            f"({r['cache_entries']} entries); index ~{r['index_per_1000_objects_kib']:.0f} KiB"
        )
    return "\n".join(lines)


def _ways(text: str) -> tuple[str, ...]:
    asked = {w.strip() for w in text.split(",") if w.strip()}
    unknown = asked - set(WAYS)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"ways are {', '.join(WAYS)}")
    return tuple(w for w in WAYS if w in asked)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="zlib")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-j", "--jobs", type=int, default=4)
    p.add_argument("--ways", type=_ways, default=WAYS, help="a comma-separated subset")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    precompile_meshcc()
    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-cache-work-"))
    try:
        r = bench(args, work)
    except h.HarnessError as e:
        print(f"bench_cache: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
