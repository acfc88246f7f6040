"""Sans-IO client side of a SOCKS version 5 CONNECT (RFC 1928), no authentication.

Why a compile client speaks SOCKS at all: Portage builds inside a network namespace with no
route out (``FEATURES=network-sandbox``, on by default) and, when ``distcc`` is in
``FEATURES``, starts a SOCKS5 proxy on a UNIX socket outside it and names it in
``DISTCC_SOCKS_PROXY``. Gentoo's distcc connects through that proxy (Gentoo bug 537616);
a compile client that ignores the variable finds every host unreachable and quietly
compiles locally.

What is sent is what Gentoo's distcc sends, so any proxy that serves it serves us: the
greeting offers only "no authentication"; the CONNECT names the host as given, as a domain
name, so the proxy resolves it (inside the sandbox there may be no resolver at all), except
that address literals go as IPv4 or IPv6 addresses, which needs no resolver anywhere.

:class:`Handshake` is a state machine fed with whatever bytes arrived; it says what to send
and when the tunnel is open. It does no I/O, keeps at most one reply (262 bytes) and raises
:class:`SocksError` with a reason a user can act on.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "MAX_HOST", "MAX_REPLY", "Handshake", "SocksError", "connect_request"]

VERSION = 5
DEFAULT_PORT = 1080  # a proxy named without a port (as Gentoo's distcc assumes)
NO_AUTH = 0x00
NO_ACCEPTABLE = 0xFF
CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04
MAX_HOST = 255  # a domain name's length is one byte on the wire
MAX_REPLY = 4 + 1 + MAX_HOST + 2  # the longest CONNECT reply: a domain-name bound address

# RFC 1928 section 6, in the words a user reads after "proxy: ".
REPLY_REASONS = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by the proxy's rules",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


class SocksError(Exception):
    """The proxy refused or broke the handshake; ``str`` says how, for a user."""


def _address(host: str) -> bytes:
    """The address type and address of ``host``: literals as such, anything else by name."""
    import ipaddress  # only on the proxied path: the compile client's start-up stays lean

    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(literal.split("%", 1)[0])
    except ValueError:
        pass
    else:
        if "%" in literal:  # a scope names an interface of this box, not of the proxy's
            raise SocksError(f"a link-local address with a scope ({host}) cannot be proxied")
        kind = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
        return bytes((kind,)) + ip.packed
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        name = host.encode("idna")
    if not name or len(name) > MAX_HOST:
        raise SocksError(f"host name {host!r} cannot be sent to a SOCKS5 proxy (1-255 bytes)")
    return bytes((ATYP_DOMAIN, len(name))) + name


def connect_request(host: str, port: int) -> bytes:
    """The CONNECT request for ``host``:``port``."""
    if not 0 < port < 65536:
        raise SocksError(f"port {port} is out of range")
    return bytes((VERSION, CONNECT, 0)) + _address(host) + port.to_bytes(2, "big")


class Handshake:
    """One CONNECT through a SOCKS5 proxy, from the client's side.

    ``greeting()`` first; then give every received chunk to :meth:`receive`, which returns
    bytes to send (the CONNECT, once the method is chosen) or ``b""``. When :attr:`open` is
    true the proxy relays the connection; :attr:`trailing` holds any bytes that came after
    its reply (they belong to the relayed stream).
    """

    __slots__ = ("_buffer", "_request", "_state", "bound", "trailing")

    def __init__(self, host: str, port: int) -> None:
        self._request = connect_request(host, port)  # invalid targets fail before any I/O
        self._state = "start"
        self._buffer = b""
        self.bound = b""  # the proxy's outgoing address and port, as it sent them
        self.trailing = b""

    @property
    def open(self) -> bool:
        return self._state == "open"

    def greeting(self) -> bytes:
        if self._state != "start":
            raise RuntimeError("greeting() is sent once, first")
        self._state = "method"
        return bytes((VERSION, 1, NO_AUTH))

    def receive(self, data: bytes) -> bytes:
        """Take bytes from the proxy; return what to send next (possibly nothing)."""
        if self._state in ("start", "open"):
            raise RuntimeError(f"no data is expected in state {self._state}")
        if not data:
            raise SocksError("the proxy closed the connection during the handshake")
        self._buffer += data
        if self._state == "method":
            if len(self._buffer) < 2:
                return b""
            version, method = self._buffer[0], self._buffer[1]
            if version != VERSION:
                raise SocksError(f"not a SOCKS5 proxy (it answered version {version})")
            if method == NO_ACCEPTABLE:
                raise SocksError("the proxy wants authentication, which is not supported")
            if method != NO_AUTH:
                raise SocksError(f"the proxy chose method {method:#04x}, which was not offered")
            if len(self._buffer) > 2:
                raise SocksError("malformed proxy reply (data before the CONNECT was sent)")
            self._buffer = b""
            self._state = "reply"
            return self._request
        return self._parse_reply()

    def _parse_reply(self) -> bytes:
        buf = self._buffer
        if len(buf) < 5:
            return b""
        version, reply, reserved, kind = buf[0], buf[1], buf[2], buf[3]
        if version != VERSION:
            raise SocksError(f"malformed proxy reply (version {version})")
        if reply != 0:
            reason = REPLY_REASONS.get(reply, f"error {reply:#04x}")
            raise SocksError(f"the proxy could not connect: {reason}")
        if reserved != 0:
            raise SocksError(f"malformed proxy reply (reserved byte {reserved:#04x})")
        if kind == ATYP_IPV4:
            length = 4 + 4 + 2
        elif kind == ATYP_IPV6:
            length = 4 + 16 + 2
        elif kind == ATYP_DOMAIN:
            length = 4 + 1 + buf[4] + 2
        else:
            raise SocksError(f"malformed proxy reply (address type {kind:#04x})")
        if len(buf) < length:
            return b""
        self.bound = buf[4:length]
        self.trailing = buf[length:]
        self._buffer = b""
        self._state = "open"
        return b""
