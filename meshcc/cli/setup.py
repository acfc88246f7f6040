"""``meshcc setup portage|masquerade``: wire Portage (or a PATH directory) to the mesh.

``setup portage`` edits one clearly marked block of ``make.conf`` (``FEATURES=distcc`` and
``MAKEOPTS`` sized from the live mesh by the Gentoo distcc guide's rule), writes the distcc
hosts file, and checks the target root's GCC against the mesh's toolchains, because a
stage3 whose GCC matches no peer silently compiles everything locally. Every run prints
a unified diff first; the first run saves the original files so ``--undo`` restores them
byte for byte. ``setup masquerade DIR`` makes distcc-style masquerade links to ``meshcc``.

The mesh part is in :mod:`meshcc.cli.portage`; module-level imports stay light
because the CLI parser is built for every command.
"""

from __future__ import annotations

import argparse
import sys

EXIT_ERROR = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="setup_what", metavar="WHAT")
    p = sub.add_parser(
        "portage",
        help="add FEATURES=distcc and a mesh-sized MAKEOPTS to make.conf (--undo reverts)",
        description="Write a marked block into ROOT/etc/portage/make.conf (FEATURES=distcc, "
        "MAKEOPTS=-jN -lM with N = 2 x the cores of this box and the matching live peers + 1, "
        "M = local cores), write ROOT/etc/distcc/hosts, and check ROOT's GCC against the "
        "mesh. Shows a diff first; running it again only updates the numbers; --undo "
        "restores the original files byte for byte. Exit status: 0 done, 1 error, 3 "
        "make.conf written but ROOT's GCC could not be read, so no peer was listed and "
        "the hosts file was left as it was.",
    )
    p.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="the system to configure, e.g. /mnt/gentoo during an install (default: /)",
    )
    p.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    p.add_argument(
        "--undo",
        action="store_true",
        help="restore make.conf and the hosts file as they were before the first run",
    )
    p.add_argument(
        "--cc",
        default="gcc",
        metavar="NAME",
        help="with --root /: the compiler to check against the mesh (default: gcc)",
    )
    p.add_argument(
        "--local-cpus",
        type=int,
        default=None,
        metavar="N",
        help="cores of the box that will run emerge (default: this box's)",
    )
    m = sub.add_parser(
        "masquerade",
        help="make a directory of gcc/g++/cc/c++ links to meshcc for PATH-based use",
        description="Create DIR with symlinks named after the local compilers (gcc, g++, cc, "
        "c++, gcc-13, x86_64-pc-linux-gnu-gcc, ...) pointing at meshcc. Put DIR first on "
        "PATH and every build that runs `gcc` goes through the mesh.",
    )
    m.add_argument("dir", metavar="DIR")
    m.add_argument(
        "--force", action="store_true", help="replace files in DIR that are not symlinks"
    )
    parser.set_defaults(setup_parser=parser)


def run(ns: argparse.Namespace) -> int:
    what = getattr(ns, "setup_what", None)
    if what is None:
        ns.setup_parser.print_help(sys.stderr)
        return 2
    from meshcc.cli import portage

    try:
        if what == "portage":
            return portage.setup_portage(ns)
        return portage.setup_masquerade(ns)
    except portage.SetupError as e:
        print(f"meshcc setup {what}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # anything not caught closer to its cause
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"meshcc setup {what}:{where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
