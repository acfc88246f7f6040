#!/usr/bin/env python3
"""Server CPU per job: distccd, the meshcc daemon, and the floor of any Python server.

Why: issue 12 asks for the meshcc daemon's own CPU per job to be at most 1.2x distccd's.
This measures, in one run, what that target is against: three servers answer the same
real jobs, one at a time, in alternating batches:

- ``distccd``: stock distccd 3.4 (its parent and pre-forked children);
- ``meshcc``: ``meshcc daemon`` (the installed one with ``--meshcc-prefix``), logging at
  info to a file, as a user runs it;
- ``floor``: this script's ``--floor`` mode, the least a Python distcc server can do per
  job, written without any framework: a blocking accept loop that reads the request,
  parses its tokens with slicing, decompresses LZO with meshcc's own liblzo2 binding, makes
  the job directory, writes the source, spawns gcc with ``subprocess.Popen`` in that
  directory (stdout and stderr to unnamed files), waits, reads the object, compresses it,
  replies and cleans up. No argument vetting, no source scan, no limits, no event loop, no
  logging, no metrics: it is not a server anyone should run, only a lower bound.

Each figure is the CPU the server's whole process group ran over a batch (the sum of
``/proc/PID/task/TID/schedstat`` over its threads, as bench_serial.py counts it, so the
compilers are not in it), over the batch's jobs; the ways take turns batch by batch, in an
order that rotates each round, and the figure is the median over the rounds. The client is
this script, in another process group, sending prebuilt request bytes.

    .venv/bin/python benchmarks/server_floor.py --source lapi.i
    .venv/bin/python benchmarks/server_floor.py --source lapi.i --protocol 1 --meshcc-prefix P
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _harness as h
from bench_serial import group_tasks, server_delta
from server_cpu import _request


def floor_main(port_file: str) -> None:
    """The framework-free server (see the module's docstring); serves until killed."""
    from meshcc import compression

    devnull = os.open(os.devnull, os.O_RDONLY)
    env = {k.encode(): v.encode() for k, v in os.environ.items()}
    listener = socket.socket()
    listener.bind((h.LOOPBACK, 0))
    listener.listen(64)
    Path(port_file).write_text(str(listener.getsockname()[1]))
    n = 0
    while True:
        conn, _ = listener.accept()
        with conn:
            buf = bytearray()
            body_at = -1
            while True:  # until the whole DOTI body is in
                chunk = conn.recv(1 << 18)
                if not chunk:
                    break
                buf += chunk
                if body_at < 0:
                    at = buf.find(b"DOTI")
                    if at >= 0 and len(buf) >= at + 12:
                        body_at = at + 12
                        size = int(buf[at + 4 : at + 12], 16)
                if body_at >= 0 and len(buf) >= body_at + size:
                    break
            version = int(buf[4:12], 16)
            argc = int(buf[16:24], 16)
            at, argv = 24, []
            for _ in range(argc):
                length = int(buf[at + 4 : at + 12], 16)
                argv.append(bytes(buf[at + 12 : at + 12 + length]).decode())
                at += 12 + length
            body = bytes(buf[body_at : body_at + size])
            source = compression.decompress("lzo", body, 1 << 26) if version == 2 else body
            n += 1
            job = f"/tmp/meshcc_floor_{os.getpid()}_{n}"
            os.mkdir(job, 0o700)
            stem = next(a for a in argv if a.endswith(".c"))[:-2]
            fd = os.open(f"{job}/{stem}.i", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, source)
            os.close(fd)
            out = os.open(job, os.O_TMPFILE | os.O_RDWR, 0o600)
            err = os.open(job, os.O_TMPFILE | os.O_RDWR, 0o600)
            argv = [f"{stem}.i" if a == f"{stem}.c" else a for a in argv]
            proc = subprocess.Popen(
                argv,
                cwd=job,
                env=env,
                stdin=devnull,
                stdout=out,
                stderr=err,
                process_group=0,
            )
            code = proc.wait()
            errors = os.pread(err, 1 << 20, 0)
            os.close(out)
            os.close(err)
            fd = os.open(f"{job}/{stem}.o", os.O_RDONLY)
            obj = os.read(fd, 1 << 26)
            os.close(fd)
            os.unlink(f"{job}/{stem}.i")
            os.unlink(f"{job}/{stem}.o")
            os.rmdir(job)
            if version == 2:
                obj = compression.compress("lzo", obj)
            conn.sendall(
                b"DONE%08xSTAT%08xSERR%08x%sSOUT00000000DOTO%08x%s"
                % (version, code, len(errors), errors, len(obj), obj)
            )


def _start_floor(workdir: Path) -> h.Daemon:
    port_file = workdir / "floor.port"
    log = workdir / "floor.log"
    argv = [sys.executable, __file__, "--floor", str(port_file)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    daemon = h.Daemon("floor", proc, 0, log, argv)
    deadline = time.monotonic() + 10
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            daemon.stop()
            raise h.HarnessError(f"the floor server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    daemon.port = int(port_file.read_text())
    return daemon


def _job(port: int, request: bytes) -> None:
    with socket.create_connection((h.LOOPBACK, port)) as s:
        s.sendall(request)
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
    if not got.startswith(b"DONE") or got[12:24] != b"STAT00000000":
        raise h.HarnessError(f"a job did not compile: {bytes(got[:300])!r}")


def bench(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    source = Path(args.source).read_bytes()
    name = os.path.basename(args.source)
    request, _ = _request(source, name, args.protocol, "", args.opt, 1, "", args.argv_style)
    servers: dict[str, h.Daemon] = {}
    try:
        servers["distccd"] = h.start_distccd(work / "distccd", 2)
        command = [str(Path(args.meshcc_prefix) / "bin" / "meshcc")] if args.meshcc_prefix else None
        servers["meshcc"] = h.start_meshcc(work / "meshccd", 2, command=command)
        servers["floor"] = _start_floor(work)
        ways = list(servers)
        for way in ways:  # warm: the first jobs load gcc, caches and code
            for _ in range(3):
                _job(servers[way].port, request)
        per_job: dict[str, list[float]] = {w: [] for w in ways}
        for r in range(args.rounds):
            for way in ways[r % len(ways) :] + ways[: r % len(ways)]:
                pgid = os.getpgid(servers[way].proc.pid)
                time.sleep(0.03)
                before = group_tasks(pgid)
                for _ in range(args.batch):
                    _job(servers[way].port, request)
                time.sleep(0.03)  # a job's clean-up after its reply counts with it
                ms = server_delta(before, group_tasks(pgid))
                if ms is not None:  # a task of the server ended meanwhile: not measurable
                    per_job[way].append(ms / args.batch)
        return per_job
    finally:
        for daemon in servers.values():
            daemon.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="a preprocessed .i to send (its name ends in .i)")
    p.add_argument("--protocol", type=int, choices=(1, 2), default=2, help="2: LZO (,lzo)")
    p.add_argument("--opt", default="-O0", help="the job's -O option (compile time only)")
    p.add_argument("--argv-style", choices=("xz", "zlib"), default="xz")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--batch", type=int, default=10, help="jobs per way per round")
    p.add_argument("--meshcc-prefix", help="an install.sh prefix: its meshcc daemon")
    p.add_argument("--floor", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.floor:
        floor_main(args.floor)
        return 0
    if not args.source:
        p.error("--source is required")
    args.source = os.path.abspath(args.source)
    with tempfile.TemporaryDirectory(prefix="meshcc-server-floor-") as tmp:
        per_job = bench(args, Path(tmp))
    med = {w: statistics.median(v) for w, v in per_job.items() if v}
    print(
        f"server CPU per job (ms, median of {args.rounds} batches of {args.batch}; "
        f"protocol {args.protocol}, {os.path.basename(args.source)}):"
    )
    for way, value in med.items():
        dropped = args.rounds - len(per_job[way])
        print(
            f"  {way:8} {value:6.3f}  x distccd {value / med['distccd']:.2f}"
            + (f"  ({dropped} batches not measurable)" if dropped else "")
        )
    if "floor" in med and "meshcc" in med:
        print(f"  meshcc / floor {med['meshcc'] / med['floor']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
