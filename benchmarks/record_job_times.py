"""Record the compile-job times of a real build, for bench_scheduler_sim.py.

    .venv/bin/python benchmarks/record_job_times.py                      # zlib, -O2
    .venv/bin/python benchmarks/record_job_times.py --out benchmarks/data/zlib-job-times.json

Builds the cached Debian source (tests/harness.py's apt_source) serially with a compiler
wrapper that times every ``-c`` compile (wall seconds of gcc alone) and measures its
preprocessed size, and writes ``[{"source", "seconds", "bytes"}, ...]`` as JSON. Serial
(-j1) so the times are one core's, without the other jobs' contention; everything stays
on this box (no daemon, no network).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import apt_source, clean_env

WRAPPER = r"""#!/usr/bin/env python3
import os, subprocess, sys, time
argv = sys.argv[1:]
if "-c" not in argv:
    os.execvp("gcc", ["gcc", *argv])
src = next((a for a in argv if a.endswith((".c", ".cc", ".cpp"))), "?")
cpp = [a for a in argv if a not in ("-c",)]
if "-o" in cpp:
    i = cpp.index("-o"); del cpp[i:i + 2]
pre = subprocess.run(["gcc", "-E", *cpp], capture_output=True)
t = time.perf_counter()
rc = subprocess.call(["gcc", *argv])
dt = time.perf_counter() - t
with open(os.environ["JOBLOG"], "a") as f:
    f.write(f"{src}\t{dt:.6f}\t{len(pre.stdout)}\n")
sys.exit(rc)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", default="zlib")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "data" / "zlib-job-times.json"
    )
    args = ap.parse_args()
    src = apt_source(args.project)
    with tempfile.TemporaryDirectory(prefix="meshcc-jobtimes-") as tmp:
        tree = Path(tmp) / "src"
        shutil.copytree(src, tree, symlinks=True)
        wrapper = Path(tmp) / "timecc"
        wrapper.write_text(WRAPPER)
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        log = Path(tmp) / "jobs.tsv"
        env = dict(clean_env(), JOBLOG=str(log), CC=str(wrapper), CFLAGS="-O2")
        subprocess.run(["./configure"], cwd=tree, env=env, check=True, capture_output=True)
        log.unlink(missing_ok=True)  # configure's probes are not the build's jobs
        subprocess.run(["make", "-j1"], cwd=tree, env=env, check=True, capture_output=True)
        jobs = []
        for line in log.read_text().splitlines():
            name, seconds, size = line.split("\t")
            jobs.append(
                {"source": os.path.basename(name), "seconds": float(seconds), "bytes": int(size)}
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"project": args.project, "jobs": jobs}, indent=1) + "\n")
    total = sum(j["seconds"] for j in jobs)
    print(f"{len(jobs)} jobs, {total:.2f} s of compile, recorded in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
