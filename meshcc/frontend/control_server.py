"""The daemon's local control socket: status, hosts lines and compile leases.

Protocol: :mod:`meshcc.wire.control`. This module is the I/O side in the daemon's loop:

* :func:`open_control_socket` binds the Unix socket *before* the daemon drops root (the
  directory may be root-only to create), mode 0666 so every local user can connect.
* :class:`FingerprintCache` probes a client's compiler path once per (path, mtime, size,
  inode), in a worker thread, sharing a probe between concurrent requests; bounded LRU.
* :class:`LeaseBroker` hands out slots on matching peers: per-peer slots = the peer's
  announced job limit, counted here; the free-est peer among the best-ranked wins (fewest
  recent failures first). When every slot is busy, requests wait in FIFO order; a
  release, or the 0.5 s tick (peers that appear or vanish meanwhile), serves them.
* :class:`ControlServer` speaks the protocol; a lease is freed when its connection closes,
  whatever the client did (a ``kill -9`` closes the socket in the kernel).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshcc.compiler import toolchain
from meshcc.mesh.matching import ClientCompiler, Verdict
from meshcc.wire import control

log = logging.getLogger("meshcc.control")

MAX_CONNECTIONS = 4096
IDLE_TIMEOUT_S = 60.0  # a connection that holds no lease and sends nothing is closed
DISPATCH_TICK_S = 0.5
_READ_CHUNK = 64 * 1024


class ControlSocketError(Exception):
    """The control socket cannot be opened; ``str(e)`` says why (one line for the log)."""


class FingerprintError(Exception):
    """The client's compiler could not be fingerprinted (not a file, not a gcc, ...)."""


# ---------------------------------------------------------------- the socket


def open_control_socket(path: str) -> socket.socket:
    """Bind and listen on ``path`` (creating its directory); replace a stale socket.

    A live daemon already answering on ``path`` is a ControlSocketError: two daemons must
    not fight over one socket (the second keeps serving compiles without one).
    """
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    # Root's daemon serves every local user: 0755. A user's own daemon: 0700.
    mode = 0o755 if os.geteuid() == 0 else 0o700
    try:
        os.makedirs(parent, mode=mode, exist_ok=True)
    except OSError as e:
        raise ControlSocketError(f"cannot create {parent}: {e.strerror or e}") from None
    if os.geteuid() != 0 and parent.startswith("/tmp/meshcc-"):
        # A per-user dir in a shared /tmp: must be ours and private (or someone could
        # interpose a socket and hand our compiles to any host).
        st = os.lstat(parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ControlSocketError(f"{parent} is not a directory owned by uid {os.geteuid()}")
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ControlSocketError(f"cannot use {path}: {e.strerror or e}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: its daemon is gone
        else:
            raise ControlSocketError(f"another meshcc daemon is answering on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)  # any local user may ask for status or a lease
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ControlSocketError(f"cannot listen on {path}: {e.strerror or e}") from None
    return sock


def _peer_pid(sock: socket.socket | None) -> str:
    """``pid N uid U`` of a local client, for the log."""
    if sock is None:
        return "?"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        return f"pid {pid} uid {uid}"
    except OSError:
        return "?"


# ---------------------------------------------------------------- compiler fingerprints


def _driver(name: str, realpath: str) -> str:
    for n in (name, os.path.basename(realpath)):
        if n == "c++" or "g++" in n or n.endswith("++"):
            return "g++"
    for n in (name, os.path.basename(realpath)):
        if "gcc" in n:
            return "gcc"
    return "cc"


@dataclass(slots=True)
class FingerprintCache:
    """Probe results by (realpath, mtime, size, inode); an upgraded gcc is probed again."""

    max_entries: int = 64
    probe: Callable[[str], toolchain.Probe] = toolchain.probe
    _cache: collections.OrderedDict[tuple[object, ...], toolchain.Probe | str] = field(
        default_factory=collections.OrderedDict
    )
    _inflight: dict[tuple[object, ...], asyncio.Future[toolchain.Probe | str]] = field(
        default_factory=dict
    )

    async def get(self, cc: str, cc_path: str) -> ClientCompiler:
        """The fingerprint of ``cc_path`` invoked as ``cc``; FingerprintError if unusable."""
        if not os.path.isabs(cc_path):
            raise FingerprintError(f"{cc_path}: not an absolute path")
        try:
            real = os.path.realpath(cc_path)
            st = os.stat(real)
        except OSError as e:
            raise FingerprintError(f"{cc_path}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise FingerprintError(f"{cc_path}: not a regular file")
        if not st.st_mode & 0o111:
            raise FingerprintError(f"{cc_path}: not executable")
        key = (real, st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        result = self._cache.get(key)
        if result is not None:
            self._cache.move_to_end(key)
        else:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._inflight[key] = pending
                try:
                    result = await asyncio.to_thread(self._probe, real)
                finally:
                    del self._inflight[key]
                pending.set_result(result)
                self._cache[key] = result
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
            else:
                result = await asyncio.shield(pending)
        if isinstance(result, str):
            raise FingerprintError(result)
        name = os.path.basename(cc) or os.path.basename(cc_path)
        return ClientCompiler(name, result.version, result.target, result.binutils,
                              _driver(name, real))  # fmt: skip

    def _probe(self, path: str) -> toolchain.Probe | str:
        try:
            return self.probe(path)
        except toolchain.ToolchainError as e:
            return f"not a usable gcc: {e}"
        except Exception as e:  # never let a strange binary take the daemon down
            return f"cannot probe {path}: {e!r}"


# ---------------------------------------------------------------- leases


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot on a peer, held until :meth:`LeaseBroker.release`."""

    key: str
    host: str
    port: int
    protocol: int
    compiler: str

    def to_message(self) -> dict[str, object]:
        return control.lease_granted(self.host, self.port, self.protocol, self.compiler, self.key)


@dataclass(frozen=True, slots=True)
class Local:
    """Compile locally: no peer for this compiler, or (``held``) one of this box's own
    slots while every matching peer is busy, counted until the client's connection closes."""

    reason: str
    held: bool = False


LOCAL_KEY = "localhost"  # in_use key of this box's own share
LOCAL_SLOTS = 2  # distcc's default share for `localhost`, as `meshcc hosts` lists it


@dataclass(slots=True, eq=False)
class _Waiter:
    fp: ClientCompiler
    future: asyncio.Future[Grant | Local]
    since: float
    local_ok: bool = True


def no_peer_reason(verdicts: list[Verdict], off_reason: str | None) -> str:
    """Why nothing matched, in one line (the first few exclusions)."""
    if not verdicts:
        return f"no peers (discovery is off: {off_reason})" if off_reason else "no peers seen"
    shown = "; ".join(f"{v.peer.record.host}: {v.reason}" for v in verdicts[:3])
    more = f"; and {len(verdicts) - 3} more" if len(verdicts) > 3 else ""
    return f"no matching peer ({len(verdicts)} seen, all excluded: {shown}{more})"


class LeaseBroker:
    """Counts slots per peer and serves waiting requests in FIFO order."""

    def __init__(self, mesh: object, *, clock: Callable[[], float] = time.monotonic,
                 local_slots: int = LOCAL_SLOTS) -> None:
        self.mesh = mesh
        self.local_slots = local_slots
        self.in_use: dict[str, int] = {}
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        return sum(self.in_use.values())

    def _off_reason(self) -> str | None:
        status = getattr(self.mesh, "status", None)
        return getattr(status, "off_reason", None)

    def _pick(self, verdicts: list[Verdict], local_ok: bool = True) -> Grant | Local | None:
        """A free slot on the best peer; Local if nothing matches; None if all are busy."""
        best: tuple[tuple[int, int, int], Verdict] | None = None
        matching = 0
        for rank, v in enumerate(verdicts):
            if not v.included or v.address is None:
                continue
            matching += 1
            r = v.peer.record
            free = r.limit - self.in_use.get(r.key, 0)
            if free <= 0:
                continue
            score = (v.peer.job_failures, -free, rank)
            if best is None or score < best[0]:
                best = (score, v)
        if matching == 0:
            return Local(no_peer_reason(verdicts, self._off_reason()))
        if best is None:
            # Every matching peer is busy: this box compiles its own share too (peers
            # first, then `localhost/2`, as distcc walks its host list), else wait.
            if local_ok and self.in_use.get(LOCAL_KEY, 0) < self.local_slots:
                self.in_use[LOCAL_KEY] = self.in_use.get(LOCAL_KEY, 0) + 1
                return Local(f"all {matching} matching peers are busy: compiling here "
                             "(this box's share)", held=True)  # fmt: skip
            return None
        v = best[1]
        r = v.peer.record
        self.in_use[r.key] = self.in_use.get(r.key, 0) + 1
        return Grant(r.key, v.address or "", r.port, 2 if r.lzo else 1,
                     v.remote_name or "")  # fmt: skip

    async def acquire(self, fp: ClientCompiler, local_ok: bool = True) -> Grant | Local:
        """A grant now, Local now, or (all busy) wait in line; cancel-safe."""
        if not self.waiters:
            got = self._pick(self.mesh.explain(fp), local_ok)  # type: ignore[attr-defined]
            if got is not None:
                return got
        waiter = _Waiter(fp, asyncio.get_running_loop().create_future(), self._clock(),
                         local_ok)
        self.waiters.append(waiter)
        self._ensure_ticking()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                got = waiter.future.result()
                if isinstance(got, Grant):
                    self.release(got.key)  # granted just as the client went away
                elif got.held:
                    self.release(LOCAL_KEY)
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            raise

    def release(self, key: str) -> None:
        n = self.in_use.get(key, 0) - 1
        if n > 0:
            self.in_use[key] = n
        else:
            self.in_use.pop(key, None)
        if self.waiters:
            self.dispatch()

    def dispatch(self) -> None:
        """Serve waiters in order while slots last (one explain per distinct compiler)."""
        verdicts: dict[ClientCompiler, list[Verdict]] = {}
        exhausted: set[tuple[ClientCompiler, bool]] = set()
        for waiter in list(self.waiters):
            if waiter.future.done():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
                continue
            if (waiter.fp, waiter.local_ok) in exhausted:
                continue
            vs = verdicts.get(waiter.fp)
            if vs is None:
                vs = verdicts[waiter.fp] = self.mesh.explain(waiter.fp)  # type: ignore[attr-defined]
            got = self._pick(vs, waiter.local_ok)
            if got is None:
                exhausted.add((waiter.fp, waiter.local_ok))
                continue
            self.waiters.remove(waiter)
            waiter.future.set_result(got)

    def _ensure_ticking(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._tick(), name="meshcc-leases")

    async def _tick(self) -> None:
        """Peers appear, vanish or get backed off while requests wait: look again."""
        while self.waiters:
            await asyncio.sleep(DISPATCH_TICK_S)
            self.dispatch()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.set_result(Local("the daemon is stopping"))
        self.waiters.clear()


# ---------------------------------------------------------------- the server


class _Closed(Exception):
    """The client closed the connection."""


class ControlServer:
    """Serves :mod:`meshcc.wire.control` requests on the daemon's Unix socket."""

    def __init__(
        self,
        mesh: object,
        status: Callable[[], dict[str, object]],
        *,
        fingerprints: FingerprintCache | None = None,
        path: str = "",
    ) -> None:
        self.mesh = mesh
        self.status = status
        self.fingerprints = fingerprints or FingerprintCache()
        self.broker = LeaseBroker(mesh)
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

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

    async def hosts(self, req: control.HostsRequest) -> dict[str, object]:
        fp: ClientCompiler | None = None
        compiler: str | None = None
        cc_path = req.cc_path
        if req.cc and not cc_path:
            cc_path = _which(req.cc)
            if cc_path is None:
                return control.error_reply(f"{req.cc}: not found on the daemon's PATH")
        if cc_path:
            try:
                fp = await self.fingerprints.get(req.cc or cc_path, cc_path)
            except FingerprintError as e:
                return control.error_reply(str(e))
            compiler = fp.describe()
        verdicts = self.mesh.explain(fp)  # type: ignore[attr-defined]
        from meshcc.mesh.matching import hosts_line

        return {
            "ok": True,
            "line": hosts_line(verdicts),
            "verdicts": [v.to_dict() for v in verdicts],
            "status": self.status(),
            "compiler": compiler,
            "note": None,
        }

    async def lease(self, req: control.LeaseRequest) -> Grant | Local:
        try:
            fp = await self.fingerprints.get(req.cc, req.cc_path)
        except FingerprintError as e:
            return Local(str(e))
        return await self.broker.acquire(fp, req.local_ok)

    # -- one connection

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        who = _peer_pid(writer.get_extra_info("socket"))
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("control: refusing %s: %d connections already open", who,
                        len(self._connections))  # fmt: skip
            with contextlib.suppress(Exception):
                writer.write(control.encode(control.error_reply("too many connections")))
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer, who)
        except (ConnectionError, _Closed):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("control: internal error serving %s", who)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str
    ) -> None:
        msgs = control.MessageReader()

        async def send(msg: dict[str, object]) -> None:
            writer.write(control.encode(msg))
            await writer.drain()

        while True:
            try:
                msg = await self._next(reader, msgs, IDLE_TIMEOUT_S)
            except control.ControlError as e:
                log.warning("control: closing connection from %s: %s", who, e)
                with contextlib.suppress(Exception):
                    await send(control.error_reply(str(e)))
                return
            if msg is None:
                return
            try:
                req = control.decode_request(msg)
            except control.ControlError as e:
                log.warning("control: closing connection from %s: %s", who, e)
                await send(control.error_reply(str(e)))
                return
            if isinstance(req, control.StatusRequest):
                await send(self.status())
            elif isinstance(req, control.HostsRequest):
                await send(await self.hosts(req))
            elif isinstance(req, control.LeaseRequest):
                await self._lease(req, reader, writer, msgs, who)
                return
            else:
                log.warning("control: closing connection from %s: 'done' without a lease", who)
                await send(control.error_reply("'done' without a lease"))
                return

    async def _lease(
        self,
        req: control.LeaseRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        msgs: control.MessageReader,
        who: str,
    ) -> None:
        # Wait for the lease while watching the socket: a client that dies in the queue
        # must leave it at once.
        lease = asyncio.ensure_future(self.lease(req))
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
        if isinstance(got, Local) and got.held:
            try:
                log.debug("control: %s compiles %s here (own share): %s", who, req.source,
                          got.reason)  # fmt: skip
                writer.write(control.encode(control.lease_local(got.reason, hold=True)))
                await writer.drain()
                await eof  # the local compiler holds the connection while it runs
            except (control.ControlError, ConnectionError, _Closed):
                pass
            finally:
                eof.cancel()
                self.broker.release(LOCAL_KEY)
            return
        if isinstance(got, Local):
            eof.cancel()
            log.debug("control: %s compiles %s locally: %s", who, req.source, got.reason)
            writer.write(control.encode(control.lease_local(got.reason)))
            await writer.drain()
            return
        try:
            log.debug("control: %s leases %s for %s (%s)", who, got.key, req.source, req.cc)
            writer.write(control.encode(got.to_message()))
            await writer.drain()
            done = await eof  # held until 'done' or the connection closes
        except control.ControlError as e:
            log.warning("control: closing connection from %s: %s", who, e)
            done = None
        except (ConnectionError, _Closed):
            done = None
        finally:
            eof.cancel()
            self.broker.release(got.key)
        if isinstance(done, control.DoneMessage):
            self.mesh.report_job_result(  # type: ignore[attr-defined]
                got.key, done.ok, connect_failed=done.connect_failed
            )
            if not done.ok:
                log.info("job %s on %s failed%s: %s", req.source, got.host,
                         " (connect failed)" if done.connect_failed else "",
                         done.reason or "no reason given")  # fmt: skip

    async def _wait_eof(
        self, reader: asyncio.StreamReader, msgs: control.MessageReader
    ) -> control.DoneMessage | None:
        """The lease's 'done' message, or None when the client closes without one."""
        while True:
            try:
                msg = await self._next(reader, msgs, None)
            except _Closed:
                return None
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


def _which(name: str) -> str | None:
    if "/" in name:
        return os.path.abspath(name)
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None
