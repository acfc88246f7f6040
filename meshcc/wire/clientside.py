"""The compile client's side of the distcc protocol (versions 1 and 2), without records.

:mod:`meshcc.wire.protocol` is the full sans-IO codec (both sides, protocol 3, 22 event
and limit classes). Importing it costs the compile client ~2.9 M instructions on every
remote job, more than the job's own work, for the few lines it needs: encode a request
head and read one reply. This module is those lines: plain functions and tuples, no
classes but the error, the same framing rules and limits, and the same error texts.
``tests/unit/test_wire_clientside.py`` feeds both readers the same replies (whole, byte
by byte, truncated, corrupt) and requires the same outcome, so the two cannot drift.

:func:`read_reply` judges the reply received so far (a ``bytearray`` the caller grows):
``None`` while incomplete, else a tuple; it raises :class:`ProtocolError` as soon as the
bytes in hand are wrong (a token out of place, a length over its limit before its body
is awaited, a stream that ended early). It re-reads the headers from the start on each
call (a reply has at most seven tokens), and copies a body only once the reply is whole.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

HEADER_LEN = 12
SLOT_REQUEST = b"SLOT00000001"  # == protocol.SLOT_REQUEST (tested)
SLOT_GRANTED = b"FREE00000001"  # == protocol.SLOT_GRANTED (tested)
MAX_BODY = 256 * 1024 * 1024  # == protocol.Limits().max_body (tested)
MAX_MESSAGE = 64 * 1024  # == protocol.Limits().max_message (tested)
_MAX_VALUE = 0xFFFFFFFF
_HEX_DIGITS = b"0123456789abcdefABCDEF"

# What read_reply returns (the first item of its 5-tuple):
REPLY = 0  # (REPLY, wait_status, stderr, stdout, object), bodies as on the wire
REFUSED = 1  # (REFUSED, message, ...): meshcc's ERRM
BUSY = 2  # (BUSY, running, ...): every job slot taken (only after SLOT)


class ProtocolError(Exception):
    """The peer broke the protocol; ``str(e)`` says how (meant for logs)."""


def token(name: bytes, value: int) -> bytes:
    """One 12-byte header, e.g. ``token(b"DOTI", 26) == b"DOTI0000001a"``."""
    if len(name) != 4:
        raise ValueError(f"token name must be 4 bytes, got {name!r}")
    if not 0 <= value <= _MAX_VALUE:
        raise ValueError(f"{name.decode('ascii', 'replace')} value {value} out of 32-bit range")
    return b"%s%08x" % (name, value)


def encode_request_head(version: int, argv: Sequence[bytes]) -> bytes:
    """``DIST ARGC ARGV...`` for protocol 1 or 2 (as :func:`protocol.encode_request_head`)."""
    if version not in (1, 2):
        raise ValueError(f"protocol version must be 1 or 2 here, got {version!r}")
    parts = [token(b"DIST", version), token(b"ARGC", len(argv))]
    for a in argv:
        parts.append(token(b"ARGV", len(a)))
        parts.append(a)
    return b"".join(parts)


def _show(name: bytes) -> str:
    if name.isalpha() and name.isascii():
        return name.decode("ascii")
    return repr(name)


def _truncated(have: int, need: int, what: str) -> ProtocolError:
    return ProtocolError(f"reply truncated: end of stream in {what} (have {have} of {need} bytes)")


def read_reply(
    buf: bytearray,
    eof: bool,
    version: int,
    slot: bool,
    max_body: int = MAX_BODY,
    max_message: int = MAX_MESSAGE,
) -> tuple[int, int | str, bytes, bytes, bytes] | None:
    """Judge the reply to a protocol ``version`` request received so far (``slot``: the
    request was sent after ``SLOT``, so ``FREE``, ``BUSY`` or ``ERRM`` comes first).

    Returns None when more bytes are needed, else ``(REPLY, status, stderr, stdout, obj)``,
    ``(REFUSED, message, b"", b"", b"")`` or ``(BUSY, running, b"", b"", b"")``; bytes
    after a complete reply are not looked at. Raises :class:`ProtocolError`, also for a
    stream that ended (``eof``) early.
    """
    n = len(buf)
    at = 0
    if slot:
        expected: tuple[bytes, ...] = (b"FREE", b"BUSY", b"ERRM")
    else:
        expected = (b"DONE", b"ERRM")
    bodies: list[tuple[int, int]] = []
    status = 0
    step = 0  # 0: first token; 1: DONE; 2: STAT; 3-5: SERR, SOUT, DOTO
    while True:
        if n - at < HEADER_LEN:
            if eof:
                what = "/".join(_show(e) for e in expected) + " token"
                raise ProtocolError(
                    f"reply truncated: end of stream in {what} (have {n - at} of "
                    f"{HEADER_LEN} bytes)"
                )
            return None
        name = bytes(buf[at : at + 4])
        digits = bytes(buf[at + 4 : at + HEADER_LEN])
        at += HEADER_LEN
        if name not in expected:
            want = " or ".join(_show(e) for e in expected)
            raise ProtocolError(
                f"protocol derailment: expected {want} token, got {_show(name)}"
                f" (header {name + digits!r})"
            )
        if digits.translate(None, _HEX_DIGITS):
            raise ProtocolError(f"{_show(name)} token value {digits!r} is not 8 hex digits")
        value = int(digits, 16)
        if name == b"ERRM":
            if value > max_message:
                raise ProtocolError(f"ERRM length {value} exceeds limit max_message={max_message}")
            if n - at < value:
                if eof:
                    raise _truncated(n - at, value, "ERRM body")
                return None
            return REFUSED, bytes(buf[at : at + value]).decode("utf-8", "replace"), b"", b"", b""
        if name == b"BUSY":
            return BUSY, value, b"", b"", b""
        if name == b"FREE":
            if value != 1:
                raise ProtocolError(f"FREE token value {value} (only 1 is defined)")
            expected = (b"DONE", b"ERRM")
            continue
        if name == b"DONE":
            if value != version:
                raise ProtocolError(
                    f"reply version {value} does not match request version {version}"
                )
            expected = (b"STAT",)
            continue
        if name == b"STAT":
            status = value
            expected = (b"SERR",)
            continue
        # SERR, SOUT or DOTO: a body
        if value > max_body:
            raise ProtocolError(f"{_show(name)} length {value} exceeds limit max_body={max_body}")
        if n - at < value:
            if eof:
                raise _truncated(n - at, value, f"{_show(name)} body")
            return None
        bodies.append((at, at + value))
        at += value
        step += 1
        if step == 3:
            err, out, obj = (bytes(buf[a:b]) if b > a else b"" for a, b in bodies)
            return REPLY, status, err, out, obj
        expected = (b"SOUT",) if step == 1 else (b"DOTO",)
