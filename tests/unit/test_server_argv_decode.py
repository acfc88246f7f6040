"""The server decodes a request's argv in one pass; it must equal os.fsdecode per argument
for every argument without NUL (those are refused before), whatever bytes they hold."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from meshcc.transport.server import _decode_argv

_arg = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"")),
    st.text(max_size=8).map(os.fsencode).map(lambda b: b.replace(b"\0", b"")),
    # truncated and stray UTF-8 sequences, next to each other across the separator
    st.sampled_from([b"\xc3", b"\xe2\x82", b"\xa9", b"\xff\xfe", b"caf\xc3\xa9", b""]),
)


@given(st.lists(_arg, min_size=1, max_size=8))
def test_one_decode_is_fsdecode_per_argument(raw: list[bytes]) -> None:
    assert _decode_argv(raw) == [os.fsdecode(a) for a in raw]


def test_a_real_argv() -> None:
    raw = [b"gcc", b"-O2", b"-c", b"d\xc3\xa9j\xe0.c", b"-o", b"x.o"]
    assert _decode_argv(raw) == ["gcc", "-O2", "-c", "déj\udce0.c", "-o", "x.o"]
