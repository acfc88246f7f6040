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
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._per_user: dict[int, int] = {}
        self.direct: DirectCache | None = None  # direct mode's manifests (daemon/main.py)

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._on_connection, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.broker.stop()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
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

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        creds = peer_credentials(writer.get_extra_info("socket"))
        who = describe_peer(creds)
        uid = creds[1] if creds is not None else -1
        refusal = None
        if len(self._connections) >= self.limits.max_connections:
            refusal = f"the daemon holds {len(self._connections)} connections, its limit"
        elif self._per_user.get(uid, 0) >= self.limits.max_per_user:
            refusal = f"uid {uid} holds {self._per_user[uid]} connections, the per-user limit"
        if refusal is not None:
            log.warning("control: refusing %s: %s", who, refusal)
            with contextlib.suppress(Exception):
                writer.write(control.encode(control.ErrorReply(refusal).to_message()))
            writer.close()
            return
        self._connections.add(task)
        self._per_user[uid] = self._per_user.get(uid, 0) + 1
        try:
            await self._serve(reader, writer, who, uid)
        except ConnectionError:
            pass
        except TimeoutError:
            log.warning(
                "control: %s did not read its reply within %gs; closing",
                who,
                self.limits.send_timeout_s,
            )
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("control: internal error serving %s", who)
        finally:
            self._connections.discard(task)
            left = self._per_user.get(uid, 1) - 1
            if left > 0:
                self._per_user[uid] = left
            else:
                self._per_user.pop(uid, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str, uid: int
    ) -> None:
        msgs = control.MessageReader(control.MAX_REQUEST, control.MAX_REQUEST_OBJECTS)

        async def send(reply: control.Reply) -> None:
            await self._send(writer, reply)

        while True:
            try:
                msg = await self._next(reader, msgs, self.limits.idle_timeout_s)
            except control.ControlError as e:
                log.warning("control: closing connection from %s: %s", who, e)
                with contextlib.suppress(Exception):
                    await send(control.ErrorReply(str(e)))
                return
            if msg is None:
                return
            try:
                req = control.decode_request(msg)
            except control.ControlError as e:
                log.warning("control: closing connection from %s: %s", who, e)
                await send(control.ErrorReply(str(e)))
                return
            if isinstance(req, control.StatusRequest):
                await send(self.status())
            elif isinstance(req, control.HostsRequest):
                await send(await self.hosts(req, uid))
            elif isinstance(req, control.LeaseRequest):
                await self._lease(req, reader, writer, msgs, who, uid)
                return
            elif isinstance(req, control.DirectRequest):
                if not await self._direct(req, reader, writer, msgs, who, uid):
                    return
            else:
                log.warning("control: closing connection from %s: 'done' without a lease", who)
                await send(control.ErrorReply("'done' without a lease"))
                return

    async def _lease(
        self,
        req: control.LeaseRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        msgs: control.MessageReader,
        who: str,
        uid: int,
    ) -> None:
        # Wait for the lease while watching the socket: a client that dies in the queue
        # must leave it at once.
        lease = asyncio.ensure_future(self.lease(req, uid))
        eof = asyncio.ensure_future(self._wait_eof(reader, msgs))
        try:
            await asyncio.wait({lease, eof}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not lease.done():
                lease.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lease
        if not lease.done() or lease.cancelled():
            if eof.done() and not eof.cancelled() and eof.exception() is not None:
                log.warning("control: closing connection from %s: %s", who, eof.exception())
            eof.cancel()
            log.debug("control: %s left while waiting for a lease", who)
            return
        got = lease.result()
        if isinstance(got, control.ErrorReply):
            eof.cancel()
            log.warning("control: %s: lease for %s refused: %s", who, req.cc_path, got.error)
            await self._send(writer, got)
            return
        if isinstance(got, Local) and got.held:
            try:
                log.debug(
                    "control: %s compiles %s here (own share): %s", who, req.source, got.reason
                )
                await self._send(writer, control.LeaseLocal(got.reason, hold=True))
                await eof  # the local compiler holds the connection while it runs
            except (control.ControlError, ConnectionError, TimeoutError):
                pass
            finally:
                eof.cancel()
                self.broker.release(LOCAL_KEY)
            return
        if isinstance(got, Local):
            eof.cancel()
            log.debug("control: %s compiles %s locally: %s", who, req.source, got.reason)
            await self._send(writer, control.LeaseLocal(got.reason))
            return
        done: control.DoneMessage | None = None
        try:
            log.debug("control: %s leases %s for %s (%s)", who, got.key, req.source, req.cc)
            grant = self._granted(got)
            await self._send(writer, grant)
            done = await eof  # held until 'done' or the connection closes
        except control.ControlError as e:
            log.warning("control: closing connection from %s: %s", who, e)
            done = None
        except (ConnectionError, TimeoutError):
            done = None
        finally:
            eof.cancel()
            busy = isinstance(done, control.DoneMessage) and done.busy
            self.broker.release(got.key, busy=busy)
        if isinstance(done, control.DoneMessage) and done.link is not None:
            self.links.record(got.key, *done.link)
        if isinstance(done, control.DoneMessage) and done.busy:
            log.debug("control: %s was busy for %s; not handing it out for a moment", got.key, who)
        elif isinstance(done, control.DoneMessage):
            self.mesh.report_job_result(got.key, done.ok, connect_failed=done.connect_failed)
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

    async def _direct(
        self,
        req: control.DirectRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        msgs: control.MessageReader,
        who: str,
        uid: int,
    ) -> bool:
        """Direct mode (:mod:`meshcc.cache.direct`); False when the connection must end."""
        direct = self.direct
        if direct is None or uid < 0:
            if req.op != "direct_put":
                await self._send(writer, control.DirectReply(off=True))  # keeps none
            return req.op != "direct_put"
        if req.op == "direct_get":
            manifest = await direct.lookup(uid, req.key, req.mesh, req.cc)
            await self._send(writer, control.DirectReply(manifest))
            return True
        if req.op == "direct_result":
            blob = await asyncio.to_thread(direct.result, uid, req.key)
            if blob is None:
                await self._send(writer, control.ErrorReply("no such result"))
                return True
            log.info("direct: %s: hit for %s", who, req.source or req.key)
            part = control.DIRECT_REPLY_PART
            for at in range(0, len(blob), part):
                more = at + part < len(blob)
                await self._send(writer, control.DirectReply(data=blob[at : at + part], more=more))
            return True
        # direct_put: the parts follow as messages of their own, up to a bound.
        parts = [req.data]
        size = len(req.data)
        more = req.more
        limit = direct.store.max_entry + 2 * 1024 * 1024
        while more:
            msg = await self._next(reader, msgs, self.limits.idle_timeout_s)
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
            log.info("direct: %s: not stored for %s: %s", who, req.source or req.key, e)
        return True

    async def _send(self, writer: asyncio.StreamWriter, reply: control.Reply) -> None:
        """Write one reply; TimeoutError when the client does not take it in time (a client
        that never reads must not hold the daemon's buffers and a task forever)."""
        writer.write(control.encode(reply.to_message()))
        await asyncio.wait_for(writer.drain(), self.limits.send_timeout_s)

    async def _wait_eof(
        self, reader: asyncio.StreamReader, msgs: control.MessageReader
    ) -> control.DoneMessage | None:
        """The lease's 'done' message, or None when the client closes without one."""
        while True:
            msg = await self._next(reader, msgs, None)
            if msg is None:
                return None
            req = control.decode_request(msg)
            if isinstance(req, control.DoneMessage):
                return req
            raise control.ControlError(f"only 'done' may follow a lease, not {msg.get('op')!r}")

    @staticmethod
    async def _next(
        reader: asyncio.StreamReader, msgs: control.MessageReader, timeout: float | None
    ) -> dict[str, object] | None:
        while True:
            msg = msgs.next_message()
            if msg is not None:
                return msg
            try:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), timeout)
            except TimeoutError:
                return None
            except OSError as e:
                if e.errno in (errno.ECONNRESET, errno.EPIPE):
                    return None
                raise
            if not data:
                return None
            msgs.feed(data)


def _find_on_path(name: str) -> str | None:
    """A ``hosts`` request's bare compiler name, looked up on the daemon's PATH."""
    found = hostos.which(name, os.environ.get("PATH", "/usr/bin:/bin"))
    return os.path.abspath(found) if found is not None else None
