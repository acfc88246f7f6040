"""Start one compiler for the compile server and learn when it ends, cheaply.

Why not ``asyncio.create_subprocess_exec``: on Python 3.11 it starts a thread per child
(the default child watcher blocks in ``waitpid`` on it), builds a subprocess transport and
two pipe transports, and the server then ran three more tasks to read the pipes and wait.
Measured on one serial job, that was most of the daemon's CPU beyond distccd's. Here:

- the child is started by :class:`subprocess.Popen` (``vfork`` + ``exec``, no Python in
  the child), in its own process group, in the job directory;
- its stdout and stderr go to unnamed files in the job directory (``O_TMPFILE``), as
  distccd sends them to files: nothing to read while it runs, one ``pread`` each after
  (at most ``cap`` bytes kept, the rest reported as dropped, as before);
- its end is a ``pidfd`` in the event loop (no thread); where the kernel has no pidfd, a
  thread per child waits as asyncio's watcher did.

When the compiler has exited, but before it is reaped (so its process group id cannot have
been reused), whatever else is left in its process group is killed: a job leaves nothing
running behind it, and nothing holds its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping

__all__ = ["CompilerRun", "open_capture", "read_capture"]

_devnull_fd = -1


def _devnull() -> int:
    """One read-only /dev/null for every compiler's stdin (Popen would open one per job)."""
    global _devnull_fd
    if _devnull_fd < 0:
        _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


def open_capture(directory: str) -> int:
    """An unnamed file in ``directory`` for a compiler's stdout or stderr (a named, at once
    unlinked one where the filesystem has no ``O_TMPFILE``). The caller closes it."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(dir=directory, prefix=".meshcc-out")
        os.unlink(path)
        return fd


def read_capture(fd: int, cap: int) -> bytes:
    """What a compiler wrote to a capture file, at most ``cap`` bytes plus a line saying how
    much more was dropped."""
    size = os.fstat(fd).st_size
    if size == 0:
        return b""
    want = min(size, cap)
    chunks: list[bytes] = []
    got = 0
    while got < want:
        chunk = os.pread(fd, want - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if size > cap:
        chunks.append(f"\nmeshcc: {size - cap} more bytes of output were dropped\n".encode())
    return b"".join(chunks)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class CompilerRun:
    """A compiler started in its own process group; ``exited`` resolves with its return
    code (``Popen.returncode``: negative for a signal) once it has exited, its group has
    been cleared and it has been reaped. Reaping happens whether or not anyone awaits."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: Mapping[bytes, bytes],
        stdout: int,
        stderr: int,
    ) -> None:
        """Start it (OSError if it cannot be executed)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.exited: asyncio.Future[int] = loop.create_future()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=_devnull(),
            stdout=stdout,
            stderr=stderr,
            process_group=0,
            restore_signals=True,
        )
        self.pid = self.proc.pid
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel, seccomp): a thread waits
            threading.Thread(
                target=self._wait_in_thread, name="meshcc-compiler-wait", daemon=True
            ).start()  # daemon: a compiler still running never holds up the daemon's exit
        else:
            loop.add_reader(self._pidfd, self._on_exit)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL its whole process group (it stays unreaped until ``exited``)."""
        if self.proc.returncode is None:
            _kill_group(self.pid)

    def _reap(self) -> int:
        """waitpid() the exited child (at once) and record its code in the Popen, so that
        the Popen never waits for that pid again (a later child may reuse it)."""
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else: no status to be had
            code = 255
        self.proc.returncode = code
        return code

    def _wait_in_thread(self) -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            # WNOWAIT: the child stays a zombie, so its group id is still ours to kill.
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        _kill_group(self.pid)  # leftovers of the job; the zombie leader keeps the id ours
        code = self._reap()
        if not self.exited.done():
            self.exited.set_result(code)
