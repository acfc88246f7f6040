"""Instructions one compile client process runs for one remote job (valgrind callgrind).

    .venv/bin/python benchmarks/client_instructions.py                 # this tree
    .venv/bin/python benchmarks/client_instructions.py --tree /work/main --lzo
    .venv/bin/python benchmarks/client_instructions.py --source /path/to/lua/src/lvm.c \
        --cflags "-std=gnu99 -O2 -DLUA_USE_LINUX"     # with its preprocessor

Instruction counts do not move with the machine's load, unlike CPU times, so they compare
two trees (before/after) on a busy box. One job: a preprocessed ``.i`` (no cpp, so only the
client process is counted) sent to a stock distccd on loopback, host from ``DISTCC_HOSTS``,
through an install.sh-style ``python3 -IS`` launcher (as bench_serial's). The first run
writes the ``.pyc`` files and is not counted. ``--source`` compiles a real C file in its
own directory instead, and counts the client's children too (its preprocessor: gcc's
driver and cc1), so how the client preprocesses (-fdirectives-only or not) shows.
Needs valgrind, gcc and distccd; run as root (distccd drops to ``nobody``).

``--lease``: no ``DISTCC_HOSTS``; the client asks a local ``meshcc daemon`` (loopback,
discovery off, its own control socket) for a lease. With no peer the daemon answers
"compile locally" after the same toolchain lookup and peer judgement a grant needs, so the
count is the lease path's client (its local compile, a child, is not counted), and the
daemon's own CPU per lease is read from its threads' ``schedstat`` over ``--lease-jobs``
plain (unvalgrinded) clients, less the same time idle.

``--grant``: the lease path of a job that does go remote: a stand-in control socket in this
process (meshcc's own control codec) grants every lease to the stock distccd, and the
client sends the job there, as with a peer from the mesh (no daemon CPU is measured here:
the stand-in's is not meshcc's; ``--lease`` measures the daemon's).

``--masquerade``: the client runs as ``gcc`` through a link to the launcher in a directory
first on ``PATH`` (Gentoo's ``/usr/lib/distcc/bin`` style), so it looks up the real
compiler after its own directory; combines with the other options.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _harness as h
from cpusample import threads_cpu_ns

SOURCE = b"""#include <stdio.h>
#include <string.h>
#include <stdlib.h>
int f(int x) { char b[32]; snprintf(b, sizeof b, "%d", x); return (int)strlen(b) + atoi(b); }
"""


def start_lease_daemon(work: Path) -> tuple[h.Daemon, Path]:
    """A loopback meshcc daemon (discovery off) and its control socket, once it answers."""
    sock = work / "control.sock"
    daemon = h.start_meshcc(work / "meshccd", 2, "--socket", str(sock))
    deadline = time.monotonic() + 20
    while not sock.exists():
        if time.monotonic() > deadline:
            daemon.stop()
            raise h.HarnessError(f"no control socket at {sock}\n{daemon.log_text()}")
        time.sleep(0.05)
    return daemon, sock


def start_granting(work: Path, port: int) -> tuple[socket.socket, Path]:
    """A control socket that grants every lease to 127.0.0.1:``port`` (the distccd) and
    reads the client's ``done``: a lease path that goes remote, without a mesh."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from meshcc.wire import control

    sock_path = work / "grant.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(16)
    grant = control.LeaseGranted("127.0.0.1", port, 1, "gcc", f"127.0.0.1:{port}")

    def serve(conn: socket.socket) -> None:
        reader = control.MessageReader(control.MAX_MESSAGE)
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                reader.feed(data)
                while (msg := reader.next_message()) is not None:
                    if msg.get("op") == "lease":
                        conn.sendall(control.encode(grant.to_message()))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, sock_path


def launcher(tree: Path, bindir: Path, python: str = sys.executable) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / "meshcc-gcc"
    path.write_text(
        f"#!{python} -IS\nimport gc; gc.disable()\nimport sys\nsys.path.append({str(tree)!r})\n"
        "from meshcc.client.wrapper import launch\nsys.exit(launch())\n"
    )
    path.chmod(0o755)
    return path


def count(cmd: list[str], env: dict[str, str], out: Path, cwd: Path, children: bool = False) -> int:
    """Instructions of cmd (and, with ``children``, of every process it starts, summed)."""
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    if children:
        vg.append("--trace-children=yes")
    p = subprocess.run([*vg, *cmd], env=env, cwd=cwd, capture_output=True, text=True, check=False)
    got = [int(n) for n in re.findall(r"Collected : (\d+)", p.stderr)]
    if p.returncode != 0 or not got:
        raise h.HarnessError(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-500:]}")
    for f in out.parent.glob(out.name + ".*"):
        f.unlink()
    return sum(got)


def lease_daemon_cpu(
    pid: int, cmd: list[str], env: dict[str, str], cwd: Path, jobs: int
) -> tuple[float, float]:
    """(daemon CPU ms per lease, the same per idle interval of one client's wall time)."""
    t0, c0 = time.monotonic(), threads_cpu_ns(pid)
    for _ in range(jobs):
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    busy_s, busy_ns = time.monotonic() - t0, threads_cpu_ns(pid) - c0
    c1 = threads_cpu_ns(pid)
    time.sleep(busy_s)
    idle_ns = threads_cpu_ns(pid) - c1
    return busy_ns / jobs / 1e6, idle_ns / jobs / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--lzo", action="store_true", help="a `,lzo` host (protocol 2)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--source", help="a C file to compile (in its own dir), cpp included")
    p.add_argument("--cflags", default="", help="its options (one string)")
    p.add_argument("--lease", action="store_true", help="a lease from a local meshcc daemon")
    p.add_argument("--lease-jobs", type=int, default=40, help="clients for the daemon's CPU")
    p.add_argument("--grant", action="store_true", help="a granted lease (stand-in daemon)")
    p.add_argument(
        "--masquerade",
        action="store_true",
        help="run as `gcc` through a masquerade link first on PATH (Gentoo's FEATURES=distcc)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the launcher's interpreter (what users run: Debian's /usr/bin/python3)",
    )
    args = p.parse_args()
    for tool in ("valgrind", "distccd", "gcc"):
        if shutil.which(tool) is None:
            print(f"client_instructions: {tool} is not installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="meshcc-instr-"))
    work.chmod(0o755)
    port = h.free_port()
    argv = ["distccd", "--daemon", "--no-detach", "--log-stderr", "--listen", "127.0.0.1"]
    argv += ["--port", str(port), "--allow", "127.0.0.1", "--jobs", "2", "--user", "nobody"]
    distccd = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    stack: list[h.Daemon] = []  # a meshcc daemon (--lease)
    listeners: list[socket.socket] = []  # the stand-in control socket (--grant)
    try:
        for _ in range(100):
            if h.port_accepts(port):
                break
            time.sleep(0.05)
        (work / "t.c").write_bytes(SOURCE)
        subprocess.run(["gcc", "-E", "t.c", "-o", "t.i"], cwd=work, check=True)
        (work / "distcc").mkdir()
        env = h.clean_env()
        env["DISTCC_HOSTS"] = f"127.0.0.1:{port}/4" + (",lzo" if args.lzo else "")
        env["DISTCC_DIR"] = str(work / "distcc")
        cmd = [str(launcher(Path(args.tree), work / "bin", args.python)), "-c", "t.i", "-o", "t.o"]
        cwd = work
        if args.source:
            src = Path(args.source).resolve()
            cwd = src.parent
            cmd = [cmd[0], *args.cflags.split(), "-c", src.name, "-o", str(work / "s.o")]
        if args.masquerade:
            # /usr/lib/meshcc/bin/gcc -> meshcc-gcc, that directory first on PATH: the
            # wrapper finds the real gcc after it (compiler lookup on every job).
            masq = work / "masq"
            masq.mkdir()
            (masq / "gcc").symlink_to(cmd[0])
            env["PATH"] = f"{masq}:{env.get('PATH', '/usr/bin:/bin')}"
            cmd = [str(masq / "gcc"), *cmd[1:]]
        env["DISTCC_FALLBACK"] = "0"  # a job that cannot go remote fails the count
        if args.lease:
            meshccd, sock = start_lease_daemon(work)
            stack.append(meshccd)
            del env["DISTCC_HOSTS"], env["DISTCC_FALLBACK"]  # the daemon's answer: local
            env["MESHCC_SOCKET"] = str(sock)
        if args.grant:
            listener, sock = start_granting(work, port)
            listeners.append(listener)
            del env["DISTCC_HOSTS"]
            env["MESHCC_SOCKET"] = str(sock)
        subprocess.run(cmd, cwd=cwd, env=env, check=True)  # writes the .pyc files
        got = [
            count(cmd, env, work / "cg.out", cwd, children=bool(args.source))
            for _ in range(args.runs)
        ]
        print(f"{args.tree}: {min(got) / 1e6:.2f} M instructions (runs: {got})")
        if args.lease:
            busy, idle = lease_daemon_cpu(stack[0].proc.pid, cmd, env, cwd, args.lease_jobs)
            print(
                f"meshcc daemon: {busy - idle:.2f} ms CPU per lease "
                f"({busy:.2f} ms per client, {idle:.2f} ms idle in the same time)"
            )
    except (h.HarnessError, subprocess.CalledProcessError) as e:
        print(f"client_instructions: {e}", file=sys.stderr)
        return 1
    finally:
        for daemon in stack:
            daemon.stop()
        for listener in listeners:
            listener.close()
        distccd.terminate()
        distccd.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
