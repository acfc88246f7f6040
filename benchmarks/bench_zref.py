#!/usr/bin/env python3
"""Bytes per job and client CPU per job of zstd body prefixes (``zref``, issue 12), one run.

    .venv/bin/python benchmarks/bench_zref.py [--project zlib|lua5.4] [--rounds 5] [--json F]

Preprocesses every C file of the project's cached Debian source as codec_bytes.py does,
fully and ``-fdirectives-only``, and sends the bodies, in name order (a serial build), through
the code meshcc runs, with no network:

- **zstd**: ``compression.compress("zstd", body, 1)``, the frame a job sends without
  prefixes (level 1: what ``choose.zstd_level`` gives on an unmeasured or fast link);
- **zref**: the client's whole zref path, kept bodies on disk included: ``kept.plan``
  (open the private directory, read the newest kept body), ``Plan.compress`` (level 3
  against it) and ``Plan.keep_body`` (write this body, prune), plus the ``ZREF``/``ZNEW``
  tokens on the wire; then the server's decode of the frame against the same prefix
  (``compression.decompress`` with it), checked equal to the body.

Both ways alternate per job; each job's CPU (process time) is the median over ``--rounds``
passes. Also measured: the import of ``meshcc.compression.kept`` in a fresh interpreter
(what a job pays once to use prefixes; ``-X importtime``, median of 20). Bytes do not depend on
load; the CPU figures are process time, which load moves little.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from codec_bytes import PROJECTS, bodies  # noqa: E402

from meshcc import compression  # noqa: E402
from meshcc.compression import kept  # noqa: E402


def run_way(seq: list[bytes], rounds: int, top: Path, tag: str) -> dict[str, object]:
    """Per job: zstd bytes, zref bytes, median CPU of each way (client and server)."""
    env = {"DISTCC_DIR": str(top)}
    n = len(seq)
    ways = ("zstd", "zstd3", "zref", "srv", "plan", "compress", "keep")
    cpu: dict[str, list[list[float]]] = {k: [[] for _ in seq] for k in ways}
    zstd_bytes = [0] * n
    zref_bytes = [0] * n
    prefixed = [False] * n
    for r in range(rounds):
        peer = f"{tag}:{r}"  # a fresh peer directory per pass: its first job has no prefix
        for i, body in enumerate(seq):
            t = time.process_time()
            frame = compression.compress("zstd", body, 1)
            cpu["zstd"][i].append(time.process_time() - t)
            zstd_bytes[i] = len(frame)

            t = time.process_time()
            compression.compress("zstd", body, kept.PREFIX_LEVEL)  # zref's level, no prefix
            cpu["zstd3"][i].append(time.process_time() - t)

            t = time.process_time()
            plan = kept.plan(env, peer)
            assert plan is not None
            t1 = time.process_time()
            tokens = plan.tokens()
            frame = plan.compress(body, 1)
            prefix = plan.prefix
            t2 = time.process_time()
            plan.keep_body(body)
            t3 = time.process_time()
            cpu["zref"][i].append(t3 - t)
            for way, spent in (("plan", t1 - t), ("compress", t2 - t1), ("keep", t3 - t2)):
                cpu[way][i].append(spent)
            zref_bytes[i] = len(frame) + len(tokens)
            prefixed[i] = bool(prefix)

            t = time.process_time()
            out = compression.decompress("zstd", frame, 1 << 28, prefix or None)
            cpu["srv"][i].append(time.process_time() - t)
            assert out == body
    med = {k: [statistics.median(v) for v in per] for k, per in cpu.items()}
    return {
        "jobs": n,
        "raw_bytes": sum(len(b) for b in seq),
        "lzo_bytes": sum(len(compression.compress("lzo", b)) for b in seq),
        "zstd_bytes": sum(zstd_bytes),
        "zref_bytes": sum(zref_bytes),
        "zref_bytes_prefixed_jobs": sum(z for z, p in zip(zref_bytes, prefixed, strict=True) if p),
        "zstd_bytes_prefixed_jobs": sum(z for z, p in zip(zstd_bytes, prefixed, strict=True) if p),
        "client_ms_per_job_zstd": 1000 * statistics.median(med["zstd"]),
        "client_ms_per_job_zstd_prefix_level": 1000 * statistics.median(med["zstd3"]),
        "client_ms_per_job_zref": 1000 * statistics.median(med["zref"]),
        "server_ms_per_job_zref_decode": 1000 * statistics.median(med["srv"]),
        "client_ms_per_job_zref_parts": {
            k: 1000 * statistics.median(med[k]) for k in ("plan", "compress", "keep")
        },
        "per_job": [
            {"zstd": z, "zref": zr, "prefixed": p}
            for z, zr, p in zip(zstd_bytes, zref_bytes, prefixed, strict=True)
        ],
    }


def import_cost(runs: int = 20) -> float:
    """Median microseconds ``python -X importtime`` gives ``meshcc.compression.kept``
    (cumulative) in a fresh interpreter that has already loaded zstd's path, as a job has."""
    code = "import meshcc.compression._frames as f; f._load('zstd'); import meshcc.compression.kept"
    samples = []
    for _ in range(runs):
        res = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(ln for ln in res.stderr.splitlines() if ln.endswith("meshcc.compression.kept"))
        samples.append(float(line.split("|")[1]))
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="zlib")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-zref-") as tmp:
        work = Path(tmp)
        all_bodies = bodies(args.project, work)
        top = work / "distcc"
        top.mkdir()
        report: dict[str, object] = {
            "project": args.project,
            "load": load,
            "import_kept_us": import_cost(),
        }
        for kind, seq in all_bodies.items():
            report[kind] = run_way(seq, args.rounds, top, kind)
    print(f"{args.project}, load average {load[0]:.1f} (1 min), {args.rounds} rounds")
    print(f"import of meshcc.compression.kept after zstd's: {report['import_kept_us']:.0f} us")
    for kind in all_bodies:
        r = report[kind]
        assert isinstance(r, dict)
        print(
            f"{kind:16} {r['jobs']} jobs, raw {r['raw_bytes']} B: lzo {r['lzo_bytes']}, "
            f"zstd-1 {r['zstd_bytes']}, zref {r['zref_bytes']} "
            f"(zref/zstd {r['zref_bytes'] / r['zstd_bytes']:.3f}, "
            f"zref/lzo {r['zref_bytes'] / r['lzo_bytes']:.3f}; prefixed jobs only: "
            f"{r['zref_bytes_prefixed_jobs'] / r['zstd_bytes_prefixed_jobs']:.3f} of zstd-1)"
        )
        print(
            f"{'':16} bytes per job: zstd-1 {r['zstd_bytes'] // r['jobs']}, "
            f"zref {r['zref_bytes'] // r['jobs']}; client CPU per job (median): "
            f"zstd-1 {r['client_ms_per_job_zstd']:.2f} ms, zref (plan, compress, keep) "
            f"{r['client_ms_per_job_zref']:.2f} ms; server decode with prefix "
            f"{r['server_ms_per_job_zref_decode']:.2f} ms"
        )
        parts = r["client_ms_per_job_zref_parts"]
        assert isinstance(parts, dict)
        print(
            f"{'':16} zref's parts: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in parts.items())
            + f" (compressing at level {kept.PREFIX_LEVEL} without a prefix: "
            f"{r['client_ms_per_job_zstd_prefix_level']:.2f} ms)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
