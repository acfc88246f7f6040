"""The request reader's fast path (whole ARGV tokens taken straight from the buffer, no
wait generators when the bytes are there) against its general path.

Fed one byte at a time, the reader never has a whole token buffered, so every token goes
the general way; fed in one piece, the fast path takes every well-formed one. Both must
give the same events, and the same error text, for well-formed, truncated, corrupted and
over-limit requests alike.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcc.wire import codecs as wc
from meshcc.wire import protocol as wire


def _events(data: bytes, step: int, limits: wire.Limits, eof: bool = True) -> list[object]:
    """Every event (as comparable tuples) and the error, if any, reading ``data``."""
    rr = wire.RequestReader(limits)
    out: list[object] = []
    pos = 0
    while True:
        try:
            ev = rr.next_event()
        except wire.ProtocolError as e:
            out.append(("error", str(e)))
            return out
        if ev is wire.NEED_DATA:
            if pos >= len(data):
                if not eof:
                    out.append("need-data")
                    return out
                rr.feed_eof()
                eof = False  # one EOF; a second NEED_DATA after it ends the read
                continue
            rr.feed(data[pos : pos + step])
            pos += step
            continue
        if isinstance(ev, wire.RequestArgs):
            out.append(("args", tuple(ev.argv), ev.cwd))
        elif isinstance(ev, wire.RequestSource):
            out.append(("source", ev.data))
        elif isinstance(ev, wire.RequestCodec):
            out.append(("codec", ev.name, ev.prefix, ev.keep))
        else:
            out.append(type(ev).__name__)
            if isinstance(ev, wire.RequestEnd):
                return out


_arg = st.binary(min_size=0, max_size=40)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from((1, 2)))
    argv = draw(st.lists(_arg, min_size=1, max_size=12))
    data = wire.encode_request_head(version, argv)
    if version == 1 and draw(st.booleans()):
        data += wire.string_token(b"CODC", b"zstd") + wc.encode_prefix_tokens("ab" * 16)
    data += wire.encode_source(draw(st.binary(max_size=64)))
    cut = draw(st.integers(min_value=0, max_value=len(data)))
    if draw(st.booleans()):
        data = data[:cut]  # truncated
    if data and draw(st.booleans()):  # one corrupted byte
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


_limits = st.builds(
    wire.Limits,
    max_argc=st.integers(1, 16),
    max_arg_bytes=st.integers(0, 48),
    max_args_total=st.integers(0, 200),
    max_body=st.integers(0, 100),
)


@settings(max_examples=400, deadline=None)
@given(_requests(), _limits)
def test_fast_path_reads_as_the_general_path(data: bytes, limits: wire.Limits) -> None:
    slow = _events(data, 1, limits)
    fast = _events(data, max(1, len(data)), limits)
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(_requests(), st.integers(1, 30))
def test_any_chunking_reads_the_same(data: bytes, step: int) -> None:
    limits = wire.Limits()
    assert _events(data, step, limits) == _events(data, 1, limits)


def test_a_real_request_takes_the_fast_path_and_reads_whole() -> None:
    argv = [b"gcc", b"-O2", b"-Wall", b"-c", b"x.c", b"-o", b"x.o"]
    data = wire.encode_request_head(2, argv) + wire.encode_source(b"int x;\n")
    assert _events(data, len(data), wire.Limits()) == [
        "RequestStart",
        ("args", tuple(argv), None),
        ("source", b"int x;\n"),
        "RequestEnd",
    ]


def test_limits_hold_on_the_fast_path() -> None:
    argv = [b"gcc", b"x" * 20]
    data = wire.encode_request_head(1, argv) + wire.encode_source(b"")
    (err,) = [e for e in _events(data, len(data), wire.Limits(max_arg_bytes=10)) if e[0] == "error"]
    assert err == ("error", "ARGV length 20 exceeds limit max_arg_bytes=10")
    (err,) = [
        e for e in _events(data, len(data), wire.Limits(max_args_total=22)) if e[0] == "error"
    ]
    assert err == ("error", "ARGV total length 23 exceeds limit max_args_total=22")
