"""Sans-IO codec for the distcc 3.4 wire protocol (versions 1, 2 and 3).

Bytes in, events out (``RequestReader``, ``ReplyReader``); values in, bytes out
(``encode_*``). No sockets, files or asyncio, so the blocking client and the
asyncio server share it unchanged (the h11 model).

Framing: every field is a 12-byte header, 4 ASCII letters + 8 hex digits (we
emit lowercase, accept either case as distcc's ``strtoul`` does). For string
and bulk tokens the value is a byte length and that many body bytes follow.
Every length is checked against ``Limits`` as soon as its header is parsed, so
an oversized token fails before any of its body is awaited or allocated.

Import cost matters (the compile wrapper imports this on every compile), so
the module uses only builtins: no ``dataclasses`` (~7 ms with ``inspect``) and
no ``typing`` at run time. Events and ``Limits`` are small frozen classes with
``__slots__`` that behave like frozen slotted dataclasses (eq, repr, hash,
``__match_args__``).

Liveness probe (meshcc extension, announced as the ``ping`` capability): a meshcc
daemon checks a meshcc peer by connecting to its compile port and sending the single
token ``PING00000001`` (``PROBE_REQUEST``) instead of ``DIST``. A server that knows it
answers ``PONG00000001`` (``PROBE_REPLY``) and closes: no job, no job or read slot, no
fork, logged at DEBUG only. ``classify_probe_reply`` judges what came back: ``PONG`` is the
explicit answer; an ``ERRM`` refusal or a plain close (an older meshcc without the hook)
still proves a daemon is accepting. Stock distcc never sees these tokens: meshcc sends
``PING`` only to peers that announce ``ping``, and no distcc client sends it, so nothing a
stock client reads can be mistaken for one.

Job slot reservation (meshcc extension, announced as the ``busy`` capability): a meshcc
client that knows the server announces ``busy`` opens the connection with the single token
``SLOT00000001`` (``SLOT_REQUEST``) and sends the whole request right behind it, without
waiting (pipelined: no round trip per job). The server answers as soon as it reads ``SLOT``,
before the request: ``FREE00000001`` (``SLOT_GRANTED``: one of its ``--jobs`` slots is now
this connection's; the reply follows when the compile is done, so the client reads ``FREE``
then the usual ``DONE``..) or ``BUSY`` + the number of jobs it is running (``encode_busy``:
every slot is taken or promised, try elsewhere), after which it sends nothing more, shuts
down its sending side and discards what the client still sends for a bounded time and byte
count before closing: a close with unread bytes would send a TCP reset, which can destroy
the ``BUSY`` before the client reads it. A client that sees ``BUSY`` while still sending
stops sending. ``SlotReplyReader`` parses the pipelined answer (``read_slot_answer`` judges
a lone first token); an ``ERRM`` refusal may come instead (e.g. from the access list). An
older client that waits for ``FREE`` before sending ``DIST`` is served the same way. So a
full server never holds a waiting job for such a client, and the client never waits inside a
server where nobody can see it. Stock distcc never sees these tokens (meshcc sends ``SLOT``
only to peers announcing ``busy``; no distcc client sends it); a stock client's request
still waits for a slot inside the server, as with distccd.
"""

from __future__ import annotations

from .records import Frozen as _Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from collections.abc import Callable, Generator, Sequence
    from typing import Literal

__all__ = [
    "BODY_ID_LEN",
    "KEEP_TOKEN",
    "NEED_DATA",
    "PREFIX_TOKEN",
    "PROBE_REPLY",
    "PROBE_REQUEST",
    "SLOT_GRANTED",
    "SLOT_REQUEST",
    "Event",
    "Limits",
    "ProtocolError",
    "PumpFile",
    "ReplyDepFile",
    "ReplyEnd",
    "ReplyObject",
    "ReplyReader",
    "ReplyRefused",
    "ReplyStart",
    "ReplyStatus",
    "ReplyStderr",
    "ReplyStdout",
    "RequestArgs",
    "RequestCodec",
    "RequestEnd",
    "RequestReader",
    "RequestSource",
    "RequestStart",
    "SlotBusy",
    "SlotGranted",
    "SlotReplyReader",
    "classify_probe_reply",
    "encode_busy",
    "encode_pump_files",
    "encode_refusal",
    "encode_reply",
    "encode_request_head",
    "encode_source",
    "is_body_id",
    "is_probe",
    "is_slot_request",
    "read_slot_answer",
    "string_token",
    "token",
]

HEADER_LEN = 12
_MAX_VALUE = 0xFFFFFFFF
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class ProtocolError(Exception):
    """The peer broke the protocol; ``str(e)`` says how (meant for logs)."""


class _NeedDataType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedDataType()
"""Returned by ``next_event()`` when more bytes must be fed first."""


_set = object.__setattr__


class Limits(_Frozen):
    """Upper bounds on every length the readers accept (defaults suit real builds)."""

    __match_args__ = (
        "max_argc",
        "max_arg_bytes",
        "max_args_total",
        "max_body",
        "max_files",
        "max_message",
    )
    __slots__ = __match_args__
    max_argc: int
    max_arg_bytes: int  # one ARGV / CDIR / NAME / LINK string
    max_args_total: int  # all ARGV bytes together
    max_body: int  # one bulk body as on the wire (DOTI, DOTO, SERR, SOUT, FILE, DOTD)
    max_files: int  # protocol 3 NFIL
    max_message: int  # meshcc ERRM text

    def __init__(
        self,
        max_argc: int = 4096,
        max_arg_bytes: int = 64 * 1024,
        max_args_total: int = 1024 * 1024,
        max_body: int = 256 * 1024 * 1024,
        max_files: int = 65536,
        max_message: int = 64 * 1024,
    ) -> None:
        for name, value in zip(
            self.__match_args__,
            (max_argc, max_arg_bytes, max_args_total, max_body, max_files, max_message),
            strict=True,
        ):
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{name} must be a non-negative int, got {value!r}")
            _set(self, name, value)

    def replace(self, **changes: int) -> Limits:
        """A copy with some fields changed (``dataclasses.replace`` equivalent)."""
        values = {n: getattr(self, n) for n in self.__match_args__}
        unknown = changes.keys() - values.keys()
        if unknown:
            raise TypeError(f"unknown Limits field(s): {', '.join(sorted(unknown))}")
        values.update(changes)
        return Limits(**values)


_DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------- events


class RequestStart(_Frozen):
    """``DIST``: a request in protocol ``version`` (1, 2 or 3) begins."""

    __match_args__ = ("version",)
    __slots__ = __match_args__
    version: int

    def __init__(self, version: int) -> None:
        _set(self, "version", version)


class RequestCodec(_Frozen):
    """``CODC`` before ``DOTI``: the bodies use the named codec (meshcc extension, see
    ``meshcc.wire.codecs``); ``name`` is a short ASCII word the server may not speak.
    ``prefix`` / ``keep``: the ``ZREF`` / ``ZNEW`` body ids that may follow ``CODC zstd``
    (32 hex digits each; "" when absent)."""

    __match_args__ = ("name", "prefix", "keep")
    __slots__ = __match_args__
    name: str
    prefix: str
    keep: str

    def __init__(self, name: str, prefix: str = "", keep: str = "") -> None:
        _set(self, "name", name)
        _set(self, "prefix", prefix)
        _set(self, "keep", keep)


class RequestArgs(_Frozen):
    """All ``ARGV`` strings read; ``cwd`` is the ``CDIR`` of a v3 request, else None."""

    __match_args__ = ("argv", "cwd")
    __slots__ = __match_args__
    argv: list[bytes]
    cwd: bytes | None

    def __init__(self, argv: list[bytes], cwd: bytes | None = None) -> None:
        _set(self, "argv", argv)
        _set(self, "cwd", cwd)


class PumpFile(_Frozen):
    """One v3 file entry: ``NAME`` then ``FILE`` (LZO body) or ``LINK`` (target text)."""

    __match_args__ = ("name", "kind", "data")
    __slots__ = __match_args__
    name: bytes
    kind: Literal["FILE", "LINK"]
    data: bytes

    def __init__(self, name: bytes, kind: Literal["FILE", "LINK"], data: bytes) -> None:
        _set(self, "name", name)
        _set(self, "kind", kind)
        _set(self, "data", data)


class RequestSource(_Frozen):
    """``DOTI`` body as on the wire (LZO for v2); ends a v1/v2 request."""

    __match_args__ = ("data",)
    __slots__ = __match_args__
    data: bytes

    def __init__(self, data: bytes) -> None:
        _set(self, "data", data)


class RequestEnd(_Frozen):
    """The request is complete (after RequestSource, or the last PumpFile in v3)."""

    __slots__ = ()
    __match_args__ = ()


class ReplyStart(_Frozen):
    """``DONE``: the reply begins; ``version`` equals the request's."""

    __match_args__ = ("version",)
    __slots__ = __match_args__
    version: int

    def __init__(self, version: int) -> None:
        _set(self, "version", version)


class ReplyStatus(_Frozen):
    """``STAT``: the compiler's raw wait status (exit << 8 | signal)."""

    __match_args__ = ("wait_status",)
    __slots__ = __match_args__
    wait_status: int

    def __init__(self, wait_status: int) -> None:
        _set(self, "wait_status", wait_status)


class _Body(_Frozen):
    __match_args__ = ("data",)
    __slots__ = __match_args__
    data: bytes

    def __init__(self, data: bytes) -> None:
        _set(self, "data", data)


class ReplyStderr(_Body):
    """``SERR`` body as on the wire."""

    __slots__ = ()


class ReplyStdout(_Body):
    """``SOUT`` body as on the wire."""

    __slots__ = ()


class ReplyObject(_Body):
    """``DOTO`` body as on the wire (empty on a failed compile)."""

    __slots__ = ()


class ReplyDepFile(_Body):
    """``DOTD`` body as on the wire (v3, successful compiles only)."""

    __slots__ = ()


class ReplyEnd(_Frozen):
    """The reply is complete."""

    __slots__ = ()
    __match_args__ = ()


class ReplyRefused(_Frozen):
    """meshcc's ``ERRM`` refusal in place of ``DONE``; terminal (no ReplyEnd follows)."""

    __match_args__ = ("message",)
    __slots__ = __match_args__
    message: str

    def __init__(self, message: str) -> None:
        _set(self, "message", message)


Event = (
    RequestStart
    | RequestCodec
    | RequestArgs
    | PumpFile
    | RequestSource
    | RequestEnd
    | ReplyStart
    | ReplyStatus
    | ReplyStderr
    | ReplyStdout
    | ReplyObject
    | ReplyDepFile
    | ReplyEnd
    | ReplyRefused
)


# ---------------------------------------------------------------- encoding


def token(name: bytes, value: int) -> bytes:
    """One 12-byte header, e.g. ``token(b"DOTI", 26) == b"DOTI0000001a"``."""
    if len(name) != 4:
        raise ValueError(f"token name must be 4 bytes, got {name!r}")
    if not 0 <= value <= _MAX_VALUE:
        raise ValueError(f"{name.decode('ascii', 'replace')} value {value} out of 32-bit range")
    return b"%s%08x" % (name, value)


def string_token(name: bytes, data: bytes) -> bytes:
    """Header carrying ``len(data)`` followed by ``data``."""
    return token(name, len(data)) + data


def _check_version(version: int) -> None:
    if version not in (1, 2, 3):
        raise ValueError(f"protocol version must be 1, 2 or 3, got {version!r}")


def encode_request_head(version: int, argv: Sequence[bytes], *, cwd: bytes | None = None) -> bytes:
    """``DIST [CDIR] ARGC ARGV...``; ``cwd`` (CDIR) is required for v3, refused otherwise."""
    _check_version(version)
    if (version == 3) != (cwd is not None):
        raise ValueError("cwd (CDIR) must be given for protocol 3 and only for it")
    parts = [token(b"DIST", version)]
    if cwd is not None:
        parts.append(string_token(b"CDIR", cwd))
    parts.append(token(b"ARGC", len(argv)))
    parts.extend(string_token(b"ARGV", a) for a in argv)
    return b"".join(parts)


def encode_source(data: bytes) -> bytes:
    """``DOTI`` with the (already compressed, for v2) source."""
    return string_token(b"DOTI", data)


def encode_pump_files(files: Sequence[tuple[bytes, Literal["FILE", "LINK"], bytes]]) -> bytes:
    """v3 ``NFIL`` then ``NAME`` + ``FILE``/``LINK`` per ``(name, kind, data)``."""
    parts = [token(b"NFIL", len(files))]
    for name, kind, data in files:
        if kind not in ("FILE", "LINK"):
            raise ValueError(f"pump file kind must be 'FILE' or 'LINK', got {kind!r}")
        parts.append(string_token(b"NAME", name))
        parts.append(string_token(kind.encode("ascii"), data))
    return b"".join(parts)


def encode_reply(
    version: int,
    wait_status: int,
    stderr: bytes,
    stdout: bytes,
    obj: bytes | None,
    *,
    dotd: bytes | None = None,
) -> bytes:
    """``DONE STAT SERR SOUT DOTO`` (+ ``DOTD`` for a successful v3 compile).

    ``obj`` None sends ``DOTO00000000`` as distccd does for a failed compile.
    Output with a failure status is refused: distcc clients would not read it.
    """
    _check_version(version)
    if wait_status != 0 and obj:
        raise ValueError("a failed compile (wait_status != 0) cannot carry an object file")
    if dotd is not None and (version != 3 or wait_status != 0):
        raise ValueError("DOTD is only sent for a successful protocol 3 compile")
    parts = [
        token(b"DONE", version),
        token(b"STAT", wait_status),
        string_token(b"SERR", stderr),
        string_token(b"SOUT", stdout),
        string_token(b"DOTO", obj or b""),
    ]
    if version == 3 and wait_status == 0:
        parts.append(string_token(b"DOTD", dotd or b""))
    return b"".join(parts)


def encode_refusal(message: str) -> bytes:
    """meshcc's ``ERRM`` token; the text is cut (on a UTF-8 boundary) to the default limit."""
    data = message.encode("utf-8", "replace")
    limit = _DEFAULT_LIMITS.max_message
    if len(data) > limit:
        data = data[:limit].decode("utf-8", "ignore").encode("utf-8")
    return string_token(b"ERRM", data)


# ---------------------------------------------------------------- liveness probe

PROBE_REQUEST = b"PING00000001"
"""What a meshcc prober sends (version 1 of the probe)."""

PROBE_REPLY = b"PONG00000001"
"""What a meshcc server answers to ``PROBE_REQUEST`` before closing."""


def is_probe(first: bytes) -> bool:
    """True if a connection's first bytes are a liveness probe (not a distcc request)."""
    return first[:HEADER_LEN] == PROBE_REQUEST


def classify_probe_reply(data: bytes, eof: bool) -> str | None:
    """Judge a probe's answer so far: None while undecided (need more bytes, no EOF).

    ``"pong"`` the explicit reply; ``"errm"`` a meshcc refusal (an older daemon reading
    PING as a bad request); ``"closed"`` EOF with nothing (an older daemon, or a server
    that closes on anything unexpected); ``"other"`` anything else.
    """
    head = data[:HEADER_LEN]
    if len(head) == HEADER_LEN:
        if head == PROBE_REPLY:
            return "pong"
        return "errm" if head[:4] == b"ERRM" else "other"
    if not eof:
        prefixes = (PROBE_REPLY[: len(head)], b"ERRM"[: len(head)])
        return None if head[:4] in (p[:4] for p in prefixes) else "other"
    return "closed" if not head else "other"


# ---------------------------------------------------------------- job slot reservation

SLOT_REQUEST = b"SLOT00000001"
"""What a meshcc client sends first to a ``busy``-capable server (version 1)."""

SLOT_GRANTED = b"FREE00000001"
"""The server's answer when a job slot is now reserved for the connection."""


class SlotGranted(_Frozen):
    """``FREE``: a job slot is reserved for this connection; send the request."""

    __slots__ = ()
    __match_args__ = ()


class SlotBusy(_Frozen):
    """``BUSY``: every job slot is taken; ``running`` is how many jobs the server runs."""

    __match_args__ = ("running",)
    __slots__ = __match_args__
    running: int

    def __init__(self, running: int) -> None:
        _set(self, "running", running)


def is_slot_request(first: bytes) -> bool:
    """True if a connection's first bytes ask for a job slot (a ``busy``-capable client)."""
    return first[:HEADER_LEN] == SLOT_REQUEST


def encode_busy(running: int) -> bytes:
    """The refusal a full server sends to a ``SLOT`` request (then it closes)."""
    return token(b"BUSY", min(max(running, 0), _MAX_VALUE))


def read_slot_answer(
    data: bytes, eof: bool, limits: Limits = _DEFAULT_LIMITS
) -> SlotGranted | SlotBusy | ReplyRefused | _NeedDataType:
    """Judge the answer to ``SLOT_REQUEST`` received so far: NEED_DATA while incomplete.

    Raises ProtocolError for anything else, or for a stream that ended early. Nothing may
    follow ``FREE`` (the server waits for the request) or ``BUSY`` (the server closes), so
    only the first token is looked at; ``ERRM`` needs its whole text.
    """
    if len(data) < HEADER_LEN:
        if eof:
            what = "nothing" if not data else f"{len(data)} byte(s)"
            raise ProtocolError(f"the server closed after {what} instead of answering SLOT")
        return NEED_DATA
    name, digits = data[:4], data[4:HEADER_LEN]
    if digits.translate(None, _HEX_DIGITS):
        raise ProtocolError(f"{_show(name)} token value {digits!r} is not 8 hex digits")
    value = int(digits, 16)
    if name == b"FREE" and value == 1:
        return SlotGranted()
    if name == b"BUSY":
        return SlotBusy(value)
    if name == b"ERRM":
        if value > limits.max_message:
            raise ProtocolError(
                f"ERRM length {value} exceeds limit max_message={limits.max_message}"
            )
        if len(data) < HEADER_LEN + value:
            if eof:
                raise ProtocolError("reply truncated: end of stream in ERRM body")
            return NEED_DATA
        body = data[HEADER_LEN : HEADER_LEN + value]
        return ReplyRefused(body.decode("utf-8", "replace"))
    raise ProtocolError(
        f"expected FREE, BUSY or ERRM in answer to SLOT, got {_show(name)} "
        f"(header {bytes(data[:HEADER_LEN])!r})"
    )


# ---------------------------------------------------------------- decoding


def _show(name: bytes) -> str:
    """A token name for an error message; binary garbage shown as a bytes repr."""
    if name.isalpha() and name.isascii():
        return name.decode("ascii")
    return repr(name)


if TYPE_CHECKING:
    # The slot answer's events come only from SlotReplyReader.
    _Parser = Generator["Event | SlotGranted | SlotBusy | _NeedDataType", None, None]


class _Reader:
    """Shared buffering and token parsing; subclasses provide ``_parse()``."""

    __slots__ = ("_buf", "_eof", "_error", "_parser", "limits")
    _what = "stream"

    def __init__(self, limits: Limits = _DEFAULT_LIMITS) -> None:
        self.limits = limits
        # Unconsumed input. Consuming deletes from the front, which CPython's
        # bytearray does in O(1) (it moves its start offset), so large bodies
        # fed in many chunks cost linear time overall.
        self._buf = bytearray()
        self._eof = False
        self._error: ProtocolError | None = None
        self._parser = self._parse()

    def feed(self, data: bytes) -> None:
        """Append received bytes; call ``next_event()`` until it returns NEED_DATA."""
        if self._eof:
            if not data:
                return
            raise ProtocolError("data fed after end of stream")
        self._buf += data

    def feed_eof(self) -> None:
        """The peer closed the stream; a truncated message now raises ProtocolError."""
        self._eof = True

    def next_event(self) -> Event | SlotGranted | SlotBusy | _NeedDataType:
        """The next event, or NEED_DATA; raises ProtocolError (and stays failed)."""
        if self._error is not None:
            raise ProtocolError(str(self._error))
        try:
            return next(self._parser)
        except ProtocolError as e:
            self._error = e
            raise

    # -- helpers used by _parse() via ``yield from``

    def _wait(self, n: int, what: str | Callable[[], str]) -> Generator[_NeedDataType, None, None]:
        """Until ``n`` bytes are buffered. ``what`` (or what it returns: the text is made
        only for the error) names the awaited item in the truncation message. Callers test
        the buffer first: a generator per wait is a cost on every token of every request."""
        buf = self._buf
        while len(buf) < n:
            if self._eof:
                name = what if isinstance(what, str) else what()
                raise ProtocolError(
                    f"{self._what} truncated: end of stream in {name} "
                    f"(have {len(buf)} of {n} bytes)"
                )
            yield NEED_DATA

    def _header(
        self, expected: tuple[bytes, ...]
    ) -> Generator[_NeedDataType, None, tuple[bytes, int]]:
        """Read one header whose name is in ``expected``; return (name, value)."""
        buf = self._buf
        if len(buf) < HEADER_LEN:
            yield from self._wait(
                HEADER_LEN, lambda: f"{'/'.join(_show(e) for e in expected)} token"
            )
        name = bytes(buf[:4])
        digits = bytes(buf[4:HEADER_LEN])
        del buf[:HEADER_LEN]
        if name not in expected:
            want = " or ".join(_show(e) for e in expected)
            raise ProtocolError(
                f"protocol derailment: expected {want} token, got {_show(name)}"
                f" (header {bytes(name + digits)!r})"
            )
        if digits.translate(None, _HEX_DIGITS):
            raise ProtocolError(f"{_show(name)} token value {digits!r} is not 8 hex digits")
        return name, int(digits, 16)

    def _body(
        self, name: bytes, length: int, limit: int, limit_name: str
    ) -> Generator[_NeedDataType, None, bytes]:
        """Check ``length`` against the limit (before waiting for it), then read it."""
        if length > limit:
            raise ProtocolError(f"{_show(name)} length {length} exceeds limit {limit_name}={limit}")
        if length == 0:
            return b""
        buf = self._buf
        if len(buf) < length:
            yield from self._wait(length, lambda: f"{_show(name)} body")
        if len(buf) == length:
            data = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view:
                data = view[:length].tobytes()
            del buf[:length]
        return data

    def _string(
        self, name: bytes, limit: int, limit_name: str
    ) -> Generator[_NeedDataType, None, bytes]:
        tok, length = yield from self._header((name,))
        return (yield from self._body(tok, length, limit, limit_name))

    def _finished(self) -> _Parser:
        """After the last event: only EOF or silence is acceptable."""
        while True:
            if self._buf:
                raise ProtocolError(
                    f"{len(self._buf)} unexpected byte(s) after end of {self._what}: "
                    f"{bytes(self._buf[:16])!r}"
                )
            yield NEED_DATA

    def _parse(self) -> _Parser:  # pragma: no cover - overridden
        raise NotImplementedError


class RequestReader(_Reader):
    """Server side: parses one distcc request (v1, v2 or v3) into events."""

    __slots__ = ()
    _what = "request"

    def _parse(self) -> _Parser:
        lim = self.limits
        _, version = yield from self._header((b"DIST",))
        if version not in (1, 2, 3):
            raise ProtocolError(f"unsupported protocol version {version} (DIST must be 1, 2 or 3)")
        yield RequestStart(version)

        cwd = None
        if version == 3:
            cwd = yield from self._string(b"CDIR", lim.max_arg_bytes, "max_arg_bytes")

        _, argc = yield from self._header((b"ARGC",))
        if argc > lim.max_argc:
            raise ProtocolError(f"ARGC {argc} exceeds limit max_argc={lim.max_argc}")
        if argc == 0:
            raise ProtocolError("ARGC is 0: a request needs at least the compiler name")
        argv: list[bytes] = []
        total = 0
        buf = self._buf
        max_arg = lim.max_arg_bytes
        for _ in range(argc):
            # Fast path: a whole, valid ARGV token already buffered (nearly always: a
            # request's header comes in its first segment) is taken without the generators
            # below. Anything else (short, malformed, over a limit) goes the general way,
            # which makes the same checks and raises their errors.
            if len(buf) >= HEADER_LEN and buf[:4] == b"ARGV":
                digits = bytes(buf[4:HEADER_LEN])
                if not digits.translate(None, _HEX_DIGITS):
                    length = int(digits, 16)
                    end = HEADER_LEN + length
                    if (
                        length <= max_arg
                        and total + length <= lim.max_args_total
                        and len(buf) >= end
                    ):
                        argv.append(bytes(buf[HEADER_LEN:end]))
                        del buf[:end]
                        total += length
                        continue
            tok, length = yield from self._header((b"ARGV",))
            if length > lim.max_arg_bytes:
                raise ProtocolError(
                    f"ARGV length {length} exceeds limit max_arg_bytes={lim.max_arg_bytes}"
                )
            total += length
            if total > lim.max_args_total:
                raise ProtocolError(
                    f"ARGV total length {total} exceeds limit max_args_total={lim.max_args_total}"
                )
            argv.append((yield from self._body(tok, length, lim.max_arg_bytes, "max_arg_bytes")))
        yield RequestArgs(argv, cwd)

        if version < 3:
            if len(buf) < HEADER_LEN:
                yield from self._wait(HEADER_LEN, "DOTI token")
            if self._buf[:4] == b"CODC":  # meshcc's negotiated body codec (wire.codecs)
                if version != 1:
                    raise ProtocolError(f"CODC in a protocol {version} request (only 1 takes it)")
                tok, length = yield from self._header((b"CODC",))
                name = yield from self._body(tok, length, 16, "codec name (16)")
                if not (name.isascii() and name.isalnum()):
                    raise ProtocolError(f"CODC body {name!r} is not a codec name")
                ids = yield from self._body_ids(name)
                yield RequestCodec(name.decode("ascii"), *ids)
            tok, length = yield from self._header((b"DOTI",))
            yield RequestSource((yield from self._body(tok, length, lim.max_body, "max_body")))
        else:
            _, nfil = yield from self._header((b"NFIL",))
            if nfil > lim.max_files:
                raise ProtocolError(f"NFIL {nfil} exceeds limit max_files={lim.max_files}")
            for _ in range(nfil):
                name = yield from self._string(b"NAME", lim.max_arg_bytes, "max_arg_bytes")
                tok, length = yield from self._header((b"FILE", b"LINK"))
                if tok == b"FILE":
                    data = yield from self._body(tok, length, lim.max_body, "max_body")
                    yield PumpFile(name, "FILE", data)
                else:
                    data = yield from self._body(tok, length, lim.max_arg_bytes, "max_arg_bytes")
                    yield PumpFile(name, "LINK", data)
        yield RequestEnd()
        yield from self._finished()

    def _body_ids(self, codec: bytes) -> Generator[_NeedDataType, None, tuple[str, str]]:
        """``[ZREF id] [ZNEW id]`` after ``CODC zstd`` (wire.codecs): (prefix, keep)."""
        ids = {PREFIX_TOKEN: "", KEEP_TOKEN: ""}
        for tok in (PREFIX_TOKEN, KEEP_TOKEN):
            if len(self._buf) < HEADER_LEN:
                yield from self._wait(HEADER_LEN, "DOTI token")
            if self._buf[:4] != tok:
                continue
            if codec != b"zstd":
                raise ProtocolError(f"{_show(tok)} after CODC {codec!r} (only zstd takes it)")
            name, length = yield from self._header((tok,))
            raw = yield from self._body(name, length, BODY_ID_LEN, "body id (32)")
            if not is_body_id(raw):
                raise ProtocolError(f"{_show(tok)} body {raw[:40]!r} is not a body id")
            ids[tok] = raw.decode("ascii")
        return ids[PREFIX_TOKEN], ids[KEEP_TOKEN]


PREFIX_TOKEN = b"ZREF"  # zstd body prefixes (wire.codecs): the kept body a frame used
KEEP_TOKEN = b"ZNEW"  # the id under which the server keeps this body
BODY_ID_LEN = 32  # hex digits: 128 random bits
_BODY_ID_DIGITS = frozenset(b"0123456789abcdef")


def is_body_id(raw: bytes) -> bool:
    """Whether ``raw`` is a ``ZREF``/``ZNEW`` body id: exactly 32 lowercase hex digits."""
    return len(raw) == BODY_ID_LEN and _BODY_ID_DIGITS.issuperset(raw)


class ReplyReader(_Reader):
    """Client side: parses the reply to a request made in protocol ``version``."""

    __slots__ = ("version",)
    _what = "reply"

    def __init__(self, version: int, limits: Limits = _DEFAULT_LIMITS) -> None:
        _check_version(version)
        self.version = version
        super().__init__(limits)

    def _parse(self) -> _Parser:
        lim = self.limits
        tok, value = yield from self._header((b"DONE", b"ERRM"))
        if tok == b"ERRM":
            data = yield from self._body(tok, value, lim.max_message, "max_message")
            yield ReplyRefused(data.decode("utf-8", "replace"))
            yield from self._finished()
            return
        if value != self.version:
            raise ProtocolError(
                f"reply version {value} does not match request version {self.version}"
            )
        yield ReplyStart(value)

        _, status = yield from self._header((b"STAT",))
        yield ReplyStatus(status)
        for name, event in ((b"SERR", ReplyStderr), (b"SOUT", ReplyStdout), (b"DOTO", ReplyObject)):
            tok, length = yield from self._header((name,))
            yield event((yield from self._body(tok, length, lim.max_body, "max_body")))
        if self.version == 3 and status == 0:
            tok, length = yield from self._header((b"DOTD",))
            yield ReplyDepFile((yield from self._body(tok, length, lim.max_body, "max_body")))
        yield ReplyEnd()
        yield from self._finished()


class SlotReplyReader(ReplyReader):
    """Client side of a pipelined ``SLOT`` request: the slot answer, then the reply.

    Events: ``SlotGranted`` then the events of :class:`ReplyReader`; or ``SlotBusy`` alone
    (terminal: the server sends nothing after it); or ``ReplyRefused`` in place of the
    answer (terminal)."""

    __slots__ = ()

    def _parse(self) -> _Parser:
        lim = self.limits
        tok, value = yield from self._header((b"FREE", b"BUSY", b"ERRM"))
        if tok == b"ERRM":
            data = yield from self._body(tok, value, lim.max_message, "max_message")
            yield ReplyRefused(data.decode("utf-8", "replace"))
            yield from self._finished()
            return
        if tok == b"BUSY":
            yield SlotBusy(value)
            yield from self._finished()
            return
        if value != 1:
            raise ProtocolError(f"FREE token value {value} (only 1 is defined)")
        yield SlotGranted()
        yield from super()._parse()
