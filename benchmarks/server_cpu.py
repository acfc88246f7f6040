#!/usr/bin/env python3
"""The compile server's own CPU per job, measured in one process that load does not move.

Why: bench_serial's server figure (schedstat of the daemon's threads) is the one users see,
but on a shared 2-core box it moves ±30 % from run to run. Here an in-process
``CompileServer`` (the daemon's own class, its logging set up as the daemon sets it up, at
``--log-level``) serves ``--jobs`` real jobs, one at a time, sent by a separate client
process (so the client's work is not in the figures); the compilers it spawns are child
processes, not counted either. Figures, per job:

- ``cpu``: the server process's CPU (every thread: ``time.process_time``) over the measured
  jobs, after ``--warmup`` unmeasured ones; ``sys``: the kernel's part of it (rusage);
- ``turns``: event-loop iterations (``_run_once`` calls);
- ``--callgrind``: the server runs under valgrind (no children traced) twice, with
  ``--warmup + --jobs`` and ``--warmup`` jobs; the difference over ``--jobs`` is the
  instructions per job (start-up and teardown cancel out). Instruction counts do not move
  with the box's load;
- ``--profile PATH``: cProfile timed by the main thread's CPU clock over the measured jobs
  (ranks where the time goes; the profiler's own cost inflates every figure).

    .venv/bin/python benchmarks/server_cpu.py --source lapi.i --protocol 2
    .venv/bin/python benchmarks/server_cpu.py --source lzma_encoder.i --codec zstd --callgrind
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# What a distcc client sends for one of xz-utils' liblzma compiles once the preprocessor
# options are stripped (distcc's dcc_strip_local_args): the vetting sees a real argv.
XZ_ARGS = (
    "-std=gnu99 -pthread -fvisibility=hidden -Wall -Wextra -Wvla -Wformat=2 -Winit-self "
    "-Wmissing-include-dirs -Wstrict-aliasing -Wfloat-equal -Wundef -Wshadow "
    "-Wpointer-arith -Wbad-function-cast -Wwrite-strings -Wdate-time -Wsign-conversion "
    "-Wfloat-conversion -Waggregate-return -Wstrict-prototypes -Wold-style-definition "
    "-Wmissing-prototypes -Wmissing-declarations -Wredundant-decls -g -fPIC -DPIC"
).split()


def _request(
    source: bytes, name: str, protocol: int, codec: str, opt: str, n: int, prev: str, style: str
) -> tuple[bytes, str]:
    """One job's request bytes (and, for zref, the body id it asks the server to keep)."""
    from meshcc import compression
    from meshcc.wire import codecs as wc
    from meshcc.wire import protocol as wire

    stem = name.rsplit(".", 1)[0]
    flags = XZ_ARGS if style == "xz" else []  # zlib's: -O2 and -D only (-D stays local)
    argv = ["gcc", *flags, opt, "-c", f"{stem}.c", "-o", f"{stem}.o"]
    head = wire.encode_request_head(protocol, [a.encode() for a in argv])
    keep = ""
    if codec in ("zstd", "zref"):
        out = head + wire.string_token(b"CODC", b"zstd")
        prefix = None
        if codec == "zref":
            keep = f"{n:032x}"
            out += wc.encode_prefix_tokens(keep, prev)
            prefix = source if prev else None
        return out + wire.encode_source(compression.compress("zstd", source, None, prefix)), keep
    if protocol == 2:
        return head + wire.encode_source(compression.compress("lzo", source)), keep
    return head + wire.encode_source(source), keep


def client_main(args: argparse.Namespace) -> None:
    """Send ``total`` jobs one at a time; fail loudly unless each compiled."""
    source = Path(args.source).read_bytes()
    prev = ""
    for n in range(args.total):
        req, keep = _request(
            source,
            os.path.basename(args.source),
            args.protocol,
            args.codec,
            args.opt,
            n + 1,
            prev,
            args.argv_style,
        )
        with socket.create_connection(("127.0.0.1", args.port)) as s:
            s.sendall(req)
            got = bytearray()
            while chunk := s.recv(1 << 20):
                got += chunk
        if not got.startswith(b"DONE") or got[12:24] != b"STAT00000000":
            sys.exit(f"job {n}: not compiled: {bytes(got[:300])!r}")
        prev = keep


def server_main(args: argparse.Namespace) -> None:
    import cProfile

    from meshcc.compiler.toolchain import ToolchainRegistry
    from meshcc.daemon import logsetup
    from meshcc.transport.jobstats import JobStats
    from meshcc.transport.server import CompileServer, ServerConfig

    log_file = open(args.log_file, "a", buffering=1, encoding="utf-8")
    logsetup.configure(logsetup.parse_level(args.log_level), log_file, to_file=True)
    registry = ToolchainRegistry.from_paths(["/usr/bin/gcc"])
    config = ServerConfig(allowed=(ipaddress.ip_network("127.0.0.0/8"),), jobs=2)
    total = args.warmup + args.jobs
    figures: dict[str, float] = {}
    profiler = cProfile.Profile(time.thread_time) if args.profile else None

    async def run() -> None:
        loop = asyncio.get_running_loop()
        turns = 0
        inner = loop._run_once  # type: ignore[attr-defined]

        def counted() -> None:
            nonlocal turns
            turns += 1
            inner()

        loop._run_once = counted  # type: ignore[attr-defined]
        server = CompileServer(registry, config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await server.start(sock)
        port = sock.getsockname()[1]
        done = 0
        marks: list[tuple[float, int, float]] = []

        def mark() -> None:
            marks.append(
                (time.process_time(), turns, resource.getrusage(resource.RUSAGE_SELF).ru_stime)
            )

        class Counting(JobStats):
            __slots__ = ()

            def record(self, *a: Any) -> None:
                nonlocal done
                super().record(*a)
                done += 1
                counted_job()

        def counted_job() -> None:
            if done in (args.warmup, total):
                mark()
                if profiler is not None:
                    (profiler.enable if done == args.warmup else profiler.disable)()
            if done == total:
                server.request_stop()

        server.stats = Counting()
        if args.warmup == 0:
            mark()
            if profiler is not None:
                profiler.enable()
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            f"--port={port}",
            f"--total={total}",
            f"--source={args.source}",
            f"--protocol={args.protocol}",
            f"--codec={args.codec}",
            f"--opt={args.opt}",
            f"--argv-style={args.argv_style}",
        )

        async def client_ended() -> None:
            if await client.wait() != 0:
                server.request_stop()  # it sends no more jobs: do not wait for them

        watcher = asyncio.create_task(client_ended())
        if not total:
            server.request_stop()
        await server.serve_until_stopped()
        await watcher
        if client.returncode != 0:
            sys.exit("the client failed (its error is above)")
        if len(marks) == 2 and args.jobs:
            figures["cpu_ms"] = (marks[1][0] - marks[0][0]) * 1000 / args.jobs
            figures["turns"] = (marks[1][1] - marks[0][1]) / args.jobs
            figures["sys_ms"] = (marks[1][2] - marks[0][2]) * 1000 / args.jobs

    asyncio.run(run())
    if profiler is not None:
        profiler.dump_stats(args.profile)
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)


def _server_argv(args: argparse.Namespace, warmup: int, jobs: int) -> list[str]:
    argv = [
        sys.executable,
        __file__,
        "--serve",
        f"--warmup={warmup}",
        f"--jobs={jobs}",
        f"--source={args.source}",
        f"--protocol={args.protocol}",
        f"--codec={args.codec}",
        f"--opt={args.opt}",
        f"--argv-style={args.argv_style}",
        f"--log-level={args.log_level}",
        f"--log-file={args.log_file}",
    ]
    if args.profile:
        argv.append(f"--profile={args.profile}")
    return argv


def _serve(args: argparse.Namespace) -> str:
    argv = _server_argv(args, args.warmup, args.jobs)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"server_cpu: the measured server failed (exit {proc.returncode})")
    return proc.stdout


def _callgrind(args: argparse.Namespace, warmup: int, jobs: int) -> int:
    """Instructions of a whole server run (start-up, ``warmup + jobs`` jobs, teardown)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *_server_argv(args, warmup, jobs),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"valgrind failed:\n{proc.stderr[-2000:]}")
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if m is None:
            sys.exit(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")
        return int(m.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="a preprocessed .i to send")
    p.add_argument("--protocol", type=int, choices=(1, 2), default=2)
    p.add_argument("--codec", choices=("", "zstd", "zref"), default="", help="CODC (protocol 1)")
    p.add_argument("--opt", default="-O0", help="the job's -O option (compile time only)")
    p.add_argument(
        "--argv-style",
        choices=("xz", "zlib"),
        default="xz",
        help="the job's options as a distcc client sends them: xz-utils' ~30, zlib's -O only",
    )
    p.add_argument("--jobs", type=int, default=20, help="measured jobs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-file", default=os.devnull)
    p.add_argument("--profile", metavar="PATH", help="cProfile stats of the measured jobs")
    p.add_argument("--callgrind", action="store_true", help="instructions per job (valgrind)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.codec and args.protocol != 1:
        p.error("--codec needs --protocol 1 (CODC is a protocol 1 token)")
    args.source = os.path.abspath(args.source)
    if args.client:
        client_main(args)
    elif args.serve:
        server_main(args)
    elif args.callgrind:
        args.profile = None
        big = _callgrind(args, args.warmup, args.jobs)
        small = _callgrind(args, args.warmup, 0)
        print(f"instructions per job: {(big - small) / args.jobs / 1e6:.3f} M")
    else:
        print(_serve(args).strip())


if __name__ == "__main__":
    main()
