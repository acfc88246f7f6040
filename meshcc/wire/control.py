"""Sans-IO codec for the local control socket (daemon <-> compile clients and the CLI).

Transport: a Unix stream socket. Messages are msgpack maps with string keys, sent back to
back with no extra framing (read them with :class:`MessageReader`, which wraps
``msgpack.Unpacker``). Every message is at most :data:`MAX_MESSAGE` bytes (1 MiB); a
message that is larger, not a map, or malformed is a :class:`ControlError` and the
receiver closes that connection (the daemon logs why). This module does no I/O.

Socket path (:func:`daemon_socket_path`, :func:`client_socket_paths`): ``--socket PATH``,
else ``$MESHCC_SOCKET``, else ``/run/meshcc/control.sock`` when running as root, else
``$XDG_RUNTIME_DIR/meshcc/control.sock``, else ``/tmp/meshcc-$UID/control.sock``. Clients
try ``$MESHCC_SOCKET`` alone when it is set (an explicit choice never falls back to another
daemon), else ``/run/meshcc/control.sock`` then the per-user path.

Requests (client -> daemon). Every request may carry ``"v": 1`` (protocol version,
absent = 1); unknown extra fields are ignored so old daemons accept newer clients::

    {"op": "status"}
    {"op": "hosts", "cc": str|None, "cc_path": str|None}
    {"op": "lease", "cc": str, "cc_path": str, "source": str, "local_ok": bool}
        # local_ok (default true): the client may be given this box's own share; false
        # when it must not compile locally (DISTCC_FALLBACK=0): it then waits for a peer
    {"op": "done", "ok": bool, "connect_failed": bool, "reason": str}   # on a lease connection

Replies (daemon -> client)::

    status -> {"ok": true, "version": str, "node": str, "discovery": bool,
               "off_reason": str|None, "interfaces": [str], "allowed": [str],
               "peers": int, "jobs": int, "running": int,
               # extra: "socket": str, "port": int, "addresses": [str],
               #        "leases": int (held now), "queued": int (waiting now),
               #        "warnings": [str]}
    hosts  -> {"ok": true, "line": str, "verdicts": [Verdict.to_dict()], "status": {status},
               # extra: "compiler": str|None (ClientCompiler.describe() of cc, None when
               #        no cc was given), "note": str|None (why cc could not be fingerprinted;
               #        then verdicts judge liveness and subnets only)}
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
down at once. ``done`` has no reply. One lease per connection: after
``done`` the daemon closes its side.

Import cost matters (compile clients import this): builtins + msgpack only.
"""

from __future__ import annotations

import os

import msgpack

from .protocol import _Frozen  # the immutable value-class base both codecs share

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import NoReturn

__all__ = [
    "MAX_MESSAGE",
    "MAX_STRING",
    "PROTOCOL_VERSION",
    "ControlError",
    "DoneMessage",
    "HostsRequest",
    "LeaseGranted",
    "LeaseLocal",
    "LeaseRequest",
    "MessageReader",
    "StatusRequest",
    "client_socket_paths",
    "daemon_socket_path",
    "decode_lease_reply",
    "decode_request",
    "done_message",
    "encode",
    "error_reply",
    "hosts_request",
    "lease_granted",
    "lease_local",
    "lease_request",
    "status_request",
]

PROTOCOL_VERSION = 1
MAX_MESSAGE = 1024 * 1024  # one encoded message, bytes
MAX_STRING = 16 * 1024  # one string field of a request (paths, names, reasons)
SOCKET_NAME = "control.sock"
ROOT_SOCKET = "/run/meshcc/control.sock"


class ControlError(Exception):
    """A message was malformed, too large or not understood; ``str(e)`` says which."""


# ---------------------------------------------------------------- framing


def encode(msg: Mapping[str, object]) -> bytes:
    """One message as bytes; ControlError if it is not encodable or larger than 1 MiB."""
    try:
        data: bytes = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ControlError(f"cannot encode message: {e}") from None
    if len(data) > MAX_MESSAGE:
        raise ControlError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE} byte limit")
    return data


class MessageReader:
    """Bytes in, messages (dicts with str keys) out. After a ControlError it stays failed."""

    __slots__ = ("_error", "_unpacker")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False,
            max_buffer_size=max_message,
            strict_map_key=True,
            use_list=True,
        )
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        """Buffer ``data``; ControlError when the pending message would exceed the limit."""
        if self._error is not None:
            raise ControlError(self._error)
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            self._fail(f"message larger than the {MAX_MESSAGE} byte limit")

    def next_message(self) -> dict[str, object] | None:
        """The next complete message, or None when more bytes are needed."""
        if self._error is not None:
            raise ControlError(self._error)
        try:
            msg = self._unpacker.unpack()
        except msgpack.OutOfData:
            return None
        except Exception as e:  # ExtraData, FormatError, StackError, ValueError, ...
            self._fail(f"malformed message: {e.__class__.__name__}: {e}")
        if not isinstance(msg, dict):
            self._fail(f"expected a map, got {type(msg).__name__}")
        return msg

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


# ---------------------------------------------------------------- value records


class _Record(_Frozen):
    """A tiny immutable record (dataclasses cost ~7 ms to import; clients start often)."""

    __slots__ = ()

    def __init__(self, *values: object) -> None:
        for name, value in zip(self.__match_args__, values, strict=True):
            object.__setattr__(self, name, value)


class StatusRequest(_Record):
    __slots__ = ()
    __match_args__ = ()


class HostsRequest(_Record):
    __slots__ = ("cc", "cc_path")
    __match_args__ = __slots__
    cc: str | None
    cc_path: str | None


class LeaseRequest(_Record):
    __slots__ = ("cc", "cc_path", "source", "local_ok")
    __match_args__ = __slots__
    cc: str
    cc_path: str
    source: str
    local_ok: bool  # may the daemon hand out this box's own share (False: DISTCC_FALLBACK=0)

    def __init__(self, cc: str, cc_path: str, source: str, local_ok: bool = True) -> None:
        super().__init__(cc, cc_path, source, local_ok)


class DoneMessage(_Record):
    __slots__ = ("ok", "connect_failed", "reason")
    __match_args__ = __slots__
    ok: bool
    connect_failed: bool
    reason: str


class LeaseGranted(_Record):
    __slots__ = ("host", "port", "protocol", "compiler", "peer")
    __match_args__ = __slots__
    host: str
    port: int
    protocol: int
    compiler: str
    peer: str


class LeaseLocal(_Record):
    """No lease: compile locally. ``error`` True when the daemon rejected the request."""

    __slots__ = ("reason", "error")
    __match_args__ = __slots__
    reason: str
    error: bool


Request = StatusRequest | HostsRequest | LeaseRequest | DoneMessage


# ---------------------------------------------------------------- constructors


def _versioned(msg: dict[str, object]) -> dict[str, object]:
    msg["v"] = PROTOCOL_VERSION
    return msg


def status_request() -> dict[str, object]:
    return _versioned({"op": "status"})


def hosts_request(cc: str | None = None, cc_path: str | None = None) -> dict[str, object]:
    return _versioned({"op": "hosts", "cc": cc, "cc_path": cc_path})


def lease_request(cc: str, cc_path: str, source: str, local_ok: bool = True) -> dict[str, object]:
    return _versioned(
        {"op": "lease", "cc": cc, "cc_path": cc_path, "source": source, "local_ok": local_ok}
    )


def done_message(ok: bool, connect_failed: bool = False, reason: str = "") -> dict[str, object]:
    return {
        "op": "done",
        "ok": bool(ok),
        "connect_failed": bool(connect_failed),
        "reason": reason[:MAX_STRING],
    }


def lease_granted(
    host: str, port: int, protocol: int, compiler: str, peer: str
) -> dict[str, object]:
    return {
        "ok": True,
        "host": host,
        "port": port,
        "protocol": protocol,
        "compiler": compiler,
        "peer": peer,
    }


def lease_local(reason: str, hold: bool = False) -> dict[str, object]:
    """Compile locally. ``hold``: this is one of the box's own counted slots (its share
    while every matching peer is busy); the client keeps the connection open while its
    local compiler runs, and closing it frees the slot."""
    msg: dict[str, object] = {"ok": False, "local": True, "reason": reason}
    if hold:
        msg["hold"] = True
    return msg


def error_reply(error: str) -> dict[str, object]:
    return {"ok": False, "error": error}


# ---------------------------------------------------------------- validation


def _str(msg: Mapping[str, object], key: str, *, optional: bool = False) -> str | None:
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


def _bool(msg: Mapping[str, object], key: str, default: bool) -> bool:
    value = msg.get(key, default)
    if not isinstance(value, bool):
        raise ControlError(f"{msg.get('op')!s}: field {key!r} must be true or false")
    return value


def decode_request(msg: Mapping[str, object]) -> Request:
    """A request map as a record; ControlError (with a reason to send back) if invalid."""
    op = msg.get("op")
    v = msg.get("v", PROTOCOL_VERSION)
    if not isinstance(v, int) or v < 1:
        raise ControlError(f"bad protocol version {v!r}")
    if op == "status":
        return StatusRequest()
    if op == "hosts":
        cc = _str(msg, "cc", optional=True)
        cc_path = _str(msg, "cc_path", optional=True)
        return HostsRequest(cc or None, cc_path or None)
    if op == "lease":
        cc = _str(msg, "cc")
        cc_path = _str(msg, "cc_path")
        source = _str(msg, "source", optional=True) or ""
        assert cc is not None and cc_path is not None
        if not cc:
            raise ControlError("lease: field 'cc' is empty")
        if not cc_path.startswith("/"):
            raise ControlError(f"lease: cc_path must be an absolute path, not {cc_path!r}")
        return LeaseRequest(cc, cc_path, source, msg.get("local_ok") is not False)
    if op == "done":
        reason = _str(msg, "reason", optional=True) or ""
        return DoneMessage(_bool(msg, "ok", False), _bool(msg, "connect_failed", False), reason)
    if isinstance(op, str):
        raise ControlError(f"unknown op {op[:64]!r}")
    raise ControlError("request has no 'op' string")


def decode_lease_reply(msg: Mapping[str, object]) -> LeaseGranted | LeaseLocal:
    """A lease reply as a record; ControlError when it is neither a grant nor a refusal."""
    if msg.get("ok") is True:
        host, port, proto = msg.get("host"), msg.get("port"), msg.get("protocol")
        compiler, peer = msg.get("compiler"), msg.get("peer")
        if (
            not isinstance(host, str)
            or not host
            or not isinstance(port, int)
            or isinstance(port, bool)
            or not 0 < port < 65536
            or proto not in (1, 2, 3)
            or not isinstance(compiler, str)
            or not compiler
            or not isinstance(peer, str)
        ):
            raise ControlError(f"malformed lease grant: {dict(msg)!r:.200}")
        assert isinstance(proto, int)
        return LeaseGranted(host, port, proto, compiler, peer)
    if msg.get("ok") is False:
        reason = msg.get("reason") if msg.get("local") else msg.get("error")
        return LeaseLocal(str(reason or "no reason given"), not msg.get("local"))
    raise ControlError(f"malformed lease reply: {dict(msg)!r:.200}")


# ---------------------------------------------------------------- socket paths


def _user_socket(uid: int, env: Mapping[str, str]) -> str:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and runtime.startswith("/"):
        return os.path.join(runtime, "meshcc", SOCKET_NAME)
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
    uid = os.geteuid() if uid is None else uid
    if env.get("MESHCC_SOCKET"):
        return [env["MESHCC_SOCKET"]]
    paths = [ROOT_SOCKET]
    user = _user_socket(uid, env)
    if user not in paths:
        paths.append(user)
    return paths
