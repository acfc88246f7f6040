"""The daemon's LZO decompression through liblzo2 (meshcc.compression._liblzo): output
buffers are reused from a small pool, so every call must still return exactly its own
output, respect its own size cap, and keep the pool bounded."""

from __future__ import annotations

import random
import threading

import pytest

from meshcc.compression import _liblzo

LIB = _liblzo.load()
pytestmark = pytest.mark.skipif(
    LIB is None, reason="liblzo2.so.2 not found (Debian package liblzo2-2); CI installs it"
)


def _text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"int", b"static", b"return", b"struct", b"x", b"(", b")", b";\n", b"{", b"}"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def _lib() -> _liblzo.LibLzo2:
    assert LIB is not None
    return LIB


def test_reused_buffers_return_each_calls_own_output() -> None:
    """A large output then smaller ones (the pooled buffer is longer than they are): each
    result is exactly that stream's bytes, nothing of the earlier, longer output."""
    lib = _lib()
    sizes = [400_000, 10, 5_000, 120_000, 1, 0, 64_000, 400_000, 3]
    bodies = [_text(n, i) for i, n in enumerate(sizes)]
    packed = [lib.compress(b) for b in bodies]
    for _ in range(2):
        for body, pk in zip(bodies, packed, strict=True):
            assert lib.decompress(pk, 1 << 30) == body


def test_cap_holds_with_a_larger_pooled_buffer() -> None:
    """A pooled buffer bigger than the cap must not let the output pass the cap."""
    lib = _lib()
    big = _text(500_000, 1)
    assert lib.decompress(lib.compress(big), 1 << 30) == big  # leaves a big buffer pooled
    small = _text(50_000, 2)
    pk = lib.compress(small)
    with pytest.raises(_liblzo.LzoError) as e:
        lib.decompress(pk, len(small) - 1)
    assert e.value.args[0] == _liblzo.LZO_E_OUTPUT_OVERRUN
    assert lib.decompress(pk, len(small)) == small


def test_output_larger_than_eight_times_the_input_grows() -> None:
    """Highly compressible input (a 2 MB run) needs the buffer to double past 8x."""
    lib = _lib()
    data = b"\0" * 2_000_000
    pk = lib.compress(data)
    assert len(pk) * 8 < len(data)
    assert lib.decompress(pk, len(data)) == data


def test_bytearray_and_memoryview_input() -> None:
    lib = _lib()
    data = _text(30_000, 3)
    pk = lib.compress(data)
    assert lib.decompress(bytearray(pk), 1 << 20) == data
    assert lib.decompress(memoryview(pk), 1 << 20) == data


def test_pool_is_bounded_in_count_and_size() -> None:
    lib = _lib()
    huge = b"\1" * (_liblzo._POOLED_MAX + 1024 * 1024)
    assert lib.decompress(lib.compress(huge), len(huge)) == huge
    assert all(len(b) <= _liblzo._POOLED_MAX for b in lib._outbufs)
    assert len(lib._outbufs) <= _liblzo._POOLED_COUNT


def test_concurrent_decompression_is_correct() -> None:
    """Worker threads decompress at once (the daemon does so for bodies over 256 KB):
    no two calls may share a buffer."""
    lib = _lib()
    bodies = [_text(100_000 + i * 7919, 10 + i) for i in range(8)]
    packed = [lib.compress(b) for b in bodies]
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(30):
            if lib.decompress(packed[i], 1 << 24) != bodies[i]:
                errors.append(f"body {i} came back wrong")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(lib._outbufs) <= _liblzo._POOLED_COUNT
