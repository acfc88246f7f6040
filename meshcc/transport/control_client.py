"""The compile wrapper's side of the local daemon's control socket: ask for a lease.

Runs on every distributable compile, so it is built for the two hot cases:

- **no daemon**: one ``stat`` and one failed ``connect`` (ENOENT) and we are done;
- **a daemon**: one Unix-socket round trip, then the connection *is* the lease: it stays
  open for the whole remote compile, and ``done`` plus close returns it (a crashed client
  returns it too, when the kernel closes the socket).

Messages are msgpack maps, streamed back to back (protocol in meshcc.wire.control). We
speak the small msgpack subset the protocol uses (nil, bool, int, float, str, bin, array,
map) with our own ~100-line codec instead of importing ``msgpack``: the msgpack package
imports ``msgpack.ext`` and with it ``datetime``, ``collections``, ``struct`` & co,
measured at ~4.5 ms per process even with the C extension, several times this module's
whole cost. Tests check the codec against the real msgpack both ways.

Timeouts: connecting is bounded by :data:`CONNECT_TIMEOUT`. The daemon answers a lease
request at once when a peer slot is free and otherwise *queues* it, answering when a slot
frees up; the client waits for that answer at most ``io_timeout`` seconds (the wrapper
passes ``DISTCC_IO_TIMEOUT``, default 300 s, the same bound distcc puts on any silent
peer) and then compiles locally, so a daemon that accepts and never answers delays a
compile but never hangs a build.
"""

from __future__ import annotations

import _socket
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

SYSTEM_SOCKET = "/run/meshcc/control.sock"
CONNECT_TIMEOUT = 4.0
MAX_MESSAGE = 64 * 1024  # an answer is a few dozen bytes; anything this big is garbage
MAX_DEPTH = 32  # our messages are flat maps; a deeper answer is garbage, not a stack overflow
MAX_STRING = 16 * 1024  # the daemon rejects longer request strings (meshcc.wire.control)
_RECV_SIZE = 4096
# connect() errors that mean "no daemon here" (quietly use the host files instead).
_ABSENT = frozenset({2, 111, 20, 13})  # ENOENT, ECONNREFUSED (stale socket), ENOTDIR, EACCES


class ControlError(Exception):
    """The daemon failed us (closed early, timed out, garbage); ``str(e)`` says how."""


class NoDaemon(Exception):
    """Nothing usable listens at the socket path; ``str(e)`` says why (for verbose logs)."""


# --------------------------------------------------------------------------- msgpack subset


class _Short(Exception):
    """Not a whole message yet."""


def packb(obj: object) -> bytes:
    """msgpack-encode nil/bool/int/float/str/bytes/list/tuple/dict (what the protocol uses)."""
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj: object, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        n = int(obj)
        if 0 <= n < 0x80 or -32 <= n < 0:
            out += (n & 0xFF).to_bytes(1, "big")
        elif 0 <= n < 1 << 64:
            for size, code in ((1, 0xCC), (2, 0xCD), (4, 0xCE), (8, 0xCF)):
                if n < 1 << (8 * size):
                    out.append(code)
                    out += n.to_bytes(size, "big")
                    return
        elif -(1 << 63) <= n < 0:
            for size, code in ((1, 0xD0), (2, 0xD1), (4, 0xD2), (8, 0xD3)):
                if n >= -(1 << (8 * size - 1)):
                    out.append(code)
                    out += n.to_bytes(size, "big", signed=True)
                    return
        else:
            raise ValueError(f"integer {n} does not fit msgpack")
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogateescape")
        _head(out, len(data), 0xA0, 32, (0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _head(out, len(data), None, 0, (0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(obj, dict):
        _head(out, len(obj), 0x80, 16, (None, 0xDE, 0xDF))
        for k, v in obj.items():
            _pack(k, out)
            _pack(v, out)
    elif isinstance(obj, (list, tuple)):
        _head(out, len(obj), 0x90, 16, (None, 0xDC, 0xDD))
        for v in obj:
            _pack(v, out)
    elif isinstance(obj, float):
        import struct  # only if a float ever appears (none on the wrapper's path)

        out.append(0xCB)
        out += struct.pack(">d", obj)
    else:
        raise TypeError(f"cannot msgpack-encode {type(obj).__name__}")


def _head(
    out: bytearray, n: int, fix: int | None, fix_limit: int, codes: tuple[int | None, int, int]
) -> None:
    """Length header: fix form if it fits, else the 8/16/32-bit form."""
    if fix is not None and n < fix_limit:
        out.append(fix | n)
        return
    for size, code in zip((1, 2, 4), codes):
        if code is not None and n < 1 << (8 * size):
            out.append(code)
            out += n.to_bytes(size, "big")
            return
    raise ValueError("msgpack object too long")


def unpack_one(buf: bytes | bytearray, pos: int = 0, depth: int = 0) -> tuple[object, int]:
    """Decode one object at ``pos``; returns (object, end). _Short if ``buf`` ends early,
    ControlError on anything outside the subset (ext types, invalid UTF-8, bad map keys,
    nesting deeper than MAX_DEPTH)."""
    if pos >= len(buf):
        raise _Short()
    if depth > MAX_DEPTH:
        raise ControlError("msgpack nesting too deep")
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0xA0 <= b <= 0xBF:
        return _str(buf, pos, b & 0x1F)
    if 0x80 <= b <= 0x8F:
        return _map(buf, pos, b & 0x0F, depth)
    if 0x90 <= b <= 0x9F:
        return _array(buf, pos, b & 0x0F, depth)
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    if 0xCC <= b <= 0xCF:
        size = 1 << (b - 0xCC)
        return int.from_bytes(_take(buf, pos, size), "big"), pos + size
    if 0xD0 <= b <= 0xD3:
        size = 1 << (b - 0xD0)
        return int.from_bytes(_take(buf, pos, size), "big", signed=True), pos + size
    if b in (0xD9, 0xDA, 0xDB):
        size = 1 << (b - 0xD9)
        return _str(buf, pos + size, int.from_bytes(_take(buf, pos, size), "big"))
    if b in (0xC4, 0xC5, 0xC6):
        size = 1 << (b - 0xC4)
        n = int.from_bytes(_take(buf, pos, size), "big")
        return bytes(_take(buf, pos + size, n)), pos + size + n
    if b in (0xDE, 0xDF):
        size = 2 << (b - 0xDE)
        return _map(buf, pos + size, int.from_bytes(_take(buf, pos, size), "big"), depth)
    if b in (0xDC, 0xDD):
        size = 2 << (b - 0xDC)
        return _array(buf, pos + size, int.from_bytes(_take(buf, pos, size), "big"), depth)
    if b in (0xCA, 0xCB):
        import struct

        size = 4 if b == 0xCA else 8
        return struct.unpack(">f" if size == 4 else ">d", _take(buf, pos, size))[0], pos + size
    raise ControlError(f"unsupported msgpack type byte {b:#04x}")


def _take(buf: bytes | bytearray, pos: int, n: int) -> bytes | bytearray:
    if pos + n > len(buf):
        raise _Short()
    return buf[pos : pos + n]


def _str(buf: bytes | bytearray, pos: int, n: int) -> tuple[str, int]:
    try:
        return bytes(_take(buf, pos, n)).decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise ControlError("invalid UTF-8 in a msgpack string") from None


def _map(buf: bytes | bytearray, pos: int, n: int, depth: int) -> tuple[dict[object, object], int]:
    result: dict[object, object] = {}
    for _ in range(n):
        key, pos = unpack_one(buf, pos, depth + 1)
        if isinstance(key, (dict, list)):
            raise ControlError("unhashable msgpack map key")
        result[key], pos = unpack_one(buf, pos, depth + 1)
    return result, pos


def _array(buf: bytes | bytearray, pos: int, n: int, depth: int) -> tuple[list[object], int]:
    items = []
    for _ in range(n):
        item, pos = unpack_one(buf, pos, depth + 1)
        items.append(item)
    return items, pos


# --------------------------------------------------------------------------- the socket


def socket_paths(environ: Mapping[str, str]) -> list[str]:
    """Where to look for the daemon, in order (as meshcc.wire.control.client_socket_paths):
    $MESHCC_SOCKET alone if set and not empty (an explicit choice never falls back to
    another daemon), else /run/meshcc/control.sock, then $XDG_RUNTIME_DIR/meshcc/control.sock
    (if that is an absolute path) or /tmp/meshcc-$EUID/control.sock."""
    path = environ.get("MESHCC_SOCKET")
    if path:
        return [path]
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and runtime.startswith("/"):
        user = f"{runtime.rstrip('/')}/meshcc/control.sock"
    else:
        user = f"/tmp/meshcc-{os.geteuid()}/control.sock"
    return [SYSTEM_SOCKET] if user == SYSTEM_SOCKET else [SYSTEM_SOCKET, user]


def connect(environ: Mapping[str, str], timeout: float = CONNECT_TIMEOUT) -> Control:
    """Connect to the first daemon that is there; NoDaemon (with every path's reason) if none.

    With no daemon this is one failed ``connect`` per path (ENOENT), a few microseconds."""
    why = []
    explicit = bool(environ.get("MESHCC_SOCKET"))
    for path in socket_paths(environ):
        try:
            return Control.connect(path, timeout, not explicit and path.startswith("/tmp/"))
        except NoDaemon as e:
            why.append(str(e))
    raise NoDaemon("; ".join(why))


def _private_dir(path: str) -> bool:
    """The socket's directory is a real directory owned by us, writable by nobody else."""
    try:
        st = os.lstat(os.path.dirname(path))
    except OSError:
        return False
    return (
        st.st_mode & 0o170000 == 0o040000 and st.st_uid == os.geteuid() and not st.st_mode & 0o022
    )


class Control:
    """One connection to the daemon; after a granted lease, the lease itself.

    Slot-like for the wrapper: :meth:`release` (idempotent) reports the outcome with
    ``done`` and closes, returning the peer's slot to the daemon.
    """

    __slots__ = ("_buf", "connect_failed", "ok", "path", "reason", "sock")

    def __init__(self, sock: _socket.socket, path: str) -> None:
        self.sock: _socket.socket | None = sock
        self.path = path
        self._buf = bytearray()
        self.ok = True  # outcome reported by release(); the wrapper sets it on failure
        self.connect_failed = False
        self.reason = ""

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
        if shared_tmp and not _private_dir(path):
            # A guessed path in the shared /tmp: anyone could have made that directory and
            # put a socket there to steer our compiles. Trust it only if it is ours and
            # private (the daemon creates it so: owned by its user, mode 0700).
            sock.close()
            raise NoDaemon(
                f"ignoring {path}: its directory is not owned by us or is writable by others"
            )
        return cls(sock, path)

    def request(self, message: dict[str, object], timeout: float) -> dict[str, object]:
        """Send one map and wait up to ``timeout`` s for the answer map."""
        sock = self.sock
        if sock is None:
            raise ControlError("connection already closed")
        try:
            sock.settimeout(timeout)
            sock.sendall(packb(message))
        except OSError as e:
            raise ControlError(f"cannot send to the meshcc daemon: {e.strerror or e}") from None
        while True:
            if self._buf:
                try:
                    answer, end = unpack_one(self._buf)
                except _Short:
                    pass
                else:
                    del self._buf[:end]
                    if not isinstance(answer, dict):
                        raise ControlError(f"meshcc daemon sent {type(answer).__name__}, not a map")
                    return answer
            if len(self._buf) > MAX_MESSAGE:
                raise ControlError("meshcc daemon sent an oversized message")
            try:
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise ControlError(
                    f"no answer from the meshcc daemon within {timeout:g}s"
                ) from None
            except OSError as e:
                raise ControlError(f"meshcc daemon connection failed: {e.strerror or e}") from None
            if not data:
                raise ControlError("meshcc daemon closed the connection without answering")
            self._buf += data

    def lease(
        self, cc: str, cc_path: str, source: str, timeout: float, local_ok: bool = True
    ) -> dict[str, object]:
        """Ask for a peer slot for one compile (may wait while every matching peer is busy).
        ``local_ok`` False: never hand out this box's own share (DISTCC_FALLBACK=0)."""
        return self.request(
            {
                "op": "lease",
                "cc": cc,
                "cc_path": cc_path,
                "source": source,
                "local_ok": local_ok,
                "v": 1,
            },
            timeout,
        )

    def release(self) -> None:
        """Report the outcome (``done``) and close: the lease ends (idempotent, best effort)."""
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        try:
            sock.settimeout(1.0)
            sock.sendall(
                packb(
                    {
                        "op": "done",
                        "ok": self.ok,
                        "connect_failed": self.connect_failed,
                        "reason": self.reason[:MAX_STRING],
                    }
                )
            )
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

    def __repr__(self) -> str:
        return f"Control({self.path!r})"
