"""Tests for meshcc.compression: codecs, bounds, and LZO1X interop with liblzo2."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcc.compression import (
    Codec,
    CompressionError,
    _lzoscan,
    available,
    codec_for_protocol,
    compress,
    decompress,
)

BIG = 1 << 40  # a max_size that never binds


@pytest.fixture(scope="module", autouse=True, params=["liblzo2", "lzallright"])
def lzo_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both LZO back ends: the system liblzo2 (through _liblzo, used
    whenever it loads) and lzallright (what a box without liblzo2 gets)."""
    import meshcc.compression as comp

    saved = comp._liblzo2
    if request.param == "lzallright":
        comp._liblzo2 = False
    else:
        comp._liblzo2 = None
        if comp._lib() is None:
            pytest.skip("liblzo2.so.2 not found (Debian package liblzo2-2); CI installs it")
    yield request.param
    comp._liblzo2 = saved


# ---------------------------------------------------------------- liblzo2 via ctypes (tests only)


def _load_liblzo2():
    for name in ("/usr/lib/x86_64-linux-gnu/liblzo2.so.2", ctypes.util.find_library("lzo2")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.lzo_version.restype = ctypes.c_uint
        # lzo_init() is a macro: __lzo_init_v2(LZO_VERSION, sizeof(short), sizeof(int),
        # sizeof(long), sizeof(lzo_uint32_t), sizeof(lzo_uint), lzo_sizeof_dict_t,
        # sizeof(char *), sizeof(lzo_voidp), sizeof(lzo_callback_t)); the library
        # checks these against its own ABI and returns LZO_E_OK (0) on a match.
        p = ctypes.sizeof(ctypes.c_void_p)
        sizes = (
            ctypes.sizeof(ctypes.c_short),
            ctypes.sizeof(ctypes.c_int),
            ctypes.sizeof(ctypes.c_long),
            4,
            ctypes.sizeof(ctypes.c_size_t),
            p,
            p,
            p,
            6 * p,  # lzo_callback_t: 4 pointers + 2 lzo_xint (pointer-sized here)
        )
        if lib.__lzo_init_v2(ctypes.c_uint(lib.lzo_version()), *sizes) != 0:
            continue
        return lib
    return None


LIBLZO2 = _load_liblzo2()
needs_liblzo2 = pytest.mark.skipif(
    LIBLZO2 is None, reason="liblzo2.so.2 not found (Debian package liblzo2-2); CI installs it"
)


def lzo1x_1_compress(data: bytes) -> bytes:
    """What distcc's miniLZO sends: lzo1x_1_compress of the whole body."""
    assert LIBLZO2 is not None
    dst = ctypes.create_string_buffer(len(data) + len(data) // 16 + 64 + 3)
    dst_len = ctypes.c_size_t(len(dst))
    wrkmem = ctypes.create_string_buffer(16384 * ctypes.sizeof(ctypes.c_void_p))
    rc = LIBLZO2.lzo1x_1_compress(
        data, ctypes.c_size_t(len(data)), dst, ctypes.byref(dst_len), wrkmem
    )
    assert rc == 0
    return dst.raw[: dst_len.value]


def lzo1x_decompress_safe(data: bytes, capacity: int) -> tuple[int, bytes]:
    """What distcc's receiver runs; returns (lzo error code, output)."""
    assert LIBLZO2 is not None
    dst = ctypes.create_string_buffer(max(capacity, 1))
    dst_len = ctypes.c_size_t(capacity)
    rc = LIBLZO2.lzo1x_decompress_safe(
        data, ctypes.c_size_t(len(data)), dst, ctypes.byref(dst_len), None
    )
    return rc, dst.raw[: dst_len.value]


# ---------------------------------------------------------------- sample data and crafted streams


def _source_like(n: int) -> bytes:
    words = [b"int", b"static", b"return", b"struct", b"(", b")", b";\n", b"{", b"}", b"x", b"  "]
    rnd = __import__("random").Random(n)
    return b" ".join(rnd.choice(words) for _ in range(n))[:n]


SAMPLES = [
    b"a",
    b"ab" * 3,
    b"\0" * 100_000,
    os.urandom(5000),
    bytes(range(256)) * 64,
    _source_like(200_000),
]
END = b"\x11\x00\x00"  # M4 with distance 0: end of stream


def lzo_zero_bomb(zero_bytes: int, last: int = 1) -> tuple[bytes, int]:
    """A hand-made LZO1X stream: one literal 0, then an M3 match at distance 1 whose
    extended length uses ``zero_bytes`` zero bytes (255 output bytes each)."""
    stream = b"\x12\x00" + b"\x20" + b"\x00" * zero_bytes + bytes([last]) + b"\x00\x00" + END
    size = 1 + 31 + 255 * zero_bytes + last + 2
    return stream, size


# ---------------------------------------------------------------- basics


def test_codec_for_protocol() -> None:
    assert codec_for_protocol(1) == Codec.NONE
    assert codec_for_protocol(2) == Codec.LZO
    assert codec_for_protocol(3) == Codec.LZO
    with pytest.raises(ValueError):
        codec_for_protocol(4)


def test_available() -> None:
    assert available(Codec.NONE)
    assert available(Codec.LZO)
    assert available(Codec.ZSTD) and available(Codec.LZ4)  # dependencies of every install
    assert not available("brotli")  # no codec meshcc speaks


@pytest.mark.parametrize("codec", list(Codec.ALL))
def test_empty_special_case(codec: str) -> None:
    assert compress(codec, b"") == b""
    assert decompress(codec, b"", 0) == b""


def test_lzo_empty_stream_is_accepted_too() -> None:
    # lzo1x_1 of b"" is 11 00 00; distcc never sends it but it is valid LZO1X.
    assert decompress(Codec.LZO, END, 10) == b""


@pytest.mark.parametrize("codec", list(Codec.ALL))
@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"{len(d)}B")
def test_round_trip_samples(codec: str, data: bytes) -> None:
    packed = compress(codec, data)
    assert decompress(codec, packed, len(data)) == data


@settings(max_examples=200)
@given(codec=st.sampled_from(list(Codec.ALL)), data=st.binary(max_size=5000))
def test_round_trip_any(codec: str, data: bytes) -> None:
    packed = compress(codec, data)
    assert decompress(codec, packed, len(data)) == data
    if data:
        with pytest.raises(CompressionError):
            decompress(codec, packed, len(data) - 1)


# ---------------------------------------------------------------- bounds


@pytest.mark.parametrize("codec", list(Codec.ALL))
def test_over_max_size_is_rejected(codec: str) -> None:
    data = b"\0" * 1_000_000
    packed = compress(codec, data)
    with pytest.raises(CompressionError):
        decompress(codec, packed, 999_999)
    assert decompress(codec, packed, 1_000_000) == data


def test_lzo_bomb_rejected_before_decompressing(monkeypatch) -> None:
    stream, size = lzo_zero_bomb(400_000)  # ~400 kB expanding to ~100 MB
    assert size > 100_000_000

    import lzallright

    from meshcc.compression import _liblzo

    def boom(*args, **kwargs):
        raise AssertionError("the decoder must not run on a bomb")

    monkeypatch.setattr(lzallright.LZOCompressor, "decompress", boom)
    monkeypatch.setattr(_liblzo.LibLzo2, "decompress", boom)
    with pytest.raises(CompressionError, match="expands to more than 1000000 bytes"):
        decompress(Codec.LZO, stream, 1_000_000)


def test_lzo_crafted_stream_exact_size() -> None:
    stream, size = lzo_zero_bomb(1000, last=7)
    assert _lzoscan.decompressed_size(stream, BIG) == size
    out = decompress(Codec.LZO, stream, size)
    assert out == b"\0" * size
    with pytest.raises(CompressionError):
        decompress(Codec.LZO, stream, size - 1)


@needs_liblzo2
def test_lzo_crafted_stream_is_real_lzo1x() -> None:
    stream, size = lzo_zero_bomb(1000, last=7)
    assert lzo1x_decompress_safe(stream, size) == (0, b"\0" * size)


def test_lzo_compressed_zeros_bomb() -> None:
    n = 50_000_000
    packed = compress(Codec.LZO, b"\0" * n)
    assert len(packed) * 256 > 1_000_000  # so the scanner runs
    with pytest.raises(CompressionError, match="expands to more than"):
        decompress(Codec.LZO, packed, 1_000_000)


def test_small_bodies_skip_the_scan(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("no scan expected")

    monkeypatch.setattr(_lzoscan, "decompressed_size", boom)
    data = _source_like(10_000)
    assert decompress(Codec.LZO, compress(Codec.LZO, data), 256 * 1024 * 1024) == data


# ---------------------------------------------------------------- corrupt input


@pytest.mark.parametrize(
    "bad",
    [
        b"\x00",
        b"\xff" * 10,
        b"\x12\x00",  # no end marker
        END + b"zz",  # trailing bytes
        b"\x20\x00\x00" + END,  # match before any output (lookbehind overrun)
    ],
)
@pytest.mark.parametrize("max_size", [1, BIG])  # with and without the scan
def test_lzo_corrupt_input(bad: bytes, max_size: int) -> None:
    with pytest.raises(CompressionError):
        decompress(Codec.LZO, bad, max_size)


def test_lzo_truncated_and_extended_streams() -> None:
    data = _source_like(20_000)
    packed = compress(Codec.LZO, data)
    for cut in (1, 2, len(packed) // 2, len(packed) - 1):
        for max_size in (10, BIG):
            with pytest.raises(CompressionError):
                decompress(Codec.LZO, packed[:cut], max_size)
    with pytest.raises(CompressionError, match="after the end marker"):
        decompress(Codec.LZO, packed + b"\0", BIG)
    with pytest.raises(CompressionError, match="after the end marker"):
        decompress(Codec.LZO, packed + b"\0", len(data))  # scanned path


@settings(max_examples=500)
@given(data=st.binary(min_size=1, max_size=300))
def test_garbage_only_raises_compression_error(data: bytes) -> None:
    try:
        out = decompress(Codec.LZO, data, 10_000)
    except CompressionError:
        return
    assert len(out) <= 10_000


# ---------------------------------------------------------------- the LZO1X scanner


@settings(max_examples=300)
@given(data=st.binary(min_size=1, max_size=300))
def test_scanner_agrees_with_decoder_on_garbage(data: bytes) -> None:
    """Whenever lzallright accepts a stream, the scanner reports its exact size."""
    import lzallright

    try:
        out = lzallright.LZOCompressor.decompress(data)
    except lzallright.LZOError:
        return
    assert _lzoscan.decompressed_size(data, BIG) == len(out)


@settings(max_examples=200)
@given(data=st.binary(min_size=1, max_size=4000) | st.builds(_source_like, st.integers(1, 20000)))
def test_scanner_exact_on_lzallright_output(data: bytes) -> None:
    packed = compress(Codec.LZO, data)
    assert _lzoscan.decompressed_size(packed, BIG) == len(data)
    assert _lzoscan.decompressed_size(packed, len(data)) == len(data)
    with pytest.raises(_lzoscan.LzoTooLarge):
        _lzoscan.decompressed_size(packed, len(data) - 1)


# ------------------------------------------------------------ interop with liblzo2 (distcc's LZO)


@needs_liblzo2
@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"{len(d)}B")
def test_liblzo2_reads_ours(data: bytes) -> None:
    packed = compress(Codec.LZO, data)
    assert lzo1x_decompress_safe(packed, len(data)) == (0, data)


@needs_liblzo2
@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"{len(d)}B")
def test_we_read_liblzo2(data: bytes) -> None:
    packed = lzo1x_1_compress(data)
    assert _lzoscan.decompressed_size(packed, BIG) == len(data)
    assert decompress(Codec.LZO, packed, len(data)) == data
    assert decompress(Codec.LZO, packed, BIG) == data
    if len(packed) * 256 > len(data) - 1:
        with pytest.raises(CompressionError):
            decompress(Codec.LZO, packed, len(data) - 1)


@needs_liblzo2
@settings(max_examples=200)
@given(data=st.binary(min_size=1, max_size=4000) | st.builds(_source_like, st.integers(1, 20000)))
def test_liblzo2_interop_both_ways(data: bytes) -> None:
    theirs = lzo1x_1_compress(data)
    assert decompress(Codec.LZO, theirs, len(data)) == data
    assert _lzoscan.decompressed_size(theirs, BIG) == len(data)
    ours = compress(Codec.LZO, data)
    assert lzo1x_decompress_safe(ours, len(data)) == (0, data)


@needs_liblzo2
def test_liblzo2_empty_input_is_the_3_byte_stream() -> None:
    # Why distcc special-cases empty files: lzo1x_1 would emit 11 00 00.
    assert lzo1x_1_compress(b"") == END


# ---------------------------------------------------------------- laziness


def test_no_lzo_without_lzallright_even_with_liblzo2() -> None:
    """meshcc.pyz (no lzallright) speaks protocol 1 only, as documented, on a box that
    has liblzo2 too: the library is an accelerator, not a second way to get LZO."""
    import meshcc

    pkg_root = os.path.dirname(os.path.dirname(meshcc.__file__))
    code = (
        f"import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]"
        f" + [{pkg_root!r}]; import meshcc.compression as c; "
        "print(c.available(c.Codec.LZO), c._lib(), 'lzallright' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "None", "False"], out.stdout + out.stderr


def test_max_ratio_agrees_with_the_scanner() -> None:
    import meshcc.compression as comp

    assert comp._MAX_RATIO == _lzoscan.MAX_RATIO


def test_import_is_lazy() -> None:
    code = (
        "import sys; import meshcc.compression as c; "
        "assert c.compress(c.Codec.NONE, b'x') == b'x'; "
        "print(','.join(m for m in "
        "('lzallright', 're', 'meshcc.compression._lzoscan')"
        " if m in sys.modules and m != 're'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@given(data=st.binary(min_size=1, max_size=20000))
@settings(max_examples=50, deadline=None)
def test_lzo_compress_matches_distcc_bytes(lzo_backend: str, data: bytes) -> None:
    """On the liblzo2 path, our LZO bodies are byte-identical to distcc's lzo1x_1 ones,
    whatever their size (the client's .i files are ~50-200 KB)."""
    if lzo_backend != "liblzo2":
        pytest.skip("lzallright compresses differently (distcc still reads it)")
    packed = compress(Codec.LZO, data)
    assert packed == lzo1x_1_compress(data)
    assert decompress(Codec.LZO, packed, BIG) == data


def test_lzo_compress_without_liblzo2_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshcc.compression as comp

    monkeypatch.setattr(comp, "_liblzo2", False)
    data = b"int main(void) { return 0; }\n" * 500
    packed = compress(Codec.LZO, data)
    assert packed and len(packed) < len(data)
    assert decompress(Codec.LZO, packed, BIG) == data
    if LIBLZO2 is not None:
        assert lzo1x_decompress_safe(packed, len(data))[1] == data


def test_concurrent_compression_is_correct() -> None:
    """The daemon compresses replies in worker threads at once: each call needs its own
    work memory (a shared LZO dictionary would corrupt the output)."""
    bodies = [_source_like(300_000 + i * 7919) for i in range(8)]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = compress(Codec.LZO, bodies[i])
            assert decompress(Codec.LZO, results[i], BIG) == bodies[i]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, body in enumerate(bodies):
        assert decompress(Codec.LZO, results[i], len(body)) == body


def test_lzo_with_liblzo2_imports_neither_ctypes_nor_lzallright() -> None:
    """The compile client's LZO round trip: with liblzo2 installed it loads only the C
    module under ctypes (``import ctypes`` alone costs as much as lzallright's compression)."""
    if LIBLZO2 is None:
        pytest.skip("liblzo2.so.2 not found (Debian package liblzo2-2)")
    code = (
        "import sys; import meshcc.compression as c; d = b'int x;' * 20000; "
        "p = c.compress(c.Codec.LZO, d); assert c.decompress(c.Codec.LZO, p, 1 << 28) == d; "
        "assert c.available(c.Codec.LZO); "
        "mods = ('lzallright', 'ctypes', '_ctypes', 'meshcc.compression._lzoscan'); "
        "print(','.join(m for m in mods if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "_ctypes"
