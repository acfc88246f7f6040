"""Blocking distcc-protocol client connection for the compile wrapper.

Blocking sockets with socket timeouts: the wrapper does one job per process, so there is
nothing to multiplex. It uses the C ``_socket`` module directly: ``socket.py`` would add
``selectors``, ``array`` and friends (~2.5 ms per compile) for nothing we need, and host
names are passed as bytes so getaddrinfo does not load the IDNA codec (~1 ms).

Outcomes are kept apart because the wrapper acts differently on each:

- :class:`TransportError`: the host could not do the job (connect refused or timed out,
  reset, EOF before a complete reply, protocol error, IO timeout). Back off, try another.
- :class:`Refused`: the server said why it would not run the job (meshcc's ERRM). Same
  handling as a transport failure, but the reason is shown to the user.
- :class:`Busy`: the server (``busy`` capability, asked with :meth:`Connection.reserve_slot`)
  has every job slot taken. Not a failure: no backoff; take another host or the local share.
- :class:`Reply`: the compiler ran remotely; its wait status, output and object.

The protocol's client side is here too, not :mod:`meshcc.wire.protocol` (the full sans-IO
codec: both sides, protocol 3, 22 event and limit classes): importing that cost ~2.9 M
instructions per remote job, more than the job's own work, for one request head and one
reply, and a module of its own would cost ~0.3 M (importlib's work for any module). So
:func:`encode_request_head` and :func:`read_reply` are plain functions over tuples, with
protocol's framing rules, limits and error texts; ``tests/unit/test_client_reply_reader.py``
feeds both readers the same replies (every prefix, every corrupted byte) and requires the
same outcome, so the two cannot drift. :func:`read_reply` judges the reply received so far
(a ``bytearray`` the caller grows): it re-reads the headers from the start on each call (a
reply has at most seven tokens) and copies a body only once the reply is whole.
"""

from __future__ import annotations

import _socket

from meshcc.exitcodes import (
    EXIT_CONNECT_FAILED,
    EXIT_IO_ERROR,
    EXIT_PROTOCOL_ERROR,
    EXIT_TIMEOUT,
    EXIT_TRUNCATED,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence

    from meshcc.compression.kept import Plan
    from meshcc.wire.protocol import Limits

CONNECT_TIMEOUT = 4.0  # distcc's fixed dcc_connect_timeout
DEFAULT_IO_TIMEOUT = 300.0
RECV_SIZE = 256 * 1024
_MSG_MORE = getattr(_socket, "MSG_MORE", 0)
# After a failed send, how long to wait for an ERRM the server may have sent before closing.
REFUSAL_GRACE = 2.0
# A source sent after SLOT goes in pieces this large; between them the client looks for a
# BUSY (the server discards what follows it), so a turned-away client stops sending early.
SLOT_PEEK_CHUNK = 256 * 1024

# ---------------------------------------------------------------- the wire, client side

HEADER_LEN = 12
SLOT_REQUEST = b"SLOT00000001"  # == protocol.SLOT_REQUEST (tested)
SLOT_GRANTED = b"FREE00000001"  # == protocol.SLOT_GRANTED (tested)
MAX_BODY = 256 * 1024 * 1024  # == protocol.Limits().max_body (tested)
MAX_MESSAGE = 64 * 1024  # == protocol.Limits().max_message (tested)
_MAX_VALUE = 0xFFFFFFFF
_HEX_DIGITS = b"0123456789abcdefABCDEF"

# What read_reply returns (the first item of its 5-tuple):
REPLY_DONE = 0  # (REPLY_DONE, wait_status, stderr, stdout, object), bodies as on the wire
REPLY_REFUSED = 1  # (REPLY_REFUSED, message, ...): meshcc's ERRM
REPLY_BUSY = 2  # (REPLY_BUSY, running, ...): every job slot taken (only after SLOT)


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
    """``DIST ARGC ARGV...`` for protocol 1 or 2 (as ``protocol.encode_request_head``)."""
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

    Returns None when more bytes are needed, else ``(REPLY_DONE, status, stderr, stdout, obj)``,
    ``(REPLY_REFUSED, message, b"", b"", b"")`` or ``(REPLY_BUSY, running, ...)``; bytes
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
            return (
                REPLY_REFUSED,
                bytes(buf[at : at + value]).decode("utf-8", "replace"),
                b"",
                b"",
                b"",
            )
        if name == b"BUSY":
            return REPLY_BUSY, value, b"", b"", b""
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
            return REPLY_DONE, status, err, out, obj
        expected = (b"SOUT",) if step == 1 else (b"DOTO",)


class TransportError(Exception):
    """The host failed to do the job; ``str(e)`` is a short reason, ``exit_code`` distcc's code."""

    def __init__(self, message: str, exit_code: int = EXIT_IO_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Refused(Exception):
    """The server refused the job and said why (meshcc ERRM).

    ``reason`` is the server's text with control characters escaped: it is printed on the
    user's terminal, and a hostile server must not be able to drive that terminal (the
    remote compiler's own stderr, which users expect byte for byte, is another matter)."""

    def __init__(self, reason: str) -> None:
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
        super().__init__(shown)
        self.reason = shown


class Busy(Exception):
    """The server answered ``BUSY``: all its job slots are taken (``running`` jobs run)."""

    def __init__(self, running: int) -> None:
        super().__init__(f"busy: all job slots taken ({running} jobs running)")
        self.running = running


class Reply:
    """A complete reply: the remote compiler's wait status and its (decompressed) outputs."""

    __slots__ = ("obj", "status", "stderr", "stdout")

    def __init__(self, status: int, stderr: bytes, stdout: bytes, obj: bytes) -> None:
        self.status = status
        self.stderr = stderr
        self.stdout = stdout
        self.obj = obj


def _describe(e: OSError) -> str:
    """A short reason for a socket error ("Connection refused", "timed out")."""
    if isinstance(e, TimeoutError):
        return "timed out"
    return e.strerror or str(e) or type(e).__name__


def dial(
    infos: Sequence[tuple[int, int, int, str, tuple[object, ...]]], timeout: Callable[[], float]
) -> tuple[_socket.socket | None, OSError | None]:
    """Connect to the first of getaddrinfo's ``infos`` that accepts, each tried for
    ``timeout()`` seconds: (the socket, with TCP_NODELAY; None), else (None, the last error).
    One loop for a compile host and for a SOCKS proxy (:mod:`meshcc.transport.socks`)."""
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout())
            sock.connect(addr)
        except OSError as e:
            sock.close()
            last = e
            continue
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock, None
    return None, last


class Connection:
    """One compile job on one TCP connection (distcc protocol ``version`` 1 or 2)."""

    def __init__(
        self,
        host: str,
        port: int,
        version: int,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        limits: Limits | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        proxy: str | None = None,
    ) -> None:
        if version not in (1, 2):
            raise ValueError(f"protocol {version} is not supported by this client")
        # CODC (wire.codecs): bodies both ways in this codec (send_source sets it).
        self.codec = ""
        self.host = host
        self.port = port
        self.version = version
        self.io_timeout = io_timeout
        self.connect_timeout = connect_timeout
        # DISTCC_SOCKS_PROXY (Portage's network sandbox): connect through it, as Gentoo's
        # distcc does; the host name is then resolved by the proxy, not here.
        self.proxy = proxy
        # Only two limits matter to a client; protocol.Limits is not imported for them.
        self.limits = limits
        self.max_body = MAX_BODY if limits is None else limits.max_body
        self.max_message = MAX_MESSAGE if limits is None else limits.max_message
        self.sock: _socket.socket | None = None
        self._send_error: OSError | None = None
        self._slot = False  # SLOT sent: the answer (FREE or BUSY) precedes the reply
        self._answered = False  # the server's answer to SLOT was seen while sending

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ connect

    def connect(self) -> None:
        """Try each address getaddrinfo gives, each with the fixed connect timeout."""
        if self.proxy:
            self._connect_through_proxy(self.proxy)
            return
        try:
            host = self.host.encode("ascii")
        except UnicodeEncodeError:
            host = self.host.encode("idna")
        try:
            infos = _socket.getaddrinfo(host, self.port, 0, _socket.SOCK_STREAM)
        except _socket.gaierror as e:
            raise TransportError(
                f"cannot resolve {self.host}: {e.strerror}", EXIT_CONNECT_FAILED
            ) from None
        sock, last = dial(infos, lambda: self.connect_timeout)
        if sock is not None:
            sock.settimeout(self.io_timeout)
            self.sock = sock
            return
        if isinstance(last, TimeoutError):
            raise TransportError(
                f"connect timed out after {self.connect_timeout:g}s", EXIT_CONNECT_FAILED
            )
        why = "no address" if last is None else _describe(last)
        raise TransportError(f"connect failed: {why}", EXIT_CONNECT_FAILED)

    def _connect_through_proxy(self, proxy: str) -> None:
        from meshcc.transport import socks  # only inside Portage's sandbox: lean otherwise

        try:
            sock = socks.open_tunnel(proxy, self.host, self.port, self.connect_timeout, dial)
        except socks.ProxyError as e:
            raise TransportError(str(e), EXIT_CONNECT_FAILED) from None
        sock.settimeout(self.io_timeout)
        self.sock = sock

    # ------------------------------------------------------------------ send

    def _send(self, data: bytes, more: bool = False) -> None:
        """Send, remembering (not raising) a broken pipe so a pending ERRM can still be read.

        ``more``: more data follows at once (MSG_MORE), so a token header is not sent as a
        tiny packet of its own despite TCP_NODELAY.
        """
        if self._send_error is not None:
            return
        assert self.sock is not None
        try:
            self.sock.sendall(data, _MSG_MORE if more else 0)
        except TimeoutError:
            raise TransportError(
                f"IO timeout ({self.io_timeout:g}s) while sending", EXIT_TIMEOUT
            ) from None
        except OSError as e:
            import errno  # only here: ~0.2 M instructions on every job otherwise

            if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED):
                self._send_error = e
                return
            raise TransportError(f"send failed: {_describe(e)}") from None

    def reserve_slot(self) -> None:
        """Ask a ``busy``-capable server for a job slot with this request: ``SLOT`` goes out
        in front of the request (``send_head``, ``send_source`` right after), pipelined, with
        no round trip. The answer comes with the reply: :meth:`read_reply` raises Busy (every
        slot taken) or Refused, or returns the reply of the compile the slot ran; a BUSY that
        arrives while a large source is still being sent stops the sending. Call it with the
        source ready (after cpp), so a reserved slot never idles while this box
        preprocesses."""
        assert self.sock is not None
        self._slot = True
        self._send(SLOT_REQUEST, more=True)  # leaves with the request head

    def send_head(self, argv: Sequence[bytes]) -> None:
        """DIST + ARGC + ARGVs; sent while cpp still runs, as distcc does."""
        try:
            head = encode_request_head(self.version, argv)
        except ValueError as e:
            raise TransportError(f"cannot encode request: {e}", EXIT_PROTOCOL_ERROR) from None
        self._send(head)

    def send_source(
        self, data: bytes, codec: str = "", level: int | None = None, zref: Plan | None = None
    ) -> None:
        """DOTI with the preprocessed source, LZO-compressed for protocol 2.

        ``codec``: a codec the peer announced (``zstd``, ``lz4``; protocol 1 only): ``CODC``
        names it before ``DOTI``, and the reply's bodies come back in it (wire.codecs).
        ``level``: that codec's level (compression.choose.zstd_level; None: the fastest).
        ``zref``: zstd to a ``zref`` peer: its body ids follow ``CODC`` and it compresses
        (against the body it names, if any; compression.kept)."""
        prefix = b""
        if codec:
            from meshcc.wire.codecs import encode_codec_request

            if self.version != 1:
                raise ValueError(f"a negotiated codec ({codec}) goes with protocol 1 only")
            prefix = encode_codec_request(codec)
            self.codec = codec
            if zref is not None and codec == "zstd":  # [zref]
                prefix += zref.tokens()
        if (self.version >= 2 or codec) and data:
            from meshcc import compression

            try:
                data = (
                    zref.compress(data, level)  # [zref]
                    if zref is not None and codec == "zstd"
                    else compression.compress(
                        self.codec or compression.codec_for_protocol(self.version), data, level
                    )
                )
            except compression.CompressionError as e:
                raise TransportError(f"cannot compress source: {e}", EXIT_IO_ERROR) from None
        if len(data) > self.max_body:
            raise TransportError(
                f"preprocessed source is {len(data)} bytes, over the {self.max_body} limit",
                EXIT_PROTOCOL_ERROR,
            )
        self._send(prefix + token(b"DOTI", len(data)), more=bool(data))
        if self._slot and len(data) > SLOT_PEEK_CHUNK:
            self._send_watching(data)
        else:
            self._send(data)
        if self._send_error is not None:
            self._raise_after_send_error()

    def _send_watching(self, data: bytes) -> None:
        """Send a large source after ``SLOT`` in chunks, and stop early once the server has
        answered anything but FREE (BUSY or ERRM: it is discarding the rest; read_reply
        reports it)."""
        for at in range(0, len(data), SLOT_PEEK_CHUNK):
            if self._send_error is not None or self._turned_away():
                return
            self._send(data[at : at + SLOT_PEEK_CHUNK])

    def _turned_away(self) -> bool:
        """Peek (without consuming or waiting) at the server's answer to SLOT: True once it
        is BUSY, ERRM, an end of stream or an error; FREE is remembered, nothing is looked at
        after it."""
        sock = self.sock
        if self._answered or sock is None:
            return False
        timeout = sock.gettimeout()
        sock.settimeout(0.0)  # a timeout would make CPython wait for readability first
        try:
            head = sock.recv(HEADER_LEN, _socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True  # reset: read_reply says what happened
        finally:
            sock.settimeout(timeout)
        if head and len(head) < HEADER_LEN and SLOT_GRANTED.startswith(head):
            return False  # a FREE still arriving
        if head == SLOT_GRANTED:
            self._answered = True
            return False
        return True

    def _raise_after_send_error(self) -> None:
        """The peer closed while we sent: report its ERRM if it left one, else a transport error."""
        err = self._send_error
        assert err is not None and self.sock is not None
        try:
            self.sock.settimeout(min(REFUSAL_GRACE, self.io_timeout))
            self.read_reply()
        except Refused:
            raise
        except TransportError:
            pass
        raise TransportError(f"connection lost while sending: {_describe(err)}")

    # ------------------------------------------------------------------ receive

    def read_reply(self, on_data: Callable[[], None] | None = None) -> Reply:
        """Read and decompress the whole reply; raises TransportError or Refused.
        ``on_data``: called once when the first reply bytes arrive (the compile is over)."""
        sock = self.sock
        assert sock is not None
        slot = self._slot
        buf = bytearray()
        eof = False
        while True:
            try:
                got = read_reply(buf, eof, self.version, slot, self.max_body, self.max_message)
            except ProtocolError as e:
                if eof:
                    raise TransportError(
                        f"server closed the connection early ({e})", EXIT_TRUNCATED
                    ) from None
                raise TransportError(f"protocol error: {e}", EXIT_PROTOCOL_ERROR) from None
            if got is not None:
                break
            try:
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                raise TransportError(
                    f"IO timeout ({sock.gettimeout():g}s) waiting for the reply",
                    EXIT_TIMEOUT,
                ) from None
            except OSError as e:
                raise TransportError(f"receive failed: {_describe(e)}") from None
            if data:
                # After SLOT, the first bytes are FREE, sent at once: not the reply yet.
                if on_data is not None and not (
                    slot and len(buf) < HEADER_LEN and len(data) <= HEADER_LEN
                ):
                    on_data()
                    on_data = None
                buf += data
            else:
                eof = True
        kind, value, stderr, stdout, obj = got
        if kind == REPLY_REFUSED:
            raise Refused(str(value) or "no reason given")
        if kind == REPLY_BUSY:
            raise Busy(int(value))
        status = int(value)
        if self.version >= 2 or self.codec:
            stderr, stdout, obj = (self._decompress(b) for b in (stderr, stdout, obj))
        return Reply(status, stderr, stdout, obj)

    def _decompress(self, body: bytes) -> bytes:
        if not body:
            return body
        from meshcc import compression

        try:
            return compression.decompress(
                self.codec or compression.codec_for_protocol(self.version),
                body,
                self.max_body,
            )
        except compression.CompressionError as e:
            raise TransportError(f"bad compressed data: {e}", EXIT_PROTOCOL_ERROR) from None

    def link_sample(self) -> tuple[int, bool, int] | None:
        """What the kernel measured of this connection's link, after the reply: (delivery
        rate in bytes/s, whether that rate was limited by us rather than the link, minimum
        round trip in microseconds), from ``TCP_INFO``; None if unavailable. One
        getsockopt: the daemon's per-peer throughput estimate is made of these
        (compression.choose)."""
        if self.sock is None or self.proxy:  # through a proxy it measures the proxy's link
            return None
        try:
            info = self.sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, 232)
        except (OSError, AttributeError):
            return None
        if len(info) < 168:  # kernels before 4.9 have no tcpi_delivery_rate
            return None
        from sys import byteorder

        rate = int.from_bytes(info[160:168], byteorder)  # tcpi_delivery_rate
        min_rtt = int.from_bytes(info[148:152], byteorder)  # tcpi_min_rtt
        return rate, bool(info[7] & 1), min_rtt  # tcpi_delivery_rate_app_limited

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
