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
"""

from __future__ import annotations

import _socket
import errno

from meshcc.exitcodes import (
    EXIT_CONNECT_FAILED,
    EXIT_IO_ERROR,
    EXIT_PROTOCOL_ERROR,
    EXIT_TIMEOUT,
    EXIT_TRUNCATED,
)
from meshcc.wire import protocol as wire

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence

CONNECT_TIMEOUT = 4.0  # distcc's fixed dcc_connect_timeout
DEFAULT_IO_TIMEOUT = 300.0
RECV_SIZE = 256 * 1024
_MSG_MORE = getattr(_socket, "MSG_MORE", 0)
# After a failed send, how long to wait for an ERRM the server may have sent before closing.
REFUSAL_GRACE = 2.0
# A source sent after SLOT goes in pieces this large; between them the client looks for a
# BUSY (the server discards what follows it), so a turned-away client stops sending early.
SLOT_PEEK_CHUNK = 256 * 1024


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


class Connection:
    """One compile job on one TCP connection (distcc protocol ``version`` 1 or 2)."""

    def __init__(
        self,
        host: str,
        port: int,
        version: int,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        limits: wire.Limits | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
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
        self.limits = limits if limits is not None else wire.Limits()
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
        last: OSError | None = None
        for family, kind, proto, _, addr in infos:
            sock = _socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.connect_timeout)
                sock.connect(addr)
            except OSError as e:
                sock.close()
                last = e
                continue
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock.settimeout(self.io_timeout)
            self.sock = sock
            return
        if isinstance(last, TimeoutError):
            raise TransportError(
                f"connect timed out after {self.connect_timeout:g}s", EXIT_CONNECT_FAILED
            )
        why = "no address" if last is None else _describe(last)
        raise TransportError(f"connect failed: {why}", EXIT_CONNECT_FAILED)

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
        self._send(wire.SLOT_REQUEST, more=True)  # leaves with the request head

    def send_head(self, argv: Sequence[bytes]) -> None:
        """DIST + ARGC + ARGVs; sent while cpp still runs, as distcc does."""
        try:
            head = wire.encode_request_head(self.version, argv)
        except (ValueError, wire.ProtocolError) as e:
            raise TransportError(f"cannot encode request: {e}", EXIT_PROTOCOL_ERROR) from None
        self._send(head)

    def send_source(self, data: bytes, codec: str = "") -> None:
        """DOTI with the preprocessed source, LZO-compressed for protocol 2.

        ``codec``: a codec the peer announced (``zstd``, ``lz4``; protocol 1 only): ``CODC``
        names it before ``DOTI``, and the reply's bodies come back in it (wire.codecs)."""
        prefix = b""
        if codec:
            from meshcc.wire.codecs import encode_codec_request

            if self.version != 1:
                raise ValueError(f"a negotiated codec ({codec}) goes with protocol 1 only")
            prefix = encode_codec_request(codec)
            self.codec = codec
        if (self.version >= 2 or codec) and data:
            from meshcc import compression

            try:
                data = compression.compress(
                    self.codec or compression.codec_for_protocol(self.version), data
                )
            except compression.CompressionError as e:
                raise TransportError(f"cannot compress source: {e}", EXIT_IO_ERROR) from None
        if len(data) > self.limits.max_body:
            raise TransportError(
                f"preprocessed source is {len(data)} bytes, over the {self.limits.max_body} limit",
                EXIT_PROTOCOL_ERROR,
            )
        self._send(prefix + wire.token(b"DOTI", len(data)), more=bool(data))
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
            head = sock.recv(wire.HEADER_LEN, _socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True  # reset: read_reply says what happened
        finally:
            sock.settimeout(timeout)
        if head and len(head) < wire.HEADER_LEN and wire.SLOT_GRANTED.startswith(head):
            return False  # a FREE still arriving
        if head == wire.SLOT_GRANTED:
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
        reader = (wire.SlotReplyReader if slot else wire.ReplyReader)(self.version, self.limits)
        status = -1
        stderr = stdout = obj = b""
        eof = False
        while True:
            try:
                event = reader.next_event()
            except wire.ProtocolError as e:
                if eof:
                    raise TransportError(
                        f"server closed the connection early ({e})", EXIT_TRUNCATED
                    ) from None
                raise TransportError(f"protocol error: {e}", EXIT_PROTOCOL_ERROR) from None
            if event is wire.NEED_DATA:
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
                    if on_data is not None and not (slot and len(data) <= wire.HEADER_LEN):
                        on_data()
                        on_data = None
                    reader.feed(data)
                else:
                    eof = True
                    reader.feed_eof()
                continue
            # Protocols 1 and 2 only: no DOTD (ReplyDepFile) can come.
            if isinstance(event, wire.ReplyStatus):
                status = event.wait_status
            elif isinstance(event, wire.ReplyStderr):
                stderr = event.data
            elif isinstance(event, wire.ReplyStdout):
                stdout = event.data
            elif isinstance(event, wire.ReplyObject):
                obj = event.data
            elif isinstance(event, wire.ReplyRefused):
                raise Refused(event.message or "no reason given")
            elif isinstance(event, wire.SlotBusy):
                raise Busy(event.running)
            elif isinstance(event, wire.SlotGranted):
                slot = False  # what follows is the reply
            elif isinstance(event, wire.ReplyEnd):
                break
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
                self.limits.max_body,
            )
        except compression.CompressionError as e:
            raise TransportError(f"bad compressed data: {e}", EXIT_PROTOCOL_ERROR) from None

    def link_sample(self) -> tuple[int, bool, int] | None:
        """What the kernel measured of this connection's link, after the reply: (delivery
        rate in bytes/s, whether that rate was limited by us rather than the link, minimum
        round trip in microseconds), from ``TCP_INFO``; None if unavailable. One
        getsockopt: the daemon's per-peer throughput estimate is made of these
        (compression.choose)."""
        if self.sock is None:
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
