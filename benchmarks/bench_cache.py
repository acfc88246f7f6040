#!/usr/bin/env python3
"""The result cache's figures (issue 13), one run, loopback: what a repeat build costs.

Ways, per repetition, the same tree, `make clean` (untimed) before each:

  distcc -> distccd                  the baseline every ratio is against
  meshcc-gcc -> meshcc --no-cache    cache off
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
cache's disk per 1000 objects and its in-memory index estimate. Objects of both warm
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
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
from bench_build import PROJECTS, _hash_objects, _run_quiet, _timed_make, precompile_meshcc

TARGET_WARM = 0.2
TARGET_COLD = 1.05
WAYS = ("distcc", "off", "cold", "warm-cpp", "warm")


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
    walls: dict[str, list[float]] = {w: [] for w in WAYS}
    disk = (0, 0)
    hits = {"warm-cpp": 0, "warm": 0}
    try:
        for rep in range(args.reps):
            for way in WAYS:
                daemon = {"distcc": distccd, "off": off}.get(way, on)
                if way == "cold":
                    shutil.rmtree(cache / "v1", ignore_errors=True)
                    on.stop()  # a restart re-reads the (now empty) directory
                    on = h.start_meshcc(work / "on", args.jobs, *on_args)
                    daemon = on
                cc = "distcc gcc" if way == "distcc" else "meshcc-gcc"
                env = h.client_env(work / f"state-{way}-{rep}", daemon.host_spec(lzo=True))
                if daemon is on:
                    env["MESHCC_SOCKET"] = str(sock)
                if way == "warm-cpp":
                    env["MESHCC_DIRECT"] = "0"
                _run_quiet(project.clean, tree, env, work / "clean.log")
                before = _hit_count(on, way)
                wall, _, rc = _timed_make([*make, f"CC={cc}"], tree, env, work / f"{way}.log")
                if rc:
                    raise h.HarnessError(f"{way} build failed, see {work / f'{way}.log'}")
                walls[way].append(wall)
                if way in hits:
                    hits[way] = _hit_count(on, way) - before
                    got = _hash_objects(tree)
                    if got != reference:
                        raise h.HarnessError(f"{way} build objects differ from the local build")
                    disk = _cache_disk(cache)
                print(f"rep {rep + 1} {way:>6}: {wall:.2f} s", flush=True)
    finally:
        for d in (distccd, off, on):
            d.stop()
        shutil.rmtree(cache_root, ignore_errors=True)
    med = {w: statistics.median(v) for w, v in walls.items()}
    entries, size = disk
    return {
        "project": project.package,
        "jobs": args.jobs,
        "reps": args.reps,
        "objects": len(reference),
        "wall_s": med,
        "warm_vs_distcc": med["warm"] / med["distcc"],
        "warm_cpp_vs_distcc": med["warm-cpp"] / med["distcc"],
        "cold_vs_off": med["cold"] / med["off"],
        "warm_hits": hits["warm"],
        "warm_cpp_hits": hits["warm-cpp"],
        "cache_entries": entries,
        "disk_per_1000_objects_mib": size / max(entries, 1) * 1000 / 1024**2,
        "index_per_1000_objects_kib": _index_bytes(1000) / 1024,
    }


def report(r: dict[str, object]) -> str:
    med = r["wall_s"]
    assert isinstance(med, dict)
    lines = [
        f"{r['project']}: {r['objects']} objects, -j{r['jobs']}, median of {r['reps']}",
        *(f"  {w:>8}: {med[w]:.2f} s" for w in WAYS),
        f"warm (direct mode) / distcc: {r['warm_vs_distcc']:.2f} (target <= {TARGET_WARM}); "
        f"direct hits: {r['warm_hits']} of {r['objects']} objects",
        f"warm-cpp / distcc: {r['warm_cpp_vs_distcc']:.2f}; "
        f"result cache hits: {r['warm_cpp_hits']} of {r['objects']} objects",
        f"cold / cache off: {r['cold_vs_off']:.3f} (target <= {TARGET_COLD})",
        f"disk per 1000 objects: {r['disk_per_1000_objects_mib']:.1f} MiB "
        f"({r['cache_entries']} entries); index ~{r['index_per_1000_objects_kib']:.0f} KiB",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="zlib")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-j", "--jobs", type=int, default=4)
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
