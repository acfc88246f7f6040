"""The compile client: ``meshcc-gcc``, ``meshcc-g++``, ``meshcc gcc ...``, masquerade links.

One short process per compile, thousands per build, so start-up cost matters more than
anything else here: only builtins and meshcc's own small modules are imported, local-only
commands run the real compiler as soon as the verdict is known (as a child, as distcc
does, so that distcc's state file for ``distccmon-text`` goes when it ends; ``exec`` when
there is no state file), and everything the remote path needs (sockets, compression) is
imported only on that path.

distcc 3.4 semantics, with these deliberate differences: a cpp failure is final (the
local compile would fail the same way); a remote compile error is retried locally and
the host is backed off only if the local result differs (distcc backs off first and
forgives later); with ``DISTCC_BACKOFF_PERIOD=0`` at most 3 remote attempts are made
(distcc master's fix); ``-MD``/``-MMD`` .d files land where plain gcc puts them
(args.cpp_argv); ``,down`` hosts are skipped rather than waited for; ``,auth`` hosts
are skipped (no GSS-API here); ``,cpp`` hosts are sent protocol 2. SSH hosts (``@host``)
go through :mod:`meshcc.transport.ssh`, imported only for them. The
retry, backoff and fallback rules live in :mod:`meshcc.client.decisions` (pure,
unit-tested); this module does the I/O they call for.

Where a job goes: an explicit ``DISTCC_HOSTS`` always wins (distcc semantics); else, if
a local ``meshcc daemon`` answers on its control socket, a lease from it (a peer whose
toolchain matches the compiler we were invoked as, and the name to send it; the daemon
queues the request while every matching slot is busy, and the wait is bounded by
``DISTCC_IO_TIMEOUT``); else ``$DISTCC_DIR/hosts`` and ``/etc/distcc/hosts``. Either way
the job is run by the same code: failures, retries, local fallback, diagnostics and exit
codes do not depend on where the host came from. Local compiles always use distcc's
local slot locks; the daemon only hands out remote slots.

The real output path is only ever written by renaming a complete temp file that sits
beside it, so an interrupted or failed job never leaves a truncated object behind.

``MESHCC_VERBOSE=1`` ends each remote job with one ``timeline`` line: the interpreter's own
start-up (``python``, CPU ms before this module ran), then each phase's start and end in ms
from this module's start: ``lease`` (slot lock or daemon lease), ``cpp``, ``connect`` (and
the request head), ``send`` (LZO and the body), ``wait`` (the server's part, up to the
first reply byte; the daemon's debug log splits it), ``receive``, ``write``, and ``end``.
Unset, each mark costs a global load and a test.
"""

from __future__ import annotations

import _stat  # the C module (the stat module is Python code over it)
import sys
import time

from meshcc import posixenv as os  # os without its import cost (~5.6 M instructions)
from meshcc.client import state as _state
from meshcc.defaults import LOCAL_SLOTS, LOCAL_SLOTS_CPP

# meshcc.exitcodes and meshcc.hostos are imported where they are used: error paths and
# masquerade or daemon lookups only (each module import costs ~0.1 ms on every compile).

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import signal as _sig
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn, TypeVar

    from meshcc.client.decisions import CompileLocally, Fail, Finish, Plan, Settings
    from meshcc.client.hostpool import Held, HeldT, HostPool, Target, TargetT
    from meshcc.client.slots import Slot
    from meshcc.compiler.args import Job
    from meshcc.compiler.hostspec import Host, HostList
    from meshcc.compression.kept import Plan as ZrefPlan
    from meshcc.transport.client import Reply
    from meshcc.transport.control_client import Control
    from meshcc.wire.control_core import LeaseGranted

    T = TypeVar("T")
else:
    try:  # the C module: `signal` proper would import enum on the hot path
        import _signal as _sig
    except ImportError:  # pragma: no cover - non-CPython
        import signal as _sig


MAX_LEASE_ATTEMPTS = 3  # leases tried per job before compiling locally

# argv[0] basenames of the console scripts and the compiler each one runs.
SCRIPT_COMPILERS = {
    "meshcc-gcc": "gcc",
    "meshcc-g++": "g++",
    "meshcc-cc": "cc",
    "meshcc-c++": "c++",
}
_IMPLICIT_SUFFIXES = (
    ".c",
    ".cc",
    ".cpp",
    ".cxx",
    ".cp",
    ".c++",
    ".C",
    ".i",
    ".ii",
    ".m",
    ".mm",
    ".mi",
    ".mii",
    ".M",
    ".s",
    ".S",
    ".o",
)

_PID = os.getpid()
_T0 = time.monotonic()
_PY_MS = time.process_time() * 1000  # the interpreter's start-up, for the timeline

# The per-job timeline (MESHCC_VERBOSE=1): phase -> (start, end) in time.monotonic()
# seconds. None when not verbose, so each mark costs one global load and a test.
_marks: dict[str, list[float]] | None = None
# The phases in the order the line prints them (issue 12's names; the daemon's debug log
# has the server's half: accept, read, dir, spawn, compile, reply).
_PHASES = ("lease", "cpp", "connect", "send", "wait", "receive", "write")


def _mark(phase: str, end: bool = False) -> None:
    """Note the start (or, with ``end``, the end) of ``phase`` for the timeline line."""
    marks = _marks
    if marks is not None:
        now = time.monotonic()
        if end:
            marks.setdefault(phase, [now, now])[1] = now
        else:
            marks[phase] = [now, now]


def _timeline(source: str, where: str) -> str:
    """One line: each phase's start and end in ms from the wrapper's start, and what came
    before it (``python``: the interpreter's own CPU ms before meshcc's code ran, read
    from the process's CPU clock: start-up does no I/O, so that is its wall time too)."""
    marks = _marks or {}
    parts = [f"timeline {source} on {where}: python {_PY_MS:.1f}"]
    for phase in _PHASES:
        span = marks.get(phase)
        if span is not None:
            a, b = ((t - _T0) * 1000 for t in span)
            parts.append(f"{phase} {a:.1f}-{b:.1f}")
    cpu = time.process_time() * 1000
    parts.append(f"end {(time.monotonic() - _T0) * 1000:.1f} (ms from client start; cpu {cpu:.1f})")
    return " ".join(parts)


class _Interrupted(BaseException):
    """Raised from our SIGINT/SIGTERM/SIGHUP handler so cleanup runs before we die."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- output


class _Log:
    """Verbose log lines (``meshcc[PID] ...``) and warnings, to $DISTCC_LOG or stderr."""

    __slots__ = ("_fd", "path", "verbose")

    def __init__(self, environ: os.Env) -> None:
        self.verbose = environ.get("MESHCC_VERBOSE") == "1" or environ.get("DISTCC_VERBOSE") == "1"
        self.path = environ.get("DISTCC_LOG") or None
        self._fd = -1

    def _out(self) -> int:
        if self.path is None:
            return 2
        if self._fd < 0:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            except OSError:
                self.path = None
                return 2
        return self._fd

    def debug(self, msg: str) -> None:
        if self.verbose:
            ms = (time.monotonic() - _T0) * 1000
            _write(self._out(), f"meshcc[{_PID}] {ms:.1f}ms {msg}\n".encode(errors="replace"))

    def warn(self, msg: str) -> None:
        """A one-line warning the user should see (to DISTCC_LOG instead when that is set)."""
        line = f"meshcc: {msg}\n" if not self.verbose else f"meshcc[{_PID}] warning: {msg}\n"
        _write(self._out(), line.encode(errors="replace"))

    def error(self, msg: str) -> None:
        """A fatal error: always on stderr (and in DISTCC_LOG too)."""
        line = f"meshcc: error: {msg}\n".encode(errors="replace")
        if self.path is not None and self._out() != 2:
            _write(self._fd, line)
        _write(2, line)


def _report(kind: str, host: object, reason: str = "", argv: Sequence[str] = ()) -> None:
    """This compile's outcome, for ``meshcc stats`` (:mod:`meshcc.client.outcome`);
    ``argv``: file names in ``reason`` become FILE, so reasons group across files."""
    from meshcc.client import outcome

    name = host if isinstance(host, str) else outcome.host_name(host)
    outcome.report(kind, name, outcome.without_files(reason, argv))


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        except OSError:
            return  # stderr/stdout gone: nothing sensible left to do
        view = view[n:]


# --------------------------------------------------------------------------- compiler lookup


def _masquerade_path(link: str, path: str) -> str:
    """PATH without every entry up to and including the directory holding our link."""
    here = os.path.dirname(os.path.abspath(link))
    entries = path.split(os.pathsep)
    for i, d in enumerate(entries):
        try:
            if os.path.abspath(d or ".") == here or os.path.samefile(d or ".", here):
                return os.pathsep.join(entries[i + 1 :])
        except OSError:
            continue
    return path


class _Invocation:
    """How we were called: the compiler to run and the full compiler argv."""

    __slots__ = ("argv", "compiler", "exec_path")

    def __init__(self, compiler: str, argv: list[str], exec_path: str) -> None:
        self.compiler = compiler
        self.argv = argv  # argv[0] is the compiler name as the user would type it
        self.exec_path = exec_path  # what to exec (a name for PATH lookup, or a path)


def _invocation(argv: Sequence[str], environ: os.Env) -> _Invocation:
    """Work out the compiler from argv[0] (script name, ``meshcc``, or a masquerade link)."""
    arg0 = argv[0] if argv else "meshcc"
    base = os.path.basename(arg0)
    if base in SCRIPT_COMPILERS:
        cc = SCRIPT_COMPILERS[base]
        return _Invocation(cc, [cc, *argv[1:]], cc)
    if base == "meshcc" or base.startswith("meshcc."):
        rest = list(argv[1:])
        if not rest or rest[0].startswith("-") or rest[0].endswith(_IMPLICIT_SUFFIXES):
            return _Invocation("cc", ["cc", *rest], "cc")  # implicit mode, like distcc
        return _Invocation(rest[0], rest, rest[0])
    # Masquerade: argv[0] is the compiler's name and our link sits in a PATH directory.
    path = _masquerade_path(arg0, environ.get("PATH", os.defpath))
    environ["PATH"] = path  # children (cpp, the compiler's own lookups) use the trimmed PATH
    real = which(base, path, skip=arg0)
    if real is None:
        from meshcc.exitcodes import EXIT_COMPILER_MISSING, EXIT_RECURSION

        if which(base, path) is not None:
            raise _Fatal(
                f"{base} on PATH is this wrapper again; cannot find the real {base}", EXIT_RECURSION
            )
        raise _Fatal(
            f"cannot find the real compiler {base!r} on PATH after {os.path.dirname(arg0)}",
            EXIT_COMPILER_MISSING,
        )
    return _Invocation(base, [base, *argv[1:]], real)


def which(name: str, path: str | None = None, *, skip: str | None = None) -> str | None:
    """:func:`meshcc.hostos.which`, the same search, done here: hostos imports ``os``
    (~5.6 M instructions) and every compile asks this (a test keeps the two in agreement).

    ``skip``: pass over the candidates whose real path is ``skip``'s, as hostos.which's
    ``skip_real=realpath(skip)`` does (a masquerade link finding itself). realpath needs
    ``posixpath``, hence ``os``; but a candidate that is not even the same file (device
    and inode) as ``skip`` cannot have its real path, so realpath runs only for one that
    is (a second link to this wrapper, a hard link): the masquerade path stays os-free.
    """
    if "/" in name:
        return name
    if path is None:
        path = os.environ.get("PATH", os.defpath)
    me: tuple[int, int] | None = None
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if st.st_mode & 0o170000 != 0o100000 or not os.access(candidate, os.X_OK):
            continue
        if skip is not None:
            if me is None:
                me = _file_identity(skip)
            if me == (st.st_dev, st.st_ino) and os.path.realpath(candidate) == os.path.realpath(
                skip
            ):
                continue
        return candidate
    return None


def _file_identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file ``path`` names; (-1, -1), which no file has, if none
    (then its real path names no file either, so no candidate can share it)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return -1, -1
    return st.st_dev, st.st_ino


class _Fatal(Exception):
    """A user-facing error that ends the run with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- local execution


def _restore_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; the compiler must get the defaults back."""
    for name in ("SIGPIPE", "SIGXFSZ"):
        num = getattr(_sig, name, None)
        if num is not None:
            _sig.signal(num, _sig.SIG_DFL)


def _exec_local(inv: _Invocation, slot: Held | None) -> NoReturn:
    """Replace this process with the real compiler (the slot lock, if any, stays held);
    while a distcc state file is kept, run it as a child instead (:func:`_run_local`)."""
    if _state.active():
        _run_local(inv, slot)
    if slot is not None:
        slot.keep_across_exec()
    _restore_signals()
    try:
        if "/" in inv.exec_path:
            os.execv(inv.exec_path, inv.argv)
        _execvp(inv.exec_path, inv.argv)
    except OSError as e:
        from meshcc.exitcodes import EXIT_COMPILER_MISSING

        if slot is not None:
            slot.release()
        raise _Fatal(f"cannot run {inv.exec_path}: {e.strerror}", EXIT_COMPILER_MISSING) from None


class _Exit(Exception):
    """End the run with ``code`` (a local compiler run as a child has finished)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _run_local(inv: _Invocation, slot: Held | None) -> NoReturn:
    """Compile locally as a child, as distcc does, so the state file can be removed when
    the compiler is done (after an exec nobody would). A SIGINT/SIGTERM/SIGHUP is passed on
    to the compiler; we then exit as it did, by the same signal if it died of one."""
    from meshcc.exitcodes import EXIT_COMPILER_MISSING

    _state.note(_state.COMPILE, "localhost", getattr(slot, "index", 0))
    if slot is not None:  # a daemon's share: the compiler holds the connection too
        slot.keep_across_exec()
    forwarded = (_sig.SIGINT, _sig.SIGTERM, _sig.SIGHUP)
    for signum in forwarded:
        _sig.signal(signum, _on_signal)
    pid = 0
    status = -1
    try:
        while status < 0:
            try:
                if not pid:
                    # Blocked while spawning, so a signal is never taken between the child's
                    # birth and ``pid`` being known (the child starts with nothing blocked).
                    _sig.pthread_sigmask(_sig.SIG_BLOCK, forwarded)
                    try:
                        fn = os.posix_spawn if "/" in inv.exec_path else os.posix_spawnp
                        pid = fn(
                            inv.exec_path,
                            inv.argv,
                            os.environ_bytes,
                            setsigdef=_SPAWN_SIGDEF,
                            setsigmask=(),
                        )
                    except OSError as e:
                        raise _Fatal(
                            f"cannot run {inv.exec_path}: {e.strerror}", EXIT_COMPILER_MISSING
                        ) from None
                    finally:
                        _sig.pthread_sigmask(_sig.SIG_UNBLOCK, forwarded)  # may raise now
                status = os.waitpid(pid, 0)[1]
            except _Interrupted as e:
                if not pid:  # nothing started: just go, by that signal
                    _die_by(e.signum)
                    raise _Exit(128 + e.signum) from None
                try:
                    os.kill(pid, e.signum)  # the compiler decides; we report what it did
                except OSError:
                    pass
            except ChildProcessError:  # reaped just before a signal: status unknown
                status = 1 << 8
    finally:
        _state.end()
        if slot is not None:
            slot.release()
    if os.WIFSIGNALED(status):
        _die_by(os.WTERMSIG(status))
        raise _Exit(128 + os.WTERMSIG(status))
    # Like the exec this replaces: nothing is left to do (everything above was cleaned up
    # before the compiler started, all output is unbuffered), so skip the interpreter's
    # teardown (several ms on every local compile).
    os._exit(os.WEXITSTATUS(status))


def _die_by(signum: int) -> None:
    """End this process by ``signum`` (default action), as a shell would see it."""
    _state.end()
    try:
        _sig.signal(signum, _sig.SIG_DFL)
        os.kill(_PID, signum)
    except (OSError, ValueError):  # pragma: no cover - uncatchable or odd signal
        pass


def _execvp(name: str, argv: list[str]) -> NoReturn:
    """``os.execvp`` without its ``import warnings`` (in ``os.get_exec_path``; ~0.3 ms on
    every compile): the same ``$PATH`` search (``os.defpath`` if unset) and the same error,
    the first one other than "not found" if any."""
    first: OSError | None = None
    last: OSError = FileNotFoundError(2, "No such file or directory", name)
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        try:
            os.execv(os.path.join(directory, name), argv)
        except (FileNotFoundError, NotADirectoryError) as e:
            last = e
        except OSError as e:
            last = e
            if first is None:
                first = e
    raise first if first is not None else last


_SPAWN_SIGDEF = tuple(
    getattr(_sig, n)
    for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP")
    if hasattr(_sig, n)
)


def _spawn(exec_path: str, argv: list[str], file_actions: Sequence[tuple[Any, ...]] = ()) -> int:
    """posix_spawn (no fork of this interpreter, no subprocess import); default signals."""
    fn = os.posix_spawn if "/" in exec_path else os.posix_spawnp
    return fn(exec_path, argv, os.environ_bytes, file_actions=file_actions, setsigdef=_SPAWN_SIGDEF)


# --------------------------------------------------------------------------- the job


class _CppFailed(Exception):
    """The local preprocessor failed: show its stderr and exit with its code (no retry)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _GoLocal(Exception):
    """Compile locally now (quietly: the compiler itself will explain any problem)."""


class _Run:
    """One distributable compile: its temp files, children and slots, so cleanup is total."""

    def __init__(self, inv: _Invocation, job: Job, log: _Log, settings: Settings) -> None:
        env = os.environ
        self.inv = inv
        self.job = job
        self.log = log
        self.env = env
        self.temps: list[str] = []
        self.children: list[int] = []
        self.slots: list[Held] = []  # slot locks, and leases from the daemon
        self.lockdir: str | None = None
        self.keep_temps = env.get("DISTCC_SAVE_TEMPS") == "1"
        self.server_stderr: str | None = None  # kept with DISTCC_SAVE_TEMPS=1
        self.fallback = settings.fallback
        self.cpp_pid = 0
        self.cpp_err_fd = -1
        self.cpp_out: str | None = None
        self.cpp_stderr = b""
        self.cpp_status: int | None = None
        self.cpp_slot: Slot | None = None
        self.cpp_ms = 0.0
        self.direct: Any = None  # direct mode's state (meshcc.client.direct), if it applies

    # -------------------------------------------------------------- cleanup

    def cleanup(self, signum: int = 0, keep: Held | None = None, hold: Held | None = None) -> None:
        """Kill children, remove temp files, release slots (except ``keep`` and ``hold``)."""
        for pid in self.children:
            try:
                os.kill(pid, signum or _sig.SIGTERM)
            except OSError:
                pass
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
        self.children.clear()
        if self.cpp_err_fd >= 0:
            os.close(self.cpp_err_fd)
            self.cpp_err_fd = -1
        for path in self.temps:
            if self.keep_temps and not signum and path in (self.cpp_out, self.server_stderr):
                continue
            try:
                os.unlink(path)
            except OSError:
                pass
        self.temps.clear()
        for slot in self.slots:
            if slot is not keep and slot is not hold:
                slot.release()
        self.slots = [s for s in self.slots if s is keep or s is hold]

    def release(self, slot: Held | None) -> None:
        if slot is not None:
            slot.release()
            if slot in self.slots:
                self.slots.remove(slot)

    def temp(self, directory: str, prefix: str, suffix: str) -> tuple[str, int]:
        """Create a private temp file (O_EXCL, mode 0600) and remember it for cleanup."""
        for _ in range(100):
            path = f"{directory}/{prefix}{os.urandom(4).hex()}{suffix}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            self.temps.append(path)
            return path, fd
        raise FileExistsError(f"cannot create a unique temp file in {directory}")

    # -------------------------------------------------------------- preprocessing

    def start_cpp(self) -> None:
        """Run the local preprocessor in the background: stdout to $TMPDIR, stderr captured."""
        from meshcc.compiler import args
        from meshcc.exitcodes import EXIT_COMPILER_MISSING, EXIT_IO_ERROR

        tmpdir = self.env.get("TMPDIR") or "/tmp"
        try:
            out, out_fd = self.temp(tmpdir, "distcc_", self.job.temp_suffix)
        except OSError as e:
            raise _Fatal(
                f"cannot create a temp file in {tmpdir}: {e.strerror or e}", EXIT_IO_ERROR
            ) from None
        self.cpp_out = out
        cpp = args.cpp_argv(self.job)
        if self.direct is not None:  # the files read, listed by this same cpp run
            cpp += self.direct.cpp_extra(self)
        r, w = os.pipe()
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_fd, 1),
            (os.POSIX_SPAWN_DUP2, w, 2),
        ]
        self.cpp_ms = time.monotonic()
        _mark("cpp")
        try:
            pid = _spawn(self.inv.exec_path, cpp, actions)
        except OSError as e:
            os.close(r)
            raise _Fatal(
                f"cannot run {self.inv.exec_path}: {e.strerror}", EXIT_COMPILER_MISSING
            ) from None
        finally:
            os.close(w)
            os.close(out_fd)
        self.cpp_pid = pid
        self.cpp_err_fd = r
        self.children.append(pid)
        self.log.debug(f"cpp started (pid {pid}): {' '.join(cpp)} > {out}")

    def wait_cpp(self) -> int:
        """Collect cpp's stderr and status (once); returns its exit code (0 = ok)."""
        from meshcc.client.decisions import exit_code

        if self.cpp_status is None:
            chunks = []
            while True:
                data = os.read(self.cpp_err_fd, 65536)
                if not data:
                    break
                chunks.append(data)
            os.close(self.cpp_err_fd)
            self.cpp_err_fd = -1
            self.cpp_stderr = b"".join(chunks)
            _, self.cpp_status = os.waitpid(self.cpp_pid, 0)
            _mark("cpp", True)
            self.children.remove(self.cpp_pid)
            self.cpp_ms = (time.monotonic() - self.cpp_ms) * 1000
            self.release(self.cpp_slot)  # distcc frees the cpp slot before sending DOTI
            self.cpp_slot = None
            self.log.debug(
                f"cpp finished in {self.cpp_ms:.1f} ms, exit {exit_code(self.cpp_status)}"
            )
        return exit_code(self.cpp_status)

    def stop_cpp(self) -> None:
        """Kill a still-running cpp (we are about to compile locally anyway)."""
        if self.cpp_pid and self.cpp_status is None:
            try:
                os.kill(self.cpp_pid, _sig.SIGTERM)
            except OSError:
                pass
            if self.cpp_err_fd >= 0:
                os.close(self.cpp_err_fd)
                self.cpp_err_fd = -1
            try:
                _, self.cpp_status = os.waitpid(self.cpp_pid, 0)
            except OSError:
                self.cpp_status = 0
            self.children.remove(self.cpp_pid)
        self.release(self.cpp_slot)
        self.cpp_slot = None

    def save_server_stderr(self, data: bytes) -> None:
        """DISTCC_SAVE_TEMPS=1: keep what the server sent on stderr where distcc keeps it,
        ``$TMPDIR/distcc_server_stderr_XXXXXXXX.txt`` (rewritten by each attempt)."""
        try:
            if self.server_stderr is None:
                tmpdir = self.env.get("TMPDIR") or "/tmp"
                self.server_stderr, fd = self.temp(tmpdir, "distcc_server_stderr_", ".txt")
            else:
                fd = os.open(self.server_stderr, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            self.log.debug(f"cannot save the server's stderr: {e}")

    def source_bytes(self) -> bytes:
        path = self.cpp_out if self.cpp_out is not None else self.job.source
        assert path is not None
        return _read_all(path)

    # -------------------------------------------------------------- results

    def write_output(self, path: str, data: bytes) -> None:
        """Atomically replace ``path``: complete temp file beside it, then rename.

        A symlink is followed (gcc writes through it); a non-regular target such as
        ``-o /dev/null`` is written in place, never replaced by a file.
        """
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None and _stat.S_ISLNK(st.st_mode):
            path = os.path.realpath(path)
            try:
                st = os.stat(path)
            except OSError:
                st = None
        if st is not None and not _stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            return
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)  # distcc creates missing parents too
        tmp, fd = self.temp(directory, f".{os.path.basename(path)}.meshcc-", ".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self.temps.remove(tmp)

    # -------------------------------------------------------------- local compiles

    def exec_local(self, slot: Held | None) -> NoReturn:
        """Clean up everything but ``slot`` and become the real compiler (never returns)."""
        self.cleanup(keep=slot)
        _exec_local(self.inv, slot)

    def run_local(self, slot: Held | None, hold: Held | None = None) -> int:
        """Compile locally as a child (so the result can be compared); returns its exit code.
        ``hold``: a remote slot (a lease) to keep until the comparison is done."""
        from meshcc.client.decisions import exit_code
        from meshcc.exitcodes import EXIT_COMPILER_MISSING

        self.cleanup(keep=slot, hold=hold)
        _state.note(_state.COMPILE, "localhost", getattr(slot, "index", 0))
        try:
            pid = _spawn(self.inv.exec_path, self.inv.argv)
        except OSError as e:
            raise _Fatal(
                f"cannot run {self.inv.exec_path}: {e.strerror}", EXIT_COMPILER_MISSING
            ) from None
        self.children.append(pid)
        _, status = os.waitpid(pid, 0)
        self.children.remove(pid)
        return exit_code(status)


def _read_all(path: str) -> bytes:
    """The file's bytes, with plain system calls: ``open(path, "rb")`` would build a
    buffered file object and ask the file its position and whether it is a terminal."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        want = max(os.fstat(fd).st_size, 0) + 1  # one read, then one that sees the end
        chunks: list[bytes] = []
        while True:
            data = os.read(fd, want)
            if not data:
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]
            chunks.append(data)
            want = 65536
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _shuffle(items: list[T]) -> None:
    """``--randomize`` without importing random: Fisher-Yates over os.urandom."""
    for i in range(len(items) - 1, 0, -1):
        j = int.from_bytes(os.urandom(4), "little") % (i + 1)
        items[i], items[j] = items[j], items[i]


def _on_signal(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def _local_slot(log: _Log, lockdir: str | None, nslots: int) -> Slot | None:
    """Wait for a ``cpu_localhost_N`` slot; None (and go on unlocked) if locking is broken."""
    if lockdir is None:
        return None
    from meshcc.client import slots

    pause = slots.env_int(os.environ, "DISTCC_PAUSE_TIME_MSEC", slots.DEFAULT_PAUSE_MSEC)
    try:
        slot = slots.lock_local(lockdir, nslots, pause, _blocked(log, "localhost"))
    except slots.DistccDirError as e:
        log.warn(str(e))
        return None
    log.debug(f"holding local slot {slot.index} of {nslots}")
    return slot


def _hosts_or_none(env: os.Env) -> object | None:
    """The host list only for its --localslots settings; None on any problem."""
    hosts = env.get("DISTCC_HOSTS")
    if hosts is not None and "--localslots" not in hosts:
        return None  # the defaults apply; skip parsing (local-only jobs must start fast)
    try:
        from meshcc.compiler import hostspec

        return hostspec.load_hosts(env)
    except Exception:  # noqa: BLE001 - a bad list is reported on distributable jobs only
        return None


def _localslots(hostlist: object | None, cpp: bool = False) -> int:
    default = LOCAL_SLOTS_CPP if cpp else LOCAL_SLOTS
    value = getattr(hostlist, "localslots_cpp" if cpp else "localslots", None)
    return value if isinstance(value, int) and value > 0 else default


def _remote(run: _Run, host: Target, slot: int, argv: list[bytes], io_timeout: float) -> Reply:
    """Send the job to ``host`` (overlapping connect and request head with cpp) and read
    the reply, noting distcc's phases in the state file (``slot``: the host slot we hold).
    Raises client.TransportError / client.Refused / client.Busy / _CppFailed / _GoLocal.
    A host that speaks BUSY (a lease says so) is connected to once cpp is done and asked for
    a job slot first: a full one says so at once, and a reserved slot never waits for our
    preprocessor."""
    from meshcc.client.decisions import wire_version
    from meshcc.compiler import args
    from meshcc.transport import client

    version, no_lzo = wire_version(host.protocol, _lzo_available)
    codecs: tuple[str, ...] = getattr(host, "codecs", ())  # a lease: CODC codecs (wire.codecs)
    if codecs:
        version, no_lzo = 1, False  # the body's codec is chosen once its size is known
    if no_lzo:
        run.log.debug(
            f"no LZO here (lzallright missing, e.g. meshcc.pyz): sending "
            f"{host.spec} distcc protocol 1 instead of 2"
        )
    conn: client.Connection
    if getattr(host, "kind", "tcp") == "ssh":  # a hostspec.Host (leases are TCP)
        from meshcc.transport import ssh

        user, command = getattr(host, "user", None), getattr(host, "command", None)
        conn = ssh.SshConnection(host.host, user, command, version, run.env, io_timeout)
    else:
        assert host.port is not None  # only localhost has none, and it never gets here
        conn = client.Connection(
            host.host, host.port, version, io_timeout, proxy=run.env.get("DISTCC_SOCKS_PROXY")
        )
    log = run.log
    slot_first = getattr(host, "busy", False) is True
    t0 = time.monotonic()
    note = _state.note
    try:
        if not slot_first:
            note(_state.CONNECT, host.host, slot)
            _mark("connect")
            conn.connect()
            conn.send_head(argv)
            _mark("connect", True)
            log.debug(
                f"connected to {conn.where} (protocol {version}) in "
                f"{(time.monotonic() - t0) * 1000:.1f} ms; request head sent"
            )
        if run.cpp_pid:
            if run.cpp_status is None:
                note(_state.CPP, "localhost", getattr(run.cpp_slot, "index", 0))
            code = run.wait_cpp()
            if code:  # -fdirectives-only cpp refuses __COUNTER__ in #if: local compile then
                dirs_only = args.directives_only(run.job) and b"__COUNTER__" in run.cpp_stderr
                raise _GoLocal() if dirs_only else _CppFailed(code)
        try:
            data = run.source_bytes()
        except OSError as e:
            log.debug(f"cannot read the source to send: {e.strerror}")
            raise _GoLocal() from None
        if args.directives_only(run.job) and args.host_macro_use(data):  # __DATE__ &c.
            raise _GoLocal()
        if slot_first:
            t0 = time.monotonic()
            note(_state.CONNECT, host.host, slot)
            _mark("connect")
            conn.connect()
            conn.reserve_slot()  # client.Busy at once if every job slot is taken
            conn.send_head(argv)
            _mark("connect", True)
            log.debug(
                f"connected to {conn.where} (protocol {version}), job slot reserved in "
                f"{(time.monotonic() - t0) * 1000:.1f} ms; request head sent"
            )
        t1 = time.monotonic()
        note(_state.SEND, host.host, slot)
        codec = _pick_codec(host, codecs, len(data), run.env.get("MESHCC_CODEC")) if codecs else ""
        level = _codec_level(host, codec, len(data))
        zref = _zref_plan(run, host, codecs, codec, conn)  # [zref] compression.kept
        _mark("send")
        conn.send_source(data, codec, level, zref)
        _mark("send", True)
        _mark("wait")
        note(_state.COMPILE)
        try:
            reply = conn.read_reply(on_data=_note_receive)
        except client.Refused as e:  # [zref] the peer lost the prefix: once more without
            if zref is None or not zref.refused(str(e)):
                raise
            log.debug(f"{conn.where}: {e}")
            conn.close()
            conn = client.Connection(host.host, conn.port, 1, io_timeout, proxy=conn.proxy)
            conn.connect()
            if slot_first:
                conn.reserve_slot()
            conn.send_head(argv)
            conn.send_source(data, codec, level, zref)
            reply = conn.read_reply(on_data=_note_receive)
        if zref is not None:  # [zref] the server keeps it: so do we, for the next job
            zref.keep_body(data)
        _mark("receive", True)
        if isinstance(host, _Leased):
            host.link = conn.link_sample()  # reported with the lease's done
        if run.keep_temps:
            run.save_server_stderr(reply.stderr)
        log.debug(
            f"{conn.where}: sent {len(data)} bytes"
            f"{_codec_note(host, codec, level) if codecs else ''}, "
            f"reply status {reply.status:#x}, "
            f"{len(reply.obj)} object bytes, {(time.monotonic() - t1) * 1000:.1f} ms"
            f"{zref.note() if zref is not None else ''}"
        )
        return reply
    finally:
        conn.close()


def _zref_plan(
    run: _Run, host: object, codecs: tuple[str, ...], codec: str, conn: object
) -> ZrefPlan | None:
    """[zref] zstd to a peer that keeps bodies: this job's ids and prefix (compression.kept),
    kept per (this end's address, peer) as the server keeps them per client address."""
    if codec != "zstd" or "zref" not in codecs or run.env.get("MESHCC_ZREF") == "0":
        return None
    from meshcc.compression import kept

    sock = getattr(conn, "sock", None)  # None over ssh; a UNIX socket through a SOCKS proxy
    try:
        name = sock.getsockname() if sock is not None else None
    except OSError:
        name = None
    source = str(name[0]) if isinstance(name, tuple) else ""
    return kept.plan(run.env, getattr(host, "where", ""), source)


def _pick_codec(host: object, offered: tuple[str, ...], size: int, forced: str | None) -> str:
    """The codec for this body (compression.choose), among those the peer and we speak.
    ``forced``: ``MESHCC_CODEC`` (``none``, ``zstd``, ``lz4``; unset or ``auto``: choose),
    for comparisons and debugging; a codec the peer does not speak is not forced on it."""
    from meshcc import compression
    from meshcc.compression.choose import NONE, choose

    if forced == NONE:
        return ""
    if forced in offered and forced in compression.Codec.NEGOTIATED:
        return forced if compression.available(forced) else ""
    rate = getattr(host, "rate", 0)
    rtt_us = getattr(host, "rtt_us", 0)
    picked = choose(
        [c for c in offered if c in compression.Codec.NEGOTIATED],
        size,
        rate or None,
        rtt_us / 1e6 if rtt_us else None,
    )
    if picked != NONE and not compression.available(picked):
        return ""  # its library is missing here (meshcc.pyz): send it as it is
    return "" if picked == NONE else picked


def _codec_level(host: object, codec: str, size: int) -> int | None:
    """zstd's level for this body on this link (compression.choose.zstd_level); None for
    the other codecs (their fastest)."""
    if codec != "zstd":
        return None
    from meshcc.compression.choose import zstd_level

    rate, rtt_us = getattr(host, "rate", 0), getattr(host, "rtt_us", 0)
    return zstd_level(size, rate or None, rtt_us / 1e6 if rtt_us else None)


def _codec_note(host: object, codec: str, level: int | None = None) -> str:
    """`` as zstd (link 1.2 MB/s, rtt 180 us), level 6``: the choice and what it was made
    from."""
    rate, rtt_us = getattr(host, "rate", 0), getattr(host, "rtt_us", 0)
    link = f"{rate / 1e6:.1f} MB/s" if rate else "not measured yet"
    at = "" if level is None else f", level {level}"
    return f" as {codec or 'none'} (link {link}, rtt {rtt_us} us){at}"


def _note_receive() -> None:
    """The first reply bytes: the server's part is over."""
    _mark("wait", True)
    _mark("receive")
    _state.note(_state.RECEIVE)


def _blocked(log: _Log, host: str | None = None) -> Callable[[str], None]:
    """A log callback for the slot waits: every slot is busy, so the job is Blocked."""

    def note(msg: str) -> None:
        _state.note(_state.BLOCKED, host)
        log.debug(msg)

    return note


def _lzo_available() -> bool:
    from meshcc import compression

    return compression.available(compression.Codec.LZO)


class _ListPool:
    """Hosts from ``DISTCC_HOSTS`` or the host files, as distcc uses them: slot lock files
    pick the host (breadth-first, list order is preference), backoff files remember failures
    (shared with stock distcc clients on this box)."""

    def __init__(self, run: _Run, hostlist: HostList) -> None:
        from meshcc.client import slots

        env = run.env
        self.run = run
        self.hostlist = hostlist
        self.hosts: list[Host] = []
        for h in hostlist.hosts:
            if h.kind != "localhost" and not h.supported:
                run.log.debug(f"skipping {h.spec}: {h.unsupported_reason}")
            else:
                self.hosts.append(h)
        if getattr(hostlist, "randomize", False):
            _shuffle(self.hosts)
        self.period = slots.env_int(env, "DISTCC_BACKOFF_PERIOD", slots.DEFAULT_BACKOFF_PERIOD)
        self.pause = slots.env_int(env, "DISTCC_PAUSE_TIME_MSEC", slots.DEFAULT_PAUSE_MSEC)
        self.failed: set[str] = set()
        self.attempts = 0
        self.last_failure = ""

    def localslots(self, cpp: bool = False) -> int:
        return _localslots(self.hostlist, cpp)

    def acquire(self) -> tuple[Host, Slot] | None:
        """Wait for a slot on the first usable host; None when no host is left to try."""
        from meshcc.client import decisions, slots

        run = self.run
        lockdir = run.lockdir
        assert lockdir is not None
        usable = slots.usable_hosts(lockdir, self.hosts, self.period, exclude=self.failed)
        if not usable:
            return None
        if not decisions.may_try_host(self.attempts, self.period):
            run.log.debug(f"giving up after {self.attempts} remote attempts (backoff disabled)")
            return None
        host, slot = slots.lock_first_free(lockdir, usable, self.pause, _blocked(run.log))
        run.slots.append(slot)
        if host.kind == "localhost":
            run.log.debug(f"picked localhost slot {slot.index}: compiling {run.job.source} locally")
            _report("local", "localhost", "the host list picked localhost")
            run.exec_local(slot)
        self.attempts += 1
        run.log.debug(f"picked {host.spec} slot {slot.index} for {run.job.source}")
        return host, slot

    def failed_on(self, host: Host, slot: Slot, why: str, connect_failed: bool) -> None:
        """The host could not do the job: back it off (unless disabled), free its slot."""
        from meshcc.client import decisions, slots

        self.last_failure = f"{host.spec} ({why})"
        if decisions.backs_off(self.period):
            assert self.run.lockdir is not None
            slots.mark_backoff(self.run.lockdir, host.lock_name)
            self.failed.add(host.lock_name)
        self.run.release(slot)

    def busy(self, host: Host, slot: Slot) -> None:
        """A full host (BUSY; a host list never negotiates it today): no backoff file, no
        attempt counted, but not this host again for this job."""
        self.attempts -= 1
        self.failed.add(host.lock_name)
        self.last_failure = f"{host.spec} (busy)"
        self.run.release(slot)

    def finish(self, host: Host, slot: Slot, verdict: bool | None) -> None:
        """The job is over on ``host``: True = it worked (forgive), False = dislike it
        (back off), None = no opinion (decisions.FORGIVE, BACK_OFF, NO_OPINION). Frees the
        slot."""
        from meshcc.client import slots

        lockdir = self.run.lockdir
        assert lockdir is not None
        if verdict is True:
            slots.clear_backoff(lockdir, host.lock_name)
        elif verdict is False:
            slots.mark_backoff(lockdir, host.lock_name)
        self.run.release(slot)

    def before_local_retry(self, slot: Slot) -> None:
        """distcc frees the remote slot before retrying locally; nothing is held."""
        self.run.release(slot)

    local_share = None  # only the daemon hands out counted local slots

    def nothing_left(self, src: str) -> tuple[str, bool]:
        """Why no host did the job, and whether that is quiet (verbose-only)."""
        from meshcc.client.decisions import host_list_exhausted

        return host_list_exhausted(src, self.last_failure, bool(self.hosts))


class _Leased:
    """A peer leased from the daemon, shaped like a ``hostspec.Host`` for ``_remote``."""

    __slots__ = (
        "busy",
        "codecs",
        "compiler",
        "host",
        "link",
        "lock",
        "peer",
        "port",
        "protocol",
        "rate",
        "rtt_us",
        "slot",
        "spec",
        "where",
    )

    def __init__(self, grant: LeaseGranted) -> None:
        self.busy = grant.busy  # the peer speaks SLOT/BUSY
        self.codecs = grant.codecs  # CODC codecs it speaks, and the daemon's link estimate
        self.rate = grant.rate
        self.rtt_us = grant.rtt_us
        self.link: tuple[int, bool, int] | None = None  # this job's TCP_INFO, for `done`
        self.host = host = grant.host
        self.port = port = grant.port
        self.protocol = grant.protocol
        self.compiler = grant.compiler
        self.peer = grant.peer
        self.where = where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.spec = f"{where} ({self.peer})" if self.peer and self.peer != where else where
        self.slot = 0  # distcc's slot number for the monitors (see _LeasePool.acquire)
        self.lock: Slot | None = None  # the distcc lock file that number stands for


class _LeasePool:
    """Peers leased from the local meshcc daemon (``meshcc.transport.control_client``).

    Each attempt is one control connection; a granted lease is held (as a slot in
    ``run.slots``) for the whole remote job, so the daemon counts the peer slot busy until
    ``done`` and close. A failed peer is reported (``ok`` false, ``connect_failed``) and
    another lease asked for, at most MAX_LEASE_ATTEMPTS times. Local compiles are not the
    daemon's business: they keep distcc's local slot locks.
    """

    def __init__(
        self, run: _Run, first: Control | None, path: str, cc: str, cc_path: str, io_timeout: float
    ) -> None:
        self.run = run
        self.next_conn = first
        self.path = path
        self.cc = cc
        self.cc_path = cc_path
        self.io_timeout = io_timeout
        self.attempts = 0
        self.last_failure = ""  # a leased peer that failed
        self.local_reason = ""  # the daemon said: compile locally
        self.local_share: Control | None = None  # ...in one of this box's counted slots
        self.daemon_failure = ""  # the daemon itself failed us
        self._hostlist: Any = False

    def localslots(self, cpp: bool = False) -> int:
        """--localslots from the distcc host files, if any set it (read only when needed)."""
        if self._hostlist is False:
            self._hostlist = _hosts_or_none(self.run.env)
        return _localslots(self._hostlist, cpp)

    def acquire(self) -> tuple[_Leased, Control] | None:
        """Ask the daemon for a peer (waiting while all are busy); None: compile locally."""
        from meshcc.transport import control_client as cc
        from meshcc.wire.control_core import LeaseGranted, LeaseLocal

        run = self.run
        if self.attempts >= MAX_LEASE_ATTEMPTS:
            run.log.debug(f"giving up after {self.attempts} leased attempts")
            return None
        conn, self.next_conn = self.next_conn, None
        t0 = time.monotonic()
        _state.note(_state.BLOCKED)  # the daemon queues us while every matching slot is busy
        try:
            if conn is None:
                conn = cc.Control.connect(self.path)
            answer = conn.lease(
                self.cc,
                self.cc_path,
                run.job.source or "",
                self.io_timeout,
                local_ok=run.fallback,
                on_wait=lambda: _begin_cpp(run, self),  # preprocess while we wait in line
            )
        except (cc.NoDaemon, cc.ControlError) as e:
            if conn is not None:
                conn.close()
            self.daemon_failure = f"meshcc daemon at {self.path}: {e}"
            return None
        ms = (time.monotonic() - t0) * 1000
        if isinstance(answer, LeaseGranted):
            target = _Leased(answer)
            run.slots.append(conn)
            if _state.active():
                target.slot = self._slot_number(target)
            self.attempts += 1
            run.log.debug(
                f"leased {target.where} (compiler {target.compiler}) from the meshcc "
                f"daemon in {ms:.1f} ms (peer {target.peer or '?'})"
            )
            return target, conn
        if isinstance(answer, LeaseLocal):
            self.local_reason = answer.reason
            if answer.hold:  # this box's own share: held while we compile
                self.local_share = conn
                run.slots.append(conn)
                return None
            conn.close()
            return None
        conn.close()
        self.daemon_failure = f"meshcc daemon error: {answer.error}"
        return None

    def _slot_number(self, target: _Leased) -> int:
        """A slot number for the monitors: the first free distcc lock ``cpu_tcp_HOST_PORT_N``
        of the peer, held with the lease, so jobs on one peer show distinct slots (and stock
        distcc clients on this box count the slot as busy, as it is)."""
        from meshcc.client import slots

        lockdir = self.run.lockdir
        if lockdir is None:
            return 0
        name = f"tcp_{target.host}_{target.port}"
        for index in range(1024):
            try:
                held = slots.try_lock(lockdir, name, index)
            except slots.DistccDirError:
                return 0
            if held is not None:
                self.run.slots.append(held)
                target.lock = held
                return index
        return 0

    def failed_on(self, host: _Leased, lease: Control, why: str, connect_failed: bool) -> None:
        """Tell the daemon the peer failed (it may drop it at once) and end the lease."""
        self.last_failure = f"{host.spec} ({why})"
        lease.ok = False
        lease.connect_failed = connect_failed
        lease.reason = why
        self.run.release(lease)
        self.run.release(host.lock)

    def busy(self, host: _Leased, lease: Control) -> None:
        """The peer is full: tell the daemon (it skips the peer for a moment, with no
        failure counted) and end the lease; not a leased attempt used up."""
        self.attempts -= 1
        lease.busy = True
        self.run.release(lease)
        self.run.release(host.lock)

    def finish(self, host: _Leased, lease: Control, verdict: bool | None) -> None:
        """End the lease; ``verdict`` False reports the peer as bad (crash, wrong result)."""
        lease.link = host.link  # the link as this job measured it (the daemon's estimate)
        if verdict is False:
            lease.ok = False
            why = "the remote compiler crashed or disagreed with the local one"
            lease.reason = why
        self.run.release(lease)
        self.run.release(host.lock)

    def before_local_retry(self, lease: Control) -> Control:
        """Keep the lease through the local retry: only its result tells whether the peer
        was at fault (rare path: compile errors)."""
        return lease

    def nothing_left(self, src: str) -> tuple[str, bool]:
        """Why no lease did the job, and whether that is quiet (verbose-only)."""
        from meshcc.client.decisions import leases_exhausted

        return leases_exhausted(src, self.last_failure, self.daemon_failure, self.local_reason)


# connect() errors that mean "no daemon at this path" (== control_client._ABSENT, tested).
_NO_DAEMON = (2, 111, 20, 13)  # ENOENT, ECONNREFUSED (a stale socket file), ENOTDIR, EACCES
# == wire.control.NO_CACHE_SUFFIX (tested): that module is not imported for this check.
NO_CACHE_SUFFIX = ".nocache"


def _keeps_no_cache(socket_path: str) -> bool:
    """The daemon at ``socket_path`` said beside it that it keeps no result cache, so a
    direct-mode lookup would only hear "off" (a stat instead of the manifest key, two
    imports and a round trip)."""
    try:
        os.stat(socket_path + NO_CACHE_SUFFIX)
    except OSError:
        return False
    return True


def _probe_daemon(env: os.Env) -> tuple[Any, str] | bool:
    """Whether a local meshcc daemon listens, asked with the bare ``_socket`` module: with
    none there (a DISTCC_HOSTS build, or host files, on a box without one; a stale socket
    file) neither the control protocol (wire.control, transport.control_client) nor direct
    mode is imported, a third of the client's own instructions on a remote job.

    False: nothing listens at any control path. ``(sock, path)``: connected to the first
    that accepted (:func:`meshcc.transport.control_client.connect` checks and adopts it).
    True: something else (a full backlog, an odd error): control_client connects again,
    with its timeout, and says what it found. The connect here never blocks, so asking
    again never doubles a wait."""
    import _socket

    from meshcc.client.outcome import control_paths

    for path in control_paths(env):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            if e.errno in _NO_DAEMON:
                continue
            return True
        return sock, path
    return False


def _lease_pool(
    run: _Run, inv: _Invocation, io_timeout: float, probed: tuple[Any, str] | None
) -> _LeasePool | None:
    """The daemon's lease pool if a daemon answers on its control socket, else None (then
    the distcc host files apply). ``probed``: :func:`_probe_daemon`'s connection."""
    from meshcc.transport import control_client as cc

    log = run.log
    try:
        conn = cc.connect(run.env, probed=probed)
    except cc.NoDaemon as e:
        log.debug(str(e))
        return None
    except cc.ControlError as e:
        log.warn(f"meshcc daemon: {e}; using the distcc host files")
        return None
    exe = inv.exec_path
    if "/" not in exe:
        exe = which(exe, run.env.get("PATH", os.defpath)) or exe
    return _LeasePool(run, conn, conn.path, inv.compiler, os.path.abspath(exe), io_timeout)


def _distribute(inv: _Invocation, job: Job, log: _Log) -> int:
    """Run a distributable job remotely if a host takes it, else locally.

    Hosts: an explicit ``DISTCC_HOSTS`` always wins (as for distcc); else a lease from
    the local meshcc daemon if one answers; else ``$DISTCC_DIR/hosts``,
    ``/etc/distcc/hosts``. Whatever the source, the job itself is handled by the same code
    (:func:`_run_job`), and every decision on the way is :mod:`meshcc.client.decisions`'.
    Returns the exit code, or execs the compiler and never returns.
    """
    from meshcc.client import decisions, slots
    from meshcc.exitcodes import EXIT_BAD_ARGUMENTS

    env = os.environ
    settings = decisions.Settings.from_environ(env)
    plan = decisions.Plan(settings, job.source or "?")
    run = _Run(inv, job, log, settings)

    try:
        io_timeout = decisions.parse_io_timeout(env.get("DISTCC_IO_TIMEOUT"))
    except ValueError as e:
        raise _Fatal(str(e), EXIT_BAD_ARGUMENTS) from None

    try:
        top = slots.distcc_dir(env)
        _state.begin(top, job.source)
        _state.note(_state.STARTUP)
        run.lockdir = slots.lock_dir(top)
    except slots.DistccDirError as e:  # no lock directory, so no local slot either
        _compile_locally(run, plan.distcc_dir_unusable(str(e)), None)

    hosts_set = "DISTCC_HOSTS" in env
    # Direct mode (only when a daemon answers) needs a source that cpp would read: never
    # for .i/.ii, stdin or no output, nor when turned off (direct.prepare's and attempt's
    # first tests, here to spare their import and, with DISTCC_HOSTS, the daemon probe).
    direct_may = (
        not job.preprocessed
        and bool(job.source)
        and job.source != "-"
        and job.output is not None
        and env.get("MESHCC_DIRECT") != "0"
        and env.get("MESHCC_CACHE") != "0"
    )
    daemon: tuple[Any, str] | bool = False
    if not hosts_set:  # verbose: control_client connects, and says why no daemon answers
        daemon = True if log.verbose else _probe_daemon(env)
    elif direct_may:
        daemon = _probe_daemon(env)
    probed = daemon if isinstance(daemon, tuple) else None
    leases = None
    if not hosts_set and daemon is not False:
        leases = _lease_pool(run, inv, io_timeout, probed)
    if direct_may:
        where = leases.path if leases is not None else probed[1] if probed is not None else None
        if where is not None and _keeps_no_cache(where):
            log.debug(
                f"direct mode: off (the daemon keeps no result cache: {where}{NO_CACHE_SUFFIX})"
            )
            direct_may = False
            if leases is None and probed is not None:
                probed[0].close()  # opened for the lookup alone
    if direct_may and (leases is not None or (hosts_set and daemon is not False)):
        from meshcc.client import direct  # a direct-mode hit needs no preprocessor

        code = direct.attempt(run, leases, None if leases is not None else probed)
        if code is not None:
            return code
    if leases is not None:
        return _run_job(run, leases, plan, io_timeout)

    from meshcc.compiler import hostspec

    try:
        hostlist = hostspec.load_hosts(env)
    except hostspec.HostSpecError as e:
        why = (str(e).strip().splitlines() or ["bad host list"])[0]
        _compile_locally(run, plan.bad_host_list(why), None)
    return _run_job(run, _ListPool(run, hostlist), plan, io_timeout)


def _begin_cpp(run: _Run, pool: HostPool[TargetT, HeldT] | _LeasePool) -> None:
    """Start the local preprocessor (once, in a cpp slot): when a host is picked, or earlier
    while the daemon makes us wait for a lease, so that the source is ready when the slot is
    ours (a peer slot reserved with SLOT then never waits for our cpp)."""
    if not run.job.preprocessed and not run.cpp_pid:
        run.cpp_slot = _local_slot(run.log, run.lockdir, pool.localslots(cpp=True))
        if run.cpp_slot is not None:
            run.slots.append(run.cpp_slot)
        run.start_cpp()


def _run_job(run: _Run, pool: HostPool[TargetT, HeldT], plan: Plan, io_timeout: float) -> int:
    """Try hosts from ``pool`` until one compiles the job, then finish as ``plan`` says."""
    from meshcc.client import decisions
    from meshcc.compiler import args

    job = run.job
    log = run.log
    src = job.source or "?"
    for signum in (_sig.SIGINT, _sig.SIGTERM, _sig.SIGHUP):
        _sig.signal(signum, _on_signal)

    remote_argv = [os.fsencode(a) for a in args.remote_argv(job)]
    if os.environ.get("MESHCC_CACHE") == "0":  # no result cache for this build (meshcc.cache)
        remote_argv.append(b"-D__MESHCC_NO_CACHE__")  # = NO_CACHE_ARG; gcc ignores it on .i
    if run.keep_temps:  # distcc makes this file before choosing a host
        run.save_server_stderr(b"")
    try:
        while True:
            _mark("lease")
            picked = pool.acquire()
            _mark("lease", True)
            if picked is None:
                break
            host, held = picked
            _begin_cpp(run, pool)
            from meshcc.transport import client  # while cpp runs: off the job's critical path

            name = getattr(host, "compiler", None)  # a lease names the peer's compiler
            argv = remote_argv if name is None else [os.fsencode(name), *remote_argv[1:]]
            # a distcc slot lock's number, else the one a lease was given
            slot = int(getattr(held, "index", getattr(host, "slot", 0)))
            try:
                reply = _remote(run, host, slot, argv, io_timeout)
            except client.Busy as e:
                log.debug(f"{host.spec} is busy ({e.running} jobs running): trying elsewhere")
                act = plan.busy(host.spec, e.running)
                from meshcc.client import outcome

                outcome.busy_on(host, f"all its job slots taken ({e.running} jobs running)")
                pool.busy(host, held)
                if not isinstance(act, decisions.TryElsewhere):
                    run.stop_cpp()
                    _compile_locally(run, act, pool)
                continue
            except client.Refused as e:
                log.debug(f"{host.spec} refused {src}: {e.reason}")
                retry = plan.refused(e.reason)
            except client.TransportError as e:
                log.debug(f"{host.spec} failed: {e}")
                retry = plan.transport_failed(str(e), e.exit_code)
            except _CppFailed as e:
                _report("cpp_error", host, f"preprocessor exited {e.code}")
                return _finish(run, pool, host, held, plan.cpp_failed(e.code), None)
            except _GoLocal:
                _compile_locally(run, plan.source_unreadable(), pool, host, held)
            else:
                if reply.status != 0 or reply.obj:
                    return _handle_reply(run, pool, plan, host, held, reply)
                log.debug(f"{host.spec} sent an empty object for {src}")
                retry = plan.empty_object()
            from meshcc.client import outcome

            outcome.failed_on(host, retry.why)
            pool.failed_on(host, held, retry.why, retry.connect_failed)

        # No host (left): compile locally, or fail if fallback is disabled.
        run.stop_cpp()
        _compile_locally(run, plan.no_host_left(*pool.nothing_left(src)), pool)
    except _Interrupted as e:
        run.cleanup(e.signum)
        _die_by(e.signum)
        return 128 + e.signum
    finally:
        run.cleanup()


def _handle_reply(
    run: _Run,
    pool: HostPool[TargetT, HeldT],
    plan: Plan,
    host: TargetT,
    held: HeldT,
    reply: Reply,
) -> int:
    """The remote compiler ran: deliver its result, or retry locally, as ``plan`` says."""
    from meshcc.client import decisions

    log = run.log
    job = run.job
    act = plan.replied(reply.status)
    if isinstance(act, decisions.Deliver):
        assert job.output is not None
        if isinstance(pool, _LeasePool):  # the server freed its slot before replying: let
            pool.finish(host, held, decisions.FORGIVE)  # the daemon re-grant it now (issue 11)
        try:
            _mark("write")
            run.write_output(job.output, reply.obj)
            _mark("write", True)
        except OSError as e:
            unwritable = plan.output_unwritable(job.output, e.strerror or str(e))
            _compile_locally(run, unwritable, pool, host, held)
        _write(2, run.cpp_stderr + reply.stderr)
        if reply.stdout:
            _write(1, reply.stdout)
        code = _finish(run, pool, host, held, plan.delivered(), reply)
        if run.direct is not None and code == 0 and reply.status == 0:
            run.direct.record(run, run.cpp_stderr + reply.stderr, reply.stdout, reply.obj)
        _report("remote", host)
        log.debug(
            f"{job.source} compiled on {host.spec}: {job.output} ({len(reply.obj)} bytes); "
            f"cpp {run.cpp_ms:.1f} ms, total {(time.monotonic() - _T0) * 1000:.1f} ms"
        )
        log.debug(_timeline(job.source or "?", host.spec))
        return code

    if isinstance(act, decisions.Finish):
        log.debug(f"remote compile on {host.spec} failed with exit {act.code}; no local retry")
        log.debug(_timeline(job.source or "?", host.spec))
        _report("remote", host, f"compile error (exit {act.code})")
        return _finish(run, pool, host, held, act, reply)

    # Retry locally; the user sees only the local run's diagnostics (each exactly once).
    log.debug(
        f"remote compile of {job.source} on {host.spec} failed with exit {act.remote_code}; "
        "retrying locally"
    )
    kept = pool.before_local_retry(held)
    local = _local_slot(log, run.lockdir, pool.localslots())
    if local is not None:
        run.slots.append(local)
    local_code = run.run_local(local, hold=kept)
    _report("fallback", host, f"remote compile exited {act.remote_code}; compiled again here")
    return _finish(run, pool, host, held, plan.retried_locally(local_code), None)


def _finish(
    run: _Run,
    pool: HostPool[TargetT, HeldT],
    host: TargetT,
    held: HeldT,
    act: Finish,
    reply: Reply | None,
) -> int:
    """Carry out a :class:`~meshcc.client.decisions.Finish`: verdict, diagnostics, code."""
    from meshcc.client import decisions

    if act.note:
        run.log.debug(f"{act.note}: backing off {host.spec}")
    pool.finish(host, held, act.verdict)
    if act.show == decisions.SHOW_CPP:
        _write(2, run.cpp_stderr)
    elif act.show == decisions.SHOW_ALL:
        assert reply is not None
        _write(2, run.cpp_stderr + reply.stderr)
        if reply.stdout:
            _write(1, reply.stdout)
    return act.code


def _compile_locally(
    run: _Run,
    act: CompileLocally | Fail,
    pool: HostPool[TargetT, HeldT] | None,
    host: TargetT | None = None,
    held: HeldT | None = None,
) -> NoReturn:
    """Carry out a :class:`~meshcc.client.decisions.CompileLocally` (exec the compiler in a
    local slot, or the pool's own local share) or a :class:`~.decisions.Fail`. ``host``
    and ``held``: the host the job was on, which gets the action's verdict first."""
    from meshcc.client import outcome
    from meshcc.client.decisions import Fail

    outcome.compiled_locally(act, pool, run.job.source)
    if isinstance(act, Fail):
        raise _Fatal(act.message, act.code)
    if act.message:
        if act.warn:
            run.log.warn(act.message)
        else:
            run.log.debug(act.message)
    if pool is None:
        run.exec_local(_local_slot(run.log, run.lockdir, LOCAL_SLOTS))
    if host is not None and held is not None:
        pool.finish(host, held, act.verdict)
    run.exec_local(pool.local_share or _local_slot(run.log, run.lockdir, pool.localslots()))


# --------------------------------------------------------------------------- entry points


def main(argv: Sequence[str] | None = None) -> int:
    """Compile as distcc would; returns the exit code (or execs the compiler)."""
    if argv is None:
        argv = sys.argv
    global _marks
    env = os.environ
    log = _Log(env)
    if log.verbose:
        _marks = {}
    try:
        inv = _invocation(argv, env)
        level = env.get("_DISTCC_SAFEGUARD", "")
        depth = int(level) if level.isdigit() else 0
        env["_DISTCC_SAFEGUARD"] = str(depth + 1)
        if depth > 0:
            log.debug(f"_DISTCC_SAFEGUARD={depth}: running {inv.compiler} directly")
            _exec_local(inv, None)

        from meshcc.compiler import args

        args.directives_only_when_optimizing = env.get("MESHCC_DIRECTIVES_ONLY") == "1"
        job = args.analyse(inv.argv)
        if job.reason and any(a.endswith("=native") for a in inv.argv):
            from meshcc.compiler import native  # resolved once per box, then cached

            job = native.analyse(inv.exec_path, inv.argv, env, log.debug)
        if not job.distributable:
            log.debug(f"runs locally: {job.reason}")
            _report("local", "", job.reason, inv.argv)
            _local_only(inv, job, log)
        return _distribute(inv, job, log)
    except _Exit as e:
        return e.code
    except _Fatal as e:
        log.error(str(e))
        return e.code
    except KeyboardInterrupt:  # e.g. while waiting for a local slot: die by the signal
        _die_by(_sig.SIGINT)
        return 128 + _sig.SIGINT
    finally:
        _state.end()  # distcc's atexit(dcc_remove_state_file)


def launch(on_exit: Callable[[int], None] | None = None) -> NoReturn:
    """The launchers' entry point (``meshcc-gcc`` ...): :func:`main`, then ``os._exit``.

    ``on_exit``: called with the exit code once the job is over and its output flushed,
    just before the exit (the zygote's worker tells its launcher there, so that make need
    not wait for this process's teardown).

    Why not ``sys.exit(main())``: a compile client ends with nothing left to do (temp
    files removed, slots and leases released, the state file gone, all output written
    with ``os.write``), yet the interpreter's teardown (freeing every module, a last
    garbage collection) costs ~6-10 M instructions per compile, a third of meshcc's own
    CPU on a remote job. The cyclic garbage collector is off for the same reason: one
    short process allocates little and frees everything at exit (its collections during
    the imports cost ~2 M instructions). In-process callers (tests, ``meshcc gcc``)
    use :func:`main`, which keeps both."""
    import gc

    gc.disable()
    code = main(sys.argv)
    for stream in (sys.stdout, sys.stderr):  # nothing writes there today; be safe
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if on_exit is not None:
        on_exit(code & 0xFF)
    os._exit(code & 0xFF)


def _local_only(inv: _Invocation, job: Job, log: _Log) -> NoReturn:
    """A job that must run here: take a local slot (cpp slot for -E) and exec the compiler."""
    from meshcc.client import slots

    env = os.environ
    try:
        top = slots.distcc_dir(env)
        _state.begin(top, job.source)  # Compile (or Blocked) is noted once we have a slot
        lockdir = slots.lock_dir(top)
    except slots.DistccDirError as e:
        log.warn(f"{e}; compiling without a slot lock")
        lockdir = None
    cpp = "-E" in job.argv
    slot = _local_slot(log, lockdir, _localslots(_hosts_or_none(env), cpp))
    _exec_local(inv, slot)
