#!/usr/bin/env python3
"""A second box's first build of a tree another box built: meshcc's direct mode across the
mesh against stock distcc (root needed: network namespaces).

    .venv/bin/python benchmarks/bench_cache_mesh.py [--rounds 3] [--jobs 2] [--make-j 8]
        [--lookup-timeout S] [--json FILE]

meshcc issue 13: "a real project built on box A through the mesh, then the same tree at the
same path built on box B: B's wall <= 0.2 x distcc's for the same build". On a LAN of
network namespaces (tests/netns.py; nothing touches the real interfaces): boxes a and b and
a server s, each running ``meshcc daemon --jobs J`` with its result cache and direct mode
(in a scratch directory), and stock ``distccd --jobs J`` on a and s (port 3640) for distcc.
The compiler everyone runs is a shim that logs preprocessor runs (as the tests' shim), so
"no preprocessor" is counted, not assumed. zlib (Debian source, cached).

Each round uses a tree path of its own (the working directory is in every manifest key,
so direct mode starts cold each round and b has nothing of its own from an earlier round;
the servers' result cache may still answer a's jobs from round 2 on, since zlib's
preprocessed text names its files relatively: that only shortens a's build, which is not
compared with anything), and runs:

1. **a** builds the tree with ``CC=meshcc-gcc`` (leases: its jobs go to b and s), every job
   preprocessed on a, its manifest recorded and pushed to its mesh home;
2. the tree is removed and copied afresh to the same path (new inodes and times: a second
   box's checkout), configured, and then, in alternating order between rounds:
   - **meshcc-b**: ``make -jN CC=meshcc-gcc`` on b;
   - **distcc-b**: ``make -jN CC="distcc gcc"`` on b, ``DISTCC_HOSTS`` the static list
     ``s:3640/J,lzo a:3640/J,lzo`` (stock distccd, no cache: what distcc users have).

Figures per round: each build's wall and its CPU seconds on the building box (make and
everything it ran there, from the kernel's rusage of reaped children: the compile client,
its preprocessor; not the servers', and not moved by the load the way wall time is), b's
direct-mode hits (its daemon's counters: of how many jobs, how many records came from
home peers, how many homes did not answer in time), preprocessor runs per build, and
whether every object equals a plain local build's (made once, first). Summary: medians,
and meshcc-b / distcc-b per round and of the medians. Load (``/proc/loadavg``) before and
after: the machine is shared; the ratio is measured within one run, ways alternating.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import VENV_BIN, apt_source, clean_env  # noqa: E402

import meshcc  # noqa: E402
import netns  # noqa: E402
from meshd import (  # noqa: E402
    Mesh,
    build_objects,
    cpp_logging_gcc,
    differing,
    private_dir,
    trusted_dir,
)

OBJECTS_MK = "meshcc-objects: libz.a $(PIC_OBJS) example minigzip example64.o minigzip64.o\n"
TARGET = "meshcc-objects"
DISTCCD_PORT = 3640
GCC = shutil.which("gcc") or "/usr/bin/gcc"


def _run(argv: list[str], cwd: Path, env: dict[str, str], host: netns.Host | None = None) -> str:
    kw = {"cwd": cwd, "env": env, "capture_output": True, "text": True, "timeout": 1800}
    proc = host.run(argv, **kw) if host is not None else subprocess.run(argv, check=False, **kw)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return str(proc.stdout)


def _checkout(src: Path, tree: Path, env: dict[str, str]) -> Path:
    """A fresh copy at ``tree`` (new inodes, mtimes, ctimes), configured."""
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(src, tree, symlinks=True)
    (tree / "objects.mk").write_text(OBJECTS_MK)
    _run(["./configure"], tree, dict(env, CC="gcc"))
    return tree


def _make_argv(jobs: int, cc: str) -> list[str]:
    return ["make", f"-j{jobs}", "-f", "Makefile", "-f", "objects.mk", f"CC={cc}", TARGET]


def _uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _settled(figures: Callable[[], dict[str, int]], want: int, timeout: float = 60.0) -> int:
    """Until a box's pushes to the homes (in the background after each put) are all done,
    taken or not; how many were taken."""
    deadline = time.monotonic() + timeout
    while True:
        f = figures()
        if f["direct_mesh_pushed"] + f["direct_mesh_push_failed"] >= want:
            return f["direct_mesh_pushed"]
        if time.monotonic() > deadline:
            return f["direct_mesh_pushed"]
        time.sleep(0.2)


def _no_lan() -> bool:
    """True, having said why, when this machine cannot make network namespaces."""
    reason = netns.unavailable_reason()
    if reason:
        print(f"cannot build the LAN: {reason}", file=sys.stderr)
    return reason is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="each server's --jobs (meshcc, distccd)")
    ap.add_argument("--make-j", type=int, default=8)
    ap.add_argument(
        "--lookup-timeout",
        metavar="S",
        help="the daemons' --cache-lookup-timeout (default: theirs, 0.25 s); a home that does "
        "not answer in time is a miss, so on a loaded box this moves the hit rate",
    )
    ap.add_argument("--json", metavar="FILE")
    ns = ap.parse_args()
    if _no_lan():
        return 2
    if shutil.which("distccd") is None or shutil.which("distcc") is None:
        print("distcc and distccd are needed (Debian package `distcc`)", file=sys.stderr)
        return 2
    # With PYTHONDONTWRITEBYTECODE set, every meshcc-gcc would compile its modules again.
    if not compileall.compile_dir(str(Path(meshcc.__file__).parent), quiet=1):
        raise SystemExit("cannot compile meshcc's Python files")
    src = apt_source("zlib")
    work = private_dir("meshcc-bench-cache-mesh-")
    bindir = trusted_dir("bench-cache-mesh-bin-")
    # distcc 3.4 runs gcc as <triplet>-gcc (its rewrite of a generic name): the shim under
    # that name too, so distcc's preprocessor runs are counted as well
    triplet = subprocess.run([GCC, "-dumpmachine"], capture_output=True, text=True).stdout
    for name in ("gcc", f"{triplet.strip()}-gcc"):
        cpp_logging_gcc(bindir / name, GCC)
    env0 = clean_env()
    env0["PATH"] = os.pathsep.join([str(bindir), str(VENV_BIN), env0.get("PATH", os.defpath)])
    load_before = _uptime()
    try:
        with netns.Lan() as lan:
            res = _bench(lan, ns, work, bindir, src, env0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_before"] = load_before
    res["load_after"] = _uptime()
    print(json.dumps({k: v for k, v in res.items() if k != "rounds"}, indent=1))
    if ns.json:
        Path(ns.json).write_text(json.dumps(res, indent=2))
    return 0


def _bench(
    lan: netns.Lan,
    ns: argparse.Namespace,
    work: Path,
    bindir: Path,
    src: Path,
    env0: dict[str, str],
) -> dict[str, object]:
    hosts = {n: lan.add_host(n) for n in ("a", "b", "s")}
    wait = ("--cache-lookup-timeout", ns.lookup_timeout) if ns.lookup_timeout else ()
    args = ("--log-level", "notice", "--jobs", str(ns.jobs), "--compiler", str(bindir / "gcc"))
    distccds = []
    try:
        with Mesh(work, hosts, *args, *wait, cache=True) as mesh:
            for n in ("a", "s"):
                argv = ["distccd", "--daemon", "--no-detach", "--log-stderr", "--log-level"]
                argv += ["error", "--listen", hosts[n].address, "--port", str(DISTCCD_PORT)]
                argv += ["--allow", str(lan.subnet), "--jobs", str(ns.jobs)]
                env = dict(env0)
                env.pop("TMPDIR", None)
                distccds.append(
                    hosts[n].popen(
                        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
            return _rounds(ns, mesh, work, src, env0)
    finally:
        for p in distccds:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _rounds(
    ns: argparse.Namespace,
    mesh: Mesh,
    work: Path,
    src: Path,
    env0: dict[str, str],
) -> dict[str, object]:
    mesh.wait_listed()
    figures = mesh.figures

    # The reference: a plain local build (once; zlib's objects do not name their path).
    ref_tree = work / "ref" / "zlib"
    _checkout(src, ref_tree, env0)
    _run(_make_argv(ns.make_j, "gcc"), ref_tree, env0)
    reference = build_objects(ref_tree)
    n = len(reference)
    shutil.rmtree(ref_tree.parent)
    static = " ".join(f"{mesh.address(h)}:{DISTCCD_PORT}/{ns.jobs},lzo" for h in ("s", "a"))

    def build(box: str, way: str, tree: Path, env: dict[str, str]) -> dict[str, object]:
        cpp_log = Path(env["MESHCC_TEST_CPP_LOG"])
        _run(["make", "-f", "Makefile", "clean"], tree, env)
        cpp_log.unlink(missing_ok=True)
        e = dict(env)
        if way == "meshcc":
            e["MESHCC_SOCKET"] = str(mesh[box].socket)
            cc = "meshcc-gcc"
        else:
            e["DISTCC_HOSTS"] = static
            e["MESHCC_SOCKET"] = str(work / "none.sock")
            cc = "distcc gcc"
        before = figures(box)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        _run(_make_argv(ns.make_j, cc), tree, e, mesh.hosts[box])
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        after = figures(box)
        same = not differing(reference, build_objects(tree))
        cpp = len(cpp_log.read_text().splitlines()) if cpp_log.exists() else 0
        return {
            "wall_s": round(wall, 3),
            "client_cpu_s": round(cpu, 3),
            "cpp_runs": cpp,
            "objects_identical": same,
            **{
                name: after[f"direct_{key}"] - before[f"direct_{key}"]
                for name, key in (
                    ("direct_hits", "hit"),
                    ("from_homes", "mesh_hit"),
                    ("home_had_none", "mesh_miss"),
                    ("home_failed", "mesh_failed"),  # no answer within the lookup timeout
                    ("stored", "stored"),
                )
            },
        }

    rounds: list[dict[str, object]] = []
    for r in range(ns.rounds):
        tree = work / f"r{r}" / "zlib"
        state = work / f"state-{r}"
        (state / "tmp").mkdir(parents=True)
        cpp_log = state / "cpp.log"
        env = dict(env0, DISTCC_DIR=str(state), TMPDIR=str(state / "tmp"), DISTCC_FALLBACK="0")
        env["MESHCC_TEST_CPP_LOG"] = str(cpp_log)

        _checkout(src, tree, env0)
        time.sleep(2.2)  # a record is made only for files older than 2 s (direct mode)
        f0 = figures("a")
        built = build("a", "meshcc", tree, env)
        one: dict[str, object] = {"a": built}
        # a's pushes to the homes run in the background after each put: wait for them all
        done = f0["direct_mesh_pushed"] + f0["direct_mesh_push_failed"] + int(built["stored"])  # type: ignore[call-overload]
        one["a_pushed"] = _settled(lambda: figures("a"), done) - f0["direct_mesh_pushed"]
        _checkout(src, tree, env0)  # b's own copy, at the same path
        order = ("meshcc", "distcc") if r % 2 == 0 else ("distcc", "meshcc")
        for way in order:
            one[f"{way}-b"] = build("b", way, tree, env)
        mb, db = one["meshcc-b"], one["distcc-b"]
        assert isinstance(mb, dict) and isinstance(db, dict)
        one["ratio"] = round(mb["wall_s"] / db["wall_s"], 3)
        one["order"] = list(order)
        print(f"round {r + 1}: {json.dumps(one)}", flush=True)
        rounds.append(one)
        shutil.rmtree(tree.parent, ignore_errors=True)

    def med(way: str, field: str) -> float:
        return statistics.median(float(x[way][field]) for x in rounds)  # type: ignore[index]

    return {
        "project": "zlib",
        "jobs_per_build": n,
        "server_jobs": ns.jobs,
        "make_j": ns.make_j,
        "lookup_timeout_s": float(ns.lookup_timeout or 0.25),
        "a_wall_s": med("a", "wall_s"),
        "meshcc_b_wall_s": med("meshcc-b", "wall_s"),
        "distcc_b_wall_s": med("distcc-b", "wall_s"),
        "ratio_of_medians": round(med("meshcc-b", "wall_s") / med("distcc-b", "wall_s"), 3),
        "meshcc_b_client_cpu_s": med("meshcc-b", "client_cpu_s"),
        "distcc_b_client_cpu_s": med("distcc-b", "client_cpu_s"),
        "ratios": [x["ratio"] for x in rounds],
        "meshcc_b_hit_rate": [
            f"{x['meshcc-b']['direct_hits']}/{n}"  # type: ignore[index]
            for x in rounds
        ],
        "meshcc_b_from_homes": [x["meshcc-b"]["from_homes"] for x in rounds],  # type: ignore[index]
        "meshcc_b_cpp_runs": [x["meshcc-b"]["cpp_runs"] for x in rounds],  # type: ignore[index]
        "meshcc_b_home_failed": [x["meshcc-b"]["home_failed"] for x in rounds],  # type: ignore[index]
        "distcc_b_cpp_runs": [x["distcc-b"]["cpp_runs"] for x in rounds],  # type: ignore[index]
        "objects_identical": all(
            x[w]["objects_identical"]  # type: ignore[index]
            for x in rounds
            for w in ("a", "meshcc-b", "distcc-b")
        ),
        "rounds": rounds,
    }


if __name__ == "__main__":
    sys.exit(main())
