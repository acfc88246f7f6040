"""Open a compile connection through the SOCKS5 proxy named by ``DISTCC_SOCKS_PROXY``.

The variable is read as Gentoo's distcc reads it (Portage sets it inside its network
sandbox): an absolute path is a UNIX socket; otherwise ``host:port``, or a host alone on
port 1080. An IPv6 proxy is written ``[addr]:port`` (or a bare address, port 1080).

The handshake is :mod:`meshcc.wire.socks5`; this module only moves its bytes, within one
deadline for reaching the proxy and the proxy reaching the host (the connect timeout a
direct connection gets), so a dead proxy costs what a dead host costs.
"""

from __future__ import annotations

import _socket
import time

from meshcc.wire.socks5 import DEFAULT_PORT, MAX_REPLY, Handshake, SocksError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence

    # meshcc.transport.client.dial's type: the caller's TCP connect loop (see open_tunnel).
    Dial = Callable[
        [Sequence[tuple[int, int, int, str, tuple[object, ...]]], Callable[[], float]],
        tuple[_socket.socket | None, OSError | None],
    ]

__all__ = ["ProxyError", "open_tunnel", "proxy_address"]


class ProxyError(Exception):
    """The proxy could not be used or could not reach the host; ``str`` says which."""


def proxy_address(value: str) -> tuple[int, str | tuple[str, int]]:
    """(address family, address) of a ``DISTCC_SOCKS_PROXY`` value; ValueError if unusable."""
    if value.startswith("/"):
        if len(value.encode()) >= 108:  # sun_path, with its terminating NUL
            raise ValueError(f"the UNIX socket path {value!r} is too long")
        return _socket.AF_UNIX, value
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"cannot read {value!r} as [address]:port")
        port_text: str | None = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:  # a host name, an IPv4 address, or an IPv6 address without brackets
        host, port_text = value, None
    if not host:
        raise ValueError(f"no proxy host in {value!r}")
    if port_text is None:
        return 0, (host, DEFAULT_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid proxy port in {value!r}")
    return 0, (host, int(port_text))


def _reach_proxy(value: str, deadline: float, dial: Dial) -> _socket.socket:
    try:
        family, address = proxy_address(value)
    except ValueError as e:
        raise ProxyError(f"DISTCC_SOCKS_PROXY: {e}") from None
    if family == _socket.AF_UNIX:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(address)
        except OSError as e:
            sock.close()
            raise ProxyError(f"cannot reach the SOCKS proxy {value}: {_why(e)}") from None
        return sock
    assert isinstance(address, tuple)
    try:
        infos = _socket.getaddrinfo(address[0], address[1], 0, _socket.SOCK_STREAM)
    except _socket.gaierror as e:
        raise ProxyError(f"cannot resolve the SOCKS proxy {value}: {e.strerror}") from None
    tcp, last = dial(infos, lambda: max(deadline - time.monotonic(), 0.001))
    if tcp is not None:
        return tcp
    why = "no address" if last is None else _why(last)
    raise ProxyError(f"cannot reach the SOCKS proxy {value}: {why}")


def _why(e: OSError) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return e.strerror or str(e) or type(e).__name__


def open_tunnel(proxy: str, host: str, port: int, timeout: float, dial: Dial) -> _socket.socket:
    """A socket relayed by ``proxy`` to ``host``:``port``.

    ``timeout`` bounds everything: reaching the proxy and its CONNECT. The socket is left
    blocking with that timeout; the caller sets its own I/O timeout. ``dial`` is
    :func:`meshcc.transport.client.dial`, the loop a direct connection uses, passed in
    rather than imported: the client imports this module, and the layer contracts
    (pyproject.toml) count that lazy import, so importing back would be a cycle.
    """
    try:
        handshake = Handshake(host, port)
    except SocksError as e:
        raise ProxyError(f"SOCKS proxy {proxy}: {e}") from None
    deadline = time.monotonic() + timeout
    sock = _reach_proxy(proxy, deadline, dial)
    try:
        sock.sendall(handshake.greeting())
        while not handshake.open:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            reply = handshake.receive(sock.recv(MAX_REPLY))
            if reply:
                sock.sendall(reply)
    except SocksError as e:
        sock.close()
        raise ProxyError(f"SOCKS proxy {proxy}: {e}") from None
    except OSError as e:
        sock.close()
        raise ProxyError(f"SOCKS proxy {proxy}: {_why(e)}") from None
    if handshake.trailing:  # a distcc server speaks only when spoken to
        sock.close()
        raise ProxyError(f"SOCKS proxy {proxy}: it relayed data before the request was sent")
    return sock
