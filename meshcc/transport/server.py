"""The asyncio compile server: distcc protocols 1 and 2, one job per connection.

Per connection: check the client address, read the request with the bounded
sans-IO codec, resolve the compiler against the probed toolchains, apply the
server policy, then compile in a private temp dir under a ``--jobs`` semaphore
while watching the client socket, and reply. A refused job gets meshcc's
``ERRM`` reason before the close (distccd just closes), and every connection
that carried a request ends with one distccd-style job summary line.

No client can hold the server hostage (a stalled or slow connection never
delays another client's compile):

- The request header (``DIST`` .. the last ``ARGV``) must arrive within
  ``header_timeout`` of its first byte. The wait between the arguments and the
  source (the client runs its preprocessor) may last ``io_timeout``. A source
  body must keep flowing: no ``body_stall`` seconds without a byte, and on
  average at least ``body_min_rate`` bytes/s after the first ``body_stall``
  seconds. Only body bytes count against the memory budget for requests
  (``body_memory``); nothing else waits for a slot before its job is complete.
- The server accepts connections itself, one at a time, below a total cap and
  a per-address cap derived from the descriptor limit. At a cap it sheds the
  oldest idle connection (no request bytes yet, or waiting for the source),
  then stalled headers and bodies; when every connection is doing real work it
  stops accepting, so the excess waits in the kernel's accept queue.
- Shedding and deadline drops are logged at most once per reason per interval.

Only the daemon imports this module (it is the only user of asyncio).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import ipaddress
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshcc import compression, hostos
from meshcc.cache.service import CacheJob, ResultCache
from meshcc.cache.store import Entry as CacheEntry
from meshcc.compiler import policy
from meshcc.compiler.toolchain import CompilerRefused, Resolved, ToolchainRegistry
from meshcc.compression.prefixes import PrefixStore  # [zref]
from meshcc.exitcodes import (
    EXIT_ACCESS_DENIED,
    EXIT_BAD_ARGUMENTS,
    EXIT_COMPILER_MISSING,
    EXIT_DISTCC_FAILED,
    EXIT_IO_ERROR,
    EXIT_NO_SUCH_FILE,
    EXIT_PROTOCOL_ERROR,
    EXIT_TIMEOUT,
    EXIT_TRUNCATED,
)
from meshcc.loglevels import NOTICE
from meshcc.transport import jobrun
from meshcc.transport.addresses import IPAddress, IPNetwork, client_allowed, peer_ip
from meshcc.transport.jobstats import JobStats
from meshcc.wire import codecs as wire_codecs  # [zref]
from meshcc.wire import protocol as wire

__all__ = [
    "CcacheRun",
    "CompileServer",
    "JobResult",
    "JobSummary",
    "ServerConfig",
    "bind_listener",
    "ccache_verdict",
    "connection_caps",
]


log = logging.getLogger("meshcc.server")

PUMP_REFUSAL = "pump mode (',cpp') is not supported; use ',lzo'"
NO_LZO_REFUSAL = (
    "this daemon has no LZO support (pure-Python meshcc.pyz); use the host without ,lzo"
)

_READ_CHUNK = 256 * 1024  # one recv; the daemon reads only when the parser wants bytes
_BACKLOG = 1024  # the kernel's accept queue: where clients wait while the server is full
# How long a connection must have been in its phase before a cap may shed it: a client
# accepted in a burst may have its request in the socket already (not idle, only unread),
# a real header arrives within a round trip, and a body that flows never pauses this long.
_SHED_MIN_AGE = 0.5
_SHED_HEADER_AGE = 1.0
_SHED_BODY_STALL = 1.0
# A request header beyond this many bytes (real ones are a few hundred; wire.Limits allows
# about 1 MiB) reads further bytes only against the body budget, like a source body.
_HEADER_FREE = 64 * 1024
# (De)compress a body up to this size on the loop itself: LZO does it in well under a
# millisecond, less than handing it to a worker thread costs (a thread switch and a wake-up
# of the loop each way). Larger bodies go to a thread, so no client's job stalls the loop.
_INLINE_CODEC = 256 * 1024
_ALLOWED_CACHE = 4096  # client addresses whose access-list verdict is remembered
_LOG_INTERVAL = 10.0  # shedding / deadline lines: one per reason per interval
_NO_ADDRESS = ipaddress.ip_address("0.0.0.0")
_FS_ENCODING = sys.getfilesystemencoding()  # os.fsdecode's encoding and error handler
_FS_ERRORS = sys.getfilesystemencodeerrors()
# BUSY turns between boxes (CompileServer._try_reserve_slot): how long a turned-away box
# stays in line without asking again (its daemon asks every mesh.leases.BUSY_HOLD_S).
_OWED_S = 1.0  # counts a stream that has no client address


class JobResult(enum.Enum):
    """The result word of a job summary (distccd's stats names)."""

    COMPILE_OK = "COMPILE_OK"
    COMPILE_ERROR = "COMPILE_ERROR"
    COMPILE_TIMEOUT = "COMPILE_TIMEOUT"
    CLI_DISCONN = "CLI_DISCONN"
    REJ_BAD_REQ = "REJ_BAD_REQ"
    OTHER = "OTHER"


@dataclass(slots=True)
class JobSummary:
    """What one connection did; ``line()`` is distccd's dcc_job_summary layout."""

    client: str
    result: JobResult = JobResult.OTHER
    exit: int = 0
    sig: int = 0
    core: int = 0
    ret: int = 0
    time_ms: int = 0
    compiler: str | None = None
    source: str | None = None
    cache: str | None = None  # --ccache: hit, miss or uncached; None without ccache
    rcache: str | None = None  # the result cache: hit, remote-hit, miss, off; None: no cache
    queue_ms: int | None = None  # waited for a job slot this long; None: did not wait
    refused: bool = False  # turned down with a reason (ERRM); for JobStats, not the line
    resend: bool = False  # asked to send again without its body prefix (zref); not refused
    bytes_in: int = 0  # request bytes read
    bytes_out: int = 0  # reply bytes written
    compile_s: float | None = None  # the compiler's run time, if it ran

    @property
    def outcome(self) -> str:
        """The ``meshcc_jobs_total`` label (:mod:`meshcc.transport.jobstats`)."""
        if self.resend:
            return "prefix_unknown"
        if self.refused and self.result is JobResult.OTHER:
            return "refused"
        return self.result.value.lower()

    def line(self) -> str:
        text = (
            f"client: {self.client} {self.result.value} exit:{self.exit} sig:{self.sig} "
            f"core:{self.core} ret:{self.ret} time:{self.time_ms}ms"
        )
        if self.result in (JobResult.COMPILE_OK, JobResult.COMPILE_ERROR):
            text += f" {self.compiler or '?'} {self.source or '?'}"
        # Extra fields go after distccd's layout, so it parses unchanged. queue: is the wait
        # for a job slot, kept out of time: (distccd's queue is its kernel backlog, never
        # timed); only a job that waited has it. cache: stays last.
        if self.queue_ms is not None:
            text += f" queue:{self.queue_ms}ms"
        if self.rcache is not None:
            text += f" rcache:{self.rcache}"
        if self.cache is not None:
            text += f" cache:{self.cache}"
        return text


@dataclass(frozen=True, slots=True)
class CcacheRun:
    """How jobs run through ccache (``meshcc daemon --ccache``), as the daemon set it up.

    A job runs ``ccache /abs/real/gcc ARGS`` (ccache's compiler-as-first-argument form), so
    the compiler that runs, and the one the mesh fingerprinted, is the probed one. ``env``
    replaces every inherited ``CCACHE_*`` variable: the cache dir and the config file the
    daemon wrote (``CCACHE_CONFIGPATH`` also keeps the system's /etc/ccache.conf out, so a
    box-wide ``prefix_command`` or ``hard_link`` never applies to remote jobs)."""

    path: str  # the ccache executable, absolute
    env: tuple[tuple[str, str], ...]
    describe: str = ""  # for the status page: where the cache is and its size


# Per-job statistics file (ccache's stats_log, 4.4+): one job's counter names, so hits and
# misses are counted per job even when many run at once. A dot name: no job stem has one.
_CCACHE_STATS = ".ccache-stats"


def ccache_verdict(stats_log: str) -> str:
    """hit, miss or uncached, from the counter names one ccache run wrote to its stats_log.

    A hit is ``direct_cache_hit`` or ``preprocessed_cache_hit``; ``cache_miss`` means the
    compiler ran and its result was stored; anything else (a failed compile, an option
    ccache does not cache) ran the compiler without the cache."""
    words = {w.strip() for w in stats_log.splitlines() if w and not w.startswith("#")}
    if words & {"direct_cache_hit", "preprocessed_cache_hit"}:
        return "hit"
    if "cache_miss" in words:
        return "miss"
    return "uncached"


def connection_caps(fds: int) -> tuple[int, int]:
    """(total, per client address) compile connections for a soft descriptor limit.

    A quarter of the descriptors (the control socket gets another quarter; the rest is for
    compilers' pipes, job files, peer probes and the status port), at most 4096 (memory),
    and a quarter of that for one address, so one host cannot take every place."""
    total = max(16, min(4096, fds // 4))
    return total, max(8, total // 4)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs besides the toolchains; defaults suit a real box."""

    allowed: tuple[IPNetwork, ...]
    jobs: int = field(default_factory=hostos.default_jobs)
    limits: wire.Limits = field(default_factory=wire.Limits)
    io_timeout: float = 300.0  # one read or write (distcc's DISTCC_IO_TIMEOUT)
    job_lifetime: float = 0.0  # 0 = no limit on a compile
    header_timeout: float = 10.0  # DIST..ARGV complete, from its first byte (<= io_timeout)
    body_stall: float = 10.0  # longest wait for a byte of the source (<= io_timeout)
    body_min_rate: int = 16 * 1024  # bytes/s on average, after the first body_stall seconds
    body_memory: int = 256 * 1024 * 1024  # request bodies held at once (one may exceed it)
    max_connections: int | None = None  # None: connection_caps(soft RLIMIT_NOFILE)
    max_per_address: int | None = None  # None: connection_caps(soft RLIMIT_NOFILE)
    max_source: int = 1024 * 1024 * 1024  # decompressed DOTI
    max_output: int = 16 * 1024 * 1024  # compiler stdout / stderr kept, each
    drain_bytes: int = 8 * 1024 * 1024  # discarded after a refusal before closing
    drain_seconds: float = 2.0
    tmpdir: str | None = None  # None = $TMPDIR (tempfile's rules)
    ccache: CcacheRun | None = None  # --ccache: run jobs through ccache
    # How long a freed job slot waits for the box answered BUSY longest ago (its daemon asks
    # again every mesh.leases.BUSY_HOLD_S = 0.1 s): turns between boxes, see
    # CompileServer._try_reserve_slot.
    turn_grace: float = 0.15

    def caps(self) -> tuple[int, int]:
        """(total, per address) connection caps, derived from the descriptor limit if unset."""
        total, per_address = connection_caps(hostos.open_files_limit())
        if self.max_connections is not None:
            total = self.max_connections
        if self.max_per_address is not None:
            per_address = self.max_per_address
        return max(1, total), max(1, min(per_address, total))


# ---------------------------------------------------------------- helpers


def _job_stem(source: str) -> str:
    stem = os.path.splitext(os.path.basename(source))[0][:100]
    if not stem or stem.startswith((".", "-")):
        return "input"
    return stem


def _job_files(req: _Request) -> tuple[str, str]:
    """(input, output) file names of a job in its directory."""
    stem = _job_stem(req.source)
    return stem + req.suffix, stem + req.output_suffix


def _decode_argv(raw: list[bytes]) -> list[str]:
    """``[os.fsdecode(a) for a in raw]`` for arguments without NUL, in one decode (fsdecode
    is a Python call per argument): the NUL-joined text split at NUL is each argument's own
    decoding, since NUL is one byte that ends any incomplete multi-byte sequence."""
    return b"\0".join(raw).decode(_FS_ENCODING, _FS_ERRORS).split("\0")


def _format_client(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def bind_listener(
    address: str | None, port: int, backlog: int = 1024, *, listen: bool = True
) -> socket.socket:
    """A bound TCP socket; ``None`` = all addresses, dual-stack ``::`` else ``0.0.0.0``.

    With ``listen=False`` the socket is only bound (so a busy port fails early) and
    ``CompileServer.start`` listens once the daemon is ready: a client that can connect
    is then always served. Raises OSError (the daemon exits 102, distccd's "bind failed").
    """
    if address is None:
        try:
            sock = _listen_on(socket.AF_INET6, ("::", port), backlog, listen, dual_stack=True)
        except OSError as e:
            if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                raise
            sock = _listen_on(socket.AF_INET, ("0.0.0.0", port), backlog, listen)
        return sock
    try:
        infos = socket.getaddrinfo(
            address,
            port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV,
        )
    except socket.gaierror as e:
        raise OSError(
            errno.EADDRNOTAVAIL, f"cannot resolve listen address {address!r}: {e}"
        ) from None
    family, _, _, _, sockaddr = infos[0]
    return _listen_on(family, sockaddr, backlog, listen)


def _listen_on(
    family: int,
    sockaddr: tuple[object, ...],  # as getaddrinfo gives it for this family
    backlog: int,
    listen: bool,
    dual_stack: bool = False,
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------- per-connection


class _Refuse(Exception):
    """Abort the job: log, send ERRM(reason), close."""

    def __init__(
        self,
        reason: str,
        result: JobResult = JobResult.OTHER,
        ret: int = 0,
        *,
        throttle: str | None = None,
        resend: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result
        self.ret = ret
        self.throttle = throttle  # log through the rate limiter under this reason
        # An expected answer, not a refusal: the client sends the job again as asked (a
        # ZREF this server no longer holds); no warning, counted apart (JobSummary.resend).
        self.resend = resend


class _Gone(Exception):
    """The client went away or stalled; nothing more can be sent."""

    def __init__(
        self,
        why: str,
        result: JobResult = JobResult.CLI_DISCONN,
        ret: int = 0,
        *,
        throttle: str | None = None,
    ) -> None:
        super().__init__(why)
        self.why = why
        self.result = result
        self.ret = ret
        self.throttle = throttle  # log through the rate limiter under this reason


@dataclass(slots=True)
class _Request:
    version: int
    argv: list[str]
    resolved: Resolved
    source: str  # the source name as the client gave it
    suffix: str  # of the preprocessed input: .i .ii .mi .mii
    output_suffix: str  # .o, or .s for -S
    data: bytes = b""  # decompressed preprocessed source
    codec: str = ""  # a body codec negotiated with CODC (wire.codecs); "" = the protocol's


@dataclass(slots=True)
class _Outcome:
    wait_status: int
    stderr: bytes
    stdout: bytes
    obj: bytes | None
    result: JobResult
    ret: int = 0


class _Phase(enum.IntEnum):
    """Where a connection is; the order is the shedding order at a cap (lowest first)."""

    CLOSING = 0  # refused, draining before the close
    IDLE = 1  # connected, no request bytes yet
    WAITING_SOURCE = 2  # arguments read, the client is preprocessing
    HEADER = 3  # DIST..ARGV arriving (shed only once older than _SHED_HEADER_AGE)
    BODY = 4  # the source arriving (shed only after _SHED_BODY_STALL without a byte)
    BUSY = 5  # waiting for memory or a job slot, compiling, replying: never shed


_SHEDDABLE = (_Phase.CLOSING, _Phase.IDLE, _Phase.WAITING_SOURCE, _Phase.HEADER, _Phase.BODY)


class _Channel:
    """One connection's byte stream as the server uses it; the request parser
    (:class:`meshcc.wire.protocol.RequestReader`) is fed from ``read`` and does no I/O.

    ``read`` returns b"" at the end of the stream (and once ``close`` was called), raises
    OSError on a connection error; ``write`` never blocks (what the peer has not taken yet
    is kept, ``pending`` says how much, ``drain`` waits for it); ``close`` sends what is
    pending, then closes; ``abort`` closes at once."""

    __slots__ = ()

    def nodelay(self) -> None:
        """TCP_NODELAY where it is a TCP socket: a reply leaves without waiting for an ACK."""
        raise NotImplementedError

    async def read(self, n: int) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    def can_write_eof(self) -> bool:
        raise NotImplementedError

    def write_eof(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def wait_closed(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def watch(self) -> asyncio.Future[str]:
        """Resolves with why, once the peer closes or resets the connection (what it sends
        meanwhile is discarded); cancel it to stop watching. For the compile: a client that
        goes away gets its compiler killed."""
        return asyncio.ensure_future(_watch_disconnect(self))


class _SocketChannel(_Channel):
    """An accepted TCP connection, read and written by the server itself on its
    non-blocking socket: no transport, protocol or stream objects per connection.

    Why: a compile request usually sits in the socket by the time it is read, so ``read``
    first just calls recv(); only when the socket is empty does it wait, on a reader
    registered with the loop (see ``_on_readable``). asyncio's streams spent a
    transport, a protocol, a stream reader and writer, their callbacks and a loop turn per
    chunk on every job. ``write`` sends at once; what the kernel does not take waits in a
    buffer, sent from a writer callback. One reader at a time: a later ``read`` takes over
    the wait of an earlier, abandoned one (a cancelled watcher)."""

    __slots__ = (
        "_closed",
        "_closing",
        "_done",
        "_drained",
        "_eof_pending",
        "_error",
        "_fd",
        "_loop",
        "_out",
        "_reading",
        "_sock",
        "_waiter",
        "_watch",
        "_writing",
    )

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None  # the read waiting for bytes
        self._reading = False  # _on_readable is registered with the loop
        self._watch: asyncio.Future[str] | None = None  # watch(): the peer's end, awaited
        self._out = bytearray()  # written, not yet taken by the kernel
        self._writing = False  # a writer callback is registered (``_out`` not empty)
        self._drained: asyncio.Future[None] | None = None
        self._error: OSError | None = None  # a send failed: later writes are dropped
        self._eof_pending = False  # shut down the sending side once ``_out`` is sent
        self._closing = False  # close once ``_out`` is sent
        self._closed = False
        self._done: asyncio.Future[None] | None = None  # for wait_closed

    def nodelay(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def read(self, n: int) -> bytes:
        while not (self._closed or self._closing):
            try:
                return self._sock.recv(n)
            except (BlockingIOError, InterruptedError):
                pass
            fut = self._loop.create_future()
            self._waiter = fut
            if not self._reading:
                self._loop.add_reader(self._fd, self._on_readable)
                self._reading = True
            try:
                await fut
            finally:
                if self._waiter is fut:  # still ours (not replaced by a later read, not closed)
                    self._waiter = None
        return b""

    def _on_readable(self) -> None:
        """The socket has bytes (or its end): wake the read waiting for them. The reader
        stays registered for the connection's next wait (a job waits several times: the
        header, the source after the client's preprocessor, the watch during the compile),
        saving an epoll_ctl pair and asyncio's handle bookkeeping per wait. It goes only
        when the socket is readable and nobody is waiting (level-triggered: it would fire
        on every turn). A woken read that has not run yet still counts as waiting."""
        waiter = self._waiter
        if waiter is None:
            watch = self._watch
            if watch is not None and not watch.done():
                self._discard(watch)
                return
            self._watch = None
            self._loop.remove_reader(self._fd)
            self._reading = False
        elif not waiter.done():
            waiter.set_result(None)

    def watch(self) -> asyncio.Future[str]:
        """As :meth:`_Channel.watch`, in the reader callback itself: no task per job."""
        fut: asyncio.Future[str] = self._loop.create_future()
        if self._closed or self._closing:
            fut.set_result("end of stream")
            return fut
        self._watch = fut
        if not self._reading:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        return fut

    def _discard(self, watch: asyncio.Future[str]) -> None:
        """Read and drop what the peer sent while watched (one chunk per callback, so a
        client that keeps sending cannot hold the loop); resolve ``watch`` at its end."""
        try:
            if self._sock.recv(_READ_CHUNK):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            watch.set_result(f"connection error: {e.strerror or e}")
            return
        watch.set_result("end of stream")

    def write(self, data: bytes) -> None:
        if self._closed or self._error is not None or not data:
            return
        if self._out:
            self._out += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._error = e
            return
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._error = e
            self._out.clear()
        else:
            del self._out[:sent]
            if self._out:
                return
        self._loop.remove_writer(self._fd)
        self._writing = False
        if self._eof_pending:
            self._shutdown()
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self._closing:
            self._close_now()

    def pending(self) -> int:
        return len(self._out)

    async def drain(self) -> None:
        if self._out and not self._closed:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)  # one future, maybe awaited by a timeout
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._out:
            self._eof_pending = True
        else:
            self._shutdown()

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._out and not self._closed:
            self._closing = True  # the writer callback closes once it is sent
            self._stop_reading()
        else:
            self._close_now()

    async def wait_closed(self) -> None:
        if self._closed:
            return
        if self._done is None:
            self._done = self._loop.create_future()
        await asyncio.shield(self._done)

    def abort(self) -> None:
        self._out.clear()
        self._close_now()

    def _stop_reading(self) -> None:
        self._watch = None
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the read sees the close: b""

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._out.clear()
        self._sock.close()  # after the fd left the selector: its number may be reused
        for fut in (self._drained, self._done):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._drained = self._done = None


class _StreamChannel(_Channel):
    """Streams its caller opened (``meshcc daemon --inetd``: stdin and stdout)."""

    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    def nodelay(self) -> None:
        sock = self._writer.get_extra_info("socket")  # None on pipes
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def read(self, n: int) -> bytes:
        return await self._reader.read(n)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def pending(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        await self._writer.drain()

    def can_write_eof(self) -> bool:
        return self._writer.can_write_eof()

    def write_eof(self) -> None:
        self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def abort(self) -> None:
        self._writer.transport.abort()


@dataclass(eq=False, slots=True)
class _Conn:
    """The server's view of one accepted connection (for caps and shedding)."""

    addr: IPAddress
    client: str
    since: float  # when it entered its phase (BODY: its last byte)
    phase: _Phase = _Phase.IDLE
    channel: _Channel | None = None  # set once serving begins (shedding writes to it)
    shed: str | None = None  # why the server closed it to make room
    budget: int = 0  # bytes of body memory it holds
    trusted: bool = False  # a channel the access list does not apply to (ssh: serve_stream)
    accepted: float = 0.0  # time.monotonic() of the accept (0: set from since)
    # The task while it waits for the first bytes (request_stop cancels it there), and
    # whether request_stop did (that cancellation ends the wait, not the task).
    idle_task: asyncio.Task[Any] | None = None
    stop_cancelled: bool = False
    early: bytes | None = None  # first bytes read at the accept; b"": closed at once

    def __post_init__(self) -> None:
        if not self.accepted:
            self.accepted = self.since


class _Budget:
    """Bytes of request bodies in memory, shared by all connections; FIFO waiters.

    ``held`` is what the taker already holds: a request bigger than the whole budget is let
    in when nothing else holds any (it never waits for itself)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: collections.deque[tuple[int, int, asyncio.Future[None]]] = (
            collections.deque()
        )

    def _room_for(self, n: int, held: int) -> bool:
        return self.used <= held or self.used + n <= self.size

    def fits(self, n: int, held: int = 0) -> bool:
        return not self._waiters and self._room_for(n, held)

    def take_now(self, n: int) -> None:
        self.used += n

    async def take(self, n: int, held: int = 0) -> None:
        if self.fits(n, held):
            self.used += n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, held, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.give(n)  # granted, but the taker went away
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def give(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, held, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._room_for(n, held):
                return
            self._waiters.popleft()
            self.used += n
            fut.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class _Throttled:
    """At most one log line per reason per interval; the next line counts the skipped ones."""

    def __init__(self, interval: float = _LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        if skipped:
            msg += " (and %d more like this since the last such line)"
            args = (*args, skipped)
        log.log(level, msg, *args)


class _Timeline:
    """One job's steps for the daemon's debug log: when each ended, in ms after the accept.

    Made only when debug logging is on (nothing is timed or formatted otherwise). The names
    are the client's (``MESHCC_VERBOSE=1``) server-side steps, so the two read together:
    accept (serving began: streams set up), read (request read and its source decoded),
    slot (a job slot was free; only if the request waited for one), dir (job directory
    made, source written), spawn (compiler started), compile (compiler ended, its output
    read), reply (reply written to the socket), close (connection closed)."""

    __slots__ = ("marks", "t0")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.marks: list[tuple[str, float]] = []

    def mark(self, step: str, now: float | None = None) -> None:
        self.marks.append((step, time.monotonic() if now is None else now))

    def line(self) -> str:
        return " ".join(f"{step}={(t - self.t0) * 1000:.1f}" for step, t in self.marks)


@dataclass(slots=True)
class _BodyClock:
    """A source transfer's progress, for the rate floor."""

    start: float
    received: int = 0
    paused: float = 0.0  # time spent waiting for the body budget (not the client's fault)


class CompileServer:
    """Serves compile jobs on a listening socket until ``request_stop()``."""

    def __init__(self, registry: ToolchainRegistry, config: ServerConfig) -> None:
        self.registry = registry
        self.config = config
        self._job_slots = asyncio.Semaphore(config.jobs)
        self._budget = _Budget(config.body_memory)
        self.max_connections, self.max_per_address = config.caps()
        self._header_timeout = min(config.header_timeout, config.io_timeout)
        self._body_stall = min(config.body_stall, config.io_timeout)
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # Counted connections (shed ones leave at once), by phase in age order, by address.
        self._phases: dict[_Phase, dict[_Conn, None]] = {p: {} for p in _Phase}
        self._by_addr: dict[IPAddress, dict[_Conn, None]] = {}
        self._counted = 0
        self._room = asyncio.Event()  # a connection ended or became sheddable
        self._throttled = _Throttled()
        self._stopping = asyncio.Event()
        self._env: dict[bytes, bytes] | None = None  # the compilers' environment (_job_env)
        self._allowed_cache: dict[IPAddress, bool] = {}
        self._running_compiles = 0
        self._slots_held = 0  # job slots taken: reserved (SLOT) or compiling
        self.busy_count = 0  # SLOT requests answered BUSY since start
        self._owed: dict[IPAddress, float] = {}  # addresses answered BUSY, oldest first
        self._freed_at = 0.0  # when a job slot last became free
        self.on_slots: Callable[[], None] | None = None  # a job slot was taken or freed
        # Totals for the mesh's speed figure (bytes of preprocessed source compiled, and
        # seconds of compiler wall time): read-only for others.
        self.compiled_bytes = 0
        self.compile_seconds = 0.0
        self.shed_count = 0
        self.cache_counts = {"hit": 0, "miss": 0, "uncached": 0}  # --ccache job verdicts
        self.result_cache: ResultCache | None = None  # set by the daemon (meshcc.cache)
        self.stats = JobStats()  # /metrics and /status.json
        # Decided once: without lzallright (meshcc.pyz) protocol 2 jobs get a clear ERRM.
        self.lzo = compression.available(compression.Codec.LZO)
        self.codecs = compression.spoken()  # CODC codecs served (announced in caps)
        # [zref] bodies kept as prefixes of later zstd frames (compression.prefixes)
        self.prefixes = PrefixStore() if compression.Codec.ZSTD in self.codecs else None

    # -- lifecycle

    async def start(self, sock: socket.socket) -> None:
        """Listen (backlog 1024) and start accepting on a bound socket."""
        sock.listen(_BACKLOG)
        sock.setblocking(False)
        self._listener = sock
        self._accept_task = asyncio.ensure_future(self._accept_loop(sock))
        log.info(
            "compile connections: at most %d, %d per client address (open-file limit %d); "
            "request header within %gs, source at >= %d bytes/s",
            self.max_connections,
            self.max_per_address,
            hostos.open_files_limit(),
            self._header_timeout,
            self.config.body_min_rate,
        )

    def request_stop(self) -> None:
        """Stop accepting; jobs in progress run to completion."""
        self._stop_accepting()
        self._stopping.set()
        for conn in list(self._phases[_Phase.IDLE]):  # waiting for first bytes: close them
            task = conn.idle_task
            if task is not None and not conn.stop_cancelled:
                conn.stop_cancelled = True
                task.cancel()

    def _stop_accepting(self) -> None:
        """Cancel the accept loop; it closes the listening socket as it ends."""
        if self._accept_task is not None and not self._accept_task.done():
            self._accept_task.cancel()
        elif self._listener is not None:
            self._listener.close()
            self._listener = None

    def abort(self) -> None:
        """Cancel every connection (compilers are killed, temp dirs removed)."""
        self.request_stop()
        for task in list(self._connections):
            task.cancel()

    async def serve_until_stopped(self) -> None:
        """Run until ``request_stop()``, then wait for the connections in progress."""
        await self._stopping.wait()
        self._stop_accepting()
        if self._accept_task is not None:
            await asyncio.gather(self._accept_task, return_exceptions=True)
        while self._connections:
            await asyncio.gather(*list(self._connections), return_exceptions=True)

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    @property
    def counted_connections(self) -> int:
        """Connections held against the caps (shed ones no longer count)."""
        return self._counted

    @property
    def running_compiles(self) -> int:
        """Compilers running now (the mesh republishes free slots from it)."""
        return self._running_compiles

    @property
    def slots_held(self) -> int:
        """Job slots taken now (never above ``--jobs``): a slot reserved by a ``busy``-capable
        client whose request is still arriving, or a compile (the slot frees before the reply
        is written)."""
        return self._slots_held

    @property
    def waiting_for_slot(self) -> int:
        """Complete requests waiting for a job slot now: stock distcc clients (and meshcc
        clients that did not negotiate ``busy``) queue inside the server, as with distccd;
        this is that queue, for the status page and metrics."""
        return self.stats.waiting

    @property
    def queued_jobs(self) -> int:
        """Requests read and waiting for a job slot (or memory) now: busy connections
        that are not compiling. Counts the few replying too: an estimate, for the mesh."""
        return max(0, len(self._phases[_Phase.BUSY]) - self._running_compiles)

    def cache_line(self) -> str | None:
        """The status page's ccache line (None without --ccache)."""
        cc = self.config.ccache
        if cc is None:
            return None
        n = self.cache_counts
        return (
            f"ccache: {n['hit']} hits, {n['miss']} misses, {n['uncached']} uncached "
            f"since start ({cc.describe or cc.path})"
        )

    # -- accepting, caps and shedding

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept one connection at a time, only when there is room for it: at the total cap
        the oldest idle connection is shed, and when none can be, nothing is accepted (the
        kernel queues the clients) until a connection ends or becomes idle."""
        try:
            await self._accept_until_cancelled(sock)
        finally:
            sock.close()
            self._listener = None

    async def _accept_until_cancelled(self, sock: socket.socket) -> None:
        """Accept in the loop's callback for a readable listener, while there is room: no
        task switch and no future per connection (``loop.sock_accept`` also adds and
        removes the listener, two epoll_ctl calls, for each one). The listener stays
        registered while there is room. At the cap, or on an accept error, the callback
        unregisters it (a readable listener that is not accepted from would wake the loop
        on every turn) and hands over to this task, which makes room or waits, then
        registers it again."""
        loop = asyncio.get_running_loop()
        fd = sock.fileno()
        # What ended the callback's turn: None at the cap, an accept error, or a bug.
        handover: asyncio.Future[Exception | None] | None = None
        registered = False

        def ready() -> None:
            try:
                while self._counted < self.max_connections:
                    try:
                        conn_sock, peer = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        return  # the queue is empty: stay registered
                    except OSError as e:
                        stop(e)
                        return
                    try:
                        conn_sock.setblocking(False)
                        self._admit(conn_sock, peer)
                    except Exception:
                        log.exception("internal error admitting a connection")
                        conn_sock.close()
            except Exception as e:  # a bug: say so; the task registers the listener again
                log.exception("internal error in the accept loop")
                stop(e)
                return
            stop(None)  # at the cap

        def stop(error: Exception | None) -> None:
            nonlocal registered
            loop.remove_reader(fd)
            registered = False
            if handover is not None and not handover.done():
                handover.set_result(error)

        try:
            while True:
                if self._counted >= self.max_connections:
                    await self._wait_for_room(sock)  # registers the listener itself
                handover = loop.create_future()
                loop.add_reader(fd, ready)
                registered = True
                error = await handover
                if isinstance(error, OSError):
                    await self._accept_failed(error)
                elif error is not None:
                    await asyncio.sleep(0.1)  # after a bug, not in a tight loop
        finally:
            handover = None
            if registered:  # cancelled while accepting
                loop.remove_reader(fd)

    async def _accept_failed(self, e: OSError) -> None:
        """An accept error: out of descriptors or memory (say so, at most once per interval,
        and retry soon), a connection that died in the queue (ignore), else log and retry."""
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self._throttled.log(
                logging.ERROR,
                "accept-resources",
                "cannot accept a connection: %s (%d connections open); retrying",
                e.strerror or e,
                self._counted,
            )
            await asyncio.sleep(0.1)
        elif e.errno not in (errno.ECONNABORTED, errno.EAGAIN, errno.EINTR, errno.EPROTO):
            log.error("accept failed: %s", e.strerror or e)
            await asyncio.sleep(0.1)

    async def _wait_for_room(self, sock: socket.socket) -> None:
        """Return when a connection may be accepted: below the cap, or, at the cap, once a
        client is waiting and an idle (or stalled) connection has been shed for it."""
        paused = False
        while self._counted >= self.max_connections:
            await _readable(sock)  # shed nobody until somebody needs the place
            if self._counted < self.max_connections:
                break
            if self._shed_one(None, f"the server holds {self._counted} connections, its limit"):
                continue
            if not paused:
                paused = True
                self._throttled.log(
                    logging.WARNING,
                    "paused",
                    "all %d compile connections are busy; new clients wait in the accept "
                    "queue until one ends",
                    self._counted,
                )
            self._room.clear()
            # Stalled bodies become sheddable with time, not with an event: look again soon.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), _SHED_BODY_STALL)

    def _admit(self, conn_sock: socket.socket, peer: object) -> None:
        try:
            addr, port = peer_ip(peer)
        except (ValueError, TypeError, IndexError):
            addr, port = ipaddress.ip_address("0.0.0.0"), 0
        conn = _Conn(addr, _format_client(addr, int(port)), time.monotonic())
        refusal = None
        same = self._by_addr.get(addr)
        if same is not None and len(same) >= self.max_per_address:
            why = f"client {addr} holds {len(same)} connections, the per-address limit"
            if not self._shed_one(addr, why):
                refusal = (
                    f"too many connections from {addr} ({len(same)}, the server's per-address "
                    "limit); try again later"
                )
        self._count(conn)
        task = asyncio.ensure_future(self._on_connection(conn_sock, conn, refusal))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    def _allowed(self, addr: IPAddress) -> bool:
        """client_allowed() against the access list, remembered per address (a build's
        clients are few; the list is fixed for the server's life). Bounded: cleared when
        it reaches _ALLOWED_CACHE addresses."""
        verdict = self._allowed_cache.get(addr)
        if verdict is None:
            if len(self._allowed_cache) >= _ALLOWED_CACHE:
                self._allowed_cache.clear()
            verdict = self._allowed_cache[addr] = client_allowed(addr, self.config.allowed)
        return verdict

    def _count(self, conn: _Conn) -> None:
        self._phases[conn.phase][conn] = None
        self._by_addr.setdefault(conn.addr, {})[conn] = None
        self._counted += 1

    def _uncount(self, conn: _Conn) -> None:
        if self._phases[conn.phase].pop(conn, False) is None:
            same = self._by_addr[conn.addr]
            del same[conn]
            if not same:
                del self._by_addr[conn.addr]
            self._counted -= 1
            self._room.set()

    def _set_phase(self, conn: _Conn, phase: _Phase) -> None:
        """Move a counted connection to a phase (to the young end of that phase's order)."""
        if conn.shed is not None:
            return
        del self._phases[conn.phase][conn]
        conn.phase = phase
        conn.since = time.monotonic()
        self._phases[phase][conn] = None
        if phase in (_Phase.CLOSING, _Phase.IDLE, _Phase.WAITING_SOURCE):
            self._room.set()

    def _victim(self, addr: IPAddress | None) -> _Conn | None:
        """The connection to shed: the oldest in the lowest sheddable phase (headers and
        bodies only once they look stalled); ``addr``: only that address's."""
        now = time.monotonic()
        for phase in _SHEDDABLE:
            grace = {_Phase.HEADER: _SHED_HEADER_AGE, _Phase.BODY: _SHED_BODY_STALL}.get(
                phase, _SHED_MIN_AGE
            )
            for conn in self._phases[phase]:  # oldest first
                if now - conn.since < grace:
                    break  # the rest are younger
                if addr is None or conn.addr == addr:
                    return conn
        return None

    def _shed_one(self, addr: IPAddress | None, why: str) -> bool:
        conn = self._victim(addr)
        if conn is None:
            return False
        self._shed(conn, why)
        return True

    def _shed(self, conn: _Conn, why: str) -> None:
        """Close a connection to make room: ERRM (a client that is not sending can read it),
        then the close; its task sees end-of-stream and ends quietly."""
        what = {
            _Phase.CLOSING: "a refused connection",
            _Phase.IDLE: "an idle connection",
            _Phase.WAITING_SOURCE: "a connection waiting for its source",
            _Phase.HEADER: "a stalled request header",
            _Phase.BODY: "a stalled source transfer",
        }.get(conn.phase, "a connection")
        age = time.monotonic() - conn.since
        self._uncount(conn)
        conn.shed = f"{why}; closed {what} ({age:.1f}s in that state)"
        self.shed_count += 1
        self._throttled.log(
            logging.WARNING,
            f"shed-{conn.phase.name}",
            "shedding %s from %s: %s",
            what,
            conn.client,
            why,
        )
        if conn.channel is not None:
            with contextlib.suppress(Exception):
                conn.channel.write(
                    wire.encode_refusal(f"the server is full ({why}); closed {what}")
                )
            conn.channel.close()  # flushes the ERRM, then closes: the fd is freed

    # -- a connection

    async def serve_stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str,
        addr: IPAddress | None,
    ) -> None:
        """Serve one job on streams the caller opened (``meshcc daemon --inetd``: stdin and
        stdout), with every check, limit and summary line of an accepted connection.
        ``addr`` None: a channel the access list does not apply to, as distccd's inetd mode
        treats a pipe from sshd (ssh authenticated the user; there is no client address)."""
        counted_as = _NO_ADDRESS if addr is None else addr
        conn = _Conn(counted_as, client, time.monotonic(), trusted=addr is None)
        ch = _StreamChannel(reader, writer)
        conn.channel = ch
        self._count(conn)
        try:
            await self._serve_connection(ch, conn)
        finally:
            self._uncount(conn)

    async def _on_connection(
        self, conn_sock: socket.socket, conn: _Conn, refusal: str | None
    ) -> None:
        try:
            if self._stopping.is_set():
                conn_sock.close()
                return
            # A client sends its request as soon as it is connected, so by the time this
            # task runs the first bytes are often in the socket already: take them now,
            # before the streams exist (so they stay in order), and the request is read
            # without a loop turn spent waiting for them.
            try:
                conn.early = conn_sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                conn.early = b""  # reset already: served as a close without a request
            ch = _SocketChannel(conn_sock)
            if conn.shed is not None:  # shed before it had a channel (nothing to tell it)
                ch.close()
                return
            conn.channel = ch
            await self._serve_connection(ch, conn, refusal)
        finally:
            self._uncount(conn)

    async def _serve_connection(
        self,
        ch: _Channel,
        conn: _Conn,
        refusal: str | None = None,
    ) -> None:
        started = time.monotonic()
        # The per-job timeline exists only when its debug line would be written.
        timeline = _Timeline(conn.accepted) if log.isEnabledFor(logging.DEBUG) else None
        if timeline is not None:
            timeline.mark("accept", started)
        ch.nodelay()
        addr = conn.addr
        summary = JobSummary(conn.client)
        tmpdir: str | None = None
        log_summary = True
        throttle: str | None = None
        replying = False  # once reply bytes may be on the wire, no ERRM can follow
        holding = False  # this connection holds one of the --jobs slots
        try:
            if not conn.trusted and not self._allowed(addr):
                # A peer outside our --allow probes us every second: one line per interval.
                self._throttled.log(
                    logging.WARNING,
                    "access-list",
                    "connection from client '%s' denied by access list",
                    summary.client,
                )
                raise _Refuse(
                    f"client address {addr} is not allowed by this server's access list",
                    ret=EXIT_ACCESS_DENIED,
                    throttle="access-list",
                )
            if refusal is not None:
                raise _Refuse(refusal, throttle="per-address")
            # The first bytes of a connection: until they come it is idle (no slot, no
            # deadline but the IO timeout, first to be shed at a cap).
            first = await self._first_chunk(ch, summary, conn)
            if not first:
                log_summary = False  # not a job: a probe, shed, or the daemon is stopping
                return
            if wire.is_probe(first):  # a meshcc peer's liveness probe: answer, no job
                log_summary = False
                log.debug("client %s: liveness probe", summary.client)
                ch.write(wire.PROBE_REPLY)
                return
            if wire.is_slot_request(first):  # a busy-capable client: a slot now, or BUSY
                if not await self._try_reserve_slot(addr):
                    log_summary = False
                    self.busy_count += 1
                    log.debug(
                        "client %s: busy (%d of %d slots taken, %d waiting)",
                        summary.client,
                        self._slots_held,
                        self.config.jobs,
                        self.stats.waiting,
                    )
                    self._set_phase(conn, _Phase.CLOSING)
                    await self._say_busy(ch, len(first), summary.client)
                    return
                holding = True
                ch.write(wire.SLOT_GRANTED)  # at once; the request is on its way
                first = first[wire.HEADER_LEN :]
            self._set_phase(conn, _Phase.HEADER)
            log.debug("connection from %s", summary.client)  # the ARGV line names it at info
            request = await self._read_phase(ch, summary, first, conn)
            if timeline is not None:
                timeline.mark("read")
            self._set_phase(conn, _Phase.BUSY)
            # The result cache before the job slot: a job whose result is stored is not
            # queued behind compiles, nor holds a slot while the key's home peer is asked
            # (up to --cache-lookup-timeout). Its body stays charged to the body budget
            # meanwhile. A SLOT client holds its slot already (it was promised one).
            cached, hit = await self._recall(request, summary)
            if hit is not None:
                outcome = hit
            else:
                if not holding:
                    await self._wait_for_slot(summary)
                    holding = True
                    if timeline is not None and summary.queue_ms is not None:
                        timeline.mark("slot")
                # The job's memory is now bounded by the job slots: free the body budget.
                self._budget.give(conn.budget)
                conn.budget = 0
                try:
                    tmpdir = _make_job_dir(self.config.tmpdir)
                except OSError as e:
                    log.error("cannot create a job directory: %s", e)
                    raise _Refuse(
                        f"the server cannot create a job directory: {e.strerror or e}",
                        ret=EXIT_IO_ERROR,
                    ) from None
                outcome = await self._compile(request, tmpdir, ch, summary, timeline)
                # Outputs are in memory: clean up before replying, so a client that has its
                # reply never sees the job directory (and the slot frees clean).
                _remove_job_dir(tmpdir, _job_files(request))
                tmpdir = None
                if cached is not None:
                    await self._remember(cached, outcome)
            if holding:
                holding = False  # the slot is free before the reply is written, as it was
                self._release_slot()
            summary.result = outcome.result
            summary.ret = outcome.ret
            reply = await self._encode_reply(request, outcome)
            summary.bytes_out = len(reply)
            replying = True
            await self._write_reply(ch, reply)
            if timeline is not None:
                timeline.mark("reply")
        except _Refuse as r:
            summary.result, summary.ret = r.result, r.ret
            summary.refused = not r.resend
            summary.resend = r.resend
            throttle = r.throttle
            if conn.shed is not None:  # closed to make room while it was being refused
                throttle = "shed"
            elif r.resend:  # expected (a restart or an eviction): one info line, no warning
                log.info("client %s: %s", summary.client, r.reason)
            elif throttle is not None:
                self._throttled.log(
                    logging.WARNING,
                    throttle,
                    "client %s: job refused: %s",
                    summary.client,
                    r.reason,
                )
            else:
                log.warning("client %s: job refused: %s", summary.client, r.reason)
            if conn.shed is None:
                self._set_phase(conn, _Phase.CLOSING)
                await self._refuse(ch, r.reason)
        except _Gone as g:
            summary.result, summary.ret = g.result, g.ret
            throttle = g.throttle
            if conn.shed is not None:
                throttle = "shed"
                log_summary = summary.compiler is not None  # a job (ARGV read) was shed
            elif throttle is not None:
                self._throttled.log(
                    logging.WARNING, throttle, "client %s: %s", summary.client, g.why
                )
            else:
                log.warning("client %s: %s", summary.client, g.why)
        except Exception as e:  # a bug: keep serving, but say so loudly
            summary.result, summary.ret = JobResult.OTHER, EXIT_DISTCC_FAILED
            log.exception("client %s: internal error while serving the job", summary.client)
            if not replying:
                await self._refuse(ch, f"internal error in the server: {e!r}")
        finally:
            if holding:
                self._release_slot()
            if conn.budget:
                self._budget.give(conn.budget)
                conn.budget = 0
            self._uncount(conn)
            if tmpdir is not None:
                _remove_job_dir(tmpdir)
            # With nothing left to flush the socket closes at once; only a reply (or ERRM)
            # still buffered is given its second to leave, then the connection is dropped.
            flushing = bool(ch.pending())
            ch.close()
            if flushing:
                try:
                    async with asyncio.timeout(1.0):
                        await ch.wait_closed()
                except (TimeoutError, OSError):
                    pass
                finally:
                    ch.abort()  # not sent within its second (or cancelled): drop it
            summary.time_ms = int((time.monotonic() - started) * 1000) - (summary.queue_ms or 0)
            if log_summary:
                if timeline is not None:
                    timeline.mark("close")
                    log.debug(
                        "client %s: timeline ms after accept: %s (%s)",
                        summary.client,
                        timeline.line(),
                        summary.source or "?",
                    )
                self.stats.record(
                    summary.outcome, summary.bytes_in, summary.bytes_out, summary.compile_s
                )
                if summary.resend:  # the client sends the job again: that one is the job
                    log.debug("%s", summary.line())
                elif throttle is None:
                    log.log(NOTICE, "%s", summary.line())
                else:  # dropped by a deadline or shed: a flood of them is one line
                    self._throttled.log(NOTICE, f"summary-{throttle}", "%s", summary.line())

    async def _try_reserve_slot(self, addr: IPAddress) -> bool:
        """Take a job slot if one is free and no queued request is owed it; never waits
        (asyncio's acquire() does not suspend when the semaphore is not locked).

        Turns between boxes: a box whose job just ended asks again within milliseconds,
        while a box we answered BUSY asks again only after its daemon's hold (0.1 s), so
        without turns the first box keeps the slot and the other starves. So a free slot
        goes to the address we turned away longest ago, if it asks within ``turn_grace`` of
        the slot freeing; after that anyone may take it (it never idles longer)."""
        now = time.monotonic()
        owed = self._owed
        for old in [a for a, t in owed.items() if now - t > _OWED_S]:
            del owed[old]  # it stopped asking (served elsewhere, or done)
        if self._job_slots.locked():  # all taken, or promised to a request already waiting
            owed.setdefault(addr, now)
            return False
        first = next(iter(owed), None)
        if first is not None and first != addr and now - self._freed_at < self.config.turn_grace:
            owed.setdefault(addr, now)
            return False  # another box's turn
        owed.pop(addr, None)
        await self._job_slots.acquire()
        self._slots_held += 1
        self._slots_changed()
        return True

    async def _say_busy(
        self,
        ch: _Channel,
        received: int,
        client: str,
    ) -> None:
        """Answer BUSY, shut down our sending side, and discard what the client still sends
        (its pipelined request) until it closes, within the refusal drain's time and byte
        bounds. Closing with unread bytes would send a TCP reset, which can destroy the BUSY
        before the client reads it; the client stops sending when it sees the BUSY."""
        try:
            ch.write(wire.encode_busy(self._running_compiles))
            async with asyncio.timeout(self.config.drain_seconds):
                await ch.drain()
            if ch.can_write_eof():
                ch.write_eof()
            deadline = time.monotonic() + self.config.drain_seconds
            total = received
            ended = "the byte limit"
            while total < self.config.drain_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    ended = "the time limit"
                    break
                async with asyncio.timeout(remaining):  # no task per read, as wait_for has
                    chunk = await ch.read(_READ_CHUNK)
                if not chunk:
                    ended = "its close"
                    break
                total += len(chunk)
            log.debug("client %s: %d bytes read after SLOT until %s", client, total, ended)
        except (OSError, TimeoutError) as e:
            log.debug("client %s: after BUSY: %s", client, str(e) or type(e).__name__)

    async def _wait_for_slot(self, summary: JobSummary) -> None:
        """Queue a complete request for a job slot (stock clients: distccd's behaviour), in
        the open: counted in ``waiting_for_slot``, the wait logged as ``queue:``."""
        if not self._job_slots.locked():
            await self._job_slots.acquire()  # free: returns at once, no wait to report
            self._slots_held += 1
            self._slots_changed()
            return
        t0 = time.monotonic()
        self.stats.waiting += 1  # the /metrics gauge too
        self._slots_changed()  # peers see this box's queue (the live-load channel)
        try:
            await self._job_slots.acquire()
        finally:
            self.stats.waiting -= 1
            summary.queue_ms = int((time.monotonic() - t0) * 1000)
        self._slots_held += 1
        self._slots_changed()

    def _release_slot(self) -> None:
        self._slots_held -= 1
        self._freed_at = time.monotonic()
        self._job_slots.release()
        self._slots_changed()

    def _slots_changed(self) -> None:
        """Tell the live-load channel (``on_slots``): peers learn of a freed slot at once."""
        if self.on_slots is not None:
            try:
                self.on_slots()
            except Exception:
                log.exception("internal error in the job slot callback")

    async def _first_chunk(self, ch: _Channel, summary: JobSummary, conn: _Conn) -> bytes:
        """The first bytes of a request; b"" if none come (closed, stalled or stopping).

        Until then the connection is idle: it holds no memory budget, and a stopping daemon
        closes it rather than wait for a request that may never come. The wait is this
        task's own read (no helper task per connection): ``request_stop`` cancels the
        tasks waiting here, and the cancellation it caused is taken back below.
        """
        if self._stopping.is_set():
            log.info("client %s: closing idle connection, the daemon is stopping", summary.client)
            return b""
        if conn.early is not None:  # read at the accept (_on_connection)
            chunk, conn.early = conn.early, None
            if not chunk:
                log.debug("client %s closed without sending a request", summary.client)
            return chunk
        conn.idle_task = asyncio.current_task()
        try:
            async with asyncio.timeout(self.config.io_timeout):
                chunk = await ch.read(_READ_CHUNK)
        except TimeoutError:
            self._throttled.log(
                logging.INFO,
                "idle-timeout",
                "client %s sent nothing for %gs; closing",
                summary.client,
                self.config.io_timeout,
            )
            return b""
        except OSError:
            chunk = b""
        except asyncio.CancelledError:
            task = conn.idle_task
            if not conn.stop_cancelled or task is None or task.uncancel() > 0:
                raise  # cancelled by someone else (abort) as well: let it end the task
            log.info("client %s: closing idle connection, the daemon is stopping", summary.client)
            return b""
        finally:
            conn.idle_task = None
        if not chunk:  # a liveness probe (connect + close): not worth an INFO line
            log.debug("client %s closed without sending a request", summary.client)
        return chunk

    async def _read_phase(
        self, ch: _Channel, summary: JobSummary, first: bytes, conn: _Conn
    ) -> _Request:
        """Read and vet the whole request (starting with the bytes already received)."""
        rr = wire.RequestReader(self.config.limits)
        rr.feed(first)
        fed = summary.bytes_in = len(first)
        eof = False
        version = 0
        codec = ""  # CODC's codec, if the client negotiated one
        ids: wire.RequestCodec | None = None  # [zref] its ZREF/ZNEW body ids
        argv: list[str] = []
        resolved: Resolved | None = None
        source = suffix = out_suffix = ""
        data = b""
        header_deadline = time.monotonic() + self._header_timeout
        body = _BodyClock(time.monotonic())

        while True:
            try:
                event = rr.next_event()
            except wire.ProtocolError as e:
                if eof and "truncated" in str(e):
                    if conn.shed is not None:
                        raise _Gone(conn.shed, JobResult.OTHER, EXIT_TRUNCATED) from None
                    raise _Gone(
                        f"truncated request: {e}",
                        JobResult.OTHER,
                        EXIT_TRUNCATED,
                        throttle="truncated",  # many clients closing mid-request: no flood
                    ) from None
                raise _Refuse(
                    f"protocol error: {e}", JobResult.REJ_BAD_REQ, EXIT_PROTOCOL_ERROR
                ) from None
            if event is wire.NEED_DATA:
                if conn.phase is _Phase.HEADER:
                    chunk = await self._read_header(
                        ch, header_deadline, conn if fed >= _HEADER_FREE else None
                    )
                elif conn.phase is _Phase.WAITING_SOURCE:
                    chunk = await self._read(ch, "waiting for the source")
                    if chunk:
                        self._start_body(conn, body, len(chunk))
                else:
                    chunk = await self._read_body(ch, conn, body)
                if chunk:
                    fed += len(chunk)
                    summary.bytes_in = fed
                    rr.feed(chunk)
                else:
                    eof = True
                    rr.feed_eof()
                continue
            if isinstance(event, wire.RequestCodec):
                codec = self._vet_codec(event.name)
                ids = event  # [zref]
            elif isinstance(event, wire.RequestStart):
                version = event.version
                if version == 3:
                    raise _Refuse(PUMP_REFUSAL, ret=EXIT_PROTOCOL_ERROR)
                if version == 2 and not self.lzo:
                    raise _Refuse(NO_LZO_REFUSAL, ret=EXIT_PROTOCOL_ERROR)
            elif isinstance(event, wire.RequestArgs):
                argv, resolved, source, suffix, out_suffix = self._vet_args(event.argv, summary)
                # DIST + ARGC + every ARGV; whatever came beyond them is the source already.
                header = (2 + len(event.argv)) * wire.HEADER_LEN + sum(map(len, event.argv))
                if fed > header:
                    self._start_body(conn, body, fed - header)
                else:
                    self._set_phase(conn, _Phase.WAITING_SOURCE)
            elif isinstance(event, wire.RequestSource):
                self._set_phase(conn, _Phase.BUSY)
                # gcc obeys directives in the text only under -fdirectives-only, however
                # spelled (-Wp, -Xpreprocessor): only then is each directive vetted.
                directives = any("directives-only" in a for a in argv)
                prefix = self._zref_prefix(conn, ids)  # [zref] ERRM when not held
                data = await self._decode_source(version, event.data, codec, directives, prefix)
                if ids is not None and ids.keep and self.prefixes is not None:  # [zref]
                    self.prefixes.put(str(conn.addr), ids.keep, data)  # decoded and vetted
            elif isinstance(event, wire.RequestEnd):
                assert resolved is not None
                return _Request(version, argv, resolved, source, suffix, out_suffix, data, codec)
            else:  # PumpFile: unreachable once v3 is refused
                raise _Refuse(PUMP_REFUSAL, ret=EXIT_PROTOCOL_ERROR)

    def _start_body(self, conn: _Conn, body: _BodyClock, received: int) -> None:
        """The source began to arrive: its bytes so far count against the body budget."""
        self._set_phase(conn, _Phase.BODY)
        body.start = time.monotonic()
        body.received = received
        self._budget.take_now(received)
        conn.budget += received

    async def _read_header(self, ch: _Channel, deadline: float, charge: _Conn | None) -> bytes:
        """More of the request header, before its deadline; ``charge``: a large header,
        whose further bytes are read only against (and charged to) the body budget."""
        reserved = 0
        chunk = b""
        try:
            if charge is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._budget.take(_READ_CHUNK, charge.budget), remaining)
                reserved = _READ_CHUNK
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                chunk = await ch.read(_READ_CHUNK)
            return chunk
        except TimeoutError:
            raise _Refuse(
                f"the request header (DIST..ARGV) did not arrive within "
                f"{self._header_timeout:g}s of its first byte",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
                throttle="header-deadline",
            ) from None
        except OSError as e:
            raise _Gone(
                f"connection error while reading the request: {e.strerror or e}",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
                throttle="connection-error",
            ) from None
        finally:
            if reserved:
                self._budget.give(reserved - len(chunk))
                assert charge is not None
                charge.budget += len(chunk)

    async def _read_body(self, ch: _Channel, conn: _Conn, body: _BodyClock) -> bytes:
        """One chunk of the source, under the body budget, the stall limit and the rate floor.

        Waiting for memory is the server's doing: that time does not count against the
        client, and the connection is not sheddable meanwhile."""
        if self._budget.fits(_READ_CHUNK, conn.budget):
            self._budget.take_now(_READ_CHUNK)
        else:
            self._set_phase(conn, _Phase.BUSY)
            waited = time.monotonic()
            self._shed_stalled_bodies()
            await self._budget.take(_READ_CHUNK, conn.budget)
            body.paused += time.monotonic() - waited
            self._set_phase(conn, _Phase.BODY)
        chunk = b""
        try:
            now = time.monotonic()
            floor = (
                body.start
                + body.paused
                + self._body_stall
                + body.received / max(1, self.config.body_min_rate)
            )
            timeout = min(self._body_stall, floor - now)
            try:
                if timeout <= 0:
                    raise TimeoutError
                async with asyncio.timeout(timeout):
                    chunk = await ch.read(_READ_CHUNK)
            except TimeoutError:
                if time.monotonic() - conn.since >= self._body_stall - 0.01:
                    why = (
                        f"client stalled for {self._body_stall:g}s while sending the source; "
                        "closing"
                    )
                else:
                    rate = body.received / max(1e-3, time.monotonic() - body.start - body.paused)
                    why = (
                        f"client sent the source too slowly ({rate:.0f} bytes/s, the floor is "
                        f"{self.config.body_min_rate} bytes/s); closing"
                    )
                raise _Gone(why, JobResult.CLI_DISCONN, EXIT_IO_ERROR, throttle="body") from None
            except OSError as e:
                raise _Gone(
                    f"connection error while reading the source: {e.strerror or e}",
                    JobResult.CLI_DISCONN,
                    EXIT_IO_ERROR,
                    throttle="connection-error",
                ) from None
        finally:
            self._budget.give(_READ_CHUNK - len(chunk))
        conn.budget += len(chunk)
        body.received += len(chunk)
        if chunk and conn.shed is None:  # progress: to the young end of the BODY order
            self._set_phase(conn, _Phase.BODY)
        return chunk

    def _shed_stalled_bodies(self) -> None:
        """Someone waits for body memory: stalled bodies that hold some give it back."""
        now = time.monotonic()
        for conn in list(self._phases[_Phase.BODY]):
            if now - conn.since < _SHED_BODY_STALL:
                break
            if conn.budget:
                self._shed(conn, "request bodies fill the server's memory budget")

    async def _read(self, ch: _Channel, what: str) -> bytes:
        try:
            async with asyncio.timeout(self.config.io_timeout):
                return await ch.read(_READ_CHUNK)
        except TimeoutError:
            raise _Gone(
                f"client stalled for {self.config.io_timeout:g}s while {what}; closing",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
                throttle="io-timeout",
            ) from None
        except OSError as e:
            raise _Gone(
                f"connection error while {what}: {e.strerror or e}",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
                throttle="connection-error",
            ) from None

    def _vet_args(
        self, raw: list[bytes], summary: JobSummary
    ) -> tuple[list[str], Resolved, str, str, str]:
        if b"\0" in b"".join(raw):
            raise _Refuse("an argument contains a NUL byte", ret=EXIT_BAD_ARGUMENTS)
        argv = _decode_argv(raw)
        summary.compiler = argv[0]
        # The job's line at info is its summary; the command line is at debug, and at info
        # only for a refused job (next to its refusal, where an operator needs it).
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client %s: %s", summary.client, " ".join(argv))
        try:
            resolved = self.registry.resolve(argv[0])
        except CompilerRefused as e:
            self._log_refused_argv(summary.client, argv)
            raise _Refuse(e.reason, ret=EXIT_BAD_ARGUMENTS) from None
        # policy.vet scans the argv once, for the refusal and for what the server uses of
        # it (the source, its suffix and the mode). -Wp is refused by the policy, so the
        # argv needs no expansion of it.
        why, job = policy.vet(argv)
        if why is not None:
            self._log_refused_argv(summary.client, argv)
            raise _Refuse(why, ret=EXIT_BAD_ARGUMENTS)
        if job is None or job.source is None:
            raise _Refuse(
                "no source file (.c, .cc, .cpp, .i, .ii, ...) in the command",
                ret=EXIT_BAD_ARGUMENTS,
            )
        summary.source = job.source
        source, suffix = job.source, job.temp_suffix
        output_suffix = ".s" if job.mode == "-S" else ".o"
        return argv, resolved, source, suffix, output_suffix

    @staticmethod
    def _log_refused_argv(client: str, argv: list[str]) -> None:
        """A refused job's command line at info (at debug it is logged already)."""
        if log.isEnabledFor(logging.INFO) and not log.isEnabledFor(logging.DEBUG):
            log.info("client %s: refused command: %s", client, " ".join(argv))

    def _vet_codec(self, name: str) -> str:
        """A ``CODC`` codec this server runs, else a refusal saying what it speaks."""
        if name not in self.codecs:
            spoken = ", ".join(self.codecs) or "none"
            raise _Refuse(
                f"this server does not speak the body codec {name!r} (it speaks: {spoken})",
                JobResult.REJ_BAD_REQ,
                EXIT_PROTOCOL_ERROR,
            )
        return name

    def _zref_prefix(self, conn: _Conn, ids: wire.RequestCodec | None) -> bytes | None:
        """[zref] The kept body a ``ZREF`` names (this client address's only), else ERRM."""
        if ids is None or not ids.prefix:
            return None
        held = self.prefixes.get(str(conn.addr), ids.prefix) if self.prefixes else None
        if held is None:
            raise _Refuse(
                wire_codecs.unknown_prefix_reason(ids.prefix),
                JobResult.REJ_BAD_REQ,
                EXIT_PROTOCOL_ERROR,
                resend=True,
            )
        return held

    async def _decode_source(
        self,
        version: int,
        body: bytes,
        negotiated: str = "",
        directives: bool = True,
        prefix: bytes | None = None,
    ) -> bytes:
        codec = negotiated or compression.codec_for_protocol(version)
        try:
            if codec == compression.Codec.NONE:
                data = body
                if len(data) > self.config.max_source:
                    raise compression.CompressionError(
                        f"source of {len(data)} bytes exceeds {self.config.max_source}"
                    )
            elif len(body) <= _INLINE_CODEC:
                data = compression.decompress(codec, body, self.config.max_source, prefix)
            else:
                data = await asyncio.to_thread(
                    compression.decompress, codec, body, self.config.max_source, prefix
                )
        except compression.CompressionError as e:
            raise _Refuse(
                f"cannot decode the preprocessed source (DOTI): {e}",
                JobResult.REJ_BAD_REQ,
                EXIT_PROTOCOL_ERROR,
            ) from None
        why = policy.scan_source_refusal(data, directives)
        if why is not None:
            raise _Refuse(why, ret=EXIT_BAD_ARGUMENTS)
        return data

    # -- compiling

    async def _recall(
        self, req: _Request, summary: JobSummary
    ) -> tuple[CacheJob | None, _Outcome | None]:
        """The result cache's lookup (meshcc.cache.service): the job's cache view (None
        without a cache) and, if its key hits, the stored result."""
        cache = self.result_cache
        if cache is None:
            return None, None
        job, hit = await cache.recall(
            req.resolved, req.argv, req.suffix, req.output_suffix, req.data
        )
        summary.rcache = job.verdict
        if job.why_not is not None:
            log.debug("client %s: not cached: %s", summary.client, job.why_not)
        if hit is None:
            return job, None
        return job, _Outcome(hit.wait_status, hit.stderr, hit.stdout, hit.obj, JobResult.COMPILE_OK)

    async def _remember(self, job: CacheJob, out: _Outcome) -> None:
        """Store a compile's result if it succeeded (a failure is compiled again)."""
        cache = self.result_cache
        if cache is None:
            return
        if out.result is JobResult.COMPILE_OK and out.wait_status == 0 and out.obj is not None:
            await cache.remember(job, CacheEntry(0, out.stderr, out.stdout, out.obj))

    async def _compile(
        self,
        req: _Request,
        tmpdir: str,
        ch: _Channel,
        summary: JobSummary,
        timeline: _Timeline | None = None,
    ) -> _Outcome:
        input_name, output_name = _job_files(req)
        try:
            _write_file(os.path.join(tmpdir, input_name), req.data)
        except OSError as e:
            log.error("client %s: cannot write the job's input: %s", summary.client, e)
            raise _Refuse(
                f"the server cannot store the source: {e.strerror or e}", ret=EXIT_IO_ERROR
            ) from None
        job_bytes = len(req.data)
        req.data = b""  # free it while the compiler runs
        if timeline is not None:
            timeline.mark("dir")
        job_argv = list(policy.rewrite_for_job(req.argv, input_name, output_name))
        job_argv[0] = req.resolved.exec_path
        env = self._job_env()
        # ccache (4.7) drops -fdirectives-only from the compile of a .i: such jobs bypass it.
        ccache = None if "-fdirectives-only" in req.argv else self.config.ccache
        stats_path = os.path.join(tmpdir, _CCACHE_STATS)
        if ccache is not None:
            # Every name of one toolchain (gcc, cc, x86_64-linux-gnu-gcc: stock distcc sends
            # the triplet name) is one binary; ccache hashes the name it is given, so give
            # it the toolchain's own path, and a job from any client finds the others.
            job_argv[0] = req.resolved.toolchain.path
            job_argv.insert(0, ccache.path)
            env = {k: v for k, v in env.items() if not k.startswith(b"CCACHE_")}
            env.update((os.fsencode(k), os.fsencode(v)) for k, v in ccache.env)
            env[b"CCACHE_STATSLOG"] = os.fsencode(stats_path)

        if timeline is not None:  # debug logging is on
            log.debug("client %s: running %s in %s", summary.client, " ".join(job_argv), tmpdir)

        out_fd = err_fd = -1
        try:
            out_fd = jobrun.open_capture(tmpdir)
            err_fd = jobrun.open_capture(tmpdir)
            run = jobrun.CompilerRun(job_argv, cwd=tmpdir, env=env, stdout=out_fd, stderr=err_fd)
        except OSError as e:
            for fd in (out_fd, err_fd):
                if fd >= 0:
                    os.close(fd)
            msg = f"meshcc: failed to exec {job_argv[0]}: {e.strerror or e}\n"
            log.error("client %s: %s", summary.client, msg.strip())
            summary.exit = EXIT_COMPILER_MISSING
            return _Outcome(
                EXIT_COMPILER_MISSING << 8, msg.encode(), b"", None, JobResult.COMPILE_ERROR
            )

        self._running_compiles += 1
        ran = time.monotonic()
        if timeline is not None:
            timeline.mark("spawn", ran)
        watch_task = ch.watch()
        cap = self.config.max_output
        try:
            ended = await _first_of(run.exited, watch_task, self.config.job_lifetime or None)
            if ended is not run.exited:
                run.kill()
                await run.exited
                if ended is watch_task:
                    raise _Gone(
                        f"client disconnected during the compile ({watch_task.result()}); "
                        "compiler killed",
                        JobResult.CLI_DISCONN,
                        EXIT_IO_ERROR,
                    )
                msg = (
                    f"meshcc: compile exceeded the server's --job-lifetime "
                    f"({self.config.job_lifetime:g}s) and was killed\n"
                )
                log.warning("client %s: %s", summary.client, msg.strip())
                summary.exit = EXIT_TIMEOUT
                return _Outcome(
                    EXIT_TIMEOUT << 8,
                    jobrun.read_capture(err_fd, cap) + msg.encode(),
                    jobrun.read_capture(out_fd, cap),
                    None,
                    JobResult.COMPILE_TIMEOUT,
                    EXIT_TIMEOUT,
                )
            stderr = jobrun.read_capture(err_fd, cap)
            stdout = jobrun.read_capture(out_fd, cap)
            if timeline is not None:
                timeline.mark("compile")
        finally:
            self._running_compiles -= 1
            summary.compile_s = time.monotonic() - ran
            if run.returncode == 0:
                self.compiled_bytes += job_bytes
                self.compile_seconds += summary.compile_s
            watch_task.cancel()
            os.close(out_fd)
            os.close(err_fd)
            if run.returncode is None:  # cancelled (second signal): no orphans
                run.kill()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(run.exited)

        rc = run.returncode
        assert rc is not None
        if ccache is not None:
            self._count_cache(summary, stats_path)
        if rc < 0:
            summary.sig = -rc
            status = -rc & 0x7F
        else:
            summary.exit = rc
            status = (rc & 0xFF) << 8
        if status != 0:
            return _Outcome(status, stderr, stdout, None, JobResult.COMPILE_ERROR)
        try:
            obj = _read_file(os.path.join(tmpdir, output_name))
        except OSError as e:
            msg = f"meshcc: the compiler succeeded but wrote no output: {e.strerror or e}\n"
            log.error("client %s: %s", summary.client, msg.strip())
            summary.exit = EXIT_NO_SUCH_FILE
            return _Outcome(
                EXIT_NO_SUCH_FILE << 8,
                stderr + msg.encode(),
                stdout,
                None,
                JobResult.COMPILE_ERROR,
                EXIT_NO_SUCH_FILE,
            )
        return _Outcome(0, stderr, stdout, obj, JobResult.COMPILE_OK)

    def _job_env(self) -> dict[bytes, bytes]:
        """The compiler's environment: the daemon's, with distcc's recursion guard
        ``_DISTCC_SAFEGUARD`` one higher (a masqueraded gcc on the server then runs the real
        one). Built at the first job, not per job: the daemon has set up its environment by
        then and does not change it. Callers must not modify the dict. Bytes, as the kernel
        takes it: Popen then has nothing to encode per job."""
        if self._env is None:
            env = dict(os.environb)
            try:
                level = max(0, int(env.get(b"_DISTCC_SAFEGUARD", b"0")))
            except ValueError:
                level = 0
            env[b"_DISTCC_SAFEGUARD"] = str(level + 1).encode()
            self._env = env
        return self._env

    def _count_cache(self, summary: JobSummary, stats_path: str) -> None:
        """Record what ccache did for this job (its own stats file: exact under concurrency)."""
        try:
            with open(stats_path, encoding="utf-8", errors="replace") as f:
                text = f.read(64 * 1024)
        except OSError:
            text = ""  # ccache died before counting: it ran no cached compile
        summary.cache = ccache_verdict(text)
        self.cache_counts[summary.cache] += 1
        if summary.cache == "uncached":
            counters = " ".join(w for w in text.split() if not w.startswith("#"))
            log.debug("client %s: ccache did not cache: %s", summary.client, counters or "-")

    async def _encode_reply(self, req: _Request, out: _Outcome) -> bytes:
        codec = req.codec or compression.codec_for_protocol(req.version)

        def encode() -> bytes:
            return wire.encode_reply(
                req.version,
                out.wait_status,
                compression.compress(codec, out.stderr),
                compression.compress(codec, out.stdout),
                compression.compress(codec, out.obj) if out.obj is not None else None,
            )

        size = len(out.stderr) + len(out.stdout) + (len(out.obj) if out.obj is not None else 0)
        if codec == compression.Codec.NONE or size <= _INLINE_CODEC:
            return encode()
        return await asyncio.to_thread(encode)

    async def _write_reply(self, ch: _Channel, reply: bytes) -> None:
        try:
            ch.write(reply)
            if ch.pending():  # else drain() has nothing to wait for
                async with asyncio.timeout(self.config.io_timeout):
                    await ch.drain()
        except TimeoutError:
            raise _Gone(
                f"client stalled for {self.config.io_timeout:g}s reading the reply",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
            ) from None
        except OSError as e:
            raise _Gone(
                f"client went away while the reply was sent: {e.strerror or e}",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
            ) from None

    async def _refuse(self, ch: _Channel, reason: str) -> None:
        """Send ERRM, half-close, and drain briefly so the client reads it (no RST)."""
        try:
            ch.write(wire.encode_refusal(reason))
            async with asyncio.timeout(self.config.drain_seconds):
                await ch.drain()
            if ch.can_write_eof():
                ch.write_eof()
            deadline = time.monotonic() + self.config.drain_seconds
            total = 0
            while total < self.config.drain_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                async with asyncio.timeout(remaining):  # no task per read, as wait_for has
                    chunk = await ch.read(_READ_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
        except (OSError, TimeoutError):
            pass


async def _readable(sock: socket.socket) -> None:
    """Wait until a listening socket has a connection to accept."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


async def _first_of(
    a: asyncio.Future[Any], b: asyncio.Future[Any], timeout: float | None
) -> object:
    """Whichever of ``a`` and ``b`` completes first (``a`` if both have); None at the
    timeout. Lighter than ``asyncio.wait`` (no set, no extra future per call)."""
    if not a.done() and not b.done():
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: object) -> None:
            if not woken.done():
                woken.set_result(None)

        a.add_done_callback(wake)
        b.add_done_callback(wake)
        timer = loop.call_later(timeout, wake, None) if timeout is not None else None
        try:
            await woken
        finally:
            a.remove_done_callback(wake)
            b.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
    if a.done():
        return a
    if b.done():
        return b
    return None


async def _watch_disconnect(ch: _Channel) -> str:
    """Returns when the client closes or resets the connection (extra bytes are discarded)."""
    while True:
        try:
            chunk = await ch.read(_READ_CHUNK)
        except OSError as e:
            return f"connection error: {e.strerror or e}"
        if not chunk:
            return "end of stream"


def _write_file(path: str, data: bytes) -> None:
    """Create ``path`` (exclusively: the job dir is new) with ``data``; no Python file object."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _make_job_dir(parent: str | None) -> str:
    """A new private (0700) job directory ``meshccd_XXXXXXXXXXXX`` in ``parent`` (None:
    tempfile's temp dir): mkdtemp's contract, without its per-call Python name generator."""
    base = tempfile.gettempdir() if parent is None else os.path.abspath(parent)
    for _ in range(100):
        path = os.path.join(base, "meshccd_" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no unused job directory name", base)


def _read_file(path: str) -> bytes:
    """A whole file's content, without a Python file object."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, max(size, 64 * 1024))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _remove_job_dir(path: str, names: tuple[str, ...] = ()) -> None:
    """Remove a job directory: its files, then itself; never raises. ``names``: the files
    it usually holds (the source and the output), unlinked without listing the directory;
    only if something else is left is it listed (what the compiler can leave is flat; a
    subdirectory, which no allowed option makes, goes through shutil.rmtree). Cheaper than
    rmtree's descriptor-based walk."""
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(path, name))
    try:
        os.rmdir(path)
        return
    except OSError:
        pass
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
