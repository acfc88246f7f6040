#!/usr/bin/env python3
"""What resolving -march=native costs a compile: first on a box (cold) and cached.

Why: distcc never resolved native because its maintainers did not want an extra compiler
run per job. meshcc runs the driver (two ``gcc -###`` probes) once per compiler, CPU and
arch options, and every later job reads a small file under $DISTCC_DIR/native. Measured:

1. import: ``meshcc.compiler.native`` in a fresh interpreter (-X importtime), after the
   modules the wrapper already has (``meshcc.compiler.args``);
2. in-process, per job: ``native.resolve`` cold (probe + atomic write; the cache is
   bypassed) and cached; ``native.analyse`` (the wrapper's whole hook: argv analysis,
   cache hit, rewrite) next to ``args.analyse`` of the same command without native;
3. end to end: ``meshcc-gcc -O2 -march=native -c tiny.c`` wall time with
   DISTCC_HOSTS=localhost (so the job takes the distributable path and compiles on the
   local slot, no network), cold (a fresh DISTCC_DIR per run) and warm, next to the same
   command with ``-march=x86-64-v3`` (no resolution) and plain gcc.

Medians over --runs (default 50); end-to-end commands are interleaved. Nothing binds a
socket. Run as root or any user:

    .venv/bin/python benchmarks/bench_native.py [--runs 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import precompile_meshcc

from meshcc.compiler import args, native

VENV_BIN = Path(sys.executable).parent
TINY_C = "int f(int *a, int n) { int s = 0; for (int i = 0; i < n; i++) s += a[i]; return s; }\n"


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def import_ms() -> float:
    """Self time of importing meshcc.compiler.native after meshcc.compiler.args."""
    p = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import meshcc.compiler.args; import meshcc.compiler.native",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s+meshcc\.compiler\.native$", line)
        if m:
            return int(m.group(2)) / 1000
    raise RuntimeError(f"no import line for meshcc.compiler.native:\n{p.stderr}")


def in_process(runs: int, work: Path) -> dict[str, float]:
    env = {"DISTCC_DIR": str(work), "PATH": os.environ.get("PATH", os.defpath)}
    argv = ["gcc", "-O2", "-march=native", "-c", "tiny.c", "-o", "tiny.o"]
    plain = ["gcc", "-O2", "-march=x86-64-v3", "-c", "tiny.c", "-o", "tiny.o"]
    native.resolve("gcc", argv, env)  # warm the page cache for gcc itself
    out = {
        "resolve_cold_ms": _median_ms(
            lambda: native.resolve("gcc", argv, env, use_cache=False), max(5, runs // 5)
        ),
        "resolve_cached_ms": _median_ms(lambda: native.resolve("gcc", argv, env), runs * 10),
        "analyse_native_cached_ms": _median_ms(lambda: native.analyse("gcc", argv, env), runs * 10),
        "analyse_plain_ms": _median_ms(lambda: args.analyse(plain), runs * 10),
    }
    assert native.resolve("gcc", argv, env)[1], "the cache was not hit"
    return out


def end_to_end(runs: int, work: Path) -> dict[str, float]:
    (work / "tiny.c").write_text(TINY_C)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', os.defpath)}"
    base["DISTCC_HOSTS"] = "localhost"
    base["MESHCC_SOCKET"] = str(work / "no-daemon.sock")
    warm_dir = work / "warm"
    warm_dir.mkdir()
    meshcc = str(VENV_BIN / "meshcc-gcc")
    cmds: dict[str, tuple[list[str], Callable[[], dict[str, str]]]] = {}

    def fixed(d: Path) -> Callable[[], dict[str, str]]:
        return lambda: dict(base, DISTCC_DIR=str(d))

    def fresh() -> dict[str, str]:
        d = Path(tempfile.mkdtemp(dir=work, prefix="cold-"))
        return dict(base, DISTCC_DIR=str(d))

    tail = ["-O2", "-c", "tiny.c", "-o", "tiny.o"]
    cmds["gcc -march=native (plain gcc)"] = (["gcc", "-march=native", *tail], fixed(warm_dir))
    cmds["meshcc-gcc -march=x86-64-v3"] = ([meshcc, "-march=x86-64-v3", *tail], fixed(warm_dir))
    cmds["meshcc-gcc -march=native, cached"] = ([meshcc, "-march=native", *tail], fixed(warm_dir))
    cmds["meshcc-gcc -march=native, cold"] = ([meshcc, "-march=native", *tail], fresh)
    subprocess.run(
        cmds["meshcc-gcc -march=native, cached"][0], cwd=work, env=fixed(warm_dir)(), check=True
    )
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for name, (argv, make_env) in cmds.items():
            env = make_env()
            t = time.perf_counter()
            subprocess.run(argv, cwd=work, env=env, check=True)
            times[name].append((time.perf_counter() - t) * 1000)
    for d in work.glob("cold-*"):
        shutil.rmtree(d)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", help="also write the figures to this file")
    ns = ap.parse_args()
    precompile_meshcc()  # clients load .pyc files, as from an installed copy
    with tempfile.TemporaryDirectory(prefix="meshcc-bench-native-") as tmp:
        work = Path(tmp)
        exp, _ = native.resolve("gcc", ["gcc", "-march=native"], {"DISTCC_DIR": tmp, **os.environ})
        figures: dict[str, object] = {
            "gcc": subprocess.run(
                ["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True
            ).stdout.strip(),
            "expansion": f"{exp[0]} + {len(exp) - 1} options",
            "import_native_ms": import_ms(),
            **in_process(ns.runs, work),
            "end_to_end_ms": end_to_end(ns.runs, work),
        }
    print(f"gcc {figures['gcc']}: -march=native = {figures['expansion']}")
    print(f"import meshcc.compiler.native           {figures['import_native_ms']:8.3f} ms")
    for k in (
        "resolve_cold_ms",
        "resolve_cached_ms",
        "analyse_native_cached_ms",
        "analyse_plain_ms",
    ):
        print(f"{k:40s}{figures[k]:8.3f} ms")  # type: ignore[str-format]
    print(f"end to end, median of {ns.runs} (DISTCC_HOSTS=localhost):")
    e2e = figures["end_to_end_ms"]
    assert isinstance(e2e, dict)
    for k, v in e2e.items():
        print(f"  {k:40s}{v:8.1f} ms")
    if ns.json:
        Path(ns.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
