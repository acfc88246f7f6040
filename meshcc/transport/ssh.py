"""distcc's SSH transport for the compile client: the distcc protocol over ssh's stdin/stdout.

For a host spec ``[USER]@HOST[/LIMIT][:COMMAND]`` distcc 3.4 (``src/ssh.c``) runs::

    $DISTCC_SSH [-l USER] HOST COMMAND --inetd --enable-tcp-insecure

with ``DISTCC_SSH`` split on spaces (default ``ssh``, no quoting) and COMMAND ``distccd``
unless the spec names one, and speaks the protocol over the child's stdin and stdout. The
server side is ``distccd --inetd`` or ``meshcc daemon --inetd`` (``@HOST:meshcc`` runs
``meshcc --inetd ...``, which is that). This module does the same, so a host list means
the same to ``meshcc-gcc`` as to ``distcc``.

Why one socketpair for both of ssh's stdin and stdout (distcc uses two): our end is then an
ordinary stream socket, so :class:`meshcc.transport.client.Connection` (send timeouts,
``DISTCC_IO_TIMEOUT`` on every read, the reply reader, ERRM after a broken send) works on
it unchanged. ssh's stderr is ours: its own messages (host key problems, "Permission
denied") and whatever the remote command prints there reach the user, as with distcc.

Imported only when a host list names an SSH host: the compile client's hot path never pays
for it. No ``subprocess`` (it would import ``selectors``, ``threading`` and more):
``posix_spawn`` and ``waitpid`` do all we need.
"""

from __future__ import annotations

import _socket
import os
import time

from meshcc.exitcodes import EXIT_CONNECT_FAILED, EXIT_TIMEOUT
from meshcc.transport.client import DEFAULT_IO_TIMEOUT, Connection, Refused, TransportError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import signal as _signal
    from collections.abc import Callable, Mapping, Sequence

    from meshcc.compression.kept import Plan
    from meshcc.transport.client import Reply
    from meshcc.wire.protocol import Limits
else:
    try:  # the C module: `signal` proper would import enum
        import _signal
    except ImportError:  # pragma: no cover - non-CPython
        import signal as _signal

__all__ = ["DEFAULT_COMMAND", "DEFAULT_SSH", "SshConnection", "ssh_argv", "ssh_command"]

DEFAULT_SSH = "ssh"  # distcc's dcc_default_ssh
DEFAULT_COMMAND = "distccd"  # what distcc runs when the spec names no command
SERVER_ARGS = ("--inetd", "--enable-tcp-insecure")  # distcc's fixed server arguments
# After a complete reply (or a refusal) the server exits and so does ssh: how long it may
# take before it is killed. On any other end ssh is killed at once (it may be stuck
# connecting, or the server may be wedged).
EXIT_GRACE = 5.0
# On a failed read or send, how long to wait for ssh to exit so that its status can be
# told (its message, on the user's stderr, is the rest of the story).
STATUS_WAIT = 1.0
_SIGDEF = tuple(
    getattr(_signal, n)
    for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP")
    if hasattr(_signal, n)
)


def ssh_command(environ: Mapping[str, str]) -> list[str]:
    """``DISTCC_SSH`` as distcc 3.4 splits it: words separated by spaces, no quoting; unset,
    empty or blank means ``ssh``. (distcc keeps at most 12 extra words and loses the
    variable after its first connection, issues #434/#489; here every word is kept.)"""
    words = [w for w in environ.get("DISTCC_SSH", "").split(" ") if w]
    return words or [DEFAULT_SSH]


def ssh_argv(
    host: str, user: str | None, command: str | None, environ: Mapping[str, str]
) -> list[str]:
    """distcc's ssh command line for one job (``src/ssh.c:dcc_ssh_connect``)."""
    argv = ssh_command(environ)
    if user:
        argv += ["-l", user]
    argv += [host, command or DEFAULT_COMMAND, *SERVER_ARGS]
    return argv


def describe_status(program: str, status: int) -> str:
    """An ssh wait status in words, with what the usual values mean."""
    if os.WIFSIGNALED(status):
        return f"{program} was killed by signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    text = f"{program} exited with status {code}"
    if code == 255:
        return text + " (an ssh error: see its message above)"
    if code == 127:
        return text + " (the remote command was not found: see the message above)"
    if code == 126:
        return text + " (the remote command is not executable)"
    return text


class SshConnection(Connection):
    """One compile job through ``$DISTCC_SSH ... HOST COMMAND --inetd``."""

    def __init__(
        self,
        host: str,
        user: str | None,
        command: str | None,
        version: int,
        environ: Mapping[str, str],
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(host, 0, version, io_timeout, limits)
        self.user = user or None
        self.argv = ssh_argv(host, self.user, command, environ)
        self.environ = environ
        self.pid = 0
        self.status: int | None = None  # ssh's wait status, once reaped
        self._clean_end = False  # the server finished its reply or its refusal

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}" if self.user else f"@{self.host}"

    # ------------------------------------------------------------------ connect

    def connect(self) -> None:
        """Start ssh with one end of a socketpair as its stdin and stdout."""
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        program = self.argv[0]
        try:
            fd = theirs.fileno()
            actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1)]
            spawn = os.posix_spawn if "/" in program else os.posix_spawnp
            self.pid = spawn(
                program, self.argv, self.environ, file_actions=actions, setsigdef=_SIGDEF
            )
        except OSError as e:
            ours.close()
            raise TransportError(
                f"cannot run {program} (DISTCC_SSH): {e.strerror or e}", EXIT_CONNECT_FAILED
            ) from None
        finally:
            theirs.close()
        ours.settimeout(self.io_timeout)
        self.sock = ours

    # ------------------------------------------------------------------ the job

    def send_head(self, argv: Sequence[bytes]) -> None:
        try:
            super().send_head(argv)
        except TransportError as e:
            raise self._explain(e) from None

    def send_source(
        self, data: bytes, codec: str = "", level: int | None = None, zref: Plan | None = None
    ) -> None:
        try:
            super().send_source(data, codec, level, zref)
        except TransportError as e:
            raise self._explain(e) from None

    def read_reply(self, on_data: Callable[[], None] | None = None) -> Reply:
        try:
            reply = super().read_reply(on_data)
        except Refused:
            self._clean_end = True
            raise
        except TransportError as e:
            raise self._explain(e) from None
        self._clean_end = True
        return reply

    def _explain(self, e: TransportError) -> TransportError:
        """Add how ssh ended to a failure (the channel broke because ssh exited, usually;
        after an IO timeout it is still running, and close() stops it at once)."""
        status = self._wait(0.0 if e.exit_code == EXIT_TIMEOUT else STATUS_WAIT)
        if status is None:
            return e
        code = e.exit_code
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 255:
            code = EXIT_CONNECT_FAILED  # ssh could not connect or log in
        return TransportError(f"{e}; {describe_status(self.argv[0], status)}", code)

    # ------------------------------------------------------------------ the ssh child

    def _wait(self, timeout: float) -> int | None:
        """ssh's wait status if it exits within ``timeout`` seconds, else None."""
        if self.status is not None or not self.pid:
            return self.status
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: nothing more to learn
                self.status = 0
                return None
            if pid:
                self.status = status
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)

    def close(self) -> None:
        """Close our end (ssh sees end of input) and reap ssh: after a clean end it gets
        EXIT_GRACE seconds to exit by itself, otherwise it is stopped at once."""
        super().close()
        if not self.pid or self.status is not None:
            return
        if self._wait(EXIT_GRACE if self._clean_end else 0.0) is not None:
            return
        for signum, wait in ((_signal.SIGTERM, 1.0), (_signal.SIGKILL, 5.0)):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
            if self._wait(wait) is not None:
                return
