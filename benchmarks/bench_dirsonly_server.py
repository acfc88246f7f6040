#!/usr/bin/env python3
"""Where a serving daemon's CPU goes for a directives-only body vs a fully preprocessed one.

    .venv/bin/python benchmarks/bench_dirsonly_server.py [--project zlib|lua5.4|xz-utils]
        [--files 16] [--codec lzo|zstd|zref] [--profile PREFIX] [--steps-only]

Real -O2 bodies of a project's C files (the cached Debian sources, as codec_bytes.py gets
them), each preprocessed twice: fully (``gcc -E``) and ``-fdirectives-only`` (what
``MESHCC_DIRECTIVES_ONLY=1`` sends). Two measurements, both ways of each file alternating:

- **steps**: process time per body (median of 5) of what the daemon does with a body
  before the compiler runs: the directive scan (``policy.scan_source_refusal``, with
  ``directives`` on for the directives-only body, as the server sets it), decoding it
  (LZO as protocol 2 sends it, zstd level 1, and zstd against the previous body of the same
  way, as ``zref`` sends it), and writing the job's input file; plus the body's bytes on the
  wire for each codec.
- **server**: a real ``CompileServer`` on its own event loop in this process, fed by a
  client process (``transport.client``, the wrapper's own sending code) with every body
  twice, one way after the other; the server process's CPU (all its threads, not the
  compilers it runs: those are child processes) per job. ``--profile PREFIX`` writes a
  cProfile of the event loop thread per way (``PREFIX-full.prof``, ``PREFIX-dirs.prof``).

Process time is what load moves least here; the client runs in another process. Needs gcc.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ipaddress
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import harness as h  # noqa: E402
from meshcc import compression  # noqa: E402
from meshcc.compiler import policy  # noqa: E402

# (subdirectory compiled in, -O2 flags, files to leave out, set-up of the copied tree)
XZ_INCLUDES = [
    f"-I{d}" for d in ("api", "common", "check", "lz", "rangecoder", "lzma", "delta", "simple")
]
PROJECTS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "zlib": (".", ["-O2", "-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN", "-I."], ("contrib",)),
    "lua5.4": ("src", ["-O2", "-std=gnu99", "-DLUA_USE_LINUX", "-I."], ()),
    "xz-utils": (
        "src/liblzma",
        ["-O2", "-DHAVE_CONFIG_H", "-I.", "-I../..", *XZ_INCLUDES, "-I../common"],
        ("crc32_small", "crc64_small", "tablegen"),  # not in the default build
    ),
}


def bodies(project: str, work: Path) -> tuple[list[str], list[bytes], list[bytes]]:
    """(file names, full bodies, directives-only bodies) of the project's C files."""
    tree = work / project
    shutil.copytree(h.apt_source(project), tree, symlinks=True)
    sub, flags, skip = PROJECTS[project]
    if project == "lua5.4":  # Debian's patch names a header its build generates
        (tree / "src" / "lua5.4-deb-multiarch.h").write_text(
            '#define DEB_HOST_MULTIARCH "x86_64-linux-gnu"\n'
        )
    if project == "xz-utils":
        configure = ["./configure", "--disable-nls", "--disable-shared", "--disable-doc"]
        subprocess.run(configure, cwd=tree, check=True, capture_output=True)
    src = tree / sub
    names, full, dirs = [], [], []
    for f in sorted(src.rglob("*.c")):
        rel = str(f.relative_to(src))
        if any(s in rel for s in skip):
            continue
        a = subprocess.run(["gcc", *flags, "-E", rel], cwd=src, capture_output=True)
        b = subprocess.run(
            ["gcc", *flags, "-fdirectives-only", "-E", rel], cwd=src, capture_output=True
        )
        if a.returncode == 0 and b.returncode == 0:
            names.append(rel)
            full.append(a.stdout)
            dirs.append(b.stdout)
    return names, full, dirs


def _cpu_ms(fn: Any, *a: Any) -> float:
    xs = []
    for _ in range(5):
        t = time.process_time()
        fn(*a)
        xs.append(time.process_time() - t)
    return statistics.median(xs) * 1e3


def steps(full: list[bytes], dirs: list[bytes], tmp: Path) -> dict[str, dict[str, float]]:
    """Median per body of each step and size, per way ("full", "dirs")."""
    rows: dict[str, dict[str, list[float]]] = {"full": {}, "dirs": {}}
    target = tmp / "job.i"

    def write(data: bytes) -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    cap = 1 << 30
    for kind, seq in (("full", full), ("dirs", dirs)):
        prev: bytes | None = None
        for d in seq:
            r = rows[kind]
            lzo = compression.compress("lzo", d)
            z1 = compression.compress("zstd", d, 1)
            zr = compression.compress("zstd", d, 3, prev) if prev else z1
            for key, value in (
                ("KB body", len(d) / 1e3),
                ("KB lzo", len(lzo) / 1e3),
                ("KB zstd-1", len(z1) / 1e3),
                ("KB zref", len(zr) / 1e3),
                ("ms scan", _cpu_ms(policy.scan_source_refusal, d, kind == "dirs")),
                ("ms decode lzo", _cpu_ms(compression.decompress, "lzo", lzo, cap)),
                ("ms decode zstd-1", _cpu_ms(compression.decompress, "zstd", z1, cap)),
                ("ms decode zref", _cpu_ms(compression.decompress, "zstd", zr, cap, prev)),
                ("ms write", _cpu_ms(write, d)),
            ):
                r.setdefault(key, []).append(value)
            prev = d
    return {k: {s: statistics.median(v) for s, v in r.items()} for k, r in rows.items()}


CLIENT = r"""
import pickle, sys
from meshcc.compression import kept
from meshcc.transport import client
port, path, codec, top = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ways = pickle.load(open(path, "rb"))
for kind in ("full", "dirs"):
    print("ready", flush=True)
    sys.stdin.readline()
    for body in ways[kind] * 2:
        argv = [b"gcc", b"-O2", b"-c", b"x.i", b"-o", b"x.o"]
        if kind == "dirs":
            argv.append(b"-fdirectives-only")
        conn = client.Connection("127.0.0.1", port, 2 if codec == "lzo" else 1, 300)
        conn.connect()
        conn.send_head(argv)
        plan = None
        if codec == "lzo":
            conn.send_source(body)
        else:
            if codec == "zref":
                plan = kept.plan({"DISTCC_DIR": f"{top}/{kind}"}, "peer", "127.0.0.1")
            conn.send_source(body, "zstd", 1, plan)
        reply = conn.read_reply()
        if reply.status != 0:
            sys.exit(f"compile failed: {reply.stderr[-500:]!r}")
        if plan is not None:
            plan.keep_body(body)
        conn.close()
    print("done", flush=True)
"""


def server_cpu(
    full: list[bytes], dirs: list[bytes], codec: str, tmp: Path, profile: str | None
) -> dict[str, float]:
    """The in-process server's CPU per job (ms) for each way."""
    from meshcc.compiler.toolchain import ToolchainRegistry
    from meshcc.transport.server import CompileServer, ServerConfig, bind_listener

    cfg = ServerConfig(allowed=(ipaddress.ip_network("127.0.0.0/8"),), jobs=2)
    registry = ToolchainRegistry.from_paths([shutil.which("gcc") or "gcc"])
    sock = bind_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, CompileServer] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            box["s"] = CompileServer(registry, cfg)
            await box["s"].start(sock)
            ready.set()
            await box["s"].serve_until_stopped()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    data = tmp / "ways.pkl"
    data.write_bytes(pickle.dumps({"full": full, "dirs": dirs}))
    for kind in ("full", "dirs"):
        (tmp / kind).mkdir(mode=0o700)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), str(data), codec, str(tmp)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out: dict[str, float] = {}
    try:
        for kind, seq in (("full", full), ("dirs", dirs)):
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("the client process failed")
            prof = cProfile.Profile(time.thread_time) if profile else None
            if prof is not None:
                loop.call_soon_threadsafe(prof.enable)
            time.sleep(0.05)
            t0 = time.process_time()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != "done":
                raise SystemExit("the client process failed")
            time.sleep(0.05)  # the server's clean-up after the last reply
            out[kind] = (time.process_time() - t0) * 1e3 / (2 * len(seq))
            if prof is not None:
                stopped = threading.Event()

                def stop(p: cProfile.Profile = prof, e: threading.Event = stopped) -> None:
                    p.disable()
                    e.set()

                loop.call_soon_threadsafe(stop)
                stopped.wait(10)
                prof.dump_stats(f"{profile}-{kind}.prof")
    finally:
        proc.stdin.close()
        proc.wait(60)
        loop.call_soon_threadsafe(box["s"].abort)
        thread.join(30)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="lua5.4")
    p.add_argument("--files", type=int, default=16, help="files sent to the server (steps: all)")
    p.add_argument("--codec", choices=("lzo", "zstd", "zref"), default="lzo")
    p.add_argument("--profile", metavar="PREFIX", help="cProfile the server's loop per way")
    p.add_argument("--steps-only", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshcc-bench-dirsonly-") as d:
        tmp = Path(d)
        names, full, dirs = bodies(args.project, tmp)
        print(f"{args.project}: {len(names)} files at -O2 (uptime: {os.getloadavg()[0]:.1f})")
        per = steps(full, dirs, tmp)
        print(f"{'median per body':18s} {'full':>9s} {'dirs-only':>9s} {'ratio':>7s}")
        for key in per["full"]:
            f, x = per["full"][key], per["dirs"][key]
            print(f"{key:18s} {f:9.3f} {x:9.3f} {x / f if f else 0:6.2f}x")
        if not args.steps_only:
            n = args.files
            cpu = server_cpu(full[:n], dirs[:n], args.codec, tmp, args.profile)
            print(
                f"server process CPU per job, {args.codec}, {min(n, len(full))} files x 2: "
                f"full {cpu['full']:.2f} ms, directives-only {cpu['dirs']:.2f} ms "
                f"({cpu['dirs'] / cpu['full']:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
