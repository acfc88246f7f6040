"""The zygote: a warm per-user Python process that runs compile jobs for the C launcher.

Why: starting the interpreter costs ~9 ms of CPU per compile (with ``-IS``), more than
distcc's whole client (~3.5 ms). A process that has already imported the client's modules
and forks a child per job pays only the job's own work (~3.5-4 ms). The C launcher
(``packaging/launcher/meshcc-launcher.c``, installed as ``meshcc-gcc`` ...) connects here,
hands over its argv, environment, umask, cwd, signal mask and ignored signals and its open
descriptors (``SCM_RIGHTS``), and relays signals and the exit status. A child of this
process, forked ahead of time as a *spare*, accepts the connection itself, takes all of
that over and runs :func:`meshcc.client.wrapper.launch`, the same code as the Python
launcher; this process then forks the next spare, watches the running jobs' launchers and
reaps their workers (:mod:`meshcc.client.zygote_worker` says why, and what the two send
each other). ``ps`` therefore shows two zygote processes per key: the zygote and its spare.

Isolation from the zygote's own state:

- what a request cannot carry (namespaces, root, credentials, limits, priority, affinity,
  cgroup, capabilities, no_new_privs, seccomp, LSM label, the install, the interpreter,
  the locale) is in the zygote's *key*: the launcher
  computes it, names the socket after its hash and sends it whole; a zygote serves only
  its own key, so a job never runs with another context's inheritance;
- the zygote itself never runs a job: each spare is forked from its state after the
  imports, so no previous job's module state (outcome, slots, state file) exists; a spare
  keeps only the listener and its channel to the zygote, and dies with the zygote;
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
which goes unread: the launcher reads one); or ``F`` (no spare could be forked, or
it could not take the job over) or ``V`` (another key): the launcher then runs the Python
launcher. A request ``MZYS`` gets one JSON line of counters (tests and benchmarks); the
spare that takes it hands it to the zygote.

Differences from the Python launcher a user can see: the job's processes are the zygote's
descendants, not the launcher's (``time make`` and other RUSAGE_CHILDREN accounting miss
their CPU; ``strace -f``/``perf`` on the build do not follow into them: MESHCC_ZYGOTE=0);
the verbose timeline's ``python`` figure is the hand-over (launcher start to the worker
running), not an interpreter's start; the worker's pid is the one in ``meshcc[PID]`` lines
and distcc's ``binstate_PID`` files. A confinement the kernel does not show in what the key
reads (Landlock, say) is not seen: such sandboxes want MESHCC_ZYGOTE=0.
"""

from __future__ import annotations

import contextlib
import errno
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

from meshcc.client import zygote_worker
from meshcc.client.zygote_worker import EXIT_RECORD

IDLE_SECONDS = 30.0  # no job for this long: exit (the next launcher starts a new one)
KILL_GRACE = 2.0  # a worker whose launcher vanished gets SIGTERM, then SIGKILL after this
GC_EVERY = 1000  # jobs between the zygote's own garbage collections
LOCK_FD = 3  # the key's lock, inherited from the launcher that started this zygote
SPARE_RETRY_MAX_S = 5.0  # the longest wait before forking a spare again after failures
HANDING_MAX = 64  # hand-overs in progress (a connection taken, no job yet): more get "F"
# Descriptors kept free beyond one per job: a counters request's connection in flight, and
# the accept that answers "F" when there is no room for a job (it must not fail for want of
# one, or the listener would stay readable and the loop spin).
DESCRIPTOR_SLACK = 4
# An "F" accept that fails for want of descriptors or memory (the limit lowered under us
# by prlimit, or the system's file table full): the listener is not watched for
# zygote_worker.ACCEPT_PAUSE_S, rather than spun on.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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


class _Conn:
    """A running job's launcher connection (handed over by its worker), or one that asked
    for counters."""

    __slots__ = ("pid", "sock", "term_at")

    def __init__(self, sock: socket.socket, pid: int = 0) -> None:
        self.sock = sock
        self.pid = pid
        self.term_at = 0.0  # when SIGTERM was sent to a worker whose launcher vanished


class Zygote:
    """The server loop (single-threaded: a selector over the channel from its children,
    its running jobs' connections and a wakeup pipe for SIGCHLD/SIGTERM). A spare child
    (:mod:`meshcc.client.zygote_worker`) accepts each launcher; the zygote keeps one
    ready, watches the running jobs, reaps them, and answers counter requests."""

    def __init__(self, path: str, key: bytes, startup_env: dict[bytes, bytes]) -> None:
        self.path = path
        self.key = key
        self.startup_env = startup_env
        self.uid = posix.getuid()
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}  # by socket fd
        self.workers: dict[int, _Conn] = {}  # by worker pid (from its "W")
        self.handing: set[int] = set()  # spares that took a connection ("A"), no "W" yet
        self.spare = 0  # the pid of the spare waiting in accept, 0 when there is none
        self.spare_failures = 0  # forks that failed, or spares that died unused, in a row
        self.spare_retry_at = 0.0  # after a failure: no fork before this (monotonic)
        self.serving_f = False  # no spare: the listener is ours, and each launcher gets "F"
        self.f_paused_until = 0.0  # serving "F", but its accept failed: not watched till then
        self.env_hint: list[bytes] = []  # the last job's environment, for the next spares
        self.not_jobs: set[int] = set()  # children that served no job (counters, refusals)
        self.jobs = 0
        self.accepted = 0
        self.refused = 0  # requests for another key or protocol (the launcher falls back)
        self.given_up = 0  # hand-overs the launcher gave up on (no "G": nothing ran)
        self.child_us = 0
        self.child_minflt = 0
        self.last = time.monotonic()
        self.stop = False
        self.idle = IDLE_SECONDS
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ino = 0
        self.own_descriptors = 0  # open before any job's (set once bound)
        # Children write here (one message each); the zygote never writes to them, so
        # this end's close is what tells a spare that the zygote is gone.
        self.chan, self.child_chan = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.chan.setblocking(False)
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
        self.sel.register(self.chan, selectors.EVENT_READ, None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.own_descriptors = _open_descriptors()
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
                self._keep_spare()
                timeout = self._timeout()
                if timeout is not None and timeout <= 0:
                    if not self.conns and not self.workers and not self.handing:
                        break
                    timeout = 1.0
                retry = self.spare_retry_at - time.monotonic()
                if not self.spare and retry > 0:  # wake up to fork again after a failure
                    timeout = retry if timeout is None else min(timeout, retry)
                if self.f_paused_until:
                    paused = self.f_paused_until - time.monotonic()
                    if paused > 0:
                        timeout = paused if timeout is None else min(timeout, paused)
                    else:
                        self.f_paused_until = 0.0
                        self.sel.register(self.listener, selectors.EVENT_READ, None)
                for key, _ in self.sel.select(timeout):
                    if key.fileobj is self.chan:
                        self._from_children()
                    elif key.fileobj is self.listener:
                        self._answer_f()
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
        if self.conns or self.workers or self.handing:
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

    def _keep_spare(self) -> None:
        """Have a spare waiting for the next launcher (fork one when the last took its
        launcher, or after a failure's back-off)."""
        if self.spare or self.stop:
            return
        if len(self.handing) >= HANDING_MAX or not self._room_for_a_job():
            self._serve_f()  # connections that send nothing, say, or a -j beyond our limit
            return
        if time.monotonic() < self.spare_retry_at:
            return
        try:
            pid = os.fork()
        except OSError:  # out of processes or memory, for now
            pid = -1
        if pid == 0:  # pragma: no cover - the spare (measured by the integration tests)
            code = 127
            try:
                code = zygote_worker.spare(
                    self.listener, self.child_chan, self.key, self.startup_env, self.env_hint
                )
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
        if pid > 0:
            self.spare = pid
            if self.serving_f:
                self.serving_f = False
                if self.f_paused_until:
                    self.f_paused_until = 0.0  # not watched now: nothing to undo
                else:
                    self.sel.unregister(self.listener)
        else:
            self._spare_failed()

    def _room_for_a_job(self) -> bool:
        """Whether we can hold one more job's launcher connection. A worker hands it over as
        it takes the job (``W``), and it is how the end of an exec'd compiler or a dead
        worker reaches the launcher: past our descriptor limit it would arrive without its
        descriptor, and that launcher would see its connection end mid-job and fail the
        build. Read each time: the limit is the key's, but ``prlimit`` can change it."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return True
        jobs = len(self.workers) + len(self.handing) + 1  # the next spare's job too
        return self.own_descriptors + jobs + DESCRIPTOR_SLACK <= soft

    def _spare_failed(self) -> None:
        self.spare_failures += 1
        backoff = 0.01 * 2 ** min(self.spare_failures, 10)
        self.spare_retry_at = time.monotonic() + min(SPARE_RETRY_MAX_S, backoff)
        self._serve_f()

    def _serve_f(self) -> None:
        """Until a spare waits again, launchers get "F" from us (each then runs the Python
        launcher at once, rather than after its hand-over timeout)."""
        if not self.serving_f and not self.stop:
            self.serving_f = True
            self.sel.register(self.listener, selectors.EVENT_READ, None)

    def _answer_f(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError as e:  # none left (or a spare took it), or out of descriptors
                if e.errno in _OUT_OF_RESOURCES:
                    self.sel.unregister(self.listener)
                    self.f_paused_until = time.monotonic() + zygote_worker.ACCEPT_PAUSE_S
                return
            if not zygote_worker.peer_is(sock, self.uid):
                sock.close()
                continue
            try:  # a counters request is still answered (it is sent as the client connects)
                sock.settimeout(0.05)
                head = sock.recv(4, socket.MSG_PEEK)
            except OSError:
                head = b""
            if head[:4] == b"MZYS":
                self._stats(_Conn(sock))
                continue
            self._reply(_Conn(sock), b"F")
            sock.close()

    def _from_children(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(
                    self.chan, zygote_worker.ENV_HINT_MAX + 64, 1
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            (pid,) = struct.unpack_from("=I", data, 1) if len(data) >= 5 else (0,)
            if pid > 0:  # never 0: a signal to group 0 would be our own
                self._message(data[:1], pid, data[5:], fds[:1])
                fds = fds[1:]
            for fd in fds:
                _close(fd)

    def _message(self, tag: bytes, pid: int, body: bytes, fds: list[int]) -> None:
        if tag == b"A":
            self.accepted += 1
            self.handing.add(pid)
            if pid == self.spare:
                self.spare = 0  # the loop forks the next one
                self.spare_failures = 0
            return
        self.handing.discard(pid)
        if tag == b"W" and fds:
            # Ours to report if it ends without telling its launcher; not watched yet: the
            # launcher's "G" is still to come on that connection, for the worker to read.
            # Its file flags are shared with the worker's descriptor, so they stay as they
            # are (non-blocking here would make the worker's read of "G" fail).
            sock = socket.socket(fileno=fds[0])
            conn = _Conn(sock, pid)
            self.conns[sock.fileno()] = conn
            self.workers[pid] = conn
        elif tag == b"J":
            running = self.workers.get(pid)
            if running is not None:
                self.sel.register(running.sock, selectors.EVENT_READ, running)
            if body:
                self.env_hint = body.split(b"\0")
            self.jobs += 1
            if self.jobs % GC_EVERY == 0:
                gc.collect()
        elif tag == b"S" and fds:
            self.not_jobs.add(pid)
            self._stats(_Conn(socket.socket(fileno=fds[0])))
        elif tag == b"R":
            self.not_jobs.add(pid)
            self.refused += 1
        elif tag == b"N":
            self.not_jobs.add(pid)
            self.given_up += 1
        else:  # a message's descriptor we did not take
            for fd in fds:
                _close(fd)

    def _drop(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _readable(self, conn: _Conn) -> None:
        # The launcher sends nothing once its worker runs: an end is the launcher's
        # (killed, or it exited on its worker's early "X").
        try:
            data = conn.sock.recv(64, socket.MSG_DONTWAIT)  # its flags are the worker's too
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._abandon(conn)

    def _reap(self) -> None:
        ended = []
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended.append((pid, status, ru))
        if not ended:
            return
        # A worker tells us its job ("J") before it runs it, so a worker seen ended has
        # its message waiting by now: take it first, or its launcher would miss "X".
        self._from_children()
        for pid, status, ru in ended:
            utime = int(ru.ru_utime * 1e6)
            stime = int(ru.ru_stime * 1e6)
            if pid in self.not_jobs:  # a counters request or a refusal: no job's CPU
                self.not_jobs.discard(pid)
            else:
                self.child_us += utime + stime
                self.child_minflt += ru.ru_minflt
            self.handing.discard(pid)
            if pid == self.spare:  # it died before taking a launcher
                self.spare = 0
                self._spare_failed()
            conn = self.workers.pop(pid, None)
            if conn is not None:
                self._reply(conn, EXIT_RECORD.pack(b"X", _wait_status(status), utime, stime))
                self._drop(conn)

    def _abandon(self, conn: _Conn) -> None:
        """The launcher is gone (SIGKILL, say, or it exited on its worker's early "X"):
        end its job's whole process group."""
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
            "accepted": self.accepted,
            "refused": self.refused,
            "given_up": self.given_up,
            "running": len(self.workers),
            "spare": self.spare,
            "children_cpu_us": self.child_us,
            "self_cpu_us": int(time.process_time() * 1e6),
            "children_minflt": self.child_minflt,
            "self_minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
        }
        self._reply(conn, json.dumps(stats).encode() + b"\n")
        conn.sock.close()

    def _shutdown(self) -> None:
        """Stop taking jobs (the socket goes first, so new launchers start afresh; the spare
        goes, it runs nothing), and let running workers finish on their own: their
        launchers then see our end and report it."""
        try:
            if posix.lstat(self.path).st_ino == self.ino:
                posix.unlink(self.path)
        except OSError:
            pass
        self.stop = True
        # The spare waiting in accept sees our channel's end and exits; one that has
        # taken a launcher goes on and is waited for like a running job.
        if self.spare:
            self.not_jobs.add(self.spare)
            self.spare = 0
        with contextlib.suppress(OSError):
            self.chan.shutdown(socket.SHUT_WR)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.listener)
        self.listener.close()
        self._from_children()
        deadline = time.monotonic() + 60
        while (self.workers or self.handing) and time.monotonic() < deadline:
            # Jobs in flight still get their exit status.
            for key, _ in self.sel.select(1.0):
                if key.fileobj is self.chan:
                    self._from_children()
                elif key.fileobj == self.wake_r:
                    self._drain_wakeup()
                elif key.data is not None:
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


def _open_descriptors() -> int:
    """How many descriptors this process has open (its own, before any job's)."""
    try:
        return len(posix.listdir("/proc/self/fd")) - 1  # less the listing's own
    except OSError:  # no /proc: assume a generous number
        return 64


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _wait_status(status: int) -> int:
    return status if status < 1 << 31 else status - (1 << 32)


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
