"""The asyncio compile server: distcc protocols 1 and 2, one job per connection.

Per connection: check the client address, read the request with the bounded
sans-IO codec (every read under an IO timeout), resolve the compiler against
the probed toolchains, apply the server policy, then compile in a private temp
dir under a ``--jobs`` semaphore while watching the client socket, and reply.
A refused job gets meshcc's ``ERRM`` reason before the close (distccd just
closes), and every connection that carried a request ends with one
distccd-style job summary line.

Only the daemon imports this module (it is the only user of asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import ipaddress
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field

from meshcc import compression, hostos
from meshcc.compiler import args as cargs
from meshcc.compiler import policy
from meshcc.compiler.toolchain import CompilerRefused, Resolved, ToolchainRegistry
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
from meshcc.transport.addresses import IPAddress, IPNetwork, client_allowed, normalize_client_ip
from meshcc.wire import protocol as wire

__all__ = [
    "CompileServer",
    "JobResult",
    "JobSummary",
    "ServerConfig",
    "bind_listener",
]


log = logging.getLogger("meshcc.server")

PUMP_REFUSAL = "pump mode (',cpp') is not supported; use ',lzo'"
NO_LZO_REFUSAL = (
    "this daemon has no LZO support (pure-Python meshcc.pyz); use the host without ,lzo"
)

_READ_CHUNK = 256 * 1024


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

    def line(self) -> str:
        text = (
            f"client: {self.client} {self.result.value} exit:{self.exit} sig:{self.sig} "
            f"core:{self.core} ret:{self.ret} time:{self.time_ms}ms"
        )
        if self.result in (JobResult.COMPILE_OK, JobResult.COMPILE_ERROR):
            text += f" {self.compiler or '?'} {self.source or '?'}"
        return text


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs besides the toolchains; defaults suit a real box."""

    allowed: tuple[IPNetwork, ...]
    jobs: int = field(default_factory=hostos.default_jobs)
    limits: wire.Limits = field(default_factory=wire.Limits)
    io_timeout: float = 300.0  # one read or write (distcc's DISTCC_IO_TIMEOUT)
    job_lifetime: float = 0.0  # 0 = no limit on a compile
    max_reading: int | None = None  # requests read at once; None = max(4, jobs)
    max_source: int = 1024 * 1024 * 1024  # decompressed DOTI
    max_output: int = 16 * 1024 * 1024  # compiler stdout / stderr kept, each
    drain_bytes: int = 8 * 1024 * 1024  # discarded after a refusal before closing
    drain_seconds: float = 2.0
    tmpdir: str | None = None  # None = $TMPDIR (tempfile's rules)

    @property
    def reading_slots(self) -> int:
        return self.max_reading if self.max_reading is not None else max(4, self.jobs)


# ---------------------------------------------------------------- helpers


def _job_stem(source: str) -> str:
    stem = os.path.splitext(os.path.basename(source))[0][:100]
    if not stem or stem.startswith((".", "-")):
        return "input"
    return stem


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

    def __init__(self, reason: str, result: JobResult = JobResult.OTHER, ret: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result
        self.ret = ret


class _Gone(Exception):
    """The client went away or stalled; nothing more can be sent."""

    def __init__(self, why: str, result: JobResult = JobResult.CLI_DISCONN, ret: int = 0) -> None:
        super().__init__(why)
        self.why = why
        self.result = result
        self.ret = ret


@dataclass(slots=True)
class _Request:
    version: int
    argv: list[str]
    resolved: Resolved
    source: str  # the source name as the client gave it
    suffix: str  # of the preprocessed input: .i .ii .mi .mii
    output_suffix: str  # .o, or .s for -S
    data: bytes = b""  # decompressed preprocessed source


@dataclass(slots=True)
class _Outcome:
    wait_status: int
    stderr: bytes
    stdout: bytes
    obj: bytes | None
    result: JobResult
    ret: int = 0


class _Slot:
    """One connection's claim on a semaphore, released at most once."""

    __slots__ = ("_sem", "held")

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self.held = False

    async def acquire(self) -> None:
        await self._sem.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._sem.release()


class CompileServer:
    """Serves compile jobs on a listening socket until ``request_stop()``."""

    def __init__(self, registry: ToolchainRegistry, config: ServerConfig) -> None:
        self.registry = registry
        self.config = config
        self._job_slots = asyncio.Semaphore(config.jobs)
        self._read_slots = asyncio.Semaphore(config.reading_slots)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._running_compiles = 0
        # Decided once: without lzallright (meshcc.pyz) protocol 2 jobs get a clear ERRM.
        self.lzo = compression.available(compression.Codec.LZO)

    # -- lifecycle

    async def start(self, sock: socket.socket) -> None:
        """Listen (backlog 1024) and start accepting on a bound socket."""
        self._server = await asyncio.start_server(
            self._on_connection, sock=sock, limit=_READ_CHUNK, backlog=1024
        )

    def request_stop(self) -> None:
        """Stop accepting; jobs in progress run to completion."""
        if self._server is not None:
            self._server.close()
        self._stopping.set()

    def abort(self) -> None:
        """Cancel every connection (compilers are killed, temp dirs removed)."""
        self.request_stop()
        for task in list(self._connections):
            task.cancel()

    async def serve_until_stopped(self) -> None:
        """Run until ``request_stop()``, then wait for the connections in progress."""
        await self._stopping.wait()
        if self._server is not None:
            self._server.close()
        while self._connections:
            await asyncio.gather(*list(self._connections), return_exceptions=True)

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    @property
    def running_compiles(self) -> int:
        """Compilers running now (the mesh republishes free slots from it)."""
        return self._running_compiles

    # -- a connection

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping.is_set():
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        started = time.monotonic()
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            addr = normalize_client_ip(str(peer[0]))
        except ValueError:
            addr = ipaddress.ip_address("0.0.0.0")
        summary = JobSummary(_format_client(addr, int(peer[1])))
        tmpdir: str | None = None
        log_summary = True
        replying = False  # once reply bytes may be on the wire, no ERRM can follow
        # A read slot is held from the first byte until a job slot is granted, so at most
        # (reading slots + jobs) requests sit in memory; idle connections hold none.
        read_slot = _Slot(self._read_slots)
        try:
            if not client_allowed(addr, self.config.allowed):
                log.warning("connection from client '%s' denied by access list", summary.client)
                raise _Refuse(
                    f"client address {addr} is not allowed by this server's access list",
                    ret=EXIT_ACCESS_DENIED,
                )
            first = await self._first_chunk(reader, summary)
            if not first:
                log_summary = False  # not a job: a probe, or the daemon is stopping
                return
            if wire.is_probe(first):  # a meshcc peer's liveness probe: answer, no job
                log_summary = False
                log.debug("client %s: liveness probe", summary.client)
                writer.write(wire.PROBE_REPLY)
                return
            log.info("connection from %s", summary.client)
            await read_slot.acquire()
            request = await self._read_phase(reader, summary, first)
            async with self._job_slots:
                read_slot.release()
                try:
                    tmpdir = tempfile.mkdtemp(prefix="meshccd_", dir=self.config.tmpdir)
                except OSError as e:
                    log.error("cannot create a job directory: %s", e)
                    raise _Refuse(
                        f"the server cannot create a job directory: {e.strerror or e}",
                        ret=EXIT_IO_ERROR,
                    ) from None
                outcome = await self._compile(request, tmpdir, reader, summary)
                # Outputs are in memory: clean up before replying, so a client that has
                # its reply never sees the job directory (and the slot frees clean).
                shutil.rmtree(tmpdir, ignore_errors=True)
                tmpdir = None
            summary.result = outcome.result
            summary.ret = outcome.ret
            reply = await self._encode_reply(request, outcome)
            replying = True
            await self._write_reply(writer, reply)
        except _Refuse as r:
            summary.result, summary.ret = r.result, r.ret
            log.warning("client %s: job refused: %s", summary.client, r.reason)
            await self._refuse(reader, writer, r.reason)
        except _Gone as g:
            summary.result, summary.ret = g.result, g.ret
            log.warning("client %s: %s", summary.client, g.why)
        except Exception as e:  # a bug: keep serving, but say so loudly
            summary.result, summary.ret = JobResult.OTHER, EXIT_DISTCC_FAILED
            log.exception("client %s: internal error while serving the job", summary.client)
            if not replying:
                await self._refuse(reader, writer, f"internal error in the server: {e!r}")
        finally:
            read_slot.release()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            summary.time_ms = int((time.monotonic() - started) * 1000)
            if log_summary:
                log.log(NOTICE, "%s", summary.line())

    async def _first_chunk(self, reader: asyncio.StreamReader, summary: JobSummary) -> bytes:
        """The first bytes of a request; b"" if none come (closed, stalled or stopping).

        Until then the connection is idle: it holds no read slot, and a stopping daemon
        closes it rather than wait for a request that may never come.
        """
        read = asyncio.ensure_future(reader.read(_READ_CHUNK))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {read, stop}, timeout=self.config.io_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
        if read in done:
            try:
                chunk = read.result()
            except OSError:
                chunk = b""
            if not chunk:  # a liveness probe (connect + close): not worth an INFO line
                log.debug("client %s closed without sending a request", summary.client)
            return chunk
        read.cancel()
        if self._stopping.is_set():
            log.info("client %s: closing idle connection, the daemon is stopping", summary.client)
        else:
            log.info(
                "client %s sent nothing for %gs; closing", summary.client, self.config.io_timeout
            )
        return b""

    async def _read_phase(
        self, reader: asyncio.StreamReader, summary: JobSummary, first: bytes
    ) -> _Request:
        """Read and vet the whole request (starting with the bytes already received)."""
        rr = wire.RequestReader(self.config.limits)
        rr.feed(first)
        eof = False
        version = 0
        argv: list[str] = []
        resolved: Resolved | None = None
        source = suffix = out_suffix = ""
        data = b""

        while True:
            try:
                event = rr.next_event()
            except wire.ProtocolError as e:
                if eof and "truncated" in str(e):
                    raise _Gone(
                        f"truncated request: {e}", JobResult.OTHER, EXIT_TRUNCATED
                    ) from None
                raise _Refuse(
                    f"protocol error: {e}", JobResult.REJ_BAD_REQ, EXIT_PROTOCOL_ERROR
                ) from None
            if event is wire.NEED_DATA:
                chunk = await self._read(reader, "reading the request")
                if chunk:
                    rr.feed(chunk)
                else:
                    eof = True
                    rr.feed_eof()
                continue
            if isinstance(event, wire.RequestStart):
                version = event.version
                if version == 3:
                    raise _Refuse(PUMP_REFUSAL, ret=EXIT_PROTOCOL_ERROR)
                if version == 2 and not self.lzo:
                    raise _Refuse(NO_LZO_REFUSAL, ret=EXIT_PROTOCOL_ERROR)
            elif isinstance(event, wire.RequestArgs):
                argv, resolved, source, suffix, out_suffix = self._vet_args(event.argv, summary)
            elif isinstance(event, wire.RequestSource):
                data = await self._decode_source(version, event.data)
            elif isinstance(event, wire.RequestEnd):
                assert resolved is not None
                return _Request(version, argv, resolved, source, suffix, out_suffix, data)
            else:  # PumpFile: unreachable once v3 is refused
                raise _Refuse(PUMP_REFUSAL, ret=EXIT_PROTOCOL_ERROR)

    async def _read(self, reader: asyncio.StreamReader, what: str) -> bytes:
        try:
            return await asyncio.wait_for(reader.read(_READ_CHUNK), self.config.io_timeout)
        except TimeoutError:
            raise _Gone(
                f"client stalled for {self.config.io_timeout:g}s while {what}; closing",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
            ) from None
        except OSError as e:
            raise _Gone(
                f"connection error while {what}: {e.strerror or e}",
                JobResult.CLI_DISCONN,
                EXIT_IO_ERROR,
            ) from None

    def _vet_args(
        self, raw: list[bytes], summary: JobSummary
    ) -> tuple[list[str], Resolved, str, str, str]:
        if any(b"\0" in a for a in raw):
            raise _Refuse("an argument contains a NUL byte", ret=EXIT_BAD_ARGUMENTS)
        argv = [os.fsdecode(a) for a in raw]
        summary.compiler = argv[0]
        log.info("client %s: %s", summary.client, " ".join(argv))
        try:
            resolved = self.registry.resolve(argv[0])
        except CompilerRefused as e:
            raise _Refuse(e.reason, ret=EXIT_BAD_ARGUMENTS) from None
        why = policy.refusal(argv)
        if why is not None:
            raise _Refuse(why, ret=EXIT_BAD_ARGUMENTS)
        job = cargs.analyse(argv)
        if job.source is None:
            raise _Refuse(
                "no source file (.c, .cc, .cpp, .i, .ii, ...) in the command",
                ret=EXIT_BAD_ARGUMENTS,
            )
        summary.source = job.source
        source, suffix = job.source, job.temp_suffix
        output_suffix = ".s" if job.mode == "-S" else ".o"
        return argv, resolved, source, suffix, output_suffix

    async def _decode_source(self, version: int, body: bytes) -> bytes:
        codec = compression.codec_for_protocol(version)
        try:
            if codec == compression.Codec.NONE:
                data = body
                if len(data) > self.config.max_source:
                    raise compression.CompressionError(
                        f"source of {len(data)} bytes exceeds {self.config.max_source}"
                    )
            else:
                data = await asyncio.to_thread(
                    compression.decompress, codec, body, self.config.max_source
                )
        except compression.CompressionError as e:
            raise _Refuse(
                f"cannot decode the preprocessed source (DOTI): {e}",
                JobResult.REJ_BAD_REQ,
                EXIT_PROTOCOL_ERROR,
            ) from None
        why = policy.scan_source_refusal(data)
        if why is not None:
            raise _Refuse(why, ret=EXIT_BAD_ARGUMENTS)
        return data

    # -- compiling

    async def _compile(
        self,
        req: _Request,
        tmpdir: str,
        reader: asyncio.StreamReader,
        summary: JobSummary,
    ) -> _Outcome:
        stem = _job_stem(req.source)
        input_name = stem + req.suffix
        output_name = stem + req.output_suffix
        try:
            with open(os.path.join(tmpdir, input_name), "wb") as f:
                f.write(req.data)
        except OSError as e:
            log.error("client %s: cannot write the job's input: %s", summary.client, e)
            raise _Refuse(
                f"the server cannot store the source: {e.strerror or e}", ret=EXIT_IO_ERROR
            ) from None
        req.data = b""  # free it while the compiler runs
        job_argv = list(policy.rewrite_for_job(req.argv, input_name, output_name))
        job_argv[0] = req.resolved.exec_path
        log.debug("client %s: running %s in %s", summary.client, " ".join(job_argv), tmpdir)

        env = dict(os.environ)
        try:
            level = max(0, int(env.get("_DISTCC_SAFEGUARD", "0")))
        except ValueError:
            level = 0
        env["_DISTCC_SAFEGUARD"] = str(level + 1)

        try:
            proc = await asyncio.create_subprocess_exec(
                *job_argv,
                cwd=tmpdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                process_group=0,
                restore_signals=True,
            )
        except OSError as e:
            msg = f"meshcc: failed to exec {job_argv[0]}: {e.strerror or e}\n"
            log.error("client %s: %s", summary.client, msg.strip())
            summary.exit = EXIT_COMPILER_MISSING
            return _Outcome(
                EXIT_COMPILER_MISSING << 8, msg.encode(), b"", None, JobResult.COMPILE_ERROR
            )

        self._running_compiles += 1
        out_task = asyncio.ensure_future(_read_bounded(proc.stdout, self.config.max_output))
        err_task = asyncio.ensure_future(_read_bounded(proc.stderr, self.config.max_output))
        wait_task = asyncio.ensure_future(proc.wait())
        watch_task = asyncio.ensure_future(_watch_disconnect(reader))
        try:
            lifetime = self.config.job_lifetime or None
            done, _ = await asyncio.wait(
                {wait_task, watch_task}, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED
            )
            if wait_task not in done:
                _kill_group(proc.pid)
                await proc.wait()
                if watch_task in done:
                    raise _Gone(
                        f"client disconnected during the compile ({watch_task.result()}); "
                        "compiler killed",
                        JobResult.CLI_DISCONN,
                        EXIT_IO_ERROR,
                    )
                stderr = await _finish_reader(err_task, proc.pid)
                stdout = await _finish_reader(out_task, proc.pid)
                msg = (
                    f"meshcc: compile exceeded the server's --job-lifetime "
                    f"({self.config.job_lifetime:g}s) and was killed\n"
                )
                log.warning("client %s: %s", summary.client, msg.strip())
                summary.exit = EXIT_TIMEOUT
                return _Outcome(
                    EXIT_TIMEOUT << 8,
                    stderr + msg.encode(),
                    stdout,
                    None,
                    JobResult.COMPILE_TIMEOUT,
                    EXIT_TIMEOUT,
                )
            stderr = await _finish_reader(err_task, proc.pid)
            stdout = await _finish_reader(out_task, proc.pid)
        finally:
            self._running_compiles -= 1
            watch_task.cancel()
            if proc.returncode is None:  # cancelled (second signal): no orphans
                _kill_group(proc.pid)
                with contextlib.suppress(BaseException):
                    await asyncio.shield(proc.wait())
            for t in (out_task, err_task, wait_task):
                t.cancel()

        rc = proc.returncode
        assert rc is not None
        if rc < 0:
            summary.sig = -rc
            status = -rc & 0x7F
        else:
            summary.exit = rc
            status = (rc & 0xFF) << 8
        if status != 0:
            return _Outcome(status, stderr, stdout, None, JobResult.COMPILE_ERROR)
        try:
            with open(os.path.join(tmpdir, output_name), "rb") as f:
                obj = f.read()
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

    async def _encode_reply(self, req: _Request, out: _Outcome) -> bytes:
        codec = compression.codec_for_protocol(req.version)

        def encode() -> bytes:
            return wire.encode_reply(
                req.version,
                out.wait_status,
                compression.compress(codec, out.stderr),
                compression.compress(codec, out.stdout),
                compression.compress(codec, out.obj) if out.obj is not None else None,
            )

        return await asyncio.to_thread(encode) if codec != compression.Codec.NONE else encode()

    async def _write_reply(self, writer: asyncio.StreamWriter, reply: bytes) -> None:
        try:
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), self.config.io_timeout)
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

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str
    ) -> None:
        """Send ERRM, half-close, and drain briefly so the client reads it (no RST)."""
        try:
            writer.write(wire.encode_refusal(reason))
            await asyncio.wait_for(writer.drain(), self.config.drain_seconds)
            if writer.can_write_eof():
                writer.write_eof()
            deadline = time.monotonic() + self.config.drain_seconds
            total = 0
            while total < self.config.drain_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                chunk = await asyncio.wait_for(reader.read(_READ_CHUNK), remaining)
                if not chunk:
                    break
                total += len(chunk)
        except (OSError, TimeoutError):
            pass


async def _read_bounded(stream: asyncio.StreamReader | None, cap: int) -> bytes:
    """Everything a pipe yields, keeping at most ``cap`` bytes (the rest is drained)."""
    if stream is None:
        return b""
    chunks: list[bytes] = []
    kept = 0
    dropped = 0
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            break
        if kept < cap:
            take = chunk[: cap - kept]
            chunks.append(take)
            kept += len(take)
            dropped += len(chunk) - len(take)
        else:
            dropped += len(chunk)
    if dropped:
        chunks.append(f"\nmeshcc: {dropped} more bytes of output were dropped\n".encode())
    return b"".join(chunks)


async def _finish_reader(task: asyncio.Future[bytes], pgid: int) -> bytes:
    """The pipe's content; if something else in the group holds it open, kill the group."""
    try:
        return await asyncio.wait_for(asyncio.shield(task), 2.0)
    except TimeoutError:
        _kill_group(pgid)
        try:
            return await asyncio.wait_for(task, 2.0)
        except TimeoutError:
            return b""


async def _watch_disconnect(reader: asyncio.StreamReader) -> str:
    """Returns when the client closes or resets the connection (extra bytes are discarded)."""
    while True:
        try:
            chunk = await reader.read(_READ_CHUNK)
        except OSError as e:
            return f"connection error: {e.strerror or e}"
        if not chunk:
            return "end of stream"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
