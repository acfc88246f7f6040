#!/usr/bin/env python3
"""Bytes and CPU of each way to send a project's bodies (issue 12): what a codec can win.

    .venv/bin/python benchmarks/codec_bytes.py [--project zlib|lua5.4] [--json out.json]

Preprocesses every C file (outside contrib/) of the project's cached Debian source
(tests/harness.py) twice, as meshcc-gcc would send it: fully (``-E`` with the project's
optimizing flags) and with ``-fdirectives-only`` (what meshcc sends for ``-O0`` jobs, for
objects identical to a local build), then compresses every body, in name order, with:

- liblzo2's lzo1x_1 (distcc's ``,lzo``, through meshcc.compression);
- zstd at each level :data:`meshcc.compression.choose.ZSTD_LEVELS` offers, and level 19;
- zstd with long-distance matching (levels 3 and 9);
- zstd with a dictionary trained (``zstandard.train_dictionary``) on *another* project's
  bodies (``--train``): what a dictionary shipped with meshcc could do;
- zstd with the previous body of the same build as a raw-content prefix: what a server that
  keeps the bodies it received, and a client that names one, can do (implemented as
  ``zref``: compression.prefixes, compression.kept; bench_zref.py measures that code).

Reported per way: total compressed bytes, the share of the raw bytes, the ratio to LZO's,
and the CPU seconds to compress them all (process time, which load does not move much).
No network, no root.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import _harness as h  # noqa: E402

from meshcc import compression  # noqa: E402
from meshcc.compression.choose import ZSTD_LEVELS  # noqa: E402

# project: (source subdirectory, flags of an optimizing build, extra setup)
PROJECTS: dict[str, tuple[str, list[str]]] = {
    "zlib": (".", ["-O3", "-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN", "-I."]),
    "lua5.4": ("src", ["-O2", "-DLUA_USE_LINUX", "-I."]),
}


def bodies(project: str, work: Path) -> dict[str, list[bytes]]:
    """{"full": [...], "directives-only": [...]}: one body per C file, in name order."""
    tree = work / project
    shutil.copytree(h.apt_source(project), tree, symlinks=True)
    sub, flags = PROJECTS[project]
    src = tree / sub
    if project == "lua5.4":  # Debian's patch names a header its build generates
        (src / "lua5.4-deb-multiarch.h").write_text(
            '#define DEB_HOST_MULTIARCH "x86_64-linux-gnu"\n'
        )
    files = sorted(p for p in src.rglob("*.c") if "contrib" not in p.parts)
    out: dict[str, list[bytes]] = {"full": [], "directives-only": []}
    for f in files:
        for kind, extra in (("full", []), ("directives-only", ["-O0", "-fdirectives-only"])):
            argv = ["gcc", *flags, *extra, "-E", str(f.relative_to(src))]
            res = subprocess.run(argv, cwd=src, capture_output=True)
            if res.returncode == 0:
                out[kind].append(res.stdout)
    return out


def measure(bodies_: list[bytes], train: list[bytes]) -> dict[str, tuple[int, float]]:
    import zstandard as zs

    ways: dict[str, Callable[[int, bytes], bytes]] = {
        "lzo": lambda i, d: compression.compress("lzo", d),
    }
    for level in [*sorted(ZSTD_LEVELS), 19]:
        ways[f"zstd-{level}"] = lambda i, d, lv=level: compression.compress("zstd", d, lv)
    for level in (3, 9):
        params = zs.ZstdCompressionParameters.from_level(
            level, enable_ldm=True, window_log=23, write_content_size=True, write_checksum=True
        )
        ways[f"zstd-{level} ldm"] = lambda i, d, p=params: zs.ZstdCompressor(
            compression_params=p
        ).compress(d)
    if train:
        dictionary = zs.train_dictionary(256 * 1024, train, level=3)
        for level in (3, 9):
            ways[f"zstd-{level} trained dict"] = lambda i, d, lv=level: zs.ZstdCompressor(
                level=lv,
                dict_data=zs.ZstdCompressionDict(dictionary.as_bytes()),
                write_checksum=True,
            ).compress(d)
    for level in (3, 6):

        def prefix(i: int, d: bytes, lv: int = level) -> bytes:
            if i == 0:
                return compression.compress("zstd", d, lv)
            ref = zs.ZstdCompressionDict(bodies_[i - 1], dict_type=zs.DICT_TYPE_RAWCONTENT)
            return zs.ZstdCompressor(level=lv, dict_data=ref, write_checksum=True).compress(d)

        ways[f"zstd-{level} previous body as prefix"] = prefix
    results: dict[str, tuple[int, float]] = {}
    for name, fn in ways.items():
        t0 = time.process_time()
        size = sum(len(fn(i, d)) for i, d in enumerate(bodies_))
        results[name] = (size, time.process_time() - t0)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="zlib")
    p.add_argument("--train", choices=sorted(PROJECTS), default="lua5.4")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="codec-bytes-") as tmp:
        work = Path(tmp)
        test = bodies(args.project, work)
        train = [] if args.train == args.project else bodies(args.train, work)
    report: dict[str, object] = {}
    print(f"codec_bytes: {args.project} bodies; dictionary trained on {args.train}")
    print("| bodies | way | bytes | x raw | x lzo | compress CPU ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, items in test.items():
        raw = sum(map(len, items))
        res = measure(items, train.get(kind, []) if train else [])
        lzo = res["lzo"][0]
        print(f"| {kind} ({len(items)}) | raw | {raw} | 1.000 | {raw / lzo:.2f} | - |")
        for way, (size, cpu) in res.items():
            print(f"| {kind} | {way} | {size} | {size / raw:.3f} | {size / lzo:.2f} | "
                  f"{cpu * 1000:.0f} |")  # fmt: skip
        report[kind] = {"raw": raw, "ways": res}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
