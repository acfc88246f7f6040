"""``meshcc daemon``: compose the compile server (and, later, the mesh) into one process.

Start-up order follows distccd: open the log and bind while still root, drop to
the service user, then probe compilers as that user (the daemon only ever runs
what it probed). Misconfiguration ends with one clear line and distccd's exit
codes (102 bind failed, 110 no compiler), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from meshcc import __version__
from meshcc.compiler.toolchain import ToolchainError, ToolchainRegistry
from meshcc.frontend import logsetup
from meshcc.frontend.cli import default_jobs
from meshcc.transport.server import CompileServer, IPNetwork, ServerConfig, bind_listener

log = logging.getLogger("meshcc.daemon")

EXIT_OK = 0
EXIT_FAILURE = 100
EXIT_BIND_FAILED = 102
EXIT_COMPILER_MISSING = 110
EXIT_SETUID_FAILED = 112

LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """The daemon's settings, as parsed from ``meshcc daemon`` options."""

    listen: str | None = None
    port: int = 3632
    allow: tuple[IPNetwork, ...] = ()
    jobs: int | None = None
    nice: int = 5
    log_level: str = "notice"
    log_file: str | None = None
    compilers: tuple[str, ...] = ()
    user: str | None = None
    job_lifetime: float = 0.0
    io_timeout: float = 300.0

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> DaemonOptions:
        return cls(
            listen=ns.listen,
            port=ns.port,
            allow=tuple(ns.allow),
            jobs=ns.jobs,
            nice=ns.nice,
            log_level=ns.log_level,
            log_file=ns.log_file,
            compilers=tuple(ns.compiler),
            user=ns.user,
            job_lifetime=ns.job_lifetime,
            io_timeout=ns.io_timeout,
        )


class _Fatal(Exception):
    """A start-up failure: one line for the user, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def default_allowed_networks() -> list[IPNetwork]:
    """Loopback plus the subnets of this machine's own non-loopback interface addresses."""
    nets: list[IPNetwork] = list(LOOPBACK_NETWORKS)
    try:
        import ifaddr

        adapters = ifaddr.get_adapters()
    except Exception as e:  # a broken netlink or missing module must not stop the daemon
        log.warning("cannot list network interfaces (%s); allowing loopback only", e)
        return nets
    for adapter in adapters:
        for ip in adapter.ips:
            addr = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                text = f"{addr.split('%')[0]}/{ip.network_prefix}"
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue
            if net.network_address.is_loopback or net in nets:
                continue
            nets.append(net)
    return nets


def _drop_privileges(requested: str | None) -> str | None:
    """When root, switch to the service user; returns a line to log (None if nothing to say)."""
    if os.geteuid() != 0:
        if requested:
            return f"not started as root, so --user {requested} is ignored"
        return None
    import pwd

    if requested is not None:
        name = requested
    else:
        try:
            pwd.getpwnam("meshcc")
            name = "meshcc"
        except KeyError:
            name = "nobody"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise _Fatal(f"--user {name}: no such user", EXIT_SETUID_FAILED) from None
    if pw.pw_uid == 0:
        return f"running as root because --user {name} was given; compilers run as root too"
    try:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        raise _Fatal(
            f"cannot switch to user {name}: {e.strerror or e}", EXIT_SETUID_FAILED
        ) from None
    _no_new_privs()
    default = " (default)" if requested is None else ""
    return f"dropped root privileges: running as user {name}{default} (uid {pw.pw_uid})"


def _preload() -> None:
    """Import now whatever jobs import lazily: after the drop to an unprivileged user the
    Python installation may be unreadable (e.g. a Python under /root), and a lazy import
    would then fail in the middle of a job. Each codec is run once to load its backend."""
    import asyncio.subprocess  # noqa: F401
    import concurrent.futures.thread  # noqa: F401
    import ctypes  # noqa: F401
    import pwd  # noqa: F401

    from meshcc import compression

    for codec in compression.Codec:
        if codec is compression.Codec.NONE or not compression.available(codec):
            continue
        try:
            sample = compression.compress(codec, b"meshcc warm-up " * 64)
            compression.decompress(codec, sample, 1 << 16)
        except Exception as e:  # a broken codec must not stop the daemon; jobs will say why
            log.warning("compression %s does not work: %s", codec.value, e)


def _no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS, as distccd does: setuid binaries cannot regain root."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS


def _check_tmpdir() -> str:
    """The job temp dir parent must be writable by the (possibly dropped) user."""
    tempfile.tempdir = None  # decide as the user we run as now, not as root
    parent = tempfile.gettempdir()
    wanted = os.environ.get("TMPDIR")
    if wanted and os.path.realpath(wanted) != os.path.realpath(parent):
        log.warning(
            "TMPDIR %s is not usable by uid %d; job directories go to %s instead",
            wanted, os.geteuid(), parent,
        )  # fmt: skip
    try:
        probe = tempfile.mkdtemp(prefix="meshccd_check_", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise _Fatal(
            f"cannot create job directories in {parent} as uid {os.geteuid()}: "
            f"{e.strerror or e}; set TMPDIR or --user",
            EXIT_FAILURE,
        ) from None
    return parent


def _describe_listener(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6 and host == "::":
        with contextlib.suppress(OSError):
            if not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                return f"all addresses (IPv4 and IPv6) port {port}"
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def _setup(opts: DaemonOptions) -> tuple[socket.socket, ToolchainRegistry, ServerConfig]:
    level = logsetup.parse_level(opts.log_level)
    stream: TextIO | None = None
    if opts.log_file:
        try:
            stream = logsetup.open_log_file(opts.log_file)
        except OSError as e:
            raise _Fatal(
                f"cannot open log file {opts.log_file}: {e.strerror or e}", EXIT_FAILURE
            ) from None
    logsetup.configure(level, stream, to_file=stream is not None)

    try:
        sock = bind_listener(opts.listen, opts.port, listen=False)
    except OSError as e:
        where = f"{opts.listen or 'all addresses'} port {opts.port}"
        raise _Fatal(f"cannot listen on {where}: {e.strerror or e}", EXIT_BIND_FAILED) from None

    try:
        if opts.nice:
            with contextlib.suppress(OSError):
                os.nice(opts.nice)
        _preload()
        note = _drop_privileges(opts.user)
        if note:
            log.log(logging.INFO if note.startswith("dropped") else logging.WARNING, "%s", note)
        tmp_parent = _check_tmpdir()

        try:
            if opts.compilers:
                registry = ToolchainRegistry.from_paths(opts.compilers)
            else:
                registry = ToolchainRegistry.discover()
        except ToolchainError as e:
            raise _Fatal(str(e), EXIT_COMPILER_MISSING) from None
        for skipped in registry.skipped:
            log.info("not offering %s: %s", skipped.path, skipped.reason)
        if not registry.toolchains:
            raise _Fatal(
                "no compilers found: no gcc, g++, cc or c++ on PATH "
                f"({os.environ.get('PATH', '')}); install gcc or use --compiler PATH",
                EXIT_COMPILER_MISSING,
            )

        allowed = tuple(opts.allow) or tuple(default_allowed_networks())
        jobs = opts.jobs or default_jobs()
        config = ServerConfig(
            allowed=allowed,
            jobs=jobs,
            io_timeout=opts.io_timeout or 300.0,
            job_lifetime=opts.job_lifetime,
        )
        log.log(logsetup.NOTICE, "meshcc %s daemon listening on %s", __version__,
                _describe_listener(sock))  # fmt: skip
        for tc in registry.toolchains:
            log.log(
                logsetup.NOTICE, "compiler %s: gcc %s, target %s, binutils %s (names: %s)",
                tc.path, tc.version, tc.target, tc.binutils or "unknown", ", ".join(tc.names),
            )  # fmt: skip
        lifetime = f"{opts.job_lifetime:g}s" if opts.job_lifetime else "unlimited"
        log.log(logsetup.NOTICE, "allowing up to %d concurrent jobs (job lifetime %s), "
                "job directories in %s", jobs, lifetime, tmp_parent)  # fmt: skip
        source = "--allow" if opts.allow else "default"
        log.log(logsetup.NOTICE, "allowing clients from (%s): %s", source,
                ", ".join(str(n) for n in allowed))  # fmt: skip
        return sock, registry, config
    except BaseException:
        sock.close()
        raise


async def _serve(sock: socket.socket, registry: ToolchainRegistry, config: ServerConfig) -> None:
    server = CompileServer(registry, config)
    await server.start(sock)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            log.log(
                logsetup.NOTICE,
                "%s received: no new connections; waiting for %d connection(s) to finish "
                "(send it again to abort them)", name, server.active_connections,
            )  # fmt: skip
            server.request_stop()
        else:
            log.warning("%s received again: aborting %d connection(s)", name,
                        server.active_connections)  # fmt: skip
            server.abort()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await server.serve_until_stopped()
    log.log(logsetup.NOTICE, "daemon stopped")


def run(opts: DaemonOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code (0, or distccd's failure codes)."""
    logsetup.configure(logsetup.parse_level(opts.log_level))  # stderr until the log opens
    try:
        sock, registry, config = _setup(opts)
    except _Fatal as e:
        log.error("%s", e)
        handlers = logging.getLogger("meshcc").handlers
        if handlers and getattr(handlers[0], "stream", sys.stderr) is not sys.stderr:
            print(f"meshcc daemon: error: {e}", file=sys.stderr)  # tell whoever started us
        return e.code
    try:
        asyncio.run(_serve(sock, registry, config))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``meshcc daemon ARGS`` without the rest of the CLI (for tests and embedding)."""
    from meshcc.frontend import cli

    return cli.main(["daemon", *(argv if argv is not None else sys.argv[1:])])
