"""``meshcc SUBCOMMAND``: argparse front end for the long-running and admin commands.

Each subcommand registers its options in ``_add_<name>`` and names a handler
module imported only when it runs, so ``meshcc --help`` stays quick and a new
command (``hosts``, ``doctor``, ``setup``, ``top``) is one more table entry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from meshcc.daemon.options import VersionAction, parse_network, seconds

# ---------------------------------------------------------------- subcommands


def _add_daemon(p: argparse.ArgumentParser) -> None:
    from meshcc.daemon import options

    options.add_arguments(p)


def _run_daemon(ns: argparse.Namespace) -> int:
    from meshcc.daemon.settings import DaemonOptions

    if ns.inetd:  # one job on stdin/stdout: none of the daemon's start-up
        from meshcc.daemon import inetd

        return inetd.run(DaemonOptions.from_namespace(ns))
    from meshcc.daemon import main as daemon

    return daemon.run(DaemonOptions.from_namespace(ns))


def add_browse_options(p: argparse.ArgumentParser) -> None:
    """How to browse when no local daemon answers (``hosts`` and ``doctor``)."""
    p.add_argument(
        "--browse-time",
        type=seconds,
        default=2.5,
        metavar="SECS",
        help="without a local daemon, browse the network this long (default 2.5)",
    )
    p.add_argument(
        "-i",
        "--interface",
        metavar="IFACE",
        action="append",
        default=[],
        help="without a local daemon: browse on this interface (repeatable)",
    )


def _add_hosts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cc",
        metavar="COMPILER",
        default="cc",
        help="list peers matching this compiler, as you invoke it (name on PATH or path; "
        "default cc)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--explain", action="store_true", help="show every peer seen, in or out, and why"
    )
    out.add_argument("--json", action="store_true", help="machine-readable output")
    add_browse_options(p)
    p.add_argument(
        "-a",
        "--allow",
        metavar="CIDR",
        type=parse_network,
        action="append",
        default=[],
        help="without a local daemon: accept peers from this network (repeatable)",
    )
    p.add_argument(
        "--accept-unverified",
        action="store_true",
        help="without a local daemon: include stock distccd peers (binutils unknown)",
    )


def _run_hosts(ns: argparse.Namespace) -> int:
    from meshcc.cli import hosts as hosts_cmd

    return hosts_cmd.run(ns)


def _delegate(
    module: str,
) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    """(add-arguments, handler) of a command living in ``meshcc.cli.<module>``, which
    provides ``add_arguments(parser)`` and ``run(namespace) -> int`` and keeps its
    module-level imports light (the parser is built for every command)."""
    import importlib

    def add(p: argparse.ArgumentParser) -> None:
        importlib.import_module(f"meshcc.cli.{module}").add_arguments(p)

    def run(ns: argparse.Namespace) -> int:
        return int(importlib.import_module(f"meshcc.cli.{module}").run(ns))

    return add, run


# name -> (help, add-arguments, handler)
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "daemon": ("run the compile server, the mesh and the control socket", _add_daemon, _run_daemon),
    "hosts": ("print the DISTCC_HOSTS line of the live, matching peers", _add_hosts, _run_hosts),
    "doctor": (
        "check why compiles are (not) distributed, with a fix for each problem",
        *_delegate("doctor"),
    ),
    "stats": (
        "how this box's compiles ended (remote, local, fallback, refused, busy) and why",
        *_delegate("stats"),
    ),
    "cache": ("this box's result cache: stats, or clear it", *_delegate("cache")),
    "setup": ("configure Portage or a masquerade directory for the mesh", *_delegate("setup")),
    "top": ("live view of the mesh's peers and this box's compiles", *_delegate("top")),
    "zipapp": (
        "build meshcc.pyz, a single file that runs with a bare python3 >= 3.11",
        *_delegate("zipapp"),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshcc",
        description="Distributed C/C++ build mesh, wire-compatible with distcc. "
        "Compile with `meshcc COMPILER ARGS...` or the meshcc-gcc/meshcc-g++ wrappers.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:
        if e.code == 2 and args[:1] == ["daemon"]:
            # distccd exits 101 (EXIT_BAD_ARGUMENTS) on a bad option; init scripts and
            # service managers key on it. argparse's own 2 stays for the admin commands.
            from meshcc.exitcodes import EXIT_BAD_ARGUMENTS

            raise SystemExit(EXIT_BAD_ARGUMENTS) from None
        raise
    handler = getattr(ns, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status = int(handler(ns))
        sys.stdout.flush()  # a pipe is block-buffered: the write may happen only now
        return status
    except BrokenPipeError:
        # `meshcc stats --json | head`: the reader left, which is no error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
