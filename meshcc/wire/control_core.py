"""The part of the control protocol a leased compile needs: codec, framing, lease
messages and socket paths (:mod:`meshcc.wire.control` documents the whole protocol).

Why a module of its own: the compile client imports this on every job a daemon leases,
and the status, hosts and direct-mode records (a dozen classes, most of the protocol's
code) cost it ~1 M instructions it never uses. :mod:`meshcc.wire.control` re-exports
every name here, so the daemon, the CLI and direct mode see one protocol, implemented
once. No I/O.
"""

from __future__ import annotations

from meshcc import posixenv as os  # os without its import cost (the compile client's path)

from .records import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import NoReturn

PROTOCOL_VERSION = 1
MAX_MESSAGE = 1024 * 1024  # one encoded message, bytes
MAX_STRING = 16 * 1024  # one string field of a request (paths, names, reasons)
MAX_REQUEST = 64 * 1024  # a request is a few strings; the daemon reads no more
MAX_REQUEST_OBJECTS = 64  # a request is a flat map of a few fields
MAX_DEPTH = 32  # our messages are shallow; deeper is garbage, not a reason to recurse
SOCKET_NAME = "control.sock"
ROOT_SOCKET = "/run/meshcc/control.sock"
# Beside the control socket while its daemon keeps no result cache (``--no-cache``): a
# client that sees it skips direct mode's lookup, which that daemon could only answer "off"
# (it costs the client its manifest key, a round trip and a daemon wake on every compile).
NO_CACHE_SUFFIX = ".nocache"


class ControlError(Exception):
    """A message was malformed, too large or not understood; ``str(e)`` says which."""


# ---------------------------------------------------------------- the msgpack subset


class _NeedData(Exception):
    """The buffer ends inside a message: at least ``needed`` bytes are required."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


def packb(obj: object) -> bytes:
    """msgpack bytes of nil/bool/int/float/str/bytes/list/tuple/dict (ControlError else)."""
    out = bytearray()
    _pack(obj, out, 0)
    return bytes(out)


def _pack(obj: object, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ControlError("message nested too deeply")
    if type(obj) is dict and len(obj) < 16 and depth < MAX_DEPTH:
        # A message: a flat map of a few short strings, small ints and booleans, those
        # packed here (the bytes _pack writes for them) rather than by a call each.
        out.append(0x80 | len(obj))
        for key, value in obj.items():
            if type(key) is str and len(key) < 32 and key.isascii():
                out.append(0xA0 | len(key))
                out += key.encode("ascii")
            else:
                _pack(key, out, depth + 1)
            kind = type(value)
            if kind is str and len(value) < 32 and value.isascii():
                out.append(0xA0 | len(value))
                out += value.encode("ascii")
            elif kind is bool:
                out.append(0xC3 if value else 0xC2)
            elif kind is int and 0 <= value < 0x80:
                out.append(value)
            else:
                _pack(value, out, depth + 1)
        return
    if type(obj) is str:  # first: a direct-mode record is thousands of short names
        data = obj.encode("utf-8", "surrogateescape")
        if len(data) < 32:
            out.append(0xA0 | len(data))
        else:
            _pack_length(out, len(data), 0xA0, 32, (0xD9, 0xDA, 0xDB))
        out += data
        return
    if type(obj) is int and 1 << 32 <= obj < 1 << 64:  # a file's size or time in ns
        out.append(0xCF)
        out += obj.to_bytes(8, "big")
        return
    if type(obj) is list and len(obj) < 16:
        out.append(0x90 | len(obj))
        for value in obj:
            _pack(value, out, depth + 1)
        return
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(int(obj), out)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogateescape")
        _pack_length(out, len(data), 0xA0, 32, (0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _pack_length(out, len(data), None, 0, (0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(obj, dict):
        _pack_length(out, len(obj), 0x80, 16, (None, 0xDE, 0xDF))
        for key, value in obj.items():
            _pack(key, out, depth + 1)
            _pack(value, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        _pack_length(out, len(obj), 0x90, 16, (None, 0xDC, 0xDD))
        for value in obj:
            _pack(value, out, depth + 1)
    elif isinstance(obj, float):
        import struct  # no float crosses the compile client's path

        out.append(0xCB)
        out += struct.pack(">d", obj)
    else:
        raise ControlError(f"cannot encode a {type(obj).__name__}")


def _pack_int(n: int, out: bytearray) -> None:
    if 0 <= n < 0x80 or -32 <= n < 0:
        out += (n & 0xFF).to_bytes(1, "big")
        return
    if 0 <= n < 1 << 64:
        for size, code in ((1, 0xCC), (2, 0xCD), (4, 0xCE), (8, 0xCF)):
            if n < 1 << (8 * size):
                out.append(code)
                out += n.to_bytes(size, "big")
                return
    if -(1 << 63) <= n < 0:
        for size, code in ((1, 0xD0), (2, 0xD1), (4, 0xD2), (8, 0xD3)):
            if n >= -(1 << (8 * size - 1)):
                out.append(code)
                out += n.to_bytes(size, "big", signed=True)
                return
    raise ControlError(f"integer {n} does not fit in 64 bits")


def _pack_length(
    out: bytearray, n: int, fix: int | None, fix_limit: int, codes: tuple[int | None, int, int]
) -> None:
    """A length header: the fix form if it fits, else the 8/16/32-bit form."""
    if fix is not None and n < fix_limit:
        out.append(fix | n)
        return
    for size, code in zip((1, 2, 4), codes, strict=True):
        if code is not None and n < 1 << (8 * size):
            out.append(code)
            out += n.to_bytes(size, "big")
            return
    raise ControlError("object too long to encode")


def unpack_one(
    buf: bytes | bytearray, pos: int = 0, depth: int = 0, budget: list[int] | None = None
) -> tuple[object, int]:
    """Decode the object at ``pos``: (object, end). _NeedData if ``buf`` ends early,
    ControlError for anything outside the subset (ext types, invalid UTF-8, unhashable
    map keys, nesting deeper than MAX_DEPTH, more objects than ``budget[0]``)."""
    if pos >= len(buf):
        raise _NeedData(pos + 1)
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ControlError("too many objects in one message")
    if depth > MAX_DEPTH:
        raise ControlError("message nested too deeply")
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0xA0 <= b <= 0xBF:
        return _str(buf, pos, b & 0x1F)
    if 0x80 <= b <= 0x8F:
        return _map(buf, pos, b & 0x0F, depth, budget)
    if 0x90 <= b <= 0x9F:
        return _array(buf, pos, b & 0x0F, depth, budget)
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
        n = int.from_bytes(_take(buf, pos, size), "big")
        return _map(buf, pos + size, n, depth, budget)
    if b in (0xDC, 0xDD):
        size = 2 << (b - 0xDC)
        n = int.from_bytes(_take(buf, pos, size), "big")
        return _array(buf, pos + size, n, depth, budget)
    if b in (0xCA, 0xCB):
        import struct

        size = 4 if b == 0xCA else 8
        value: float = struct.unpack(">f" if size == 4 else ">d", _take(buf, pos, size))[0]
        return value, pos + size
    raise ControlError(f"unsupported msgpack type byte {b:#04x}")


def _take(buf: bytes | bytearray, pos: int, n: int) -> bytes | bytearray:
    if pos + n > len(buf):
        raise _NeedData(pos + n)
    return buf[pos : pos + n]


def _str(buf: bytes | bytearray, pos: int, n: int) -> tuple[str, int]:
    end = pos + n
    if end > len(buf):
        raise _NeedData(end)
    try:
        return buf[pos:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise ControlError("invalid UTF-8 in a string") from None


def _map(
    buf: bytes | bytearray, pos: int, n: int, depth: int, budget: list[int] | None
) -> tuple[dict[object, object], int]:
    # Every key meshcc sends, and most values, are short strings, small integers or
    # booleans: those are decoded here, not by a call each (a request or a lease reply
    # is a flat map of a few), under the same checks as unpack_one's, in its order.
    result: dict[object, object] = {}
    inner = depth + 1
    inline = inner <= MAX_DEPTH
    size = len(buf)
    for _ in range(n):
        b = buf[pos] if pos < size else 0xC1  # 0xC1: never inline (unpack_one says why)
        if inline and 0xA0 <= b <= 0xBF and (budget is None or budget[0] > 0):
            if budget is not None:
                budget[0] -= 1
            key: object
            key, pos = _str(buf, pos + 1, b & 0x1F)
        else:
            key, pos = unpack_one(buf, pos, inner, budget)
            if isinstance(key, (dict, list)):
                raise ControlError("unhashable map key")
        b = buf[pos] if pos < size else 0xC1
        if not inline or (budget is not None and budget[0] <= 0):
            result[key], pos = unpack_one(buf, pos, inner, budget)
            continue
        if b < 0x80:
            value: object = b
            pos += 1
        elif 0xA0 <= b <= 0xBF:
            value, pos = _str(buf, pos + 1, b & 0x1F)
        elif b in (0xC2, 0xC3):
            value = b == 0xC3
            pos += 1
        else:
            result[key], pos = unpack_one(buf, pos, inner, budget)
            continue
        if budget is not None:
            budget[0] -= 1
        result[key] = value
    return result, pos


def _array(
    buf: bytes | bytearray, pos: int, n: int, depth: int, budget: list[int] | None
) -> tuple[list[object], int]:
    items = []
    for _ in range(n):
        item, pos = unpack_one(buf, pos, depth + 1, budget)
        items.append(item)
    return items, pos


# ---------------------------------------------------------------- framing


def encode(msg: Mapping[str, object]) -> bytes:
    """One message as bytes; ControlError if it is not encodable or larger than 1 MiB."""
    data = packb(dict(msg))
    if len(data) > MAX_MESSAGE:
        raise ControlError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE} byte limit")
    return data


class MessageReader:
    """Bytes in, messages (dicts with str keys) out. After a ControlError it stays failed.

    Decoding restarts from the message's first byte when more data arrives, so the reader
    waits until the byte count the last attempt ran out at has arrived, and a receiver of
    untrusted input (the daemon) caps the objects per message (``max_objects``): a
    dribbling client then costs a bounded amount of work per byte.
    """

    __slots__ = ("_buf", "_error", "_max", "_max_objects", "_need")

    def __init__(self, max_message: int = MAX_MESSAGE, max_objects: int | None = None) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._max_objects = max_objects
        self._need = 1
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        """Buffer ``data``; ControlError when the pending message would exceed the limit."""
        if self._error is not None:
            raise ControlError(self._error)
        self._buf += data
        # The buffer may hold the rest of one message and the start of the next (a client
        # pipelines its messages): next_message bounds the pending one; this bounds a
        # caller that feeds without taking messages out.
        if len(self._buf) > 2 * self._max:
            self._fail(f"message larger than the {self._max} byte limit")

    def next_message(self) -> dict[str, object] | None:
        """The next complete message, or None when more bytes are needed."""
        if self._error is not None:
            raise ControlError(self._error)
        if len(self._buf) < self._need:
            return None
        budget = None if self._max_objects is None else [self._max_objects]
        try:
            msg, end = unpack_one(self._buf, 0, 0, budget)
        except _NeedData as e:
            if e.needed > self._max or len(self._buf) > self._max:
                self._fail(f"message larger than the {self._max} byte limit")
            self._need = e.needed
            return None
        except ControlError as e:
            self._fail(f"malformed message: {e}")
        if not isinstance(msg, dict):
            self._fail(f"expected a map, got {type(msg).__name__}")
        for key in msg:
            if type(key) is not str:
                self._fail("malformed message: map keys must be strings")
        del self._buf[:end]
        self._need = 1
        return msg  # its keys checked above (no copy)

    def __iter__(self) -> MessageReader:
        return self

    def __next__(self) -> dict[str, object]:
        msg = self.next_message()
        if msg is None:
            raise StopIteration
        return msg

    def _fail(self, why: str) -> NoReturn:
        self._error = why
        raise ControlError(why)


class LeaseRequest(Frozen):
    """A peer slot for one compile of ``source`` with the compiler at ``cc_path``."""

    __slots__ = ("cc", "cc_path", "local_ok", "source")
    __match_args__ = ("cc", "cc_path", "source", "local_ok")
    cc: str
    cc_path: str
    source: str
    local_ok: bool  # may the daemon hand out this box's own share (False: DISTCC_FALLBACK=0)

    def __init__(self, cc: str, cc_path: str, source: str, local_ok: bool = True) -> None:
        self._init(cc, cc_path, source, local_ok)

    def to_message(self) -> dict[str, object]:
        return {
            "op": "lease",
            "cc": self.cc,
            "cc_path": self.cc_path,
            "source": self.source[:MAX_STRING],
            "local_ok": self.local_ok,
            "v": PROTOCOL_VERSION,
        }


class DoneMessage(Frozen):
    """A lease's outcome, sent just before the client closes the lease connection.

    ``busy``: the peer answered BUSY (every job slot taken by other boxes' jobs); not a
    failure, but the broker should not hand that peer out again at once.

    ``link``: what the kernel measured of the job's connection (TCP_INFO): delivery rate in
    bytes/s, whether the sender limited it (a lower bound), minimum round trip in
    microseconds; None if not measured. The daemon's codec advice is made of these."""

    __slots__ = ("busy", "connect_failed", "link", "ok", "reason")
    __match_args__ = ("ok", "connect_failed", "reason", "busy", "link")
    ok: bool
    connect_failed: bool
    reason: str
    busy: bool
    link: tuple[int, bool, int] | None

    def __init__(
        self,
        ok: bool,
        connect_failed: bool = False,
        reason: str = "",
        busy: bool = False,
        link: tuple[int, bool, int] | None = None,
    ) -> None:
        self._init(bool(ok), bool(connect_failed), reason[:MAX_STRING], bool(busy), link)

    def to_message(self) -> dict[str, object]:
        msg: dict[str, object] = {
            "op": "done",
            "ok": self.ok,
            "connect_failed": self.connect_failed,
            "reason": self.reason,
        }
        if self.busy:  # only when set: older daemons see the message they know
            msg["busy"] = True
        if self.link is not None:
            msg["link"] = [self.link[0], self.link[1], self.link[2]]
        return msg


# ---------------------------------------------------------------- replies


class ErrorReply(Frozen):
    """The daemon rejected the request; ``error`` says why."""

    __slots__ = ("error",)
    __match_args__ = ("error",)
    error: str

    def __init__(self, error: str) -> None:
        self._init(error)

    def to_message(self) -> dict[str, object]:
        return {"ok": False, "error": self.error}


class LeaseGranted(Frozen):
    """A slot on a peer: send the job to ``host``:``port`` naming ``compiler``.

    ``busy``: the peer announces the ``busy`` capability, so the client may ask it for a
    job slot first (``SLOT``) and take a BUSY answer instead of queueing inside it.

    ``codecs``: body codecs the peer negotiates with ``CODC`` (wire.codecs), best first;
    ``rate`` (bytes/s) and ``rtt_us``: the daemon's estimate of the link to it, 0 when
    unknown. The client picks a codec per job from these (compression.choose)."""

    __slots__ = ("busy", "codecs", "compiler", "host", "peer", "port", "protocol", "rate", "rtt_us")
    __match_args__ = (
        "host",
        "port",
        "protocol",
        "compiler",
        "peer",
        "busy",
        "codecs",
        "rate",
        "rtt_us",
    )
    host: str
    port: int
    protocol: int
    compiler: str
    peer: str
    busy: bool
    codecs: tuple[str, ...]
    rate: int
    rtt_us: int

    def __init__(
        self,
        host: str,
        port: int,
        protocol: int,
        compiler: str,
        peer: str,
        busy: bool = False,
        codecs: tuple[str, ...] = (),
        rate: int = 0,
        rtt_us: int = 0,
    ) -> None:
        self._init(host, port, protocol, compiler, peer, bool(busy), codecs, rate, rtt_us)

    def to_message(self) -> dict[str, object]:
        msg: dict[str, object] = {
            "ok": True,
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "compiler": self.compiler,
            "peer": self.peer,
        }
        if self.busy:  # only when set: older clients see the grant they know
            msg["busy"] = True
        if self.codecs:
            msg["codecs"] = list(self.codecs)
            msg["rate"] = self.rate
            msg["rtt_us"] = self.rtt_us
        return msg


class LeaseLocal(Frozen):
    """Compile locally. ``hold``: this is one of the box's own counted slots (its share
    while every matching peer is busy); the client keeps the connection open while its
    local compiler runs, and closing it frees the slot."""

    __slots__ = ("hold", "reason")
    __match_args__ = ("reason", "hold")
    reason: str
    hold: bool

    def __init__(self, reason: str, hold: bool = False) -> None:
        self._init(reason, hold)

    def to_message(self) -> dict[str, object]:
        msg: dict[str, object] = {"ok": False, "local": True, "reason": self.reason}
        if self.hold:
            msg["hold"] = True
        return msg


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_lease_reply(msg: Mapping[str, object]) -> LeaseGranted | LeaseLocal | ErrorReply:
    """A lease reply as a record; ControlError when it is none of the three."""
    if msg.get("ok") is True:
        host, port, proto = msg.get("host"), msg.get("port"), msg.get("protocol")
        compiler, peer = msg.get("compiler"), msg.get("peer", "")
        if (
            not isinstance(host, str)
            or not host
            or not isinstance(port, int)
            or not _is_int(port)
            or not 0 < port < 65536
            or not isinstance(proto, int)
            or proto not in (1, 2, 3)
            or not isinstance(compiler, str)
            or not compiler
            or not isinstance(peer, str)
        ):
            raise ControlError(f"malformed lease grant: {dict(msg)!r:.200}")
        codecs = msg.get("codecs", [])
        rate, rtt = msg.get("rate", 0), msg.get("rtt_us", 0)
        if (
            not isinstance(codecs, list)
            or len(codecs) > 8
            or not all(isinstance(c, str) and 0 < len(c) <= 16 and c.isalnum() for c in codecs)
            or not (isinstance(rate, int) and _is_int(rate) and 0 <= rate < 1 << 62)
            or not (isinstance(rtt, int) and _is_int(rtt) and 0 <= rtt < 1 << 32)
        ):
            raise ControlError(f"malformed lease grant: {dict(msg)!r:.200}")
        return LeaseGranted(
            host, port, proto, compiler, peer, msg.get("busy") is True, tuple(codecs), rate, rtt
        )
    if msg.get("ok") is False and msg.get("local") is True:
        reason = msg.get("reason")
        return LeaseLocal(str(reason or "no reason given"), msg.get("hold") is True)
    if msg.get("ok") is False:
        return ErrorReply(str(msg.get("error") or "no reason given"))
    raise ControlError(f"malformed lease reply: {dict(msg)!r:.200}")


# ---------------------------------------------------------------- socket paths


def _user_socket(uid: int, env: Mapping[str, str]) -> str:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and runtime.startswith("/"):
        return f"{runtime.rstrip('/')}/meshcc/{SOCKET_NAME}"
    return f"/tmp/meshcc-{uid}/{SOCKET_NAME}"


def daemon_socket_path(
    option: str | None = None, *, uid: int | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Where the daemon listens: ``--socket``, $MESHCC_SOCKET, /run/meshcc (root), per-user."""
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    if option:
        return option
    if env.get("MESHCC_SOCKET"):
        return env["MESHCC_SOCKET"]
    if uid == 0:
        return ROOT_SOCKET
    return _user_socket(uid, env)


def client_socket_paths(
    *, uid: int | None = None, env: Mapping[str, str] | None = None
) -> list[str]:
    """Where clients look, in order: $MESHCC_SOCKET alone if set, else /run/meshcc, per-user."""
    env = os.environ if env is None else env
    explicit = env.get("MESHCC_SOCKET")
    if explicit:
        return [explicit]
    user = _user_socket(os.geteuid() if uid is None else uid, env)
    return [ROOT_SOCKET] if user == ROOT_SOCKET else [ROOT_SOCKET, user]


def guessed_in_shared_tmp(path: str, env: Mapping[str, str] | None = None) -> bool:
    """Is ``path`` a per-user guess under the world-writable /tmp (not chosen by the user)?

    Anyone can create ``/tmp/meshcc-UID`` first and put a socket there to steer another
    user's compiles; such a path is trusted only in a private directory the caller owns
    (:func:`meshcc.transport.control_client.is_private_dir`)."""
    env = os.environ if env is None else env
    return not env.get("MESHCC_SOCKET") and path.startswith("/tmp/")
