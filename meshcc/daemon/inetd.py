"""``meshcc daemon --inetd``: serve one compile job on stdin/stdout, then exit.

This is what ``distccd --inetd`` does, and what distcc's SSH hosts run: for
``DISTCC_HOSTS=@box:meshcc`` a stock distcc client (or ``meshcc-gcc``) runs ``ssh box
meshcc --inetd --enable-tcp-insecure`` and speaks the distcc protocol over the session.
The job goes through the compile server's own connection handling
(:meth:`meshcc.transport.server.CompileServer.serve_stream`): the same compiler mapping
(only compilers probed here, by absolute path), option and input refusals with their ERRM
reason, bounds, private job directory and summary line as a TCP connection. Nothing else of
the daemon starts: no listener, mDNS, peer table, control socket or status port.

fds 0 and 1 are the protocol channel, so nothing else may write there: they are moved to
private descriptors first, then fd 0 reads ``/dev/null`` and fd 1 goes to stderr, so a
stray write to stdout cannot corrupt the stream.

Who may connect: when stdin is a TCP socket (a classic inetd, a socket-activated unit) the
client address must pass ``--allow`` (default: loopback and this box's subnets, as the
daemon's); a pipe or a unix socket (sshd) has no address and is served, as distccd does:
ssh authenticated the user, and the job runs as that user.

Logging never goes to stdout: ``--log-file FILE``; ``--log-stderr``; else syslog, as
distccd's inetd mode; with no syslog socket, stderr, but only warnings and errors: over
ssh stderr is the client's terminal, which wants to hear of a refusal but not a line per
compile. Options go in the host spec's command only through a script (the spec allows no
spaces): ``@box:/usr/local/bin/meshcc-ssh`` with ``exec meshcc daemon --log-file
/var/log/meshcc-ssh.log "$@"`` in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import select
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass

from meshcc.compiler.toolchain import ToolchainError, ToolchainRegistry
from meshcc.daemon import logsetup
from meshcc.daemon.settings import DaemonOptions
from meshcc.exitcodes import EXIT_COMPILER_MISSING, EXIT_DISTCC_FAILED, EXIT_IO_ERROR
from meshcc.transport.addresses import IPAddress, IPNetwork, normalize_client_ip
from meshcc.transport.server import CompileServer, ServerConfig
from meshcc.wire import protocol as wire

__all__ = ["run"]

log = logging.getLogger("meshcc.inetd")

_STREAM_LIMIT = 64 * 1024  # as the TCP server's streams
_REFUSAL_DRAIN = 2.0  # seconds to read what the client still sends after a start-up refusal


class _Fatal(Exception):
    """Cannot serve: the reason goes to the log and, as ERRM, to the client."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Channel:
    """The protocol channel, moved off fds 0 and 1."""

    rfd: int
    wfd: int
    sock: socket.socket | None  # stdin and stdout are one socket: a single duplex stream
    addr: IPAddress | None  # the TCP client's address; None: no access list (ssh, a pipe)
    client: str  # for log lines and the job summary

    def refuse(self, reason: str) -> None:
        """Send ERRM before any request is read (a start-up failure), then let the client
        finish sending for a moment, so a TCP close does not reset the ERRM away."""
        data = wire.encode_refusal(reason)
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(self.wfd, data) :]
            if self.sock is not None:
                self.sock.shutdown(socket.SHUT_WR)
            else:
                os.close(self.wfd)
            deadline = time.monotonic() + _REFUSAL_DRAIN
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([self.rfd], [], [], left)
                if not ready or not os.read(self.rfd, 65536):
                    break


def _take_channel() -> _Channel:
    """Move the protocol off fds 0 and 1 (0 then reads /dev/null, 1 goes to stderr) and find
    out who is on the other end."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr either
        os.dup2(null, 1)
    os.close(null)

    sock: socket.socket | None = None
    addr: IPAddress | None = None
    client = "stdin"
    ssh = os.environ.get("SSH_CLIENT", "").split()
    if len(ssh) >= 2:  # sshd sets "ADDRESS PORT LOCALPORT": for the log only
        client = f"ssh:{ssh[0]}:{ssh[1]}" if ":" not in ssh[0] else f"ssh:[{ssh[0]}]:{ssh[1]}"
    rst, wst = os.fstat(rfd), os.fstat(wfd)
    if stat.S_ISSOCK(rst.st_mode):
        sock = socket.socket(fileno=os.dup(rfd))
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                peer = sock.getpeername()
                addr = normalize_client_ip(str(peer[0]))
            except (OSError, ValueError):
                addr = ipaddress.ip_address("0.0.0.0")  # unknown: the access list decides
                peer = ("?", 0)
            client = f"[{addr}]:{peer[1]}" if addr.version == 6 else f"{addr}:{peer[1]}"
        if (rst.st_dev, rst.st_ino) != (wst.st_dev, wst.st_ino):
            sock.close()  # two channels (as with pipes): one for each direction
            sock = None
    return _Channel(rfd, wfd, sock, addr, client)


def _configure_logging(opts: DaemonOptions) -> None:
    """Anywhere but stdout (see the module docstring)."""
    level = logsetup.parse_level(opts.log_level)
    if opts.log_file:
        try:
            stream = logsetup.open_log_file(opts.log_file)
        except OSError as e:
            logsetup.configure(max(level, logging.WARNING), sys.stderr)
            raise _Fatal(
                f"cannot open log file {opts.log_file}: {e.strerror or e}", EXIT_DISTCC_FAILED
            ) from None
        logsetup.configure(level, stream, to_file=True)
        return
    if opts.log_stderr:
        logsetup.configure(level, sys.stderr)
        return
    with open(os.devnull, "w", encoding="utf-8") as discard:  # "nobody reads stderr": syslog
        where = logsetup.configure_default(level, stream=discard)
    if where != "syslog":
        logsetup.configure(max(level, logging.WARNING), sys.stderr)


def _as_root(opts: DaemonOptions) -> None:
    """Started as root (by an inetd): load everything, then drop privileges as the daemon
    does. Imports the daemon's start-up code, which a user's ssh session never pays for."""
    from meshcc.daemon import main

    main._preload()
    try:
        note = main._drop_privileges(opts.user)
    except main._Fatal as e:
        raise _Fatal(str(e), e.code) from None
    if note:
        log.info("%s", note)


def _allowed(opts: DaemonOptions) -> tuple[IPNetwork, ...]:
    """The access list for a TCP client: ``--allow``, else the daemon's default."""
    if opts.allow:
        return tuple(opts.allow)
    from meshcc.daemon.main import default_allowed_networks

    return tuple(default_allowed_networks())


def _registry(opts: DaemonOptions) -> ToolchainRegistry:
    """The compilers to offer, probed as the TCP daemon probes them."""
    try:
        registry = ToolchainRegistry.offered(opts.compilers)
    except ToolchainError as e:
        raise _Fatal(str(e), EXIT_COMPILER_MISSING) from None
    if not registry.toolchains:
        raise _Fatal(
            "no compilers found: no gcc, g++, cc or c++ on PATH "
            f"({os.environ.get('PATH', '')}); install gcc or use --compiler PATH",
            EXIT_COMPILER_MISSING,
        )
    return registry


async def _open_streams(ch: _Channel) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    if ch.sock is not None:
        os.close(ch.rfd)
        os.close(ch.wfd)
        return await asyncio.open_connection(sock=ch.sock, limit=_STREAM_LIMIT)
    reader = asyncio.StreamReader(limit=_STREAM_LIMIT)
    rfile = os.fdopen(ch.rfd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
    # A StreamReaderProtocol on the write side too: it gives the writer drain() and
    # wait_closed(), and notices the reading end going away.
    wproto = asyncio.StreamReaderProtocol(asyncio.StreamReader())
    wtrans, _ = await loop.connect_write_pipe(lambda: wproto, os.fdopen(ch.wfd, "wb", buffering=0))
    return reader, asyncio.StreamWriter(wtrans, wproto, reader, loop)


async def _serve(ch: _Channel, registry: ToolchainRegistry, config: ServerConfig) -> None:
    server = CompileServer(registry, config)
    reader, writer = await _open_streams(ch)
    job = asyncio.ensure_future(server.serve_stream(reader, writer, ch.client, ch.addr))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # cancelled: the compiler's process group is killed and the job dir removed
        loop.add_signal_handler(signum, job.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await job


def run(opts: DaemonOptions) -> int:
    """Serve one job on stdin/stdout, then end the process with status 0 (whatever the
    compiler said); returns only when it cannot serve (distcc's exit code)."""
    try:
        ch = _take_channel()
    except OSError as e:
        print(f"meshcc daemon --inetd: no usable stdin/stdout: {e}", file=sys.stderr)
        return EXIT_IO_ERROR
    try:
        _configure_logging(opts)
        if os.geteuid() == 0:
            _as_root(opts)
        if opts.nice:
            with contextlib.suppress(OSError):
                os.nice(opts.nice)
        registry = _registry(opts)
        allowed = _allowed(opts) if ch.addr is not None else ()
    except _Fatal as e:
        log.error("%s", e)
        ch.refuse(f"meshcc daemon --inetd cannot serve: {e}")
        return e.code
    config = ServerConfig(
        allowed=allowed,
        jobs=1,
        io_timeout=opts.io_timeout or 300.0,
        job_lifetime=opts.job_lifetime,
    )
    log.debug("serving one job for %s (pid %d)", ch.client, os.getpid())
    asyncio.run(_serve(ch, registry, config))
    # The client waits for ssh, which waits for this process to exit: skip the interpreter's
    # teardown (measured: 40-100 ms with the server's modules loaded, 5 ms without it). The
    # job is over, its directory gone; only the log needs flushing.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)
