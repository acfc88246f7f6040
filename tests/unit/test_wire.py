"""Tests for the sans-IO distcc codec (meshcc.wire)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcc.wire.protocol import (
    NEED_DATA,
    PROBE_REPLY,
    PROBE_REQUEST,
    Limits,
    ProtocolError,
    PumpFile,
    ReplyDepFile,
    ReplyEnd,
    ReplyObject,
    ReplyReader,
    ReplyRefused,
    ReplyStart,
    ReplyStatus,
    ReplyStderr,
    ReplyStdout,
    RequestArgs,
    RequestEnd,
    RequestReader,
    RequestSource,
    RequestStart,
    classify_probe_reply,
    encode_pump_files,
    encode_refusal,
    encode_reply,
    encode_request_head,
    encode_source,
    is_probe,
    string_token,
    token,
)

# ---------------------------------------------------------------- helpers


def drain(reader, eof: bool = True) -> list:
    """Pull every available event; with ``eof`` the stream is closed first."""
    if eof:
        reader.feed_eof()
    events = []
    while (ev := reader.next_event()) is not NEED_DATA:
        events.append(ev)
    return events


def feed_chunks(reader, data: bytes, sizes) -> list:
    """Feed ``data`` in chunks of the given sizes (cycled), pulling events as we go."""
    events = []
    pos = 0
    i = 0
    while pos < len(data):
        n = max(1, sizes[i % len(sizes)]) if sizes else 1
        reader.feed(data[pos : pos + n])
        pos += n
        i += 1
        while (ev := reader.next_event()) is not NEED_DATA:
            events.append(ev)
    return events + drain(reader)


def request_bytes(version: int, argv, source: bytes = b"", cwd=None, files=()) -> bytes:
    if version == 3:
        return encode_request_head(3, argv, cwd=cwd) + encode_pump_files(files)
    return encode_request_head(version, argv) + encode_source(source)


def request_events(version: int, argv, source: bytes = b"", cwd=None, files=()) -> list:
    events = [RequestStart(version), RequestArgs(list(argv), cwd)]
    if version == 3:
        events += [PumpFile(n, k, d) for n, k, d in files]
    else:
        events.append(RequestSource(source))
    return [*events, RequestEnd()]


def reply_events(version, status, err, out, obj, dotd=None) -> list:
    events = [
        ReplyStart(version),
        ReplyStatus(status),
        ReplyStderr(err),
        ReplyStdout(out),
        ReplyObject(obj or b""),
    ]
    if version == 3 and status == 0:
        events.append(ReplyDepFile(dotd or b""))
    return [*events, ReplyEnd()]


ARGV = [b"gcc", b"-O2", b"-c", b"hello.c", b"-o", b"hello.o"]

# A sample of every message shape, for the exhaustive truncation / chunking tests.
REQUESTS = [
    (1, request_bytes(1, ARGV, b"int x;\n")),
    (2, request_bytes(2, ARGV, b"\x11\x00\x00")),
    (1, request_bytes(1, [b"cc"], b"")),
    (
        3,
        request_bytes(
            3,
            ARGV,
            cwd=b"/tmp/exp/p3",
            files=[(b"/tmp/exp/p3/hello.c", "FILE", b"lzo"), (b"/tmp/l", "LINK", b"hello.c")],
        ),
    ),
    (3, request_bytes(3, ARGV, cwd=b"/", files=[])),
]
REPLIES = [
    (1, encode_reply(1, 0, b"", b"", b"\x7fELF" * 10)),
    (2, encode_reply(2, 0x100, b"error: x", b"", None)),
    (3, encode_reply(3, 0, b"w", b"o", b"obj", dotd=b"hello.o: hello.c\n")),
    (3, encode_reply(3, 0xB, b"segv", b"", None)),
    (1, encode_refusal("compiler not allowed")),
]

# ---------------------------------------------------------------- byte-exact encodings


def test_token_encoding_is_byte_exact_and_lowercase() -> None:
    assert token(b"DIST", 1) == b"DIST00000001"
    assert token(b"DOTI", 0x4620) == b"DOTI00004620"
    assert token(b"DOTI", 26) == b"DOTI0000001a"
    assert token(b"STAT", 0xFFFFFFFF) == b"STATffffffff"
    assert string_token(b"ARGV", b"gcc") == b"ARGV00000003gcc"
    assert string_token(b"DOTI", b"") == b"DOTI00000000"


@pytest.mark.parametrize("bad", [(b"DIS", 1), (b"DISTX", 1), (b"DIST", -1), (b"DIST", 1 << 32)])
def test_token_rejects_bad_input(bad) -> None:
    with pytest.raises(ValueError):
        token(*bad)


def test_request_head_matches_distcc_capture() -> None:
    argv = [b"x86_64-linux-gnu-gcc", b"-c", b"hello.c", b"-o", b"hello.o"]
    assert encode_request_head(2, argv) == (
        b"DIST00000002ARGC00000005ARGV00000014x86_64-linux-gnu-gcc"
        b"ARGV00000002-cARGV00000007hello.cARGV00000002-oARGV00000007hello.o"
    )
    assert encode_source(b"ab") == b"DOTI00000002ab"


def test_reply_matches_distcc_capture() -> None:
    obj = bytes(range(256)) * 5 + b"x" * 88
    assert len(obj) == 0x558
    wire = encode_reply(1, 0, b"", b"", obj)
    assert wire == b"DONE00000001STAT00000000SERR00000000SOUT00000000DOTO00000558" + obj
    events = drain(feed(ReplyReader(1), wire))
    assert events == reply_events(1, 0, b"", b"", obj)


def test_failed_reply_capture() -> None:
    err = b"bad.c:1:1: error: x\n"
    wire = encode_reply(1, 0x100, err, b"", None)
    assert wire == b"DONE00000001STAT00000100SERR00000014" + err + b"SOUT00000000DOTO00000000"
    assert drain(feed(ReplyReader(1), wire)) == reply_events(1, 0x100, err, b"", None)


def test_v3_reply_has_dotd_only_on_success() -> None:
    ok = encode_reply(3, 0, b"", b"", b"o", dotd=b"d")
    assert ok.endswith(b"DOTO00000001oDOTD00000001d")
    bad = encode_reply(3, 0x100, b"e", b"", None)
    assert bad.endswith(b"DOTO00000000") and b"DOTD" not in bad
    assert encode_reply(3, 0, b"", b"", b"").endswith(b"DOTD00000000")


def test_encoder_misuse_is_valueerror() -> None:
    with pytest.raises(ValueError):
        encode_reply(4, 0, b"", b"", None)
    with pytest.raises(ValueError):
        encode_reply(1, 0x100, b"", b"", b"obj")
    with pytest.raises(ValueError):
        encode_reply(2, 0, b"", b"", b"", dotd=b"x")
    with pytest.raises(ValueError):
        encode_request_head(3, ARGV)
    with pytest.raises(ValueError):
        encode_request_head(2, ARGV, cwd=b"/")
    with pytest.raises(ValueError):
        encode_pump_files([(b"n", "DIR", b"")])  # type: ignore[list-item]


def test_refusal_encoding_and_truncation() -> None:
    assert encode_refusal("nope") == b"ERRM00000004nope"
    long = encode_refusal("é" * 40000)  # 80000 bytes of UTF-8, cut on a boundary
    assert int(long[4:12], 16) == 65536 and len(long) == 12 + 65536
    long[12:].decode("utf-8")


def feed(reader, data: bytes):
    reader.feed(data)
    return reader


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("version", [1, 2])
def test_request_round_trip_v1_v2(version: int) -> None:
    wire = request_bytes(version, ARGV, b"int main(){}\n")
    assert wire.startswith(b"DIST0000000%d" % version)
    assert drain(feed(RequestReader(), wire)) == request_events(version, ARGV, b"int main(){}\n")


def test_request_v3_pump_parse() -> None:
    files = [
        (b"/tmp/exp/p3/hello.c", "FILE", b"\x01\x02lzo-bytes"),
        (b"/tmp/exp/p3/link.h", "LINK", b"hello.h"),
        (b"/tmp/exp/p3/empty.h", "FILE", b""),
    ]
    wire = request_bytes(3, ARGV, cwd=b"/tmp/exp/p3", files=files)
    assert wire.startswith(b"DIST00000003CDIR0000000b/tmp/exp/p3ARGC00000006")
    assert b"NFIL00000003NAME00000013/tmp/exp/p3/hello.cFILE0000000b" in wire
    events = drain(feed(RequestReader(), wire))
    assert events == request_events(3, ARGV, cwd=b"/tmp/exp/p3", files=files)


def test_request_accepts_uppercase_hex() -> None:
    wire = b"DIST00000001ARGC00000001ARGV0000000A0123456789DOTI0000000B" + b"x" * 11
    assert drain(feed(RequestReader(), wire)) == request_events(1, [b"0123456789"], b"x" * 11)


def test_request_without_eof_waits_and_then_completes() -> None:
    wire = request_bytes(2, ARGV, b"abc")
    r = RequestReader()
    r.feed(wire[:-1])
    events = drain(r, eof=False)
    assert events == request_events(2, ARGV, b"abc")[:2]
    assert r.next_event() is NEED_DATA
    r.feed(wire[-1:])
    assert drain(r) == request_events(2, ARGV, b"abc")[2:]
    assert r.next_event() is NEED_DATA  # stays finished


def test_empty_stream_at_eof_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="end of stream"):
        drain(RequestReader())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([1, 2]),
    argv=st.lists(st.binary(max_size=40), min_size=1, max_size=12),
    source=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 700), max_size=20),
)
def test_request_round_trip_any_chunking(version, argv, source, sizes) -> None:
    wire = request_bytes(version, argv, source)
    expected = request_events(version, argv, source)
    assert feed_chunks(RequestReader(), wire, sizes) == expected
    assert feed_chunks(RequestReader(), wire, [1]) == expected


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    argv=st.lists(st.binary(max_size=30), min_size=1, max_size=6),
    cwd=st.binary(max_size=30),
    files=st.lists(
        st.tuples(
            st.binary(max_size=30), st.sampled_from(["FILE", "LINK"]), st.binary(max_size=200)
        ),
        max_size=6,
    ),
    sizes=st.lists(st.integers(1, 100), max_size=10),
)
def test_request_v3_round_trip_any_chunking(argv, cwd, files, sizes) -> None:
    wire = request_bytes(3, argv, cwd=cwd, files=files)
    assert feed_chunks(RequestReader(), wire, sizes) == request_events(
        3, argv, cwd=cwd, files=files
    )


@pytest.mark.parametrize("case", range(len(REQUESTS)))
def test_request_truncated_at_every_cut_point(case: int) -> None:
    _, wire = REQUESTS[case]
    for cut in range(len(wire)):
        r = RequestReader()
        r.feed(wire[:cut])
        with pytest.raises(ProtocolError, match="truncated"):
            drain(r)
        with pytest.raises(ProtocolError):  # stays failed
            r.next_event()


@pytest.mark.parametrize("case", range(len(REQUESTS)))
def test_request_byte_by_byte(case: int) -> None:
    _, wire = REQUESTS[case]
    assert feed_chunks(RequestReader(), wire, [1]) == drain(feed(RequestReader(), wire))


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"DIST00000004", "unsupported protocol version 4"),
        (b"DIST00000000", "unsupported protocol version 0"),
        (b"DISTffffffff", "unsupported protocol version"),
        (b"HTTP/1.1 GET", "expected DIST token"),
        (b"GET / HTTP/1.1\r\n", "expected DIST token"),
        (b"DIST0000000g", "not 8 hex digits"),
        (b"DIST 0000001", "not 8 hex digits"),
        (b"DIST+0000001", "not 8 hex digits"),
        (b"DIST0x000001", "not 8 hex digits"),
        (b"DIST0000_001", "not 8 hex digits"),
        (b"DIST00000001ARGV00000001", "expected ARGC token, got ARGV"),
        (b"DIST00000001ARGC00000000", "ARGC is 0"),
        (b"DIST00000001ARGC00001001", "ARGC 4097 exceeds limit max_argc=4096"),
        (b"DIST00000001ARGCffffffff", "max_argc"),
        (
            b"DIST00000001ARGC00000001ARGVffffffff",
            "ARGV length 4294967295 exceeds limit max_arg_bytes",
        ),
        (
            b"DIST00000001ARGC00000001ARGV00000000DOTIffffffff",
            "DOTI length 4294967295 exceeds limit max_body",
        ),
        (b"DIST00000001ARGC00000001ARGV00000000DOTO00000000", "expected DOTI token, got DOTO"),
        (b"DIST00000003CDIRffffffff", "CDIR length 4294967295 exceeds limit max_arg_bytes"),
        (
            b"DIST00000003CDIR00000000ARGC00000001ARGV00000000NFILffffffff",
            "NFIL 4294967295 exceeds limit max_files",
        ),
        (
            b"DIST00000003CDIR00000000ARGC00000001ARGV00000000NFIL00000001NAMEffffffff",
            "NAME length",
        ),
        (
            b"DIST00000003CDIR00000000ARGC00000001ARGV00000000NFIL00000001NAME00000000FILEffffffff",
            "FILE length 4294967295 exceeds limit max_body",
        ),
        (
            b"DIST00000003CDIR00000000ARGC00000001ARGV00000000NFIL00000001NAME00000000LINKffffffff",
            "LINK length 4294967295 exceeds limit max_arg_bytes",
        ),
        (
            b"DIST00000003CDIR00000000ARGC00000001ARGV00000000NFIL00000001NAME00000000DOTI00000000",
            "expected FILE or LINK token, got DOTI",
        ),
        (b"DIST00000001ARGC00000001ARGV00000000DOTI00000000X", "unexpected byte"),
        (b"DIST\x00\x01\x02\x03\x04\x05\x06\x07", "not 8 hex digits"),
        (b"\xff\xfe\xfd\xfc00000001", "expected DIST token, got b'"),
    ],
)
def test_request_errors(wire: bytes, match: str) -> None:
    r = RequestReader()
    r.feed(wire)
    with pytest.raises(ProtocolError, match=match):
        drain(r, eof=False)
        drain(r)  # for the cases that only fail once the stream ends


def test_argv_total_limit() -> None:
    limits = Limits(max_args_total=10)
    wire = encode_request_head(1, [b"gcc", b"12345", b"67"]) + encode_source(b"")
    r = RequestReader(limits)
    r.feed(wire)
    assert drain(r)[1] == RequestArgs([b"gcc", b"12345", b"67"], None)  # exactly 10 bytes is fine
    r = RequestReader(limits)
    r.feed(encode_request_head(1, [b"gcc", b"12345", b"678"]))
    with pytest.raises(ProtocolError, match="ARGV total length 11 exceeds limit max_args_total=10"):
        drain(r)


def test_limits_are_exact_bounds() -> None:
    limits = Limits(max_body=4, max_arg_bytes=3, max_argc=2)
    r = RequestReader(limits)
    r.feed(request_bytes(1, [b"abc", b"def"], b"wxyz"))
    assert drain(r) == request_events(1, [b"abc", b"def"], b"wxyz")
    for argv, src, match in [
        ([b"abcd"], b"", "max_arg_bytes=3"),
        ([b"a", b"b", b"c"], b"", "max_argc=2"),
        ([b"a"], b"12345", "max_body=4"),
    ]:
        r = RequestReader(limits)
        r.feed(request_bytes(1, argv, src))
        with pytest.raises(ProtocolError, match=match):
            drain(r)


@pytest.mark.parametrize(
    "header",
    [
        b"DIST00000001ARGC00000001ARGV00000000DOTIffffffff",
        b"DIST00000001ARGC00000001ARGV00000000DOTI10000001",  # max_body + 1
        b"DIST00000001ARGC00000001ARGVffffffff",
    ],
)
def test_oversized_token_fails_without_allocating(header: bytes) -> None:
    r = RequestReader()
    tracemalloc.start()
    try:
        r.feed(header + b"x" * 100)  # a small feed; no error must wait for more
        with pytest.raises(ProtocolError, match="exceeds limit"):
            drain(r, eof=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_error_is_sticky_and_feed_after_eof_is_error() -> None:
    r = RequestReader()
    r.feed(b"XXXX00000001")
    with pytest.raises(ProtocolError, match="expected DIST"):
        r.next_event()
    with pytest.raises(ProtocolError, match="expected DIST"):
        r.next_event()
    r = RequestReader()
    r.feed(b"")
    r.feed_eof()
    r.feed(b"")  # a transport may pass on recv()'s b"" at EOF
    with pytest.raises(ProtocolError, match="after end of stream"):
        r.feed(b"DIST")


@settings(max_examples=400)
@given(st.binary(max_size=200), st.lists(st.integers(1, 50), max_size=8))
def test_request_garbage_only_raises_protocol_error(data: bytes, sizes) -> None:
    try:
        feed_chunks(RequestReader(Limits(max_body=1000)), data, sizes)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.integers(0, 200), st.binary(max_size=30), st.sampled_from([r for _, r in REQUESTS]))
def test_request_mutated_valid_stream_only_raises_protocol_error(pos, junk, wire) -> None:
    pos = min(pos, len(wire))
    mutated = wire[:pos] + junk + wire[pos + len(junk) :]
    try:
        drain(feed(RequestReader(), mutated))
    except ProtocolError:
        pass


def test_large_body_in_many_chunks() -> None:
    body = bytes(range(256)) * (8 * 4096)  # 8 MiB
    wire = request_bytes(2, ARGV, body)
    r = RequestReader()
    events = []
    for i in range(0, len(wire), 65536):
        r.feed(wire[i : i + 65536])
        events += drain(r, eof=False)
    assert events == request_events(2, ARGV, body)


# ---------------------------------------------------------------- replies


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("status", [0, 0x100, 0xB, 0x7600])
def test_reply_round_trip(version: int, status: int) -> None:
    obj = b"\x7fELF..." if status == 0 else None
    dotd = b"hello.o: hello.c\n" if version == 3 and status == 0 else None
    wire = encode_reply(version, status, b"warn", b"out", obj, dotd=dotd)
    assert wire.startswith(b"DONE0000000%dSTAT%08x" % (version, status))
    expected = reply_events(version, status, b"warn", b"out", obj, dotd)
    assert drain(feed(ReplyReader(version), wire)) == expected
    assert feed_chunks(ReplyReader(version), wire, [1]) == expected


@settings(max_examples=150)
@given(
    version=st.sampled_from([1, 2, 3]),
    status=st.sampled_from([0, 0x100, 0xB]),
    err=st.binary(max_size=300),
    out=st.binary(max_size=300),
    obj=st.binary(max_size=2000),
    dotd=st.binary(max_size=300),
    sizes=st.lists(st.integers(1, 500), max_size=12),
)
def test_reply_round_trip_any_chunking(version, status, err, out, obj, dotd, sizes) -> None:
    obj = obj if status == 0 else None
    dotd = dotd if version == 3 and status == 0 else None
    wire = encode_reply(version, status, err, out, obj, dotd=dotd)
    assert feed_chunks(ReplyReader(version), wire, sizes) == reply_events(
        version, status, err, out, obj, dotd
    )


def test_reply_failure_with_output_is_still_read() -> None:
    # distccd never sends it, but a lenient reader hands the body over.
    wire = b"DONE00000001STAT00000100SERR00000000SOUT00000000DOTO00000002ok"
    events = drain(feed(ReplyReader(1), wire))
    assert events[4] == ReplyObject(b"ok") and events[-1] == ReplyEnd()


def test_reply_version_mismatch() -> None:
    r = ReplyReader(2)
    r.feed(encode_reply(1, 0, b"", b"", b""))
    with pytest.raises(ProtocolError, match="reply version 1 does not match request version 2"):
        drain(r)


def test_reply_v3_requires_dotd_on_success() -> None:
    r = ReplyReader(3)
    r.feed(encode_reply(2, 0, b"", b"", b"o").replace(b"DONE00000002", b"DONE00000003"))
    with pytest.raises(ProtocolError, match=r"truncated.*DOTD"):
        drain(r)


def test_reply_refused() -> None:
    for version in (1, 2, 3):
        wire = encode_refusal("-fplugin= is not allowed ✗")
        assert drain(feed(ReplyReader(version), wire)) == [
            ReplyRefused("-fplugin= is not allowed ✗")
        ]
    # invalid UTF-8 is shown, not fatal
    assert drain(feed(ReplyReader(1), b"ERRM00000002\xff!")) == [ReplyRefused("\ufffd!")]
    r = ReplyReader(1)
    r.feed(b"ERRM00010001")
    with pytest.raises(ProtocolError, match="ERRM length 65537 exceeds limit max_message=65536"):
        drain(r, eof=False)


def test_reply_reader_rejects_bad_version() -> None:
    with pytest.raises(ValueError):
        ReplyReader(4)


@pytest.mark.parametrize("case", range(len(REPLIES)))
def test_reply_truncated_at_every_cut_point(case: int) -> None:
    version, wire = REPLIES[case]
    for cut in range(len(wire)):
        r = ReplyReader(version)
        r.feed(wire[:cut])
        with pytest.raises(ProtocolError, match="truncated"):
            drain(r)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"DOTO00000000", "expected DONE or ERRM token, got DOTO"),
        (b"DONE00000001STATxxxxxxxx", "STAT token value"),
        (b"DONE00000001STAT00000000SERRffffffff", "SERR length 4294967295 exceeds limit max_body"),
        (b"DONE00000001STAT00000000SERR00000000SOUTffffffff", "SOUT length"),
        (b"DONE00000001STAT00000000SERR00000000SOUT00000000DOTOffffffff", "DOTO length"),
        (
            b"DONE00000003STAT00000000SERR00000000SOUT00000000DOTO00000000DOTDffffffff",
            "DOTD length",
        ),
        (b"DONE00000001STAT00000000SOUT00000000", "expected SERR token, got SOUT"),
        (b"DONE00000001STAT00000000SERR00000000SOUT00000000DOTO00000000DOTD", "unexpected byte"),
    ],
)
def test_reply_errors(wire: bytes, match: str) -> None:
    version = int(wire[4:12], 16) if wire.startswith(b"DONE") else 1
    r = ReplyReader(version)
    r.feed(wire)
    with pytest.raises(ProtocolError, match=match):
        drain(r, eof=False)
        drain(r)


@settings(max_examples=400)
@given(
    st.sampled_from([1, 2, 3]), st.binary(max_size=200), st.lists(st.integers(1, 50), max_size=8)
)
def test_reply_garbage_only_raises_protocol_error(version, data, sizes) -> None:
    try:
        feed_chunks(ReplyReader(version, Limits(max_body=1000)), data, sizes)
    except ProtocolError:
        pass


# ---------------------------------------------------------------- value classes, import cost


def test_events_are_frozen_values() -> None:
    ev = RequestSource(b"x")
    with pytest.raises(AttributeError):
        ev.data = b"y"  # type: ignore[misc]
    assert ev == RequestSource(b"x") and ev != ReplyObject(b"x")
    assert hash(ev) == hash(RequestSource(b"x"))
    assert repr(ReplyStderr(b"e")) == "ReplyStderr(data=b'e')"
    assert repr(NEED_DATA) == "NEED_DATA"
    import copy
    import pickle

    for value in (ev, RequestArgs([b"gcc"], b"/"), RequestEnd(), Limits(max_body=3), NEED_DATA):
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value
    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA
    match PumpFile(b"n", "LINK", b"t"):
        case PumpFile(name, "LINK", target):
            assert (name, target) == (b"n", b"t")
        case _:
            pytest.fail("no match")


def test_limits_value_class() -> None:
    assert Limits() == Limits()
    assert Limits().max_body == 256 * 1024 * 1024
    assert Limits().replace(max_body=5) == Limits(max_body=5)
    with pytest.raises(AttributeError):
        Limits().max_body = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        Limits(max_body=-1)
    with pytest.raises(TypeError):
        Limits().replace(max_bogus=1)


def test_import_is_stdlib_light() -> None:
    code = (
        "import sys; import meshcc.wire.protocol; "
        "bad = [m for m in ('dataclasses', 'typing', 'asyncio', 'inspect', 'socket') "
        "if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------- liveness probe


def test_probe_tokens_are_headers_and_not_a_request() -> None:
    assert PROBE_REQUEST == token(b"PING", 1) and PROBE_REPLY == token(b"PONG", 1)
    assert is_probe(PROBE_REQUEST) and is_probe(PROBE_REQUEST + b"trailing")
    for other in (b"", PROBE_REQUEST[:11], encode_request_head(1, [b"gcc"]), token(b"PING", 2)):
        assert not is_probe(other)
    # A distcc server (or an older meshcc) reading PING sees a derailed request.
    rr = RequestReader()
    rr.feed(PROBE_REQUEST)
    with pytest.raises(ProtocolError, match="expected DIST token, got PING"):
        rr.next_event()


@pytest.mark.parametrize(
    ("data", "eof", "verdict"),
    [
        (PROBE_REPLY, False, "pong"),
        (PROBE_REPLY + b"x", True, "pong"),
        (encode_refusal("protocol error"), False, "errm"),
        (b"", True, "closed"),
        (b"", False, None),
        (PROBE_REPLY[:5], False, None),
        (b"ER", False, None),
        (PROBE_REPLY[:5], True, "other"),
        (b"HTTP/1.1 400", False, "other"),
        (b"X", False, "other"),
    ],
)
def test_probe_reply_classification(data: bytes, eof: bool, verdict: str | None) -> None:
    assert classify_probe_reply(data, eof) == verdict
    if verdict in ("pong", "errm"):  # byte at a time: undecided until the 12th byte
        assert all(classify_probe_reply(data[:i], False) is None for i in range(12))
