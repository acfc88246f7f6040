#!/usr/bin/env python3
"""What reporting each compile's outcome (``meshcc stats``) costs, client and daemon side.

Why: every ``meshcc-gcc`` run now sends one datagram to the local daemon
(:mod:`meshcc.client.outcome`), and the compile server does a little bookkeeping per job
(:mod:`meshcc.transport.jobstats`). Both sit on hot paths, so they are measured:

1. client, in-process: ``outcome.report()`` with no daemon socket (a stat per candidate
   path), and with a real ``meshcc daemon`` listening (stat + socket + sendto + close);
2. client, import: ``_socket`` in a fresh interpreter after the modules a local-only run
   loads (the lease path has it already; a local-only run pays it only when a daemon is up);
3. end to end: ``meshcc-gcc -E tiny.c`` wall time with ``MESHCC_STATS=0`` and with reports
   on (daemon up), interleaved, medians;
4. daemon: CPU time (``/proc/PID/stat``) per received record over a burst of records
   paced below the per-uid rate limit;
5. server bookkeeping: ``JobStats.record()`` + the slot guard vs a bare semaphore, per job.

Loopback and Unix sockets only. ``.venv/bin/python benchmarks/bench_outcome.py [--runs 40]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
from bench_build import precompile_meshcc

from meshcc.client import outcome
from meshcc.transport.jobstats import JobStats
from meshcc.wire import outcome as wire

TINY = "int tiny(void) { return 1; }\n"


def _per_call_us(fn: object, n: int) -> float:
    call = fn  # type: ignore[assignment]
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            call()  # type: ignore[operator]
        samples.append((time.perf_counter() - t) / n * 1e6)
    return min(samples)


def client_in_process(sock_path: str | None, n: int) -> float:
    os.environ["MESHCC_SOCKET"] = sock_path or "/nonexistent/meshcc/control.sock"
    return _per_call_us(lambda: outcome.report("local", "", "-E only preprocesses"), n)


def import_socket_ms(runs: int) -> float:
    pre = "import os, meshcc.client.wrapper, meshcc.compiler.args, meshcc.client.outcome; "
    samples = []
    for _ in range(runs):
        argv = [sys.executable, "-X", "importtime", "-c", pre + "import _socket"]
        err = subprocess.run(argv, capture_output=True, text=True, check=True).stderr
        line = [ln for ln in err.splitlines() if ln.rstrip().endswith("| _socket")][-1]
        samples.append(int(line.split("|")[1]) / 1000)
    return statistics.median(samples)


def end_to_end(work: Path, sock: str, runs: int) -> dict[str, float]:
    (work / "tiny.c").write_text(TINY)
    gcc = str(Path(sys.executable).parent / "meshcc-gcc")
    base = h.clean_env()
    base["MESHCC_SOCKET"] = sock
    base["DISTCC_DIR"] = str(work / "dd")
    (work / "dd").mkdir(exist_ok=True)
    ways = {"stats off": {**base, "MESHCC_STATS": "0"}, "stats on": base}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(runs):
        for name, env in ways.items():
            t = time.perf_counter()
            subprocess.run([gcc, "-E", "tiny.c", "-o", "/dev/null"], env=env, cwd=work, check=True)
            times[name].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_cost(pid: int, sock: str, count: int) -> float:
    import socket

    path = wire.report_socket_path(sock)
    data = wire.encode("remote", "127.0.0.1:3632", "")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    before = _cpu_s(pid)
    sent = 0
    for i in range(count):
        try:
            s.sendto(data, path)
            sent += 1
        except BlockingIOError:
            pass
        if i % 500 == 499:
            time.sleep(0.3)  # stay under the per-uid rate (2000/s) and the socket queue
    time.sleep(1.0)
    used = _cpu_s(pid) - before - 0.0
    s.close()
    return used / max(1, sent) * 1e6


def server_bookkeeping(n: int) -> dict[str, float]:
    async def bare(sem: asyncio.Semaphore) -> None:
        for _ in range(n):
            async with sem:
                pass

    async def counted(sem: asyncio.Semaphore, stats: JobStats) -> None:
        for _ in range(n):
            async with stats.slot(sem):
                pass
            stats.record("compile_ok", 4000, 2000, 0.2)

    def timed(coro_fn: object) -> float:
        best = []
        for _ in range(5):
            t = time.perf_counter()
            asyncio.run(coro_fn())  # type: ignore[operator]
            best.append((time.perf_counter() - t) / n * 1e6)
        return min(best)

    a = timed(lambda: bare(asyncio.Semaphore(4)))
    b = timed(lambda: counted(asyncio.Semaphore(4), JobStats()))
    return {"bare semaphore us/job": a, "slot guard + record us/job": b, "added us/job": b - a}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    precompile_meshcc()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-outcome-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        sock = str(work / "run" / "control.sock")
        results["report() us, no daemon"] = client_in_process(None, 5000)
        daemon = h.start_meshcc(work / "d", 2, "--socket", sock)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(wire.report_socket_path(sock)):
                if time.monotonic() > deadline:
                    raise h.HarnessError("no outcome socket")
                time.sleep(0.05)
            results["report() us, daemon up"] = client_in_process(sock, 1000)
            results["import _socket ms (local-only run, daemon up)"] = import_socket_ms(args.runs)
            results["meshcc-gcc -E median ms"] = end_to_end(work, sock, args.runs)
            results["daemon CPU us per record"] = daemon_cost(daemon.proc.pid, sock, 4000)
        finally:
            daemon.stop()
    results["server bookkeeping"] = server_bookkeeping(20000)
    for k, v in results.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk:32} {vv:8.2f}")
        else:
            print(f"{k:48} {v:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
