#!/usr/bin/env python3
"""What recording a direct-mode manifest costs the compile client, per real job (issue 13).

A cold build with direct mode pays, per cache miss, for the record the client hands its
local daemon (:meth:`meshcc.client.direct.Direct.record`): the dependency list parsed,
every file read stat'ed, read, hashed and searched for clock macros, the names that must
stay absent found, and the record packed. This measures those steps in-process (CPU time,
``time.process_time_ns``, best of ``--reps``: the box's load moves it less than walls) on
every compile job of a real project, with the job's own command line and depfile:

  record, no hash cache        MESHCC_HASH_CACHE=0 (each job hashes every file it read)
  record, build's first pass   one hash cache for the whole build, jobs in build order
                               (what a cold build pays: each header hashed once)
  record, warm hash cache      every header already in the cache
  before (--before REV)        Direct._payload of meshcc/client/direct.py at git REV

and the parts of a record without the hash cache (stat+read, SHA-256, clock-macro search,
absent names, packing). The jobs: the project configured and built once with a ``CC``
that logs each command line; each job's depfile comes from ``gcc -E -MD -MF``, as the
client's own preprocessor run makes it.

    .venv/bin/python benchmarks/bench_direct_record.py [--project zlib|xz-utils] [--reps 5]
        [--before 8c13f02]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
from bench_build import PROJECTS, _run_quiet

from meshcc.client import direct, hashcache
from meshcc.wire import control

REPO = Path(__file__).resolve().parents[1]
OBJ = b"\x7fELF" + b"\0" * 50_000  # an object's bytes ride in the record: a typical size


def _jobs(args: argparse.Namespace, work: Path) -> list[tuple[str, list[str], str]]:
    """(cwd, argv after the compiler, source) of every compile job of a build."""
    project = PROJECTS[args.project]
    tree = work / "tree"
    shutil.copytree(h.apt_source(project.package), tree, symlinks=True)
    env = h.client_env(work / "state")
    _run_quiet(project.configure, tree, dict(env, CC="gcc"), work / "configure.log")
    log = work / "commands"
    cc = work / "logcc"
    cc.write_text(
        f'#!/bin/sh\nprintf \'%s\\t\' "$PWD" "$@" >> {log}\necho >> {log}\nexec gcc "$@"\n'
    )
    cc.chmod(0o755)
    _run_quiet(["make", "-j2", *project.build, f"CC={cc}"], tree, env, work / "build.log")
    jobs = []
    for line in log.read_text().splitlines():
        cwd, *argv = line.rstrip("\t").split("\t")
        sources = [a for a in argv if a.endswith(".c")]
        if "-c" in argv and sources:
            jobs.append((cwd, argv, sources[-1]))
    return jobs


def _depfile(cwd: str, argv: list[str], path: Path) -> None:
    """The job's depfile as the client's preprocessor run writes it (-MD -MF temp)."""
    cpp: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
        elif a not in ("-c", "-MD", "-MMD", "-MP"):
            cpp.append(a)
    cmd = ["gcc", "-E", *cpp, "-MD", "-MF", str(path), "-o", os.devnull]
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _best(f: Callable[[], object], reps: int) -> float:
    """Least CPU ms of ``reps`` calls."""
    best = None
    for _ in range(reps):
        t0 = time.process_time_ns()
        f()
        t = time.process_time_ns() - t0
        best = t if best is None else min(best, t)
    assert best is not None
    return best / 1e6


def _module_at(rev: str) -> ModuleType:
    """meshcc/client/direct.py as it was at git ``rev`` (importing today's other modules)."""
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:meshcc/client/direct.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="meshcc-direct-before-")) / "direct_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("direct_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    jobs = _jobs(args, work)
    before = _module_at(args.before) if args.before else None
    top = work / "distcc-dir"
    top.mkdir()
    rows: list[dict[str, float]] = []
    first: list[float] = []
    preps = []
    for i, (cwd, argv, src) in enumerate(jobs):
        dep = work / f"dep{i}.d"
        _depfile(cwd, argv, dep)
        search = direct._search_dirs(["gcc", *argv], {}, cwd)
        d = direct.Direct("k" * 64, src, "x.o", cwd, ["gcc", *argv], None, search)
        d.our_dep = str(dep)
        d.start_ns = time.time_ns() + 10**10  # the tree was just configured: not too new
        preps.append((cwd, argv, d, dep, search))
    os.chdir(work)
    for cwd, _, d, _, _ in preps:  # the build's first pass: one cache, jobs in order
        os.chdir(cwd)
        t0 = time.process_time_ns()
        hc = hashcache.open_cache(str(top), direct._sha256)
        out = d._payload(b"", b"", OBJ, hc)
        if hc is not None:
            hc.close()
        first.append((time.process_time_ns() - t0) / 1e6)
        if not isinstance(out, bytes):
            raise h.HarnessError(f"no record for {d.source}: {out}")
    for cwd, _argv, d, dep, search in preps:
        os.chdir(cwd)
        r: dict[str, float] = {}

        def warm(d: direct.Direct = d) -> object:
            hc = hashcache.open_cache(str(top), direct._sha256)
            try:
                return d._payload(b"", b"", OBJ, hc)
            finally:
                if hc is not None:
                    hc.close()

        r["record, no hash cache"] = _best(lambda d=d: d._payload(b"", b"", OBJ), args.reps)
        r["record, warm hash cache"] = _best(warm, args.reps)
        if before is not None:
            old = before.Direct("k" * 64, d.source, "x.o", cwd, d.argv, None, search)
            old.our_dep, old.start_ns = str(dep), d.start_ns
            r[f"before ({args.before})"] = _best(lambda o=old: o._payload(b"", b"", OBJ), args.reps)
        text = dep.read_text()
        deps = direct.parse_depfile(text) or []
        paths = list(dict.fromkeys(direct._absolute(cwd, p) for p in deps))
        r["  parse depfile"] = _best(lambda t=text: direct.parse_depfile(t), args.reps)
        datas = [Path(p).read_bytes() for p in paths]

        def statread(paths: list[str] = paths) -> None:
            for p in paths:
                os.stat(p)
                Path(p).read_bytes()
                os.stat(p)

        r["  stat+read (no cache)"] = _best(statread, args.reps)
        r["  SHA-256 (no cache)"] = _best(
            lambda ds=datas: [direct._sha256(x).digest() for x in ds], args.reps
        )
        r["  clock macros (no cache)"] = _best(
            lambda ds=datas: [any(w in x for w in direct._CLOCK) for x in ds], args.reps
        )
        r["  absent names"] = _best(
            lambda p=paths, s=search, c=cwd, d=d: direct._absent(p, s, c, d.start_ns), args.reps
        )
        rec = control.unpack_one(warm())[0]  # type: ignore[arg-type]
        r["  pack"] = _best(lambda rec=rec: control.packb(rec), args.reps)
        assert isinstance(rec, dict)
        r["files read"] = len(paths)
        r["KiB read"] = sum(map(len, datas)) / 1024
        r["names kept absent"] = sum(len(g[2]) for g in rec["absent"])
        rows.append(r)
    return {
        "project": args.project,
        "jobs": len(jobs),
        "reps": args.reps,
        "load": "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "first_pass_ms": first,
        "median": {k: statistics.median(r[k] for r in rows) for k in rows[0]},
        "sum": {k: sum(r[k] for r in rows) for k in rows[0]},
    }


def report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['project']}: {r['jobs']} compile jobs, CPU ms per job (best of {r['reps']}), "
        f"median and sum over the jobs ({r['load']} at the end)",
        f"  {'record, build first pass':>30}: {statistics.median(r['first_pass_ms']):8.3f}"
        f"   sum {sum(r['first_pass_ms']):9.1f}",
    ]
    for k, v in r["median"].items():
        lines.append(f"  {k:>30}: {v:8.3f}   sum {r['sum'][k]:9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="zlib")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--before", metavar="REV", help="also time direct.py as of this git rev")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-direct-record-"))
    try:
        r = bench(args, work)
    except (h.HarnessError, subprocess.CalledProcessError) as e:
        print(f"bench_direct_record: {e}", file=sys.stderr)
        return 1
    finally:
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
