"""What distcc's state file (distccmon) costs a compile: per phase note, and per job.

    .venv/bin/python benchmarks/bench_state.py [--runs 40] [--before /other/venv/bin/meshcc-gcc]

1. ``meshcc.client.state.note`` in-process: open + pwrite + close of the 296-byte record.
2. Whole jobs, one at a time, each a fresh ``meshcc-gcc`` process: a local-only compile
   (autoconf's ``conftest.c``: now run as a child so the file can go at exit, where it was
   exec'd before) and a remote one to a stock distccd on 127.0.0.1 (startup, blocked?,
   connect, send, compile, receive: 4-5 notes). With ``--before`` (a meshcc-gcc without
   state files, e.g. the main branch's venv) both are run interleaved and the medians
   compared; stock ``distcc gcc`` is timed too, as the yardstick.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def note_cost(n: int = 20000) -> float:
    from meshcc.client import state

    with tempfile.TemporaryDirectory() as top:
        state.begin(top, "bench.c")
        state.note(state.STARTUP)
        t0 = time.perf_counter()
        for i in range(n):
            state.note(state.CONNECT + (i & 3), "127.0.0.1", 1)
        dt = time.perf_counter() - t0
        state.end()
    return dt / n * 1e6


def time_job(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {res.stderr.decode(errors='replace')}")
    return dt * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--before", help="a meshcc-gcc to compare with (no state files)")
    args = ap.parse_args()

    print(f"state.note(): {note_cost():.1f} us per phase (open+pwrite+close)")

    work = Path(tempfile.mkdtemp(prefix="bench-state-"))
    port = free_port()
    distccd = subprocess.Popen(
        [
            *("distccd", "--daemon", "--no-detach", "--log-stderr", "--listen", "127.0.0.1"),
            *("--port", str(port), "--allow", "127.0.0.1", "--jobs", "2"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(1.0)
        (work / "conftest.c").write_text("int main(void) { return 0; }\n")
        (work / "job.c").write_text("int job(int x) { return x * 3; }\n")
        (work / "dd").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        env.update(
            DISTCC_DIR=str(work / "dd"),
            DISTCC_HOSTS=f"127.0.0.1:{port}/4",
            MESHCC_SOCKET=str(work / "none.sock"),
        )
        clients = {"after": [str(VENV_BIN / "meshcc-gcc")]}
        if args.before:
            clients["before"] = [args.before]
        if shutil.which("distcc"):
            clients["distcc"] = ["distcc", "gcc"]
        for what, src in (("local-only", "conftest.c"), ("remote", "job.c")):
            times: dict[str, list[float]] = {k: [] for k in clients}
            for _ in range(args.runs):  # interleaved: load from others hits all alike
                for name, cc in clients.items():
                    times[name].append(time_job([*cc, "-c", src, "-o", "x.o"], env, work))
            line = ", ".join(
                f"{k} {statistics.median(v):.1f} ms (min {min(v):.1f})" for k, v in times.items()
            )
            print(f"{what} job, median of {args.runs}: {line}")
        leftovers = list((work / "dd" / "state").glob("*"))
        print(f"state files left: {len(leftovers)}")
    finally:
        os.killpg(distccd.pid, 15)
        distccd.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
