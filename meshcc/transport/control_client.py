"""The blocking client of the local daemon's control socket, for every caller.

The compile client asks it for leases; ``meshcc hosts``, ``doctor`` and ``setup`` ask it
for status and host lines. One implementation, so every caller finds the daemon by the
same path rules (:func:`meshcc.wire.control.client_socket_paths`) and applies the same
trust check: a guessed per-user path under the shared ``/tmp`` is used only when its
directory is ours and private (:func:`is_private_dir`), or anyone could plant a socket
there and choose where our compiles go.

Built for the compile client's two hot cases:

- **no daemon**: one failed ``connect`` (ENOENT) per path and we are done;
- **a daemon**: one Unix-socket round trip, then the connection *is* the lease: it stays
  open for the whole remote compile, and ``done`` plus close returns it (a crashed client
  returns it too, when the kernel closes the socket).

Timeouts: connecting is bounded by :data:`CONNECT_TIMEOUT`. The daemon answers a lease
request at once when a slot is free and otherwise *queues* it; the client waits at most
the ``timeout`` it passes (the compile client passes ``DISTCC_IO_TIMEOUT``, default 300 s,
the bound distcc puts on any silent peer) and then compiles locally, so a daemon that
accepts and never answers delays a compile but never hangs a build.
"""

from __future__ import annotations

import _socket

from meshcc import posixenv as os  # os without its import cost (the compile client's path)
from meshcc.wire import control_core as control  # the lease path's part of the protocol

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping

    from meshcc.wire.control import HostsReply, StatusReply

CONNECT_TIMEOUT = 4.0
MAX_REPLY = 1024 * 1024  # a hosts reply with many peers is the largest; status is small
_RECV_SIZE = 65536
# A lease the daemon can give (or refuse) comes within this, even on a loaded box; later
# means we wait in line (and preprocess meanwhile: wasted if we then get our own share).
ANSWER_AT_ONCE = 0.05
# connect() errors that mean "no daemon here" (quietly use the host files instead).
_ABSENT = frozenset({2, 111, 20, 13})  # ENOENT, ECONNREFUSED (stale socket), ENOTDIR, EACCES

ControlError = control.ControlError  # the daemon failed us (closed early, timed out, garbage)


class NoDaemon(Exception):
    """Nothing usable listens at the socket path; ``str(e)`` says why (for verbose logs)."""


def is_private_dir(path: str) -> bool:
    """``path`` is a real directory owned by us and writable by nobody else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        st.st_mode & 0o170000 == 0o040000 and st.st_uid == os.geteuid() and not st.st_mode & 0o022
    )


def connect(
    environ: Mapping[str, str],
    timeout: float = CONNECT_TIMEOUT,
    probed: tuple[_socket.socket, str] | None = None,
) -> Control:
    """Connect to the first daemon that is there; NoDaemon (with every path's reason) if none.

    With no daemon this is one failed ``connect`` per path (ENOENT), a few microseconds.
    ``probed``: a connection the compile client already made (``wrapper._probe_daemon``:
    non-blocking, to the first of these paths that accepted): used as if made here, after
    the same trust check (failing it, the paths are tried here, which says why)."""
    if probed is not None:
        sock, path = probed
        if not control.guessed_in_shared_tmp(path, environ) or is_private_dir(
            os.path.dirname(path)
        ):
            sock.settimeout(timeout)  # blocking again, as after Control.connect
            return Control(sock, path)
        sock.close()
    why = []
    for path in control.client_socket_paths(env=environ):
        try:
            return Control.connect(path, timeout, control.guessed_in_shared_tmp(path, environ))
        except NoDaemon as e:
            why.append(str(e))
    raise NoDaemon("; ".join(why))


class Control:
    """One connection to the daemon; after a granted lease, the lease itself.

    Slot-like for the compile client: :meth:`release` (idempotent) reports the outcome with
    ``done`` and closes, returning the peer's slot to the daemon.
    """

    __slots__ = ("_reader", "busy", "connect_failed", "link", "ok", "path", "reason", "sock")

    def __init__(self, sock: _socket.socket, path: str) -> None:
        self.sock: _socket.socket | None = sock
        self.path = path
        self._reader = control.MessageReader(MAX_REPLY)
        self.ok = True  # outcome reported by release(); the compile client sets it on failure
        self.connect_failed = False
        self.reason = ""
        self.busy = False  # the peer answered BUSY: the daemon skips it for a moment
        self.link: tuple[int, bool, int] | None = None  # the job's TCP_INFO, for the daemon

    @classmethod
    def connect(
        cls, path: str, timeout: float = CONNECT_TIMEOUT, shared_tmp: bool = False
    ) -> Control:
        """Connect to the daemon at ``path``. NoDaemon if none is there (no file, stale
        socket, no permission, or with ``shared_tmp`` a directory that is not ours and
        private); ControlError if one is there but connecting failed otherwise."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError:
            sock.close()
            raise ControlError(f"connect to {path} timed out after {timeout:g}s") from None
        except OSError as e:
            sock.close()
            if e.errno in _ABSENT:
                raise NoDaemon(f"no meshcc daemon at {path}: {e.strerror}") from None
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        if shared_tmp and not is_private_dir(os.path.dirname(path)):
            sock.close()
            raise NoDaemon(
                f"ignoring {path}: its directory is not owned by us or is writable by others"
            )
        return cls(sock, path)

    def request(
        self,
        message: Mapping[str, object],
        timeout: float,
        on_wait: Callable[[], None] | None = None,
    ) -> dict[str, object]:
        """Send one map and wait up to ``timeout`` s for the answer map. ``on_wait`` is
        called once if the answer does not come at once (the daemon made us wait in line)."""
        self._send(message, ANSWER_AT_ONCE if on_wait is not None else timeout)
        return self._answer(timeout, on_wait)

    def tell(self, message: Mapping[str, object]) -> None:
        """Send one map that has no answer (direct mode's ``direct_put`` parts)."""
        self._send(message, CONNECT_TIMEOUT)

    def answer(self, timeout: float) -> dict[str, object]:
        """The next answer map with no new request (a reply sent in several parts)."""
        sock = self.sock
        if sock is None:
            raise ControlError("connection already closed")
        sock.settimeout(timeout)
        return self._answer(timeout, None)

    def _send(self, message: Mapping[str, object], timeout: float) -> None:
        """Send one map; the socket keeps ``timeout`` for the reads that follow."""
        sock = self.sock
        if sock is None:
            raise ControlError("connection already closed")
        try:
            sock.settimeout(timeout)
            sock.sendall(control.encode(message))
        except OSError as e:
            raise ControlError(f"cannot send to the meshcc daemon: {e.strerror or e}") from None

    def _answer(self, timeout: float, on_wait: Callable[[], None] | None) -> dict[str, object]:
        """Read until one answer map is complete (the socket's timeout is already set)."""
        sock = self.sock
        assert sock is not None  # checked by the caller
        while True:
            answer = self._reader.next_message()
            if answer is not None:
                return answer
            try:
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                if on_wait is not None:
                    callback, on_wait = on_wait, None
                    sock.settimeout(timeout)
                    callback()
                    continue
                raise ControlError(
                    f"no answer from the meshcc daemon within {timeout:g}s"
                ) from None
            except OSError as e:
                raise ControlError(f"meshcc daemon connection failed: {e.strerror or e}") from None
            if not data:
                raise ControlError("meshcc daemon closed the connection without answering")
            self._reader.feed(data)

    def status(self, timeout: float) -> StatusReply | control.ErrorReply:
        from meshcc.wire import control as full  # the CLI's requests: not the lease path's

        return full.decode_status_reply(self.request(full.StatusRequest().to_message(), timeout))

    def hosts(
        self, cc: str | None, cc_path: str | None, timeout: float
    ) -> HostsReply | control.ErrorReply:
        """The DISTCC_HOSTS line for ``cc`` (the first request for a compiler probes it)."""
        from meshcc.wire import control as full

        request = full.HostsRequest(cc, cc_path).to_message()
        return full.decode_hosts_reply(self.request(request, timeout))

    def lease(
        self,
        cc: str,
        cc_path: str,
        source: str,
        timeout: float,
        local_ok: bool = True,
        on_wait: Callable[[], None] | None = None,
    ) -> control.LeaseGranted | control.LeaseLocal | control.ErrorReply:
        """Ask for a peer slot for one compile (may wait while every matching peer is busy).
        ``local_ok`` False: never hand out this box's own share (DISTCC_FALLBACK=0).
        ``on_wait``: called once if we have to wait (the client preprocesses meanwhile)."""
        request = control.LeaseRequest(cc, cc_path, source, local_ok).to_message()
        return control.decode_lease_reply(self.request(request, timeout, on_wait))

    def release(self) -> None:
        """Report the outcome (``done``) and close: the lease ends (idempotent, best effort)."""
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        done = control.DoneMessage(self.ok, self.connect_failed, self.reason, self.busy, self.link)
        try:
            sock.settimeout(1.0)
            sock.sendall(control.encode(done.to_message()))
        except OSError:
            pass
        finally:
            sock.close()

    def close(self) -> None:
        """Close without a ``done`` (no lease was granted)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def keep_across_exec(self) -> None:
        """A held local share: the exec'd compiler inherits the connection, so the daemon
        counts the slot busy exactly as long as the compiler runs."""
        if self.sock is not None:
            os.set_inheritable(self.sock.fileno(), True)

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Control({self.path!r})"
