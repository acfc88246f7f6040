"""``meshcc SUBCOMMAND``: argparse front end for the long-running and admin commands.

Each subcommand registers its options in ``_add_<name>`` and names a handler
module imported only when it runs, so ``meshcc --help`` stays quick and a new
command (``hosts``, ``doctor``, ``setup``) is one more table entry.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence

from meshcc import __version__
from meshcc.frontend.logsetup import LOG_LEVELS

DEFAULT_PORT = 3632
DEFAULT_STATUS_PORT = 3633


# ---------------------------------------------------------------- value parsers


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``--allow``: IPv4/IPv6 address or CIDR; a bare address means /32 or /128."""
    text = value.strip()
    if text.startswith("[") and "]" in text:  # [::1] or [::1]/128
        inner, _, rest = text[1:].partition("]")
        text = inner + rest
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an IP address or network; use e.g. 192.168.1.0/24, "
            "10.0.0.5 or fd00::/8"
        ) from None


def _int_in(lo: int, hi: int | None, what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} must be a whole number, not {value!r}"
            ) from None
        if n < lo or (hi is not None and n > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, not {n}")
        return n

    return parse


def _seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {value!r}") from None
    if s < 0 or s != s or s == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more, not {value!r}")
    return s


def _level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {value!r}; use one of: {', '.join(LOG_LEVELS)}"
        )
    return value.lower()


def default_jobs() -> int:
    """distccd's default: CPUs available to this process + 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus + 2


# ---------------------------------------------------------------- subcommands


def _add_daemon(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen", metavar="ADDR",
        help="address to listen on (default: all addresses, IPv4 and IPv6)",
    )  # fmt: skip
    p.add_argument(
        "-p", "--port", type=_int_in(1, 65535, "--port"), default=DEFAULT_PORT,
        help=f"TCP port for compile jobs (default {DEFAULT_PORT})",
    )  # fmt: skip
    p.add_argument(
        "--status-port", type=_int_in(0, 65535, "--status-port"), default=None, metavar="N",
        help=f"HTTP status port serving this daemon's meshcc.pyz, its sha256 and /bootstrap "
        f"(default {DEFAULT_STATUS_PORT}, as distccd's stats port; off when listening on "
        "loopback only; 0 = off)",
    )  # fmt: skip
    p.add_argument(
        "-a", "--allow", metavar="CIDR", type=parse_network, action="append", default=[],
        help="allow clients from this address or network (repeatable; default: loopback and "
        "the subnets of this machine's own interfaces)",
    )  # fmt: skip
    p.add_argument(
        "-j", "--jobs", type=_int_in(1, None, "--jobs"), default=None,
        help=f"maximum concurrent compiles (default: CPUs + 2 = {default_jobs()})",
    )  # fmt: skip
    p.add_argument(
        "-N", "--nice", type=int, default=5,
        help="niceness increment for the daemon and its compilers (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--log-level", type=_level, default="notice", metavar="LEVEL",
        help="emerg, alert, crit, error, warning, notice (default), info or debug",
    )  # fmt: skip
    p.add_argument(
        "--log-file", metavar="FILE",
        help="append the log to FILE (default: the journal under systemd, stderr when "
        "someone reads it, else syslog)",
    )  # fmt: skip
    p.add_argument("--log-stderr", action="store_true", help="log to stderr, never syslog")
    p.add_argument(
        "--compiler", metavar="PATH", action="append", default=[],
        help="offer exactly this compiler (repeatable); default: the gcc family on PATH",
    )  # fmt: skip
    p.add_argument(
        "--user", metavar="USER",
        help="user to run as when started as root (default: meshcc if it exists, else nobody)",
    )  # fmt: skip
    p.add_argument(
        "--job-lifetime", type=_seconds, default=0.0, metavar="SECS",
        help="kill a compile that runs longer than SECS (default 0: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--io-timeout", type=_seconds, default=300.0, metavar="SECS",
        help="drop a client that sends or reads nothing for SECS (default 300, as distcc)",
    )  # fmt: skip


    p.add_argument(
        "-i", "--interface", metavar="IFACE", action="append", default=[],
        help="announce and browse on this interface (repeatable; default: every up, "
        "multicast-capable, non-virtual interface)",
    )  # fmt: skip
    p.add_argument(
        "--accept-unverified", action="store_true",
        help="also use stock `distccd --zeroconf` peers, whose binutils version is unknown",
    )  # fmt: skip
    p.add_argument(
        "--socket", metavar="PATH",
        help="control socket for local clients (default: $MESHCC_SOCKET, else "
        "/run/meshcc/control.sock as root, else $XDG_RUNTIME_DIR/meshcc/control.sock)",
    )  # fmt: skip
    p.add_argument(
        "--write-hosts", metavar="FILE",
        help="keep a distcc hosts file (e.g. /etc/distcc/hosts) listing the peers that match "
        "the local `cc`, for stock distcc and Portage",
    )  # fmt: skip
    p.add_argument(
        "--no-discovery", action="store_true",
        help="neither announce nor browse (serve compiles only)",
    )  # fmt: skip


def _run_daemon(ns: argparse.Namespace) -> int:
    from meshcc.frontend import daemon

    return daemon.run(daemon.DaemonOptions.from_namespace(ns))


def add_browse_options(p: argparse.ArgumentParser) -> None:
    """How to browse when no local daemon answers (``hosts`` and ``doctor``)."""
    p.add_argument(
        "--browse-time", type=_seconds, default=2.5, metavar="SECS",
        help="without a local daemon, browse the network this long (default 2.5)",
    )  # fmt: skip
    p.add_argument(
        "-i", "--interface", metavar="IFACE", action="append", default=[],
        help="without a local daemon: browse on this interface (repeatable)",
    )  # fmt: skip


def _add_hosts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cc", metavar="COMPILER", default="cc",
        help="list peers matching this compiler, as you invoke it (name on PATH or path; "
        "default cc)",
    )  # fmt: skip
    out = p.add_mutually_exclusive_group()
    out.add_argument("--explain", action="store_true",
                     help="show every peer seen, in or out, and why")  # fmt: skip
    out.add_argument("--json", action="store_true", help="machine-readable output")
    add_browse_options(p)
    p.add_argument(
        "-a", "--allow", metavar="CIDR", type=parse_network, action="append", default=[],
        help="without a local daemon: accept peers from this network (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--accept-unverified", action="store_true",
        help="without a local daemon: include stock distccd peers (binutils unknown)",
    )  # fmt: skip


def _run_hosts(ns: argparse.Namespace) -> int:
    from meshcc.frontend import hosts_cmd

    return hosts_cmd.run(ns)


def _delegate(module: str) -> tuple[
    Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]:
    """(add-arguments, handler) of a command living in ``meshcc.frontend.<module>``, which
    provides ``add_arguments(parser)`` and ``run(namespace) -> int`` and keeps its
    module-level imports light (the parser is built for every command)."""
    import importlib

    def add(p: argparse.ArgumentParser) -> None:
        importlib.import_module(f"meshcc.frontend.{module}").add_arguments(p)

    def run(ns: argparse.Namespace) -> int:
        return int(importlib.import_module(f"meshcc.frontend.{module}").run(ns))

    return add, run


# name -> (help, add-arguments, handler)
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "daemon": ("run the compile server, the mesh and the control socket", _add_daemon,
               _run_daemon),
    "hosts": ("print the DISTCC_HOSTS line of the live, matching peers", _add_hosts,
              _run_hosts),
    "doctor": ("check why compiles are (not) distributed, with a fix for each problem",
               *_delegate("doctor")),
    "setup": ("configure Portage or a masquerade directory for the mesh", *_delegate("setup_cmd")),
    "zipapp": ("build meshcc.pyz, a single file that runs with a bare python3 >= 3.11",
               *_delegate("zipapp_cmd")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshcc",
        description="Distributed C/C++ build mesh, wire-compatible with distcc. "
        "Compile with `meshcc COMPILER ARGS...` or the meshcc-gcc/meshcc-g++ wrappers.",
    )
    parser.add_argument("--version", action="version", version=f"meshcc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    handler = getattr(ns, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return int(handler(ns))
