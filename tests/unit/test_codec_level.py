"""zstd's level follows the link (compression.choose.zstd_level), the client sends the body
at that level, and the server's checks bound every level's frame (wire.codecs'
window limit), on real preprocessed C made by the real gcc and real zstd frames."""

from __future__ import annotations

import shutil
import subprocess
from itertools import pairwise

import pytest

import meshcc.compression as comp
from meshcc.compression import choose as ch
from meshcc.wire import codecs

MB = 1e6
HEADERS = b"".join(
    b"#include <%s.h>\n" % h
    for h in (b"stdio", b"stdlib", b"string", b"errno", b"unistd", b"fcntl", b"sys/stat")
)


@pytest.fixture(scope="module")
def body() -> bytes:
    """A real preprocessed translation unit (~60 KB of glibc headers): what meshcc sends."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    res = subprocess.run(
        ["gcc", "-O2", "-E", "-x", "c", "-"], input=HEADERS, capture_output=True, check=True
    )
    assert len(res.stdout) > 20_000
    return res.stdout


def test_the_level_follows_the_link() -> None:
    size = 126_000
    assert ch.zstd_level(size, 1000 * MB, 20e-6) == 1  # an unshaped veth
    assert ch.zstd_level(size, 125 * MB, 20e-6) == 1  # gigabit
    assert ch.zstd_level(size, 1.25 * MB, 20e-6) == 6  # 10 Mbit/s: fewer bytes pay
    assert ch.zstd_level(size, 0.125 * MB, 20e-6) == 9  # 1 Mbit/s
    assert ch.zstd_level(size, None, None) == 1  # not measured yet: taken as 100 Mbit/s
    levels = [ch.zstd_level(size, r * MB, 1e-3) for r in (0.1, 0.5, 1, 2, 5, 10, 50, 500)]
    assert levels == sorted(levels, reverse=True), levels  # slower link, never a lower level
    assert set(levels) <= set(ch.ZSTD_LEVELS)


def test_higher_levels_send_fewer_bytes_of_real_preprocessed_c(body: bytes) -> None:
    """The table's premise, on this box's headers: each offered level makes a smaller (or
    equal) frame, and the 10 Mbit/s choice saves bytes over level 1."""
    sizes = {lvl: len(comp.compress("zstd", body, lvl)) for lvl in sorted(ch.ZSTD_LEVELS)}
    ordered = list(sizes.values())
    assert all(a >= b for a, b in pairwise(ordered)), sizes
    chosen = ch.zstd_level(len(body), 1.25 * MB, 20e-6)
    assert sizes[chosen] < 0.95 * sizes[1], sizes


@pytest.mark.parametrize("level", sorted(ch.ZSTD_LEVELS))
def test_every_offered_level_passes_the_servers_checks(body: bytes, level: int) -> None:
    frame = comp.compress("zstd", body, level)
    info = codecs.frame_info("zstd", frame)
    assert (info.content_size, info.checksum) == (len(body), True)
    assert comp.decompress("zstd", frame, len(body)) == body
    with pytest.raises(comp.CompressionError, match="over the limit"):
        comp.decompress("zstd", frame, len(body) - 1)


def _window_frame(window_log: int, data: bytes) -> bytes:
    import zstandard

    params = zstandard.ZstdCompressionParameters(
        window_log=window_log, write_content_size=True, write_checksum=True
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def test_a_frame_asking_for_a_large_window_is_refused_before_decoding() -> None:
    """A body larger than its window is multi-segment: its window is decoder memory, so it
    is bounded (zstd would otherwise allow 128 MiB). A window of the limit still passes."""
    data = bytes(range(256)) * (64 * 1024 + 1)  # 16 MiB + 256: larger than both windows
    big = _window_frame(24, data)  # 16 MiB
    assert not big[4] >> 5 & 1  # not single-segment: it carries a window descriptor
    with pytest.raises(codecs.CodecError, match="window"):
        codecs.frame_info("zstd", big)
    with pytest.raises(comp.CompressionError, match="window"):
        comp.decompress("zstd", big, len(data))
    ok = _window_frame(23, data)  # 8 MiB: the limit
    assert comp.decompress("zstd", ok, len(data)) == data


def test_the_client_sends_at_the_chosen_level() -> None:
    """The wrapper's level for a leased peer, from the link its daemon measured."""
    from meshcc.client import wrapper

    class Slow:
        rate, rtt_us = 1_250_000, 200

    class Fast:
        rate, rtt_us = 125_000_000, 200

    assert wrapper._codec_level(Slow(), "zstd", 126_000) == 6
    assert wrapper._codec_level(Fast(), "zstd", 126_000) == 1
    assert wrapper._codec_level(Slow(), "lz4", 126_000) is None  # lz4: its fast mode
    assert wrapper._codec_level(Slow(), "", 126_000) is None
    note = wrapper._codec_note(Slow(), "zstd", 6)
    assert note == " as zstd (link 1.2 MB/s, rtt 200 us), level 6"
