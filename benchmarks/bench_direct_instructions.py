#!/usr/bin/env python3
"""Instructions one compile client process runs for a direct-mode miss (valgrind callgrind).

Issue 13's cold build: every job is a direct-mode miss, so the client asks its local
daemon, preprocesses (with ``-MD``), compiles remotely and records a manifest. This
counts the instructions of the whole ``meshcc-gcc`` process (its preprocessor is a child
and is not counted) for one real job, zlib's ``deflate.c`` at ``-O3``, ways:

  direct off                 MESHCC_DIRECT=0: the client as without direct mode
  record, warm hash cache    direct mode; the headers already in the hash cache
  record, no hash cache      MESHCC_HASH_CACHE=0: each header read and hashed
  before (--before REV)      the whole client at git REV (git archive), direct mode

Instruction counts do not move with the box's load, unlike CPU times. Each run gets its
own ``-DRUN=n``, so its manifest key is new (a direct-mode miss, recorded); the server's
result cache may answer the compile (the client's path is the same). One daemon on
loopback with the result cache on, its control socket as MESHCC_SOCKET. The bytecode of
both trees is compiled first (this environment may set PYTHONDONTWRITEBYTECODE).

    .venv/bin/python benchmarks/bench_direct_instructions.py [--before 8c13f02] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
from bench_build import PROJECTS, _run_quiet

REPO = Path(__file__).resolve().parents[1]
JOB = ["-O3", "-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN", "-c", "deflate.c"]


def _count(env: dict[str, str], tree: Path, n: int, out: Path) -> float:
    """Millions of instructions of one meshcc-gcc process compiling the job."""
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += [str(h.VENV_BIN / "meshcc-gcc"), *JOB, f"-DRUN={n}", "-o", f"run{n}.o"]
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    m = re.search(r"Collected : (\d+)", p.stderr)
    if p.returncode != 0 or m is None:
        raise h.HarnessError(f"meshcc-gcc failed ({p.returncode}): {p.stderr[-1500:]}")
    return int(m.group(1)) / 1e6


def _tree_at(rev: str, work: Path) -> Path:
    dest = work / f"meshcc-{rev}"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def bench(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    tree = work / "zlib"
    shutil.copytree(h.apt_source(PROJECTS["zlib"].package), tree, symlinks=True)
    _run_quiet(["./configure"], tree, h.client_env(work / "cfg"), work / "configure.log")
    ways: dict[str, tuple[dict[str, str], Path | None]] = {
        "direct off (MESHCC_DIRECT=0)": ({"MESHCC_DIRECT": "0"}, None),
        "record, warm hash cache": ({}, None),
        "record, no hash cache": ({"MESHCC_HASH_CACHE": "0"}, None),
    }
    if args.before:
        ways[f"before ({args.before}), direct mode"] = ({}, _tree_at(args.before, work))
    for t in [REPO, *(p for _, p in ways.values() if p is not None)]:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(t / "meshcc")], check=True)
    sock = work / "control.sock"
    cache = ("--cache-dir", str(work / "results"), "--socket", str(sock))
    daemon = h.start_meshcc(work / "daemon", 2, *cache)
    counts: dict[str, list[float]] = {w: [] for w in ways}
    try:
        n = 0
        for rep in range(args.runs + 1):  # the first round primes hash caches: not counted
            for i, (way, (extra, src)) in enumerate(ways.items()):
                env = h.client_env(work / f"state-{i}", daemon.host_spec(lzo=True))
                env.update(extra, MESHCC_SOCKET=str(sock))
                if src is not None:
                    env["PYTHONPATH"] = str(src)
                n += 1
                got = _count(env, tree, n, work / f"callgrind.{n}")
                if rep:
                    counts[way].append(got)
    finally:
        daemon.stop()
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--before", metavar="REV", help="also count the client at this git rev")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench_direct_instructions: valgrind is not installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-direct-instr-"))
    work.chmod(0o755)
    try:
        counts = bench(args, work)
    except (h.HarnessError, subprocess.CalledProcessError) as e:
        print(f"bench_direct_instructions: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(counts["direct off (MESHCC_DIRECT=0)"])
    print(f"zlib deflate.c -O3, one client process, median of {args.runs} (M instructions)")
    for way, v in counts.items():
        med = statistics.median(v)
        print(f"  {way:>34}: {med:7.1f}  ({med - base:+6.1f} over direct off)")
    print("  " + "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
