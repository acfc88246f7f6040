"""The daemon's local control socket server: status, hosts lines and compile leases.

Protocol: :mod:`meshcc.wire.control`; this is its I/O side in the daemon's loop. Binding
the socket is :mod:`meshcc.transport.control_socket`, fingerprinting a client's compiler
:mod:`meshcc.compiler.fingerprints`, choosing the peer :mod:`meshcc.mesh.leases`. A lease
is freed when its connection closes, whatever the client did (a ``kill -9`` closes the
socket in the kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshcc import hostos
from meshcc.cache.direct import DirectCache, DirectError
from meshcc.compiler.fingerprints import (
    ClientCompiler,
    FingerprintCache,
    FingerprintError,
    ProbeLimit,
    UntrustedCompiler,
)
from meshcc.mesh.leases import LOCAL_KEY, Grant, LeaseBroker, Local, PeerView
from meshcc.mesh.linkrate import LinkBook
from meshcc.mesh.load import LoadBook
from meshcc.mesh.matching import hosts_line
from meshcc.transport.control_socket import describe_peer, peer_credentials
from meshcc.wire import control

log = logging.getLogger("meshcc.control")

_READ_CHUNK = 64 * 1024
_ACCEPT_BATCH = 64  # connections accepted per readable listener, before other work runs
_ACCEPT_PAUSE_S = 1.0  # out of descriptors: no accept() for this long


@dataclass(frozen=True, slots=True)
class ControlLimits:
    """Bounds on what local clients can hold: no user starves the others, nothing waits
    forever on a client that does not read, and the caps stay below the descriptor limit."""

    max_connections: int = 4096
    max_per_user: int = 2048  # a `make -j N` holds N lease connections at once
    send_timeout_s: float = 10.0  # a reply the client does not read in time ends it
    idle_timeout_s: float = 60.0  # a connection that holds no lease and sends nothing

    @classmethod
    def for_fd_limit(cls, fds: int) -> ControlLimits:
        """A quarter of the descriptors for local clients, half of that for one user (the
        rest: compile connections, peer probes, compilers' pipes)."""
        total = max(64, fds // 4)
        return cls(max_connections=total, max_per_user=max(32, total // 2))


class MeshView(PeerView, Protocol):
    """What the control socket needs of the mesh: judged peers, and lease outcomes."""

    def report_job_result(self, peer: str, ok: bool, *, connect_failed: bool = False) -> bool: ...


class ControlServer:
    """Serves :mod:`meshcc.wire.control` requests on the daemon's Unix socket."""

    def __init__(
        self,
        mesh: MeshView,
        status: Callable[[], control.StatusReply],
        *,
        fingerprints: FingerprintCache | None = None,
        path: str = "",
        limits: ControlLimits | None = None,
        load: LoadBook | None = None,
        on_demand: Callable[[], None] | None = None,
    ) -> None:
        self.mesh = mesh
        self.status = status
        self.fingerprints = fingerprints or FingerprintCache()
        # With the live-load channel the broker weighs the whole mesh, this box included.
        self.broker = LeaseBroker(mesh, load=load, on_demand=on_demand)
        self.links = LinkBook()  # per-peer link estimates from the clients' done reports
        self.path = path
        self.limits = limits or ControlLimits()
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accept_retry: asyncio.TimerHandle | None = None
        self._connections: dict[asyncio.Task[None], _Conn] = {}
        self._per_user: dict[int, int] = {}
        self.direct: DirectCache | None = None  # direct mode's manifests (daemon/main.py)

    async def start(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (listening, non-blocking) from the loop's own reader callback."""
        self._listener = sock
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_accept)

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(listener.fileno())
            listener.close()
        if self._accept_retry is not None:
            self._accept_retry.cancel()
        self.broker.stop()
        connections = dict(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        for conn in connections.values():
            conn.close()  # a task cancelled before its first step never closed its own
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    @property
    def connections(self) -> int:
        return len(self._connections)

    # -- requests that need the mesh

    async def hosts(
        self, req: control.HostsRequest, uid: int | None = None
    ) -> control.HostsReply | control.ErrorReply:
        fp: ClientCompiler | None = None
        compiler: str | None = None
        cc_path = req.cc_path
        if req.cc and not cc_path:
            cc_path = _find_on_path(req.cc)
            if cc_path is None:
                return control.ErrorReply(f"{req.cc}: not found on the daemon's PATH")
        if cc_path:
            try:
                fp = await self.fingerprints.get(req.cc or cc_path, cc_path, uid)
            except FingerprintError as e:
                return control.ErrorReply(str(e))
            compiler = fp.describe()
        verdicts = self.mesh.explain(fp)
        status = self.status()
        loads = {info.key: info.to_message() for info in status.loads}
        maps = []
        for v in verdicts:
            m = v.to_dict()
            m["load"] = loads.get(v.peer.record.key)  # the peer's live load, None if stale
            maps.append(m)
        return control.HostsReply(hosts_line(verdicts), maps, status, compiler)

    async def lease(
        self, req: control.LeaseRequest, uid: int | None = None
    ) -> Grant | Local | control.ErrorReply:
        """A slot for the job; an ErrorReply (which the client prints) when the daemon will
        not run the named compiler or this user has too many probes in flight; Local
        (quietly) when the compiler is simply not a gcc the mesh can match."""
        try:
            fp = await self.fingerprints.get(req.cc, req.cc_path, uid)
        except (UntrustedCompiler, ProbeLimit) as e:
            return control.ErrorReply(str(e))
        except FingerprintError as e:
            return Local(str(e))
        return await self.broker.acquire(fp, req.local_ok)

    # -- one connection

    def _on_accept(self) -> None:
        """Accept the waiting connections (the listener is non-blocking): each costs its
        socket and one task; no asyncio transport, protocol or streams (see _Conn)."""
        listener = self._listener
        for _ in range(_ACCEPT_BATCH):
            if listener is None:
                return
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # that client is gone already
                # Out of descriptors or memory: stop accepting for a moment (the backlog
                # keeps the clients waiting) rather than spin on a readable listener.
                log.warning(
                    "control: cannot accept: %s; pausing for %gs", e.strerror or e, _ACCEPT_PAUSE_S
                )
                self._pause_accepting()
                return
            self._admit(sock)

    def _pause_accepting(self) -> None:
        listener, loop = self._listener, self._loop
        if listener is None or loop is None or self._accept_retry is not None:
            return
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            self._accept_retry = None
            if self._listener is not None:
                loop.add_reader(self._listener.fileno(), self._on_accept)

        self._accept_retry = loop.call_later(_ACCEPT_PAUSE_S, resume)

    def _admit(self, sock: socket.socket) -> None:
        """One accepted connection: refused at once over a limit, else served by a task."""
        loop = self._loop
        assert loop is not None
        sock.setblocking(False)
        creds = peer_credentials(sock)
        uid = creds[1] if creds is not None else -1
        refusal = None
        if len(self._connections) >= self.limits.max_connections:
            refusal = f"the daemon holds {len(self._connections)} connections, its limit"
        elif self._per_user.get(uid, 0) >= self.limits.max_per_user:
            refusal = f"uid {uid} holds {self._per_user[uid]} connections, the per-user limit"
        if refusal is not None:
            log.warning("control: refusing %s: %s", describe_peer(creds), refusal)
            with contextlib.suppress(OSError):
                sock.send(control.encode(control.ErrorReply(refusal).to_message()))
            sock.close()
            return
        conn = _Conn(sock, loop, creds)
        self._per_user[uid] = self._per_user.get(uid, 0) + 1
        self._connections[loop.create_task(self._on_connection(conn, uid))] = conn

    async def _on_connection(self, conn: _Conn, uid: int) -> None:
        try:
            await self._serve(conn, uid)
        except ConnectionError:
            pass
        except TimeoutError:
            log.warning(
                "control: %s did not read its reply within %gs; closing",
                conn.who,
                self.limits.send_timeout_s,
            )
        except asyncio.CancelledError:
            pass
        except control.ControlError as e:
            # A bad message past the first (a direct_put's parts), or a reply too large to
            # encode: the client's fault or a bound, not the daemon's. It hears why.
            log.warning("control: closing connection from %s: %s", conn.who, e)
            with contextlib.suppress(Exception):
                await self._send(conn, control.ErrorReply(str(e)))
        except Exception:
            log.exception("control: internal error serving %s", conn.who)
        finally:
            task = asyncio.current_task()
            assert task is not None
            self._connections.pop(task, None)
            left = self._per_user.get(uid, 1) - 1
            if left > 0:
                self._per_user[uid] = left
            else:
                self._per_user.pop(uid, None)
            conn.close()

    async def _serve(self, conn: _Conn, uid: int) -> None:
        while True:
            # A ControlError (a bad or oversized message) ends the connection with its
            # reason: _on_connection logs it and sends the ErrorReply.
            msg = await conn.next(self.limits.idle_timeout_s)
            if msg is None:
                return
            req = control.decode_request(msg)
            if isinstance(req, control.LeaseRequest):  # first: one per compile
                await self._lease(req, conn, uid)
                return
            if isinstance(req, control.StatusRequest):
                await self._send(conn, self.status())
            elif isinstance(req, control.HostsRequest):
                await self._send(conn, await self.hosts(req, uid))
            elif isinstance(req, control.DirectRequest):
                if not await self._direct(req, conn, uid):
                    return
            else:
                log.warning("control: closing connection from %s: 'done' without a lease", conn.who)
                await self._send(conn, control.ErrorReply("'done' without a lease"))
                return

    async def _lease(self, req: control.LeaseRequest, conn: _Conn, uid: int) -> None:
        who = conn  # its __str__ says who: built only when a line is logged
        # Wait for the lease while watching the socket: a client that dies in the queue (or
        # says anything there) must leave it at once; the connection's reader callback
        # cancels this wait (LeaseBroker.acquire and the fingerprint wait are cancel-safe).
        # Usually the answer is at hand (a known compiler, a free slot or none at all) and
        # this await never suspends: no task or future of its own per lease, and the
        # watch is set up only when it does (the next loop turn; the reader is level-
        # triggered, so input that came meanwhile is seen): a "compile locally" answer
        # then never registers the socket with the loop at all (an epoll_ctl pair).
        task = asyncio.current_task()
        assert task is not None
        watching = conn.loop.call_soon(conn.watch, task)
        try:
            got = await self.lease(req, uid)
        except asyncio.CancelledError:
            if not conn.interrupted:
                raise  # the daemon is stopping
            task.uncancel()
            if conn.error is not None:
                log.warning("control: closing connection from %s: %s", who, conn.error)
            log.debug("control: %s left while waiting for a lease", who)
            return
        finally:
            watching.cancel()  # not run yet: never will; run: unwatch() undoes it
            conn.unwatch()
        if isinstance(got, control.ErrorReply):
            log.warning("control: %s: lease for %s refused: %s", who, req.cc_path, got.error)
            await self._send(conn, got)
            return
        if isinstance(got, Local) and got.held:
            try:
                log.debug(
                    "control: %s compiles %s here (own share): %s", who, req.source, got.reason
                )
                await self._send(conn, control.LeaseLocal(got.reason, hold=True))
                await self._until_done(conn)  # the local compiler holds the connection
            except (control.ControlError, ConnectionError, TimeoutError):
                pass
            finally:
                self.broker.release(LOCAL_KEY)
            return
        if isinstance(got, Local):
            log.debug("control: %s compiles %s locally: %s", who, req.source, got.reason)
            await self._send(conn, control.LeaseLocal(got.reason))
            return
        done: control.DoneMessage | None = None
        try:
            log.debug("control: %s leases %s for %s (%s)", who, got.key, req.source, req.cc)
            await self._send(conn, self._granted(got))
            done = await self._until_done(conn)  # held until 'done' or the connection closes
        except control.ControlError as e:
            log.warning("control: closing connection from %s: %s", who, e)
            done = None
        except (ConnectionError, TimeoutError):
            done = None
        finally:
            busy = done is not None and done.busy
            try:
                if done is not None and not busy:
                    # First the outcome, then the release: a request the release serves
                    # is judged knowing it (the broker keeps verdicts until a change).
                    self.mesh.report_job_result(
                        got.key, done.ok, connect_failed=done.connect_failed
                    )
            finally:
                self.broker.release(got.key, busy=busy)
        if done is None:
            return
        if done.link is not None:
            self.links.record(got.key, *done.link)
        if done.busy:
            log.debug("control: %s was busy for %s; not handing it out for a moment", got.key, who)
            return
        if not done.ok:
            log.info(
                "job %s on %s failed%s: %s",
                req.source,
                got.host,
                " (connect failed)" if done.connect_failed else "",
                done.reason or "no reason given",
            )

    def _granted(self, got: Grant) -> control.LeaseGranted:
        """The grant for ``got``, with the peer's codecs and what we know of its link."""
        link = self.links.get(got.key) if got.codecs else None
        rtt_us = link.rtt_us if link is not None and link.rtt_us else 0
        if not rtt_us and got.rtt_s is not None:
            rtt_us = max(1, round(got.rtt_s * 1e6))
        return control.LeaseGranted(
            got.host,
            got.port,
            got.protocol,
            got.compiler,
            got.key,
            got.busy,
            got.codecs,
            round(link.rate) if link is not None else 0,
            rtt_us,
        )

    async def _direct(self, req: control.DirectRequest, conn: _Conn, uid: int) -> bool:
        """Direct mode (:mod:`meshcc.cache.direct`); False when the connection must end."""
        direct = self.direct
        if direct is None or uid < 0:
            if req.op != "direct_put":
                await self._send(conn, control.DirectReply(off=True))  # keeps none
            return req.op != "direct_put"
        if req.op == "direct_get":
            manifest = await direct.lookup(uid, req.key, req.mesh, req.cc)
            await self._send(conn, control.DirectReply(manifest))
            return True
        if req.op == "direct_result":
            blob = await asyncio.to_thread(direct.result, uid, req.key)
            if blob is None:
                await self._send(conn, control.ErrorReply("no such result"))
                return True
            log.info("direct: %s: hit for %s", conn.who, req.source or req.key)
            part = control.DIRECT_REPLY_PART
            for at in range(0, len(blob), part):
                more = at + part < len(blob)
                await self._send(conn, control.DirectReply(data=blob[at : at + part], more=more))
            return True
        # direct_put: the parts follow as messages of their own, up to a bound.
        parts = [req.data]
        size = len(req.data)
        more = req.more
        limit = direct.store.max_entry + 2 * 1024 * 1024
        while more:
            msg = await conn.next(self.limits.idle_timeout_s)
            if msg is None:
                return False
            nxt = control.decode_request(msg)
            if not isinstance(nxt, control.DirectRequest) or nxt.op != "direct_put":
                raise control.ControlError("only direct_put parts may follow a direct_put")
            size += len(nxt.data)
            if size > limit:
                raise control.ControlError(f"direct_put larger than {limit} bytes")
            parts.append(nxt.data)
            more = nxt.more
        try:
            await direct.put_and_share(uid, req.key, b"".join(parts))
        except DirectError as e:
            log.info("direct: %s: not stored for %s: %s", conn.who, req.source or req.key, e)
        return True

    async def _send(self, conn: _Conn, reply: control.Reply) -> None:
        """Write one reply; TimeoutError when the client does not take it in time (a client
        that never reads must not hold the daemon's buffers and a task forever)."""
        if conn.write(control.encode(reply.to_message())):
            await conn.drain(self.limits.send_timeout_s)

    @staticmethod
    async def _until_done(conn: _Conn) -> control.DoneMessage | None:
        """The lease's 'done' message, or None when the client closes without one."""
        while True:
            msg = await conn.next(None)
            if msg is None:
                return None
            req = control.decode_request(msg)
            if isinstance(req, control.DoneMessage):
                return req
            raise control.ControlError(f"only 'done' may follow a lease, not {msg.get('op')!r}")


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class _Conn:
    """One client connection, read and written by the server on its non-blocking socket.

    Why not asyncio's streams: a lease is one short request, one short reply and one
    ``done``; a transport, protocol, stream reader and writer per connection, a task per
    timed read (``wait_for``) and two more tasks to race the lease against the socket made
    ~15 loop turns and ~1.35 M instructions per lease. Here a read first just calls
    recv() (the request is usually there when the task first runs), waits on a reader
    callback only when the socket is empty, and a reply goes out with one send() (what the
    kernel does not take is sent from a writer callback, bounded by the send timeout).
    The reader stays registered while the connection is waited on; it goes when it fires
    with nobody waiting (level-triggered, it would fire on every turn).
    """

    __slots__ = (
        "_drained",
        "_fd",
        "_out",
        "_reading",
        "_waiter",
        "_writing",
        "closed",
        "creds",
        "eof",
        "error",
        "interrupt",
        "interrupted",
        "loop",
        "msgs",
        "sock",
        "write_error",
    )

    def __init__(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop, creds: tuple[int, int] | None
    ) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self.loop = loop
        self.creds = creds
        self.msgs = control.MessageReader(control.MAX_REQUEST, control.MAX_REQUEST_OBJECTS)
        self.eof = False  # the client closed its side (or reset the connection)
        self.error: Exception | None = None  # what ended a lease wait: garbage, a bad read
        self._waiter: asyncio.Future[bool] | None = None  # a read waiting for bytes
        self._reading = False  # _on_readable is registered with the loop
        self.interrupt: asyncio.Task[None] | None = None  # cancelled by input (watch())
        self.interrupted = False
        self._out = bytearray()  # written, not yet taken by the kernel
        self._writing = False
        self._drained: asyncio.Future[bool] | None = None
        self.write_error: OSError | None = None
        self.closed = False

    @property
    def who(self) -> str:
        return describe_peer(self.creds)

    def __str__(self) -> str:  # for log lines: formatted only when one is written
        return describe_peer(self.creds)

    async def next(self, timeout: float | None) -> dict[str, object] | None:
        """The next request, or None at the end of the connection (or after ``timeout``
        seconds with no complete request); ControlError when the bytes are not one."""
        while True:
            msg = self.msgs.next_message()
            if msg is not None:
                return msg
            if self.eof:
                return None
            if self._recv():
                continue
            fut: asyncio.Future[bool] = self.loop.create_future()
            self._waiter = fut
            self._start_reading()
            timer = self.loop.call_later(timeout, _expire, fut) if timeout is not None else None
            try:
                if not await fut:
                    return None  # timed out
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def _recv(self) -> bool:
        """One recv() into the message reader: False when the socket has nothing now."""
        try:
            data = self.sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise
            data = b""
        if not data:
            self.eof = True
            return True
        self.msgs.feed(data)  # ControlError past the request size limit
        return True

    def _start_reading(self) -> None:
        if not self._reading and not self.closed:
            self.loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def watch(self, task: asyncio.Task[None]) -> None:
        """Cancel ``task`` when the client sends anything or goes away (see _Conn.unwatch)."""
        self.interrupt = task
        self._start_reading()

    def unwatch(self) -> None:
        self.interrupt = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(True)
            return
        task = self.interrupt
        if task is not None:  # waiting for a lease: input (a whole message, or the end)
            try:  # ends the wait, as the client asked for nothing more
                if not self._recv():
                    return
                ended = self.eof or self.msgs.next_message() is not None
            except (control.ControlError, OSError) as e:
                self.error = e
                ended = True
            if ended:
                self.interrupt = None
                self.interrupted = True
                task.cancel()
            return
        self.loop.remove_reader(self._fd)
        self._reading = False

    def write(self, data: bytes) -> bool:
        """Send ``data``; True when part of it waits for the kernel (then drain())."""
        if self.closed:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed")
        if self._out:
            self._out += data
            return True
        sent = 0
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sent = self.sock.send(data)  # a closed peer: BrokenPipeError, a ConnectionError
        if sent == len(data):
            return False
        self._out += memoryview(data)[sent:]
        self._writing = True
        self.loop.add_writer(self._fd, self._on_writable)
        return True

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.write_error = e
            self._out.clear()
        else:
            del self._out[:sent]
            if self._out:
                return
        self.loop.remove_writer(self._fd)
        self._writing = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(True)

    async def drain(self, timeout: float) -> None:
        """Wait until the kernel took every byte written; TimeoutError after ``timeout``."""
        if self._out:
            fut: asyncio.Future[bool] = self.loop.create_future()
            self._drained = fut
            timer = self.loop.call_later(timeout, _expire, fut)
            try:
                if not await fut:
                    raise TimeoutError
            finally:
                self._drained = None
                timer.cancel()
        if self.write_error is not None:
            raise self.write_error

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._reading:
            self.loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self.loop.remove_writer(self._fd)
            self._writing = False
        self.sock.close()


def _find_on_path(name: str) -> str | None:
    """A ``hosts`` request's bare compiler name, looked up on the daemon's PATH."""
    found = hostos.which(name, os.environ.get("PATH", "/usr/bin:/bin"))
    return os.path.abspath(found) if found is not None else None
