"""The zygote: a warm per-user Python process that runs compile jobs for the C launcher.

Why: starting the interpreter costs ~9 ms of CPU per compile (with ``-IS``), more than
distcc's whole client (~3.5 ms). A process that has already imported the client's modules
and forks a child per job pays only the job's own work (~3.5-4 ms). The C launcher
(``packaging/launcher/meshcc-launcher.c``, installed as ``meshcc-gcc`` ...) connects here,
hands over its argv, environment, umask, cwd, signal mask and ignored signals and its open
descriptors (``SCM_RIGHTS``), and relays signals and the exit status; this process forks a
worker that takes all of that over and runs :func:`meshcc.client.wrapper.launch`, the same
code as the Python launcher.

Isolation from the zygote's own state:

- what a request cannot carry (namespaces, root, credentials, limits, priority, affinity,
  cgroup, capabilities, no_new_privs, seccomp, LSM label, the install, the interpreter,
  the locale) is in the zygote's *key*: the launcher
  computes it, names the socket after its hash and sends it whole; a zygote serves only
  its own key, so a job never runs with another context's inheritance;
- the zygote itself never runs a job: each worker is forked from the pristine state right
  after the imports, so no previous job's module state (outcome, slots, state file) exists;
- the environment is replaced in the C ``environ`` (an exec'd compiler sees it) and in
  ``posix.environ``, the dict ``os.environ`` and :mod:`meshcc.posixenv` both read, plus
  what the interpreter's own start-up would have added (C locale coercion);
- the wrapper's per-process globals (its pid, its start time) are reset.

Safety: the socket lives in a private directory (0700, ours, not a symlink: both sides
check), and every connection's peer uid (``SO_PEERCRED``) must be ours. One zygote per key:
it holds an ``flock`` on ``<socket>.lock`` (passed by the launcher that started it) for its
whole life. It exits after :data:`IDLE_SECONDS` without jobs, removing its socket first.

Protocol (native byte order; one request per connection):
request ``MZY1`` u32 body-length, body: u32 key-length, key, u64 launcher start
(CLOCK_MONOTONIC ns), u32 umask, u64 blocked signals, u64 ignored signals, u32 n, n u32
descriptor numbers (the ``SCM_RIGHTS`` array is the cwd then those), u32 argc, u32 envc,
then argc + envc NUL-terminated strings. Replies: ``P`` u32 pid (from the worker, once it
has taken everything over), answered by the launcher's ``G`` (go: the job now runs; a
worker that reads anything else, or the end, exits without running it: the launcher gave
up after ``HANDOVER_TIMEOUT_S`` and runs the job itself), then ``X`` i32 wait-status u64 user-us
u64 system-us (the worker's tree: from the worker itself as the job returns, before its
teardown; from ``wait4`` when it exec'd the compiler or died, and after an early one too,
which goes unread: the launcher reads one); or ``F`` (no worker could be forked, or
it could not take the job over) or ``V`` (another key): the launcher then runs the Python
launcher. A request ``MZYS`` gets one JSON line of counters (tests and benchmarks).

Differences from the Python launcher a user can see: the job's processes are the zygote's
descendants, not the launcher's (``time make`` and other RUSAGE_CHILDREN accounting miss
their CPU; ``strace -f``/``perf`` on the build do not follow into them: MESHCC_ZYGOTE=0);
the verbose timeline's ``python`` figure is the hand-over (launcher start to the worker
running), not an interpreter's start; the worker's pid is the one in ``meshcc[PID]`` lines
and distcc's ``binstate_PID`` files. A confinement the kernel does not show in what the key
reads (Landlock, say) is not seen: such sandboxes want MESHCC_ZYGOTE=0.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import gc
import json
import os
import posix
import resource
import selectors
import signal
import socket
import struct
import sys
import time

IDLE_SECONDS = 30.0  # no job for this long: exit (the next launcher starts a new one)
KILL_GRACE = 2.0  # a worker whose launcher vanished gets SIGTERM, then SIGKILL after this
MAX_REQUEST = 8 << 20
MAX_FDS = 253  # SCM_MAX_FD
GC_EVERY = 1000  # jobs between the zygote's own garbage collections
LOCK_FD = 3  # the key's lock, inherited from the launcher that started this zygote

_HEAD = struct.Struct("=4sI")
_FIXED = struct.Struct("=QIQQI")
_COUNTS = struct.Struct("=II")
_EXIT = struct.Struct("=ciQQ")

# The modules a job imports on its way (lazily, in the wrapper): imported once here, so a
# worker finds them loaded. Each is optional: a missing codec only costs its import later.
WARM_MODULES = (
    "meshcc.client.wrapper",
    "meshcc.client.decisions",
    "meshcc.client.outcome",
    "meshcc.client.slots",
    "meshcc.client.hostpool",
    "meshcc.client.direct",
    "meshcc.client.hashcache",
    "meshcc.compiler.args",
    "meshcc.compiler.policy",
    "meshcc.compiler.hostspec",
    "meshcc.transport.client",
    "meshcc.transport.control_client",
    "meshcc.wire.control_core",
    "meshcc.compression",
    "meshcc.compression.choose",
    "meshcc.compression.kept",
    "meshcc.compression._lzoscan",
    "meshcc.wire.codecs",
    "meshcc.wire.outcome",
    "meshcc.exitcodes",
    "meshcc.hostos",
)


def warm() -> None:
    """Import what a job imports on its way (:data:`WARM_MODULES`) and load the codecs'
    libraries (liblzo2 through ``ctypes``, zstd, lz4): otherwise every worker that
    compresses loads them again, ~1 ms of CPU per ``,lzo`` job. Each is optional: one
    missing only costs a worker that needs it the attempt."""
    for module in WARM_MODULES:
        try:
            __import__(module)
        except ImportError:
            pass
    try:
        from meshcc import compression
    except ImportError:
        return
    for codec in compression.Codec.ALL:
        try:
            compression.available(codec)
        except Exception:  # noqa: BLE001 - a broken codec is the worker's to report
            pass


class _Request:
    """One parsed job request."""

    __slots__ = ("argv", "blocked", "env", "ignored", "t0", "targets", "umask")

    def __init__(self, body: bytes) -> None:
        (klen,) = struct.unpack_from("=I", body)
        pos = 4 + klen
        self.t0, self.umask, self.blocked, self.ignored, n = _FIXED.unpack_from(body, pos)
        pos += _FIXED.size
        self.targets = list(struct.unpack_from(f"={n}I", body, pos))
        pos += 4 * n
        argc, envc = _COUNTS.unpack_from(body, pos)
        pos += _COUNTS.size
        parts = body[pos:].split(b"\0")
        if len(parts) < argc + envc + 1 or argc < 1:
            raise ValueError("short request")
        self.argv = parts[:argc]
        self.env = parts[argc : argc + envc]


class _Conn:
    """A launcher's connection: its request as it arrives, then its running worker."""

    __slots__ = ("buf", "fds", "go", "pid", "sock", "term_at")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: list[int] = []
        self.pid = 0
        self.go = -1  # the pipe on which the worker waits for its launcher's "G"
        self.term_at = 0.0  # when SIGTERM was sent to a worker whose launcher vanished

    def close_go(self) -> None:
        if self.go >= 0:
            _close(self.go)
            self.go = -1


class Zygote:
    """The server loop (single-threaded: a selector over the listener, the connections and
    a wakeup pipe for SIGCHLD/SIGTERM)."""

    def __init__(self, path: str, key: bytes, startup_env: dict[bytes, bytes]) -> None:
        self.path = path
        self.key = key
        self.startup_env = startup_env
        self.uid = posix.getuid()
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}  # by socket fd
        self.workers: dict[int, _Conn] = {}  # by worker pid
        self.jobs = 0
        self.refused = 0  # requests for another key or protocol (the launcher falls back)
        self.child_us = 0
        self.child_minflt = 0
        self.last = time.monotonic()
        self.stop = False
        self.idle = IDLE_SECONDS
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ino = 0
        rfd, self.wake_w = posix.pipe()
        self.wake_r = rfd
        for fd in (rfd, self.wake_w):
            os.set_blocking(fd, False)

    # ------------------------------------------------------------------ set-up

    def bind(self) -> None:
        """Bind our socket (we hold the key's lock, so a file there is a dead zygote's)."""
        try:
            posix.unlink(self.path)
        except FileNotFoundError:
            pass
        old = posix.umask(0o077)
        try:
            self.listener.bind(self.path)
        finally:
            posix.umask(old)
        self.ino = posix.lstat(self.path).st_ino
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _noop)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_term(self, signum: int, frame: object) -> None:
        self.stop = True

    # ------------------------------------------------------------------ the loop

    def serve(self) -> None:
        try:
            while not self.stop:
                timeout = self._timeout()
                if timeout is not None and timeout <= 0:
                    if not self.conns and not self.workers:
                        break
                    timeout = 1.0
                for key, _ in self.sel.select(timeout):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj == self.wake_r:
                        self._drain_wakeup()
                    else:
                        self._readable(key.data)
                self._reap()
                self._escalate()
        finally:
            self._shutdown()

    def _timeout(self) -> float | None:
        now = time.monotonic()
        if self.conns or self.workers:
            self.last = now
            pending = [c.term_at + KILL_GRACE - now for c in self.workers.values() if c.term_at]
            return max(0.0, min(pending)) if pending else None
        return self.last + self.idle - now

    def _drain_wakeup(self) -> None:
        try:
            while posix.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            _pid, uid, _gid = struct.unpack("=iII", creds)
            if uid != self.uid:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)
            # The launcher sends its request as soon as it is connected, so it is nearly
            # always here already: read it now, not after another turn of the selector.
            self._readable(conn)

    def _drop(self, conn: _Conn) -> None:
        for fd in conn.fds:
            _close(fd)
        conn.fds = []
        conn.close_go()
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _readable(self, conn: _Conn) -> None:
        if conn.pid:
            # The launcher sends "G" once it has the worker's pid (the worker, which cannot
            # read the socket we watch, waits for it on its pipe), then nothing more: an end
            # is the launcher's (killed, or it gave up on a slow hand-over).
            try:
                data = conn.sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data[:1] == b"G" and conn.go >= 0:
                _send(conn.go, b"G")
                conn.close_go()
            if not data:
                self._abandon(conn)
            return
        try:
            data, ancdata, _flags, _addr = conn.sock.recvmsg(
                1 << 16, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                conn.fds.extend(fds)
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        if len(conn.buf) < _HEAD.size:
            return
        magic, length = _HEAD.unpack_from(conn.buf)
        if magic == b"MZYS":
            self._stats(conn)
            return
        if magic != b"MZY1" or length > MAX_REQUEST:
            self.refused += 1
            self._reply(conn, b"V")
            self._drop(conn)
            return
        if len(conn.buf) < _HEAD.size + length:
            return
        body = bytes(conn.buf[_HEAD.size : _HEAD.size + length])
        conn.buf = bytearray()
        (klen,) = struct.unpack_from("=I", body)
        try:
            req = _Request(body)
        except (struct.error, ValueError):
            req = None
        if body[4 : 4 + klen] != self.key or req is None or len(conn.fds) != len(req.targets) + 1:
            self.refused += 1
            self._reply(conn, b"V")
            self._drop(conn)
            return
        self._fork(conn, req)

    def _fork(self, conn: _Conn, req: _Request) -> None:
        go_r = -1
        try:
            go_r, conn.go = posix.pipe2(os.O_CLOEXEC)
            pid = os.fork()
        except OSError:  # out of processes or memory, for now: this job runs in Python
            if go_r >= 0:
                _close(go_r)
            self._reply(conn, b"F")
            self._drop(conn)
            return
        if pid == 0:  # pragma: no cover - the worker (measured by the integration tests)
            code = 127
            try:
                code = _worker(self, conn, req, go_r)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except KeyboardInterrupt:  # as the interpreter ends on one: by the signal
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                posix.kill(posix.getpid(), signal.SIGINT)
                code = 128 + signal.SIGINT
            except BaseException:  # noqa: BLE001 - as the interpreter: the traceback, status 1
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        _close(go_r)
        self.jobs += 1
        if self.jobs % GC_EVERY == 0:
            gc.collect()
        conn.pid = pid
        self.workers[pid] = conn
        try:
            posix.setpgid(pid, pid)  # also done in the worker: whichever runs first
        except OSError:
            pass
        for fd in conn.fds:
            _close(fd)
        conn.fds = []

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            utime = int(ru.ru_utime * 1e6)
            stime = int(ru.ru_stime * 1e6)
            self.child_us += utime + stime
            self.child_minflt += ru.ru_minflt
            self._reply(conn, _EXIT.pack(b"X", _wait_status(status), utime, stime))
            self._drop(conn)

    def _abandon(self, conn: _Conn) -> None:
        """The launcher is gone (SIGKILL, say): end its job's whole process group (a worker
        still waiting for its "G" sees its pipe's end and runs nothing)."""
        conn.close_go()
        if not conn.term_at:
            conn.term_at = time.monotonic()
            _killpg(conn.pid, signal.SIGTERM)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _escalate(self) -> None:
        now = time.monotonic()
        for conn in self.workers.values():
            if conn.term_at and now - conn.term_at >= KILL_GRACE:
                _killpg(conn.pid, signal.SIGKILL)

    def _reply(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.setblocking(True)
            conn.sock.sendall(data)
        except OSError:
            pass

    def _stats(self, conn: _Conn) -> None:
        stats = {
            "pid": posix.getpid(),
            "jobs": self.jobs,
            "refused": self.refused,
            "running": len(self.workers),
            "children_cpu_us": self.child_us,
            "self_cpu_us": int(time.process_time() * 1e6),
            "children_minflt": self.child_minflt,
            "self_minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
        }
        self._reply(conn, json.dumps(stats).encode() + b"\n")
        self._drop(conn)

    def _shutdown(self) -> None:
        """Stop taking jobs (the socket goes first, so new launchers start afresh), end
        the connections that were waiting, and let running workers finish on their own:
        their launchers then see our end and report it."""
        try:
            if posix.lstat(self.path).st_ino == self.ino:
                posix.unlink(self.path)
        except OSError:
            pass
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.listener)
        self.listener.close()
        for conn in list(self.conns.values()):
            if not conn.pid:
                self._drop(conn)
        deadline = time.monotonic() + 60
        while self.workers and time.monotonic() < deadline:
            # Jobs in flight still get their exit status.
            for key, _ in self.sel.select(1.0):
                if key.fileobj == self.wake_r:
                    self._drain_wakeup()
                elif key.fileobj is not self.listener and key.data is not None:
                    self._readable(key.data)
            self._reap()
            self._escalate()


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD: the wakeup pipe is what matters; the handler only has to exist."""


def _close(fd: int) -> None:
    try:
        posix.close(fd)
    except OSError:
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _wait_status(status: int) -> int:
    return status if status < 1 << 31 else status - (1 << 32)


# --------------------------------------------------------------------------- the worker


def _worker(zyg: Zygote, conn: _Conn, req: _Request, go_r: int) -> int:  # pragma: no cover
    """Take the launcher's context over, tell it our pid, run the job; returns only when
    the take-over failed (the launcher then runs the Python launcher)."""
    sock_fd = conn.sock.fileno()
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        posix.setpgid(0, 0)
        sock_fd, go_r = _take_fds(conn.fds, req.targets, [sock_fd, go_r])
        _install_env(req.env, zyg.startup_env)
        posix.umask(req.umask)
        for ignored in _bits(req.ignored):
            if ignored not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(ignored, signal.SIG_IGN)
                except (OSError, ValueError):
                    pass
    except (OSError, ValueError):
        _send(sock_fd, b"F")
        return 127
    _send(sock_fd, b"P" + struct.pack("=I", posix.getpid()))
    # The connection stays open here (close-on-exec: a compiler exec'd in our place does
    # not inherit it) for the job's end, which we tell the launcher ourselves.
    try:
        go = posix.read(go_r, 1)
    except OSError:
        go = b""
    if go != b"G":  # the launcher gave up on the hand-over and runs the job itself
        posix._exit(0)
    posix.close(go_r)
    from meshcc.client import wrapper

    argv = [os.fsdecode(a) for a in req.argv]
    sys.argv = argv
    wrapper._PID = posix.getpid()
    wrapper._T0 = req.t0 / 1e9
    # The timeline's "python" figure: here, the launcher's start to this point (the hand-over).
    wrapper._PY_MS = (time.monotonic() - wrapper._T0) * 1000
    signal.pthread_sigmask(signal.SIG_SETMASK, _bits(req.blocked))
    wrapper.launch(on_exit=lambda code: _job_ended(sock_fd, code))


def _job_ended(sock_fd: int, code: int) -> None:
    """Tell the launcher the job's end (``X``), with every signal blocked from here on.

    Why block: once the launcher has read ``X`` it exits, and we see its connection end and
    may take that for a launcher that vanished (:meth:`Zygote._abandon`: ``SIGTERM`` to
    this worker's group) before this worker has exited. The job is over and its status
    told, so a signal has nothing left to stop; caught, it would raise through the
    wrapper's handler and print a traceback on the user's terminal after the job."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    _send(sock_fd, _exit_record(code))


def _exit_record(code: int) -> bytes:
    """The ``X`` record of a job that ends with ``code``, sent by the worker itself before
    it exits: the launcher (and make) need not wait for the worker's teardown (freeing a
    forked interpreter's memory) and for us to be woken, reap it and reply: ~0.5-1 ms of
    every job. A worker that execs the compiler, or dies of a signal, never gets here; its
    end reaches the launcher from :meth:`Zygote._reap` as before, and the second ``X``
    that one sends after an early one goes unread (the launcher reads one and exits)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    utime = int((own.ru_utime + waited.ru_utime) * 1e6)
    stime = int((own.ru_stime + waited.ru_stime) * 1e6)
    return _EXIT.pack(b"X", (code & 0xFF) << 8, utime, stime)


def _send(fd: int, data: bytes) -> None:
    try:
        posix.write(fd, data)
    except OSError:
        pass


def _bits(mask: int) -> list[int]:
    return [i + 1 for i in range(64) if mask >> i & 1 and i + 1 < signal.NSIG]


def _take_fds(received: list[int], targets: list[int], own: list[int]) -> list[int]:
    """Chdir to the launcher's cwd (``received[0]``) and put its descriptors at their
    numbers; everything else of the zygote's (listener, other connections) is closed but
    ``own`` (the worker's connection and go pipe), which move above them. Returns their
    new numbers."""
    base = max([*targets, *received, *own, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base) for fd in received]
    own = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base) for fd in own]
    posix.closerange(0, base)
    posix.fchdir(moved[0])
    for src, dst in zip(moved[1:], targets, strict=True):
        posix.dup2(src, dst, True)
    keep = sorted({*targets, *own})
    low = 0
    for fd in keep:
        if fd > low:
            posix.closerange(low, fd)
        low = fd + 1
    posix.closerange(low, 1 << 20)
    return own


def _install_env(entries: list[bytes], startup: dict[bytes, bytes]) -> None:
    """Make the launcher's environment ours, as the interpreter's start would have: in the
    C ``environ`` (exec'd compilers), in ``posix.environ`` (``os.environ``, posixenv), and
    with what the interpreter's start-up adds itself (C locale coercion: ``LC_CTYPE``)."""
    data = posix.environ
    for name in list(data):
        posix.unsetenv(name)
    data.clear()
    for entry in entries:
        name, _, value = entry.partition(b"=")
        posix.putenv(name, value)
        data[name] = value
    for name, value in startup.items():
        posix.putenv(name, value)
        data[name] = value


# --------------------------------------------------------------------------- entry


def main(argv: list[str]) -> int:
    """``zygote SOCKET KEY [NAME=VALUE ...]``: started detached by the C launcher, with the
    key's lock on fd 3 and an environment of just the NAME=VALUE locale variables."""
    if len(argv) < 2:
        print("usage: zygote SOCKET KEY [NAME=VALUE ...]", file=sys.stderr)
        return 2
    path, key = argv[0], os.fsencode(argv[1])
    given = {}
    for item in argv[2:]:
        name, _, value = os.fsencode(item).partition(b"=")
        given[name] = value
    # What the interpreter's start-up changed in the environment it was given.
    startup = {k: v for k, v in posix.environ.items() if given.get(k) != v}
    directory = os.path.dirname(path)
    st = os.lstat(directory)
    if not (
        (st.st_mode & 0o170000) == 0o040000
        and st.st_uid == posix.getuid()
        and st.st_mode & 0o077 == 0
    ):
        return 1
    # The key's lock, taken by the launcher that started us, on fd 3: we must hold it (the
    # same open file, so this succeeds) or another zygote serves this key.
    try:
        lock = os.fstat(LOCK_FD)
        named = os.stat(path + ".lock")
        fcntl.flock(LOCK_FD, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 1
    if (lock.st_dev, lock.st_ino) != (named.st_dev, named.st_ino):
        return 1
    warm()
    zyg = Zygote(path, key, startup)
    idle = given.get(b"MESHCC_ZYGOTE_IDLE", b"")
    if idle.isdigit() and int(idle) > 0:
        zyg.idle = float(int(idle))
    zyg.bind()
    gc.collect()
    gc.freeze()  # the warm heap stays shared with the workers (no copy-on-write by gc)
    # No automatic collections between forks either (each touches the young objects:
    # copy-on-write faults in the next fork); the loop collects every GC_EVERY jobs.
    gc.disable()
    zyg.serve()
    return 0
