"""The daemon's CPU per lease: a real ControlServer on a real Unix socket, N leases.

    .venv/bin/python benchmarks/lease_daemon_cpu.py [--tree T] [--leases 400] [--local]
    .venv/bin/python benchmarks/lease_daemon_cpu.py --callgrind --python /usr/bin/python3

The server runs in a process of its own (this tree's or ``--tree``'s meshcc, the real
``FingerprintCache`` on the box's ``gcc``, the real ``LeaseBroker``); the mesh is a stub
with one matching peer (a grant per request; ``--local``: no peer, so every answer is
"compile locally"), so what is counted is the control socket's own work per lease and not
the judging of a mesh. A driver process asks for the leases one after another as the
compile client does: connect, ``lease``, read the answer, ``done``, close. The server
reports its own CPU (getrusage) and its event loop's turns over the N leases, after
warming up (the first lease probes gcc). ``--callgrind`` counts the server's instructions
instead (valgrind, load-proof): the run's total with N leases less the total with none,
over N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM = 5
TESTS = Path(__file__).resolve().parents[1] / "tests"


def _serve(sock_path: str, local: bool) -> None:
    """The server process: serve until stdin closes, then print its figures as JSON."""
    import asyncio

    from meshcc.compiler.fingerprints import FingerprintCache
    from meshcc.daemon.control_server import ControlServer
    from meshcc.transport.control_socket import open_control_socket
    from meshcc.wire import control
    from meshstub import matching_peer

    peer = matching_peer("127.0.0.1", 1000, frozenset({"lzo", "busy"}))
    verdicts = [] if local else [peer]

    class Status:
        off_reason: str | None = "benchmark"

    class Mesh:
        status = Status()

        def explain(self, fingerprint: object) -> list[object]:
            return list(verdicts)

        def report_job_result(self, peer: str, ok: bool, *, connect_failed: bool = False) -> bool:
            return True

    turns = [0]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        select = loop._selector.select  # type: ignore[attr-defined]

        def counted(timeout: float | None = None) -> object:
            turns[0] += 1
            return select(timeout)

        loop._selector.select = counted  # type: ignore[attr-defined]
        server = ControlServer(
            Mesh(),  # type: ignore[arg-type]
            lambda: control.StatusReply(version="bench"),
            fingerprints=FingerprintCache(),
        )
        await server.start(open_control_socket(sock_path))
        start: list[float] = []

        def on_line() -> None:
            line = sys.stdin.readline()
            if line.strip() == "mark":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                start[:] = [ru.ru_utime + ru.ru_stime, float(turns[0])]
                print("marked", flush=True)
            elif not done.done():  # "stop", or stdin's end
                done.set_result(None)

        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), on_line)
        print("ready", flush=True)
        await done
        loop.remove_reader(sys.stdin.fileno())
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru.ru_utime + ru.ru_stime
        await server.stop()
        print(
            json.dumps(
                {"cpu_s": cpu - start[0], "turns": turns[0] - start[1]}
                if start
                else {"cpu_s": cpu, "turns": turns[0]}
            ),
            flush=True,
        )

    asyncio.run(main())


def _lease_once(path: str, request: bytes, done: bytes) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(request)
    reply = s.recv(65536)
    assert reply, "the daemon closed without answering"
    try:
        s.sendall(done)  # a "local" answer: the daemon has closed already
    except BrokenPipeError:
        pass
    # Wait for the daemon's close: the lease is over on its side (as the next job's
    # lease would find it), and its release is part of the count.
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    s.close()


def _drive(tree: str, python: str, n: int, local: bool, callgrind: str | None) -> dict[str, float]:
    sys.path.insert(0, tree)
    from meshcc.wire import control

    gcc = shutil.which("gcc")
    assert gcc is not None
    request = control.encode(control.LeaseRequest("gcc", os.path.realpath(gcc), "t.c").to_message())
    done = control.encode(control.DoneMessage(True).to_message())
    with tempfile.TemporaryDirectory(prefix="meshcc-lease-bench-") as tmp:
        path = str(Path(tmp) / "control.sock")
        # LEASE_BENCH_PRE: words before the script (e.g. a cProfile wrapper's path)
        pre = os.environ.get("LEASE_BENCH_PRE", "").split()
        cmd = [python, *pre, __file__, "--serve", path] + (["--local"] if local else [])
        if callgrind:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}", *cmd]
        # the tree's meshcc, and this checkout's tests/ for the stub peer (meshstub)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, str(TESTS)]))
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("LEASE_BENCH_STDERR") else subprocess.DEVNULL,
            env=env,
            text=True,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            for _ in range(WARM):
                _lease_once(path, request, done)
            if not callgrind:
                proc.stdin.write("mark\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "marked"
            t0 = time.monotonic()
            for _ in range(n):
                _lease_once(path, request, done)
            wall = time.monotonic() - t0
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            out = json.loads(proc.stdout.readline())
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(60)
    if callgrind:
        text = subprocess.run(
            ["callgrind_annotate", callgrind], capture_output=True, text=True, check=True
        ).stdout
        for line in text.splitlines():
            if "PROGRAM TOTALS" in line:
                out["instructions"] = float(line.split()[0].replace(",", ""))
    out["wall_s"] = wall
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--leases", type=int, default=400)
    p.add_argument("--local", action="store_true", help="no peer: 'compile locally' answers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    args = p.parse_args()
    if args.serve:
        _serve(args.serve, args.local)
        return
    kind = "local" if args.local else "grant"
    if args.callgrind:
        with tempfile.TemporaryDirectory(prefix="meshcc-lease-cg-") as tmp:
            base = _drive(args.tree, args.python, 0, args.local, f"{tmp}/zero.out")
            full = _drive(args.tree, args.python, args.leases, args.local, f"{tmp}/n.out")
        per = (full["instructions"] - base["instructions"]) / args.leases
        print(f"{kind}: {per / 1e6:.3f} M instructions per lease (n={args.leases})")
        return
    for _ in range(args.rounds):
        out = _drive(args.tree, args.python, args.leases, args.local, None)
        print(
            f"{kind}: {out['cpu_s'] / args.leases * 1e3:.3f} ms CPU per lease, "
            f"{out['turns'] / args.leases:.1f} loop turns per lease "
            f"(n={args.leases}, wall {out['wall_s']:.2f} s)"
        )


if __name__ == "__main__":
    main()
