#!/usr/bin/env python3
"""What asking the local meshcc daemon for a lease costs a compile, next to the wrapper's
own start-up.

Why: every distributable compile without DISTCC_HOSTS now looks for a daemon (a failed
connect when there is none) or asks it for a lease (one Unix-socket round trip). Both sit
on the hot path of thousands of short processes, so they are measured three ways:

1. import: `meshcc.transport.control_client` in a fresh interpreter (-X importtime, after
   the modules the wrapper already loads), next to the `msgpack` package it avoids;
2. in-process: the no-daemon check (default paths, and an explicit MESHCC_SOCKET that does
   not exist) and a lease round trip (connect, lease, done, close) against a real
   `meshcc daemon` on loopback (discovery off, so it answers "compile locally" after the
   same fingerprint lookup and peer judgement a grant needs);
3. end to end: `meshcc-gcc -c tiny.c` wall time with DISTCC_HOSTS=localhost (no daemon
   check), with no daemon (check + host file "localhost"), and with the daemon's "local"
   answer; plain gcc and `meshcc-gcc -E` (local-only start-up) for scale.

Medians over --runs (default 50); end-to-end commands are interleaved so drifting load hits
all alike. Loopback and Unix sockets only. Run as root or any user:

    .venv/bin/python benchmarks/bench_lease.py [--runs 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
from bench_build import precompile_meshcc

TINY = "#include <stddef.h>\nint tiny(void) { return (int)sizeof(size_t); }\n"


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def import_costs(runs: int) -> dict[str, float]:
    """Median cumulative import time (ms) of a module after the wrapper's usual imports."""
    pre = (
        "import os, meshcc.client.wrapper, meshcc.compiler.args, meshcc.client.slots, "
        "meshcc.transport.client; "
    )
    result = {}
    for module in ("meshcc.transport.control_client", "msgpack"):
        samples = []
        for _ in range(runs):
            argv = [sys.executable, "-X", "importtime", "-c", pre + f"import {module}"]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stderr
            m = re.search(rf"^import time:\s+\d+ \|\s+(\d+) \| {re.escape(module)}$", out, re.M)
            if m is None:
                raise h.HarnessError(f"no import time line for {module}:\n{out[-2000:]}")
            samples.append(int(m[1]) / 1000)
        result[module] = _median(samples)
    return result


def start_daemon(work: Path) -> tuple[h.Daemon, Path]:
    """A loopback meshcc daemon with a control socket (its dir must survive the root drop)."""
    d = Path(tempfile.mkdtemp(prefix="meshcc-bench-lease-", dir="/tmp"))
    d.chmod(0o755)
    sock = d / "control.sock"
    daemon = h.start_meshcc(work / "meshccd", 2, "--socket", str(sock))
    from meshcc.transport import control_client as cc

    deadline = time.monotonic() + 10
    while True:
        try:
            conn = cc.Control.connect(str(sock))
            conn.request({"op": "status"}, 10)
            conn.close()
            return daemon, sock
        except (cc.NoDaemon, cc.ControlError):
            if time.monotonic() > deadline:
                daemon.stop()
                raise h.HarnessError(f"no control socket at {sock}\n{daemon.log_text()}") from None
            time.sleep(0.05)


def in_process(sock: Path, runs: int, work: Path) -> dict[str, float]:
    """Median µs of the no-daemon checks and of a whole lease cycle (this process)."""
    from meshcc.transport import control_client as cc

    gcc = shutil.which("gcc") or "/usr/bin/gcc"
    empty = work / "xdg"
    empty.mkdir()
    envs = {
        "no daemon, default paths": {"XDG_RUNTIME_DIR": str(empty)},
        "no daemon, MESHCC_SOCKET missing": {"MESHCC_SOCKET": str(work / "missing.sock")},
    }
    out: dict[str, float] = {}
    for name, env in envs.items():
        samples = []
        for _ in range(runs):
            t = time.perf_counter_ns()
            try:
                cc.connect(env).close()
                raise h.HarnessError(f"{name}: a daemon answered")
            except cc.NoDaemon:
                pass
            samples.append((time.perf_counter_ns() - t) / 1000)
        out[name] = _median(samples)

    def cycle() -> dict[str, object]:
        conn = cc.connect({"MESHCC_SOCKET": str(sock)})
        answer = conn.lease("gcc", gcc, "tiny.c", 30)
        conn.release()
        return answer

    answer = cycle()  # the daemon probes gcc once; later requests hit its cache
    if answer.get("ok") is not False or not answer.get("local"):
        raise h.HarnessError(f"unexpected lease answer {answer!r}")
    samples = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        cycle()
        samples.append((time.perf_counter_ns() - t) / 1000)
    out["lease round trip (connect, lease, done, close)"] = _median(samples)
    return out


def end_to_end(sock: Path, runs: int, work: Path) -> dict[str, float]:
    d = work / "e2e"
    d.mkdir()
    (d / "tiny.c").write_text(TINY)
    base = h.client_env(d / "state")
    base.pop("DISTCC_FALLBACK")
    Path(base["DISTCC_DIR"], "hosts").write_text("localhost\n")
    hosts_env = dict(base, DISTCC_HOSTS="localhost")
    nodaemon_env = dict(base)  # MESHCC_SOCKET points at nothing: one failed connect
    lease_env = dict(base, MESHCC_SOCKET=str(sock))
    cmds = {
        "gcc -c": (["gcc", "-c", "tiny.c", "-o", "tiny.o"], base),
        "meshcc-gcc -c, DISTCC_HOSTS=localhost": (
            ["meshcc-gcc", "-c", "tiny.c", "-o", "tiny.o"],
            hosts_env,
        ),
        "meshcc-gcc -c, no daemon, hosts file": (
            ["meshcc-gcc", "-c", "tiny.c", "-o", "tiny.o"],
            nodaemon_env,
        ),
        "meshcc-gcc -c, daemon says local": (
            ["meshcc-gcc", "-c", "tiny.c", "-o", "tiny.o"],
            lease_env,
        ),
        "gcc -E": (["gcc", "-E", "tiny.c", "-o", "tiny.i"], base),
        "meshcc-gcc -E (local-only)": (["meshcc-gcc", "-E", "tiny.c", "-o", "tiny.i"], hosts_env),
        "python -c pass": ([sys.executable, "-c", "pass"], base),
    }
    samples: dict[str, list[float]] = {k: [] for k in cmds}

    def once(cmd: list[str], env: dict[str, str]) -> float:
        t = time.perf_counter()
        subprocess.run(
            cmd,
            cwd=d,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        return (time.perf_counter() - t) * 1000

    for cmd, env in cmds.values():  # warm-up; fails loudly if a command is broken
        once(cmd, env)
    for _ in range(max(1, runs // 5)):
        for name, (cmd, env) in cmds.items():
            samples[name] += [once(cmd, env) for _ in range(5)]
    return {k: _median(v) for k, v in samples.items()}


def report(
    imports: dict[str, float], micro: dict[str, float], e2e: dict[str, float], runs: int
) -> str:
    lines = [f"import, fresh interpreter after the wrapper's own imports (median of {runs}, ms)"]
    for k, v in imports.items():
        lines.append(f"  {k:<58} {v:7.2f}")
    lines.append(f"\nin-process (median of {runs}, µs)")
    for k, v in micro.items():
        lines.append(f"  {k:<58} {v:7.1f}")
    lines.append(f"\nend to end, wall of one command (median of {runs}, ms)")
    for k, v in e2e.items():
        lines.append(f"  {k:<58} {v:7.2f}")
    a = e2e["meshcc-gcc -c, DISTCC_HOSTS=localhost"]
    lines += [
        "",
        f"  wrapper start-up, local-only (-E minus gcc -E)             "
        f"{e2e['meshcc-gcc -E (local-only)'] - e2e['gcc -E']:7.2f}",
        f"  wrapper overhead on -c (DISTCC_HOSTS=localhost minus gcc)  {a - e2e['gcc -c']:7.2f}",
        f"  + no-daemon check and host file (vs DISTCC_HOSTS)          "
        f"{e2e['meshcc-gcc -c, no daemon, hosts file'] - a:7.2f}",
        f"  + lease round trip, daemon answers local (vs DISTCC_HOSTS) "
        f"{e2e['meshcc-gcc -c, daemon says local'] - a:7.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    precompile_meshcc()
    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-lease-work-"))
    daemon = None
    try:
        imports = import_costs(args.runs)
        daemon, sock = start_daemon(work)
        micro = in_process(sock, args.runs, work)
        e2e = end_to_end(sock, args.runs, work)
    finally:
        if daemon is not None:
            daemon.stop()
            shutil.rmtree(sock.parent, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(report(imports, micro, e2e, args.runs))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "runs": args.runs,
                    "import_ms": imports,
                    "in_process_us": micro,
                    "end_to_end_ms": e2e,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
