"""The zygote's children: a spare that waits for the next launcher, then that job's worker.

Why a spare: between a launcher's start and its job running, ~2.3 ms went by, and most of
it was the zygote's part: its wake-up, accept and read, then a fork (copying a warm
interpreter's page tables), and in the new child the signal reset and the launcher's
environment, each a run of copy-on-write faults (~280 of them, ~4 us each here). A spare is
forked ahead of time and does what does not depend on the request before there is one: it
resets its signals and installs the previous job's environment (a build's jobs nearly all
share one, so the request's then changes nothing), and then waits in ``accept`` on the
zygote's listener itself. The launcher's connection wakes it directly; it tells the zygote
(``A``), which forks the next spare while this one reads the request, takes the launcher's
context over, hands the zygote its connection (``W``), answers ``P``, reads the launcher's
``G`` itself (no relay through the zygote) and tells the zygote the job runs (``J``).

Messages to the zygote (a ``SOCK_SEQPACKET`` pair the zygote made; one message each):

- ``A`` u32 pid: this spare took a connection (the zygote forks the next spare);
- ``W`` u32 pid, with the connection (``SCM_RIGHTS``): the job is taken over and the
  launcher is about to get our pid; from here the zygote reports an end of ours that we
  do not (an exec'd compiler, a signal);
- ``J`` u32 pid, and the job's environment when it is not this spare's hint (NUL-separated;
  none when large): the launcher said go, the job runs; the zygote now watches the
  launcher's end (it could not before: it would have read the ``G``);
- ``N`` u32 pid: nothing ran (the launcher gave up, ended or stalled before its request
  was whole, or the take-over failed);
- ``S`` u32 pid, with a connection that asked for counters (the zygote answers);
- ``R`` u32 pid: a request refused with ``V``. The CPU of ``N``, ``S`` and ``R`` children is
  not counted as jobs'.

The zygote never writes to its children: an event on that socket is the zygote's end,
and a spare then exits.

The request protocol and the isolation rules are the zygote's (:mod:`meshcc.client.zygote`).
"""

from __future__ import annotations

import fcntl
import os
import posix
import resource
import select
import signal
import socket
import struct
import sys
import time

MAX_REQUEST = 8 << 20
MAX_FDS = 253  # SCM_MAX_FD
REQUEST_READ_S = 5.0  # a launcher sends its request as it connects; a stalled one is dropped
ENV_HINT_MAX = 64 << 10  # a larger environment is not passed on as the next spares' hint
# An accept that fails for want of descriptors or memory leaves the connection queued and
# the listener readable: the spare, or the zygote answering "F", waits this long rather
# than spin on it.
ACCEPT_PAUSE_S = 0.1

_HEAD = struct.Struct("=4sI")
_FIXED = struct.Struct("=QIQQI")
_COUNTS = struct.Struct("=II")
EXIT_RECORD = struct.Struct("=ciQQ")
_PID = struct.Struct("=cI")


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


# --------------------------------------------------------------------------- the spare


def spare(
    listener: socket.socket,
    chan: socket.socket,
    key: bytes,
    startup_env: dict[bytes, bytes],
    env_hint: list[bytes],
) -> int:  # pragma: no cover - a forked child (measured by the integration tests)
    """Run in a child freshly forked from the zygote: get ready, wait for one launcher and
    serve it. Returns the exit status; a job that runs never returns (``os._exit``)."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Nothing of the zygote's but these (its lock, its other launchers' connections, its
    # selector and wakeup pipe): a spare outlives none of them.
    _close_all_but({0, 1, 2, listener.fileno(), chan.fileno()})
    try:
        _install_env(env_hint, startup_env)
    except (OSError, ValueError):
        pass  # the request's environment is installed whole below
    waiter = select.poll()
    waiter.register(listener, select.POLLIN)
    waiter.register(chan, select.POLLIN)
    uid = posix.getuid()
    while True:
        events = dict(waiter.poll())
        if chan.fileno() in events:
            return 0  # the zygote is gone (it never writes to us)
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue  # another took it (the zygote, answering "F"), or it went away
        except OSError:  # out of descriptors system-wide, say: the socket stays readable
            time.sleep(ACCEPT_PAUSE_S)
            continue
        if not peer_is(sock, uid):
            sock.close()
            continue
        # The next launcher is the next spare's (or, if the zygote dies now, nobody's: its
        # socket then refuses, and the launcher starts a new zygote at once).
        listener.close()
        chan.send(_PID.pack(b"A", posix.getpid()))
        return _serve(sock, chan, key, startup_env, env_hint)


def peer_is(sock: socket.socket, uid: int) -> bool:
    """Whether the process at the other end of ``sock`` runs as ``uid`` (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return bool(struct.unpack("=iII", creds)[1] == uid)


def _serve(
    sock: socket.socket,
    chan: socket.socket,
    key: bytes,
    startup_env: dict[bytes, bytes],
    env_hint: list[bytes],
) -> int:  # pragma: no cover - a forked child
    """Read the launcher's request and answer it: counters go to the zygote, another key
    gets ``V``, a job is taken over and run."""
    fds: list[int] = []
    buf = bytearray()
    deadline = time.monotonic() + REQUEST_READ_S  # for the whole request, not each read
    try:
        while True:
            if len(buf) >= _HEAD.size:
                magic, length = _HEAD.unpack_from(buf)
                if magic != b"MZY1" or length > MAX_REQUEST or len(buf) >= _HEAD.size + length:
                    break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            data, got, _flags, _addr = socket.recv_fds(
                sock, 1 << 16, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
            fds.extend(got)
            if not data:
                return _ran_nothing(chan)
            buf += data
    except OSError:  # the launcher gave up, or stalled past REQUEST_READ_S
        return _ran_nothing(chan)
    magic, length = _HEAD.unpack_from(buf)
    if magic == b"MZYS":
        socket.send_fds(chan, [_PID.pack(b"S", posix.getpid())], [sock.fileno()])
        return 0
    req = None
    if magic == b"MZY1" and length <= MAX_REQUEST:
        body = bytes(buf[_HEAD.size : _HEAD.size + length])
        (klen,) = struct.unpack_from("=I", body) if len(body) >= 4 else (0,)
        try:
            req = _Request(body)
        except (struct.error, ValueError):
            req = None
        if req is not None and (body[4 : 4 + klen] != key or len(fds) != len(req.targets) + 1):
            req = None
    if req is None:
        _send(sock.fileno(), b"V")
        chan.send(_PID.pack(b"R", posix.getpid()))
        return 0
    return _worker(sock, chan, fds, req, startup_env, env_hint)


def _ran_nothing(chan: socket.socket) -> int:
    """Tell the zygote this child ran no job (its CPU is not a job's); its exit status."""
    try:
        chan.send(_PID.pack(b"N", posix.getpid()))
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- the worker


def _worker(
    sock: socket.socket,
    chan: socket.socket,
    fds: list[int],
    req: _Request,
    startup_env: dict[bytes, bytes],
    env_hint: list[bytes],
) -> int:  # pragma: no cover - a forked child
    """Take the launcher's context over, tell it our pid, run the job; returns only when
    the take-over failed (the launcher then runs the Python launcher) or the launcher gave
    up on the hand-over (no ``G``: nothing runs).

    The zygote gets the connection (``W``) before the launcher gets our pid: from then on
    an end of ours that no ``X`` of ours reports (an exec'd compiler, a signal the launcher
    forwards) is the zygote's to report from ``wait4``. If the zygote cannot be told, the
    launcher gets ``F`` and runs the job itself."""
    # Our connection and channel first, above every number the launcher's descriptors
    # take: whatever fails later, they are still where these names say.
    base = max([*req.targets, *fds, sock.fileno(), chan.fileno(), 2]) + 1
    sock_fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, base)
    chan_fd = fcntl.fcntl(chan.fileno(), fcntl.F_DUPFD_CLOEXEC, base)
    sock.detach()  # their old numbers are closed below, and may be the launcher's then
    chan.detach()
    to_zygote = socket.socket(fileno=chan_fd)  # closed when this goes: before the job runs
    try:
        posix.setpgid(0, 0)  # the launcher relays its signals to this group
        _take_fds(fds, req.targets, [sock_fd, chan_fd], base)
        os.set_blocking(sock_fd, True)
        _install_env(req.env, startup_env)
        posix.umask(req.umask)
        for ignored in _bits(req.ignored):
            if ignored not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(ignored, signal.SIG_IGN)
                except (OSError, ValueError):
                    pass
    except (OSError, ValueError):
        _send(sock_fd, b"F")
        return _ran_nothing(to_zygote)
    pid = posix.getpid()
    try:
        socket.send_fds(to_zygote, [_PID.pack(b"W", pid)], [sock_fd])
    except OSError:  # the zygote is gone: nobody could report an exec'd compiler's end
        _send(sock_fd, b"F")
        return 0
    _send(sock_fd, _PID.pack(b"P", pid))
    try:
        go = posix.read(sock_fd, 1)
    except OSError:
        go = b""
    # The zygote now watches the launcher (its end ends this job); the connection stays
    # open here too (close-on-exec) for the job's end, which we tell the launcher ourselves.
    # The job's environment goes along when it is not the one this spare was given, for the
    # next spares.
    if go != b"G":  # the launcher gave up on the hand-over and runs the job itself
        return _ran_nothing(to_zygote)
    message = _PID.pack(b"J", pid)
    if req.env != env_hint:
        hint = b"\0".join(req.env)
        message += hint if len(hint) <= ENV_HINT_MAX else b""
    try:
        to_zygote.send(message)
    except OSError:
        pass  # the zygote is gone: the job runs, our own "X" still tells its end
    del to_zygote
    from meshcc.client import wrapper

    argv = [os.fsdecode(a) for a in req.argv]
    sys.argv = argv
    wrapper._PID = pid
    wrapper._T0 = req.t0 / 1e9
    # The timeline's "python" figure: here, the launcher's start to this point (the hand-over).
    wrapper._PY_MS = (time.monotonic() - wrapper._T0) * 1000
    signal.pthread_sigmask(signal.SIG_SETMASK, _bits(req.blocked))
    wrapper.launch(on_exit=lambda code: _job_ended(sock_fd, code))


def _job_ended(sock_fd: int, code: int) -> None:
    """Tell the launcher the job's end (``X``), with every signal blocked from here on.

    Why block: once the launcher has read ``X`` it exits, and the zygote sees its connection
    end and may take that for a launcher that vanished (``SIGTERM`` to this worker's group)
    before this worker has exited. The job is over and its status told, so a signal has
    nothing left to stop; caught, it would raise through the wrapper's handler and print a
    traceback on the user's terminal after the job."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    _send(sock_fd, _exit_record(code))


def _exit_record(code: int) -> bytes:
    """The ``X`` record of a job that ends with ``code``, sent by the worker itself before
    it exits: the launcher (and make) need not wait for the worker's teardown (freeing a
    forked interpreter's memory) and for the zygote to be woken, reap it and reply: ~0.5-1
    ms of every job. A worker that execs the compiler, or dies of a signal, never gets
    here; its end reaches the launcher from the zygote's ``wait4``, and the second ``X``
    the zygote sends after an early one goes unread (the launcher reads one and exits)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    utime = int((own.ru_utime + waited.ru_utime) * 1e6)
    stime = int((own.ru_stime + waited.ru_stime) * 1e6)
    return EXIT_RECORD.pack(b"X", (code & 0xFF) << 8, utime, stime)


def _send(fd: int, data: bytes) -> None:
    try:
        posix.write(fd, data)
    except OSError:
        pass


def _bits(mask: int) -> list[int]:
    return [i + 1 for i in range(64) if mask >> i & 1 and i + 1 < signal.NSIG]


def _close_all_but(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            posix.closerange(low, fd)
        low = fd + 1
    posix.closerange(low, 1 << 20)


def _take_fds(received: list[int], targets: list[int], keep: list[int], base: int) -> None:
    """Chdir to the launcher's cwd (``received[0]``) and put its descriptors at their
    numbers; everything else is closed but ``keep`` (the worker's connection and its
    channel to the zygote, already at or above ``base``, which is above every number in
    ``received`` and ``targets``)."""
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base) for fd in received]
    posix.closerange(0, base)
    posix.fchdir(moved[0])
    for src, dst in zip(moved[1:], targets, strict=True):
        posix.dup2(src, dst, True)
    _close_all_but({*targets, *keep})


def _install_env(entries: list[bytes], startup: dict[bytes, bytes]) -> None:
    """Make the launcher's environment ours, as the interpreter's start would have: in the
    C ``environ`` (exec'd compilers), in ``posix.environ`` (``os.environ``, posixenv), and
    with what the interpreter's start-up adds itself (C locale coercion: ``LC_CTYPE``).
    Only what differs is changed: a spare has installed the previous job's environment."""
    want: dict[bytes, bytes] = {}
    for entry in entries:
        name, _, value = entry.partition(b"=")
        want[name] = value
    want.update(startup)
    data = posix.environ
    for name in [name for name in data if name not in want]:
        posix.unsetenv(name)
        del data[name]
    for name, value in want.items():
        if data.get(name) != value:
            posix.putenv(name, value)
            data[name] = value
