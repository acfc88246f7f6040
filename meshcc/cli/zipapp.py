"""``meshcc zipapp [-o FILE]``: write meshcc.pyz, one file that runs with a bare python3.

The build logic lives in :mod:`meshcc.daemon.zipapp` (the daemon serves the same bytes
on its status port); this module only parses options, so ``meshcc --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="meshcc.pyz",
        help="where to write the zipapp (default ./meshcc.pyz; - for stdout)",
    )


def run(ns: argparse.Namespace) -> int:
    from meshcc.daemon import zipapp

    try:
        data, source = zipapp.artefact()
    except zipapp.ZipappError as e:
        print(f"meshcc zipapp: {e}", file=sys.stderr)
        return 1
    if ns.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    try:
        zipapp.write_pyz(ns.output, data)
    except OSError as e:
        print(f"meshcc zipapp: cannot write {ns.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    digest = zipapp.sha256_line(data).split()[0]
    print(
        f"wrote {ns.output} ({len(data) // 1024} KiB, sha256 {digest}; {source})\n"
        f"run it with: python3 {ns.output} daemon   (any python3 >= 3.11, nothing else "
        "needed; distcc protocol 1 only, no LZO)",
        file=sys.stderr,
    )
    return 0
