"""``meshcc daemon``'s command-line options (argparse) and the value parsers they share.

Light to import: the ``meshcc`` command builds every subcommand's parser on each run,
``meshcc hosts`` included, so the settings record the options make (a dataclass) lives in
:mod:`meshcc.daemon.settings`, imported only when the daemon starts.

distccd's options keep distccd's names and meanings (``--port``, ``--allow``, ``-j``,
``-N``, ``--log-level``, ``--user``, ``--job-lifetime``); the mesh adds its own. The value
parsers are shared with the admin commands (``meshcc hosts --allow``, ``--browse-time``).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable

from meshcc import hostos
from meshcc.defaults import DISTCC_PORT, STATUS_PORT


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


def int_in(lo: int, hi: int | None, what: str) -> Callable[[str], int]:
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


def seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {value!r}") from None
    if not 0 <= s < float("inf"):  # also false for NaN
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more, not {value!r}")
    return s


def _level(value: str) -> str:
    from meshcc.daemon.logsetup import LOG_LEVELS  # logging: not for `meshcc hosts`

    if value.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {value!r}; use one of: {', '.join(LOG_LEVELS)}"
        )
    return value.lower()


_SIZE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[kMGT]i?)?")


def cache_size(value: str) -> str:
    """``--ccache-size``: ccache's size syntax (5G, 500M, 2Ti, 0 = no limit), checked here so
    a typo fails at start rather than in every job."""
    text = value.strip()
    if not _SIZE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a cache size; use e.g. 5G, 500M, 2Ti or 0 (no limit)"
        )
    return text


def result_cache_size(value: str) -> int:
    """``--cache-size``: bytes, or with a unit (2G, 500M, 1.5GiB); checked at parse time."""
    from meshcc.cache.store import parse_size

    try:
        return parse_size(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a cache size; use e.g. 2G, 500M or 10GiB"
        ) from None


class VersionAction(argparse.Action):
    """``--version``: :func:`meshcc.defaults.version_text`, as distccd's (LZO probed only
    when asked: its import is not for every parse)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from meshcc import compression
        from meshcc.defaults import version_text

        print(version_text(compression.available(compression.Codec.LZO)), end="")
        parser.exit()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action=VersionAction)
    """``meshcc daemon``'s options: distccd's, plus the mesh's."""
    p.add_argument(
        "--listen",
        metavar="ADDR",
        help="address to listen on (default: all addresses, IPv4 and IPv6)",
    )
    p.add_argument(
        "-p",
        "--port",
        type=int_in(1, 65535, "--port"),
        default=DISTCC_PORT,
        help=f"TCP port for compile jobs (default {DISTCC_PORT})",
    )
    p.add_argument(
        "--status-port",
        type=int_in(0, 65535, "--status-port"),
        default=None,
        metavar="N",
        help=f"HTTP status port: a status page, /status.json, /metrics (Prometheus), this "
        "daemon's meshcc.pyz, its sha256 and /bootstrap "
        f"(default {STATUS_PORT}, as distccd's stats port; off when listening on "
        "loopback only; 0 = off)",
    )
    p.add_argument(
        "-a",
        "--allow",
        metavar="CIDR",
        type=parse_network,
        action="append",
        default=[],
        help="allow clients from this address or network (repeatable; default: loopback and "
        "the subnets of this machine's own interfaces)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int_in(1, None, "--jobs"),
        default=None,
        help=f"maximum concurrent compiles (default: CPUs + 2 = {hostos.default_jobs()})",
    )
    p.add_argument(
        "-N",
        "--nice",
        type=int,
        default=5,
        help="niceness increment for the daemon and its compilers (default 5)",
    )
    p.add_argument(
        "--log-level",
        type=_level,
        default="notice",
        metavar="LEVEL",
        help="emerg, alert, crit, error, warning, notice (default), info or debug",
    )
    p.add_argument(
        "--log-file",
        metavar="FILE",
        help="append the log to FILE (default: the journal under systemd, stderr when "
        "someone reads it, else syslog)",
    )
    p.add_argument("--log-stderr", action="store_true", help="log to stderr, never syslog")
    p.add_argument(
        "--compiler",
        metavar="PATH",
        action="append",
        default=[],
        help="offer exactly this compiler (repeatable); default: the gcc family on PATH",
    )
    p.add_argument(
        "--ccache",
        nargs="?",
        const="ccache",
        default=None,
        metavar="PATH",
        help="run remote jobs through ccache (PATH: which ccache; default: ccache on PATH), "
        "with a cache this daemon owns",
    )
    p.add_argument(
        "--ccache-dir",
        metavar="DIR",
        help="--ccache's cache directory (default: $CACHE_DIRECTORY/ccache under systemd, "
        "/var/cache/meshcc/ccache as root, else ~/.cache/meshcc/ccache)",
    )
    p.add_argument(
        "--ccache-size",
        type=cache_size,
        metavar="SIZE",
        help="--ccache's maximum cache size, e.g. 20G (default 5G; 0 = no limit)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="no result cache on this box: compile every job, serve no peer's lookups "
        "(local clients, told by <socket>.nocache, skip direct-mode lookups)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the result cache's directory (default: $CACHE_DIRECTORY/results under "
        "systemd, /var/cache/meshcc/results as root, else ~/.cache/meshcc/results)",
    )
    p.add_argument(
        "--cache-size",
        type=result_cache_size,
        metavar="SIZE",
        help="the result cache's size limit, least recently used results go first (default 2G)",
    )
    p.add_argument(
        "--cache-lookup-timeout",
        type=seconds,
        default=0.25,
        metavar="SECONDS",
        help="how long a job waits for the key's home peer before compiling (default 0.25)",
    )
    p.add_argument(
        "--user",
        metavar="USER",
        help="user to run as when started as root (default: meshcc if it exists, else nobody)",
    )
    p.add_argument(
        "--job-lifetime",
        type=seconds,
        default=0.0,
        metavar="SECS",
        help="kill a compile that runs longer than SECS (default 0: no limit)",
    )
    p.add_argument(
        "--io-timeout",
        type=seconds,
        default=300.0,
        metavar="SECS",
        help="drop a client that sends or reads nothing for SECS (default 300, as distcc)",
    )
    p.add_argument(
        "-i",
        "--interface",
        metavar="IFACE",
        action="append",
        default=[],
        help="announce and browse on this interface (repeatable; default: every up, "
        "multicast-capable, non-virtual interface)",
    )
    p.add_argument(
        "--accept-unverified",
        action="store_true",
        help="also use stock `distccd --zeroconf` peers, whose binutils version is unknown",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="control socket for local clients (default: $MESHCC_SOCKET, else "
        "/run/meshcc/control.sock as root, else $XDG_RUNTIME_DIR/meshcc/control.sock)",
    )
    p.add_argument(
        "--write-hosts",
        metavar="FILE",
        help="keep a distcc hosts file (e.g. /etc/distcc/hosts) listing the peers that match "
        "the local `cc`, for stock distcc and Portage",
    )
    p.add_argument(
        "--no-discovery",
        action="store_true",
        help="neither announce nor browse (serve compiles only)",
    )
    p.add_argument(
        "--inetd",
        action="store_true",
        help="serve one job on stdin/stdout and exit, as `distccd --inetd`: what an SSH host "
        "(`DISTCC_HOSTS=@box:meshcc`) runs; no listener, mesh, control socket or status port",
    )
    p.add_argument(
        "--enable-tcp-insecure",
        action="store_true",
        help="accepted for distccd's command line (distcc passes it over SSH) and ignored: "
        "meshcc always runs only the compilers it probed",
    )
