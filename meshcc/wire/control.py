"""Sans-IO codec for the local control socket (daemon <-> compile clients and the CLI).

Transport: a Unix stream socket. Messages are msgpack maps with string keys, sent back to
back with no extra framing (read them with :class:`MessageReader`). Every message is at
most :data:`MAX_MESSAGE` bytes (1 MiB); a message that is larger, not a map, or malformed is
a :class:`ControlError` and the receiver closes that connection (the daemon logs why).
This module does no I/O.

Encoding: the small msgpack subset the protocol uses (nil, bool, int, float, str, bin,
array, map), implemented here rather than imported: the ``msgpack`` package pulls in
``datetime``, ``collections`` and ``struct`` (about 4.5 ms per process even with its C
extension), and the compile client, which starts thousands of times per build, speaks this
protocol on every compile. Every peer of this codec is meshcc itself, so one implementation
serves the daemon, the client and the CLI; the tests check it against the real msgpack.

Socket path (:func:`daemon_socket_path`, :func:`client_socket_paths`): ``--socket PATH``,
else ``$MESHCC_SOCKET``, else ``/run/meshcc/control.sock`` when running as root, else
``$XDG_RUNTIME_DIR/meshcc/control.sock``, else ``/tmp/meshcc-$UID/control.sock``. Clients
try ``$MESHCC_SOCKET`` alone when it is set (an explicit choice never falls back to another
daemon), else ``/run/meshcc/control.sock`` then the per-user path. A per-user path under
the shared ``/tmp`` is a guess anyone could plant a socket at: :func:`guessed_in_shared_tmp`
tells clients to trust it only in a private directory of their own.

Requests (client -> daemon), as records :class:`StatusRequest`, :class:`HostsRequest`,
:class:`LeaseRequest`, :class:`DoneMessage`. Every request may carry ``"v": 1`` (protocol
version, absent = 1); unknown extra fields are ignored so old daemons accept newer clients::

    {"op": "status"}
    {"op": "hosts", "cc": str|None, "cc_path": str|None}
    {"op": "lease", "cc": str, "cc_path": str, "source": str, "local_ok": bool}
        # local_ok (default true): the client may be given this box's own share; false
        # when it must not compile locally (DISTCC_FALLBACK=0): it then waits for a peer
    {"op": "done", "ok": bool, "connect_failed": bool, "reason": str}   # on a lease connection

Replies (daemon -> client), as records :class:`StatusReply`, :class:`HostsReply`,
:class:`LeaseGranted`, :class:`LeaseLocal`, :class:`ErrorReply`::

    status -> {"ok": true, "version": str, "node": str, "discovery": bool,
               "off_reason": str|None, "interfaces": [str], "addresses": [str],
               "allowed": [str], "allowed_source": str, "warnings": [str],
               "peers": int, "jobs": int, "running": int, "port": int,
               "socket": str|None, "leases": int (held now), "queued": int (waiting now),
               "free": int (this box's idle slots: no lease from any box holds them;
               live-load channel, else 0), "speed": int (measured: bytes of preprocessed source per
               second per job, 0 unknown), "leased": int (slots peers' clients hold here),
               "loads": [PeerLoadInfo]}   # each peer's live load, fresh records only:
               # {"key", "host", "jobs", "running", "queued", "free", "speed", "share"
               #  (slots it promised this box), "held" (leases this box holds there),
               #  "age_s" (since its last record)}
    hosts  -> {"ok": true, "line": str, "verdicts": [Verdict.to_dict() + "load":
               PeerLoadInfo|None], "status": {status},
               "compiler": str|None (ClientCompiler.describe() of cc, None when no cc was
               given), "note": str|None (why cc could not be fingerprinted; then verdicts
               judge liveness and subnets only)}
    lease  -> {"ok": true, "host": str, "port": int, "protocol": 1|2, "compiler": str,
               "peer": str}                       # a slot on that peer is yours
           |  {"ok": false, "local": true, "reason": str}    # no matching live peer: compile here
           |  {"ok": false, "local": true, "reason": str, "hold": true}
                              # every matching peer is busy but this box's own share (2 slots,
                              # distcc's `localhost/2`) is free: compile here and keep the
                              # connection open while the compiler runs (closing frees it)
           |  (nothing yet)   # matching peers exist and every slot, ours included, is busy:
                              # the daemon queues the request (FIFO) and answers when a slot
                              # frees; just wait
    any    -> {"ok": false, "error": str}         # bad request; the daemon may close after it

Leases: a granted slot is held for exactly as long as the client's connection stays open;
closing it (or dying) frees the slot. Before closing, the client sends one ``done``
message with the outcome: ``ok`` true when the peer served the job (a compile error in
the user's code is still ok: the peer did its work), false when the peer failed it
(refusal, protocol error, lost connection; repeated failures back the peer off);
``connect_failed`` true when the TCP connect itself failed, so the daemon marks the peer
down at once. ``done`` has no reply. One lease per connection: after ``done`` the daemon
closes its side.
"""

from __future__ import annotations

from .control_core import (
    MAX_DEPTH,
    MAX_MESSAGE,
    MAX_REQUEST,
    MAX_REQUEST_OBJECTS,
    MAX_STRING,
    NO_CACHE_SUFFIX,
    PROTOCOL_VERSION,
    ROOT_SOCKET,
    SOCKET_NAME,
    ControlError,
    DoneMessage,
    ErrorReply,
    LeaseGranted,
    LeaseLocal,
    LeaseRequest,
    MessageReader,
    _is_int,
    _NeedData,  # noqa: F401  (a re-export: one protocol, reached as control._NeedData)
    client_socket_paths,
    daemon_socket_path,
    decode_lease_reply,
    encode,
    guessed_in_shared_tmp,
    packb,
    unpack_one,
)
from .records import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping, Sequence
    from typing import TypedDict

    class DaemonFigures(TypedDict, total=False):
        """The status reply's fields only the daemon knows (the mesh layer knows the rest).

        Type-checking only: callers pass these as keywords through to ``StatusReply``, so a
        new daemon figure is declared here and in ``StatusReply`` and nowhere else, with
        ``StatusReply.__init__`` holding the one default.
        """

        version: str
        peers: int
        jobs: int
        running: int
        port: int
        socket: str | None
        leases: int
        queued: int
        slots_held: int
        slot_waiting: int
        free: int | None
        speed: int
        leased: int
        loads: Sequence[PeerLoadInfo]


__all__ = [  # the lease path's names live in control_core (the client imports only that)
    "DIRECT_OPS",
    "DIRECT_PART",
    "DIRECT_REPLY_PART",
    "MAX_DEPTH",
    "MAX_MESSAGE",
    "MAX_REQUEST",
    "MAX_REQUEST_OBJECTS",
    "MAX_STRING",
    "NO_CACHE_SUFFIX",
    "PROTOCOL_VERSION",
    "ROOT_SOCKET",
    "SOCKET_NAME",
    "ControlError",
    "DirectReply",
    "DirectRequest",
    "DoneMessage",
    "ErrorReply",
    "HostsReply",
    "HostsRequest",
    "LeaseGranted",
    "LeaseLocal",
    "LeaseRequest",
    "MessageReader",
    "PeerLoadInfo",
    "StatusReply",
    "StatusRequest",
    "client_socket_paths",
    "daemon_socket_path",
    "decode_hosts_reply",
    "decode_lease_reply",
    "decode_request",
    "decode_status_reply",
    "encode",
    "guessed_in_shared_tmp",
    "packb",
    "unpack_one",
    "verdict_load",
    "verdict_peer",
]

# ---------------------------------------------------------------- requests


class StatusRequest(Frozen):
    __slots__ = ()
    __match_args__ = ()

    def to_message(self) -> dict[str, object]:
        return {"op": "status", "v": PROTOCOL_VERSION}


class HostsRequest(Frozen):
    """The DISTCC_HOSTS line for a compiler (None: judge liveness and subnets only)."""

    __slots__ = ("cc", "cc_path")
    __match_args__ = ("cc", "cc_path")
    cc: str | None
    cc_path: str | None

    def __init__(self, cc: str | None = None, cc_path: str | None = None) -> None:
        self._init(cc, cc_path)

    def to_message(self) -> dict[str, object]:
        return {"op": "hosts", "cc": self.cc, "cc_path": self.cc_path, "v": PROTOCOL_VERSION}


def _link_field(value: object) -> tuple[int, bool, int] | None:
    """A ``done``'s ``link`` ([rate, app_limited, rtt_us]); anything malformed is dropped
    (it only tunes the codec advice, it is not worth failing a lease's report over)."""
    if not isinstance(value, list) or len(value) != 3:
        return None
    rate, limited, rtt = value
    if not (_is_int(rate) and isinstance(limited, bool) and _is_int(rtt)):
        return None
    assert isinstance(rate, int) and isinstance(rtt, int)
    if not (0 <= rate < 1 << 62 and 0 <= rtt < 1 << 32):
        return None
    return rate, limited, rtt


class DirectRequest(Frozen):
    """Direct mode (:mod:`meshcc.cache.direct`): one of three ops, each on a connection
    that holds no lease, all keyed by a 64-hex-digit manifest or result key::

        {"op": "direct_get", "key": str, "source": str, "mesh": str, "cc": str}
            -> {"ok": true, "manifest": bin|None}     # packed records, or None (miss)
            |  {"ok": true, "manifest": None, "off": true}  # this daemon keeps none
        {"op": "direct_result", "key": str, "source": str}
            -> {"ok": true, "data": bin, "more": bool} ...  # a packed result, in parts
             | {"ok": false, "error": str}             # gone (evicted, corrupt)
        {"op": "direct_put", "key": str, "source": str, "data": bin, "more": bool} ...
            # no reply; parts of one packed record + result, each part a message

    ``mesh`` and ``cc`` (direct_get, optional): the client's box-independent part of the
    key (64 hex digits) and the absolute path of the compiler it runs; with them the
    daemon files the job's record under a mesh manifest key too, and asks the mesh on a
    miss (:func:`meshcc.cache.direct.mesh_key`).

    Large payloads travel in parts so every message stays within MAX_REQUEST (to the
    daemon) and MAX_MESSAGE (from it).

    A daemon started with no result cache also says so before anyone asks: a file named
    ``<control socket>`` + :data:`NO_CACHE_SUFFIX` stands beside its socket, and clients
    that see it send no ``direct_get``. Its absence promises nothing (an older daemon, or a
    store that failed to open): the ``off`` answer stays the authority."""

    __slots__ = ("cc", "data", "key", "mesh", "more", "op", "source")
    __match_args__ = ("op", "key", "source", "data", "more", "mesh", "cc")
    op: str
    key: str
    source: str
    data: bytes
    more: bool
    mesh: str
    cc: str

    def __init__(
        self,
        op: str,
        key: str,
        source: str = "",
        data: bytes = b"",
        more: bool = False,
        mesh: str = "",
        cc: str = "",
    ) -> None:
        self._init(op, key, source[:MAX_STRING], bytes(data), bool(more), mesh, cc)

    def to_message(self) -> dict[str, object]:
        msg: dict[str, object] = {"op": self.op, "key": self.key, "source": self.source}
        if self.op == "direct_put":
            msg["data"] = self.data
            msg["more"] = self.more
        if self.mesh and self.cc:
            msg["mesh"] = self.mesh
            msg["cc"] = self.cc
        return msg


DIRECT_OPS = ("direct_get", "direct_result", "direct_put")
DIRECT_PART = 40 * 1024  # payload per direct_put message: with a MAX_STRING source name
# and the key, one message stays below MAX_REQUEST
DIRECT_REPLY_PART = 512 * 1024  # bytes of payload per direct_result reply


def _decode_direct(op: str, msg: Mapping[str, object]) -> DirectRequest:
    key = _str_field(msg, "key") or ""
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ControlError(f"{op}: field 'key' must be 64 lowercase hex digits")
    source = _str_field(msg, "source", optional=True) or ""
    data = msg.get("data", b"")
    if not isinstance(data, bytes):
        raise ControlError(f"{op}: field 'data' must be bytes")
    mesh = _str_field(msg, "mesh", optional=True) or ""
    if mesh and (len(mesh) != 64 or any(c not in "0123456789abcdef" for c in mesh)):
        raise ControlError(f"{op}: field 'mesh' must be 64 lowercase hex digits")
    cc = _str_field(msg, "cc", optional=True) or ""
    return DirectRequest(op, key, source, data, _bool_field(msg, "more", False), mesh, cc)


Request = StatusRequest | HostsRequest | LeaseRequest | DoneMessage | DirectRequest


def _str_field(msg: Mapping[str, object], key: str, *, optional: bool = False) -> str | None:
    value = msg.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ControlError(f"{msg.get('op')!s}: field {key!r} must be a string")
    if len(value) > MAX_STRING:
        raise ControlError(f"{msg.get('op')!s}: field {key!r} longer than {MAX_STRING}")
    if "\0" in value:
        raise ControlError(f"{msg.get('op')!s}: field {key!r} contains a NUL byte")
    return value


def _bool_field(msg: Mapping[str, object], key: str, default: bool) -> bool:
    value = msg.get(key, default)
    if not isinstance(value, bool):
        raise ControlError(f"{msg.get('op')!s}: field {key!r} must be true or false")
    return value


def decode_request(msg: Mapping[str, object]) -> Request:
    """A request map as a record; ControlError (with a reason to send back) if invalid."""
    op = msg.get("op")
    v = msg.get("v", PROTOCOL_VERSION)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ControlError(f"bad protocol version {v!r}")
    if op == "status":
        return StatusRequest()
    if op == "hosts":
        cc = _str_field(msg, "cc", optional=True)
        cc_path = _str_field(msg, "cc_path", optional=True)
        return HostsRequest(cc or None, cc_path or None)
    if op == "lease":
        cc = _str_field(msg, "cc") or ""
        cc_path = _str_field(msg, "cc_path") or ""
        source = _str_field(msg, "source", optional=True) or ""
        if not cc:
            raise ControlError("lease: field 'cc' is empty")
        if not cc_path.startswith("/"):
            raise ControlError(f"lease: cc_path must be an absolute path, not {cc_path!r}")
        return LeaseRequest(cc, cc_path, source, msg.get("local_ok") is not False)
    if op == "done":
        reason = _str_field(msg, "reason", optional=True) or ""
        return DoneMessage(
            _bool_field(msg, "ok", False),
            _bool_field(msg, "connect_failed", False),
            reason,
            _bool_field(msg, "busy", False),
            _link_field(msg.get("link")),
        )
    if op in DIRECT_OPS:
        assert isinstance(op, str)
        return _decode_direct(op, msg)
    if isinstance(op, str):
        raise ControlError(f"unknown op {op[:64]!r}")
    raise ControlError("request has no 'op' string")


def _str_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(item) for item in value)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class PeerLoadInfo(Frozen):
    """One peer's live load as a daemon sees it (from the peer's last load record)."""

    __slots__ = (
        "age_s",
        "free",
        "held",
        "host",
        "jobs",
        "key",
        "queued",
        "running",
        "share",
        "speed",
    )
    __match_args__ = (
        "key",
        "host",
        "jobs",
        "running",
        "queued",
        "free",
        "speed",
        "share",
        "held",
        "age_s",
    )
    key: str
    host: str
    jobs: int
    running: int
    queued: int
    free: int
    speed: int  # bytes of preprocessed source per second per job (0: not measured yet)
    share: int  # slots it promised this daemon's clients
    held: int  # leases this daemon's clients hold there
    age_s: float  # since its last record

    def __init__(
        self,
        key: str,
        host: str,
        *,
        jobs: int = 0,
        running: int = 0,
        queued: int = 0,
        free: int = 0,
        speed: int = 0,
        share: int = 0,
        held: int = 0,
        age_s: float = 0.0,
    ) -> None:
        self._init(key, host, jobs, running, queued, free, speed, share, held, age_s)

    def to_message(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__match_args__}

    @classmethod
    def from_message(cls, msg: Mapping[str, object]) -> PeerLoadInfo:
        """Lenient, as StatusReply: a missing or mistyped field takes its empty value."""
        key, host, age = msg.get("key"), msg.get("host"), msg.get("age_s")
        return cls(
            key if isinstance(key, str) else "",
            host if isinstance(host, str) else "",
            jobs=_int(msg.get("jobs")),
            running=_int(msg.get("running")),
            queued=_int(msg.get("queued")),
            free=_int(msg.get("free")),
            speed=_int(msg.get("speed")),
            share=_int(msg.get("share")),
            held=_int(msg.get("held")),
            age_s=float(age) if isinstance(age, int | float) and not isinstance(age, bool) else 0.0,
        )


class StatusReply(Frozen):
    """What the daemon is doing: discovery, peers, job slots, leases, live load."""

    __slots__ = (
        "addresses",
        "allowed",
        "allowed_source",
        "discovery",
        "free",
        "interfaces",
        "jobs",
        "leased",
        "leases",
        "loads",
        "node",
        "off_reason",
        "peers",
        "port",
        "queued",
        "running",
        "slot_waiting",
        "slots_held",
        "socket",
        "speed",
        "version",
        "warnings",
    )
    __match_args__ = (
        "version",
        "node",
        "discovery",
        "off_reason",
        "interfaces",
        "addresses",
        "allowed",
        "allowed_source",
        "warnings",
        "peers",
        "jobs",
        "running",
        "port",
        "socket",
        "leases",
        "queued",
        "slots_held",
        "slot_waiting",
        "free",
        "speed",
        "leased",
        "loads",
    )
    version: str
    node: str
    discovery: bool
    off_reason: str | None
    interfaces: tuple[str, ...]
    addresses: tuple[str, ...]
    allowed: tuple[str, ...]
    allowed_source: str
    warnings: tuple[str, ...]
    peers: int
    jobs: int
    running: int
    port: int
    socket: str | None
    leases: int
    queued: int
    slots_held: int  # the compile server's job slots taken (never above jobs)
    slot_waiting: int  # complete requests queued inside the server for a slot (stock clients)
    free: int | None  # None: no live-load channel here (discovery off), so no figure
    speed: int
    leased: int
    loads: tuple[PeerLoadInfo, ...]

    def __init__(
        self,
        *,
        version: str = "",
        node: str = "",
        discovery: bool = False,
        off_reason: str | None = None,
        interfaces: Sequence[str] = (),
        addresses: Sequence[str] = (),
        allowed: Sequence[str] = (),
        allowed_source: str = "",
        warnings: Sequence[str] = (),
        peers: int = 0,
        jobs: int = 0,
        running: int = 0,
        port: int = 0,
        socket: str | None = None,
        leases: int = 0,
        queued: int = 0,
        slots_held: int = 0,
        slot_waiting: int = 0,
        free: int | None = None,
        speed: int = 0,
        leased: int = 0,
        loads: Sequence[PeerLoadInfo] = (),
    ) -> None:
        self._init(
            version,
            node,
            discovery,
            off_reason,
            tuple(interfaces),
            tuple(addresses),
            tuple(allowed),
            allowed_source,
            tuple(warnings),
            peers,
            jobs,
            running,
            port,
            socket,
            leases,
            queued,
            slots_held,
            slot_waiting,
            free,
            speed,
            leased,
            tuple(loads),
        )

    def to_message(self) -> dict[str, object]:
        msg: dict[str, object] = {"ok": True}
        for name in self.__match_args__:
            value = getattr(self, name)
            if name == "loads":
                if self.free is not None:
                    msg[name] = [info.to_message() for info in self.loads]
            elif name in ("free", "speed", "leased") and self.free is None:
                continue  # no live-load channel (discovery off): none of its figures
            else:
                msg[name] = list(value) if isinstance(value, tuple) else value
        return msg

    @classmethod
    def from_message(cls, msg: Mapping[str, object]) -> StatusReply:
        """Lenient: a missing or mistyped field takes its empty value (an older daemon)."""

        def text(key: str) -> str:
            value = msg.get(key)
            return value if isinstance(value, str) else ""

        def number(key: str) -> int:
            value = msg.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        off = msg.get("off_reason")
        sock = msg.get("socket")
        loads = msg.get("loads")
        return cls(
            version=text("version"),
            node=text("node"),
            discovery=msg.get("discovery") is True,
            off_reason=off if isinstance(off, str) else None,
            interfaces=_str_list(msg.get("interfaces")),
            addresses=_str_list(msg.get("addresses")),
            allowed=_str_list(msg.get("allowed")),
            allowed_source=text("allowed_source"),
            warnings=_str_list(msg.get("warnings")),
            peers=number("peers"),
            jobs=number("jobs"),
            running=number("running"),
            port=number("port"),
            socket=sock if isinstance(sock, str) else None,
            leases=number("leases"),
            queued=number("queued"),
            slots_held=number("slots_held"),
            slot_waiting=number("slot_waiting"),
            free=number("free") if "free" in msg else None,
            speed=number("speed"),
            leased=number("leased"),
            loads=[
                PeerLoadInfo.from_message(m)
                for m in (loads if isinstance(loads, list) else [])
                if isinstance(m, dict)
            ],
        )


def decode_status_reply(msg: Mapping[str, object]) -> StatusReply | ErrorReply:
    if msg.get("ok") is True:
        return StatusReply.from_message(msg)
    return ErrorReply(str(msg.get("error") or "the daemon refused the request"))


class HostsReply(Frozen):
    """The DISTCC_HOSTS line of the matching live peers and every peer's verdict.

    ``verdicts`` are :meth:`meshcc.mesh.matching.Verdict.to_dict` maps (plain data, as
    ``meshcc hosts --json`` prints them)."""

    __slots__ = ("compiler", "line", "note", "status", "verdicts")
    __match_args__ = ("line", "verdicts", "status", "compiler", "note")
    line: str
    verdicts: tuple[dict[str, object], ...]
    status: StatusReply
    compiler: str | None
    note: str | None

    def __init__(
        self,
        line: str,
        verdicts: Sequence[dict[str, object]],
        status: StatusReply,
        compiler: str | None = None,
        note: str | None = None,
    ) -> None:
        self._init(line, tuple(verdicts), status, compiler, note)

    def to_message(self) -> dict[str, object]:
        return {
            "ok": True,
            "line": self.line,
            "verdicts": list(self.verdicts),
            "status": self.status.to_message(),
            "compiler": self.compiler,
            "note": self.note,
        }

    @property
    def included(self) -> list[dict[str, object]]:
        """The verdicts of the peers in the line, best first."""
        return [v for v in self.verdicts if v.get("included")]


def verdict_peer(verdict: Mapping[str, object]) -> dict[str, object]:
    """The ``peer`` map of one of :attr:`HostsReply.verdicts` ({} if it has none)."""
    peer = verdict.get("peer")
    return peer if isinstance(peer, dict) else {}


def verdict_load(verdict: Mapping[str, object]) -> PeerLoadInfo | None:
    """The live load of one of :attr:`HostsReply.verdicts`' peers (None: none fresh)."""
    load = verdict.get("load")
    return PeerLoadInfo.from_message(load) if isinstance(load, dict) else None


def decode_hosts_reply(msg: Mapping[str, object]) -> HostsReply | ErrorReply:
    """A hosts reply as a record; ControlError when its line or verdicts are malformed."""
    if msg.get("ok") is not True:
        return ErrorReply(str(msg.get("error") or "the daemon refused the request"))
    line, verdicts, status = msg.get("line"), msg.get("verdicts"), msg.get("status")
    if not isinstance(line, str) or not isinstance(verdicts, list):
        raise ControlError(f"malformed hosts reply: {dict(msg)!r:.200}")
    if not all(isinstance(v, dict) for v in verdicts):
        raise ControlError("malformed hosts reply: a verdict is not a map")
    compiler, note = msg.get("compiler"), msg.get("note")
    return HostsReply(
        line,
        verdicts,
        StatusReply.from_message(status if isinstance(status, dict) else {}),
        compiler if isinstance(compiler, str) else None,
        note if isinstance(note, str) else None,
    )


class DirectReply(Frozen):
    """A direct-mode answer (see :class:`DirectRequest`): ``manifest`` for direct_get
    (None: nothing known), ``data``/``more`` for one part of a direct_result."""

    __slots__ = ("data", "manifest", "more", "off")
    __match_args__ = ("manifest", "data", "more", "off")
    manifest: bytes | None
    data: bytes | None
    more: bool
    off: bool  # the daemon keeps no manifests (no result cache): do not send any

    def __init__(
        self,
        manifest: bytes | None = None,
        data: bytes | None = None,
        more: bool = False,
        off: bool = False,
    ) -> None:
        self._init(manifest, data, bool(more), bool(off))

    def to_message(self) -> dict[str, object]:
        if self.data is not None:
            return {"ok": True, "data": self.data, "more": self.more}
        if self.off:
            return {"ok": True, "manifest": None, "off": True}
        return {"ok": True, "manifest": self.manifest}


Reply = StatusReply | HostsReply | LeaseGranted | LeaseLocal | ErrorReply | DirectReply
