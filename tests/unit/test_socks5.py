"""The SOCKS5 CONNECT handshake (meshcc.wire.socks5) and DISTCC_SOCKS_PROXY's grammar.

The byte layouts are RFC 1928's; the real-proxy behaviour (microsocks, through a UNIX socket
from inside a network namespace with no route, as Portage sets it up) is proven in
tests/integration/test_socks_proxy.py.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcc.transport.socks import proxy_address
from meshcc.wire.socks5 import MAX_REPLY, Handshake, SocksError, connect_request

GREETING = b"\x05\x01\x00"
CHOSEN = b"\x05\x00"
OK_V4 = b"\x05\x00\x00\x01" + bytes([10, 0, 0, 1]) + (40000).to_bytes(2, "big")


def _opened(host: str = "build1", port: int = 3632) -> tuple[Handshake, bytes]:
    hs = Handshake(host, port)
    assert hs.greeting() == GREETING
    request = hs.receive(CHOSEN)
    return hs, request


def test_a_name_goes_to_the_proxy_to_resolve() -> None:
    assert connect_request("build1.lan", 3632) == (
        b"\x05\x01\x00\x03\x0abuild1.lan" + (3632).to_bytes(2, "big")
    )


def test_address_literals_need_no_resolver() -> None:
    assert connect_request("192.168.1.7", 3632) == b"\x05\x01\x00\x01\xc0\xa8\x01\x07\x0e\x30"
    v6 = connect_request("[fd00::7]", 3632)
    assert v6[:4] == b"\x05\x01\x00\x04" and v6[4:20] == socket.inet_pton(
        socket.AF_INET6, "fd00::7"
    )
    assert connect_request("fd00::7", 3632) == v6


def test_targets_the_proxy_cannot_be_asked_for_are_refused_before_any_io() -> None:
    with pytest.raises(SocksError, match="1-255 bytes"):
        Handshake("a" * 256, 3632)
    with pytest.raises(SocksError, match="scope"):
        Handshake("fe80::1%eth0", 3632)
    with pytest.raises(SocksError, match="out of range"):
        Handshake("build1", 0)


def test_the_tunnel_opens_after_method_and_reply() -> None:
    hs, request = _opened()
    assert request == connect_request("build1", 3632)
    assert not hs.open
    assert hs.receive(OK_V4) == b""
    assert hs.open and hs.trailing == b""
    assert hs.bound == OK_V4[4:]


@given(st.lists(st.integers(min_value=1, max_value=len(OK_V4)), max_size=12))
def test_replies_split_anywhere_are_read_the_same(cuts: list[int]) -> None:
    hs, _ = _opened()
    stream = OK_V4 + b"tail"
    points = sorted({c for c in cuts if c < len(stream)})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    for piece in pieces:
        if hs.open:
            break
        hs.receive(piece)
    assert hs.open
    assert hs.bound == OK_V4[4:]


def test_domain_and_ipv6_bound_addresses_are_skipped_by_their_length() -> None:
    for bound in (b"\x03\x05proxy" + b"\x00\x50", b"\x04" + bytes(16) + b"\x00\x50"):
        hs, _ = _opened()
        hs.receive(b"\x05\x00\x00" + bound[:3])
        assert not hs.open
        hs.receive(bound[3:])
        assert hs.open and hs.trailing == b""


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"\x05\x05\x00\x01" + bytes(6), "connection refused"),
        (b"\x05\x04\x00\x01" + bytes(6), "host unreachable"),
        (b"\x05\x02\x00\x01" + bytes(6), "not allowed by the proxy's rules"),
        (b"\x05\x7f\x00\x01" + bytes(6), "error 0x7f"),
        (b"\x04\x00\x00\x01" + bytes(6), "malformed proxy reply"),
        (b"\x05\x00\x01\x01" + bytes(6), "reserved byte"),
        (b"\x05\x00\x00\x09" + bytes(6), "address type 0x09"),
    ],
)
def test_a_failed_connect_says_why(reply: bytes, reason: str) -> None:
    hs, _ = _opened()
    with pytest.raises(SocksError, match=reason):
        hs.receive(reply)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"\x05\xff", "wants authentication"),
        (b"\x05\x02", "method 0x02, which was not offered"),
        (b"\x04\x00", "not a SOCKS5 proxy"),
        (b"\x05\x00\x05", "data before the CONNECT"),
        (b"", "closed the connection"),
    ],
)
def test_a_proxy_that_cannot_serve_us_says_why(answer: bytes, reason: str) -> None:
    hs = Handshake("build1", 3632)
    hs.greeting()
    with pytest.raises(SocksError, match=reason):
        hs.receive(answer)


def test_no_reply_is_longer_than_max_reply() -> None:
    hs, _ = _opened()
    longest = b"\x05\x00\x00\x03\xff" + b"p" * 255 + b"\x00\x50"
    assert len(longest) == MAX_REPLY
    hs.receive(longest)
    assert hs.open


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/portage/socks5.sock", (socket.AF_UNIX, "/run/portage/socks5.sock")),
        ("proxy.lan", (0, ("proxy.lan", 1080))),
        ("proxy.lan:9050", (0, ("proxy.lan", 9050))),
        ("10.0.0.1:1081", (0, ("10.0.0.1", 1081))),
        ("[fd00::1]:1081", (0, ("fd00::1", 1081))),
        ("[fd00::1]", (0, ("fd00::1", 1080))),
        ("fd00::1", (0, ("fd00::1", 1080))),
    ],
)
def test_proxy_values_are_read_as_gentoos_distcc_reads_them(
    value: str, expected: tuple[int, object]
) -> None:
    assert proxy_address(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("proxy.lan:", "invalid proxy port"),
        ("proxy.lan:0", "invalid proxy port"),
        ("proxy.lan:http", "invalid proxy port"),
        (":1080", "no proxy host"),
        ("[fd00::1]x", "address"),
        ("/" + "s" * 120, "too long"),
    ],
)
def test_unusable_proxy_values_say_why(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        proxy_address(value)
