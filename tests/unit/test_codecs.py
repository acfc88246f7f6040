"""The negotiated body codecs (issue 12): wire.codecs, the CODC token in RequestReader,
zstd/lz4 in meshcc.compression with their bounds, the per-job choice, the link book, and
what the announcement and the lease grant carry of them.

Frames are made by the real libraries (zstandard, lz4), then damaged on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meshcc.compression as comp
from meshcc.compression import choose as ch
from meshcc.mesh import records
from meshcc.mesh.linkrate import STALE_S, LinkBook
from meshcc.wire import codecs, control
from meshcc.wire import protocol as wire

SOURCE = b"".join(
    b"static int f%d(int x) { return x * %d + sizeof(struct stat); }\n" % (i, i)
    for i in range(3000)
)  # ~200 KB of C-like text: several zstd blocks and LZ4 blocks


def restate_zstd_size(frame: bytes, size: int) -> bytes:
    """``frame`` with its header claiming ``size`` decompressed bytes (an 8-byte field)."""
    fhd = frame[4]
    single = fhd >> 5 & 1
    at = 5 + (0 if single else 1)
    fcs_len = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    head = frame[:4] + bytes([fhd | 0xC0]) + frame[5:at] + size.to_bytes(8, "little")
    return head + frame[at + fcs_len :]


# ---------------------------------------------------------------- wire.codecs


def test_codec_request_token() -> None:
    assert codecs.encode_codec_request("zstd") == b"CODC00000004zstd"
    assert codecs.encode_codec_request("lz4") == b"CODC00000003lz4"
    with pytest.raises(ValueError, match="no negotiable body codec"):
        codecs.encode_codec_request("lzo")  # LZO goes by protocol 2, never CODC


@pytest.mark.parametrize("codec", codecs.KNOWN)
def test_frames_made_by_the_libraries_walk_exactly(codec: str) -> None:
    frame = comp.compress(codec, SOURCE)
    info = codecs.frame_info(codec, frame)
    assert (info.content_size, info.frame_size, info.checksum) == (len(SOURCE), len(frame), True)
    small = comp.compress(codec, b"x")
    assert codecs.frame_info(codec, small).content_size == 1


@pytest.mark.parametrize("codec", codecs.KNOWN)
def test_every_truncation_and_any_trailing_byte_is_refused(codec: str) -> None:
    frame = comp.compress(codec, SOURCE[:20000])
    for n in range(len(frame)):
        with pytest.raises(codecs.CodecError):
            codecs.frame_info(codec, frame[:n])
    with pytest.raises(codecs.CodecError, match="after the end"):
        codecs.frame_info(codec, frame + b"\0")
    with pytest.raises(codecs.CodecError, match="after the end"):
        codecs.frame_info(codec, frame + frame)  # a second frame too


def test_zstd_frames_meshcc_never_sends_are_refused() -> None:
    import zstandard

    data = SOURCE[:5000]
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    with pytest.raises(codecs.CodecError, match="does not state its decompressed size"):
        codecs.zstd_frame(no_size)
    flagged = bytearray(comp.compress("zstd", data))
    flagged[4] |= 0x01  # a 1-byte dictionary id field
    with pytest.raises(codecs.CodecError, match="dictionary"):
        codecs.zstd_frame(bytes(flagged))
    reserved = bytearray(comp.compress("zstd", data))
    reserved[4] |= 0x08
    with pytest.raises(codecs.CodecError, match="reserved"):
        codecs.zstd_frame(bytes(reserved))
    with pytest.raises(codecs.CodecError, match="bad magic"):
        codecs.zstd_frame(comp.compress("lz4", data))
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd"
    with pytest.raises(codecs.CodecError, match="bad magic"):
        codecs.zstd_frame(skippable)


def test_lz4_frames_meshcc_never_sends_are_refused() -> None:
    import lz4.frame

    data = SOURCE[:5000]
    with pytest.raises(codecs.CodecError, match="does not state its decompressed size"):
        codecs.lz4_frame(lz4.frame.compress(data, store_size=False))
    frame = bytearray(comp.compress("lz4", data))
    bad_version = bytearray(frame)
    bad_version[4] = (bad_version[4] & 0x3F) | 0x80
    with pytest.raises(codecs.CodecError, match="version"):
        codecs.lz4_frame(bytes(bad_version))
    dict_flag = bytearray(frame)
    dict_flag[4] |= 0x01
    with pytest.raises(codecs.CodecError, match="dictionary"):
        codecs.lz4_frame(bytes(dict_flag))
    big_block = bytearray(frame)
    big_block[15:19] = (0x7FFFFFFF).to_bytes(4, "little")  # the first block's size word
    with pytest.raises(codecs.CodecError, match="exceeds"):
        codecs.lz4_frame(bytes(big_block))


# ---------------------------------------------------------------- RequestReader: CODC


def _request(version: int, codec: bytes | None, body: bytes) -> bytes:
    head = wire.encode_request_head(version, [b"gcc", b"-c", b"a.c", b"-o", b"a.o"])
    middle = b"" if codec is None else wire.string_token(codecs.CODEC_TOKEN, codec)
    return head + middle + wire.encode_source(body)


def _events(data: bytes, step: int | None = None) -> list[object]:
    r = wire.RequestReader()
    out: list[object] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in [*chunks, None]:
        if chunk is None:
            r.feed_eof()
        else:
            r.feed(chunk)
        while (e := r.next_event()) is not wire.NEED_DATA:
            out.append(e)
    return out


def test_codc_before_doti_names_the_codec_byte_by_byte() -> None:
    body = comp.compress("zstd", SOURCE[:3000])
    events = _events(_request(1, b"zstd", body), step=1)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["RequestStart", "RequestArgs", "RequestCodec", "RequestSource", "RequestEnd"]
    assert events[2] == wire.RequestCodec("zstd") and events[3] == wire.RequestSource(body)
    # An unknown but well-formed name is the server's to refuse (by name), not a framing error.
    assert wire.RequestCodec("brotli") in _events(_request(1, b"brotli", b"x"))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_request(2, b"zstd", b"x"), "CODC in a protocol 2 request"),
        (_request(1, b"", b"x"), "is not a codec name"),
        (_request(1, b"zs td", b"x"), "is not a codec name"),
        (_request(1, b"z" * 17, b"x"), "exceeds limit"),
        (_request(1, b"zstd", b"x").replace(b"DOTI", b"CODC"), "expected DOTI token, got CODC"),
    ],
)
def test_codc_misuse_is_a_protocol_error(data: bytes, match: str) -> None:
    with pytest.raises(wire.ProtocolError, match=match):
        _events(data)


# ---------------------------------------------------------------- compression: bounds


@pytest.mark.parametrize("codec", comp.Codec.NEGOTIATED)
@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=4096) | st.sampled_from([SOURCE, SOURCE[:131073]]))
def test_round_trip(codec: str, data: bytes) -> None:
    assert comp.decompress(codec, comp.compress(codec, data), len(data)) == data


@pytest.mark.parametrize("codec", comp.Codec.NEGOTIATED)
def test_the_size_cap_is_checked_before_decoding(codec: str) -> None:
    frame = comp.compress(codec, SOURCE)
    assert comp.decompress(codec, frame, len(SOURCE)) == SOURCE
    with pytest.raises(comp.CompressionError, match="over the limit of 1000"):
        comp.decompress(codec, frame, 1000)


def test_a_frame_lying_about_its_size_is_refused() -> None:
    frame = comp.compress("zstd", SOURCE)
    bomb = restate_zstd_size(frame, 1 << 40)  # states 1 TiB: refused from the header
    with pytest.raises(comp.CompressionError, match="over the limit"):
        comp.decompress("zstd", bomb, 1 << 30)
    for lie in (len(SOURCE) - 1, len(SOURCE) + 1):  # within the cap, but not what it holds
        with pytest.raises(comp.CompressionError, match="corrupt zstd body"):
            comp.decompress("zstd", restate_zstd_size(frame, lie), 1 << 30)


def test_an_lz4_frame_lying_about_its_size_stops_at_the_stated_size() -> None:
    frame = bytearray(comp.compress("lz4", SOURCE))
    frame[6:14] = (1000).to_bytes(8, "little")  # header checksum now wrong too
    with pytest.raises(comp.CompressionError, match="corrupt lz4 body"):
        comp.decompress("lz4", bytes(frame), 1 << 30)


@pytest.mark.parametrize("codec", comp.Codec.NEGOTIATED)
def test_corrupt_bodies_are_refused_not_returned(codec: str) -> None:
    frame = comp.compress(codec, SOURCE)
    refused = 0
    for at in range(20, len(frame) - 8, max(1, len(frame) // 97)):
        bad = bytearray(frame)
        bad[at] ^= 0x55
        try:
            out = comp.decompress(codec, bytes(bad), 1 << 30)
        except comp.CompressionError as e:
            assert codec in str(e)
            refused += 1
        else:  # never silently wrong: the content checksum catches what decoding does not
            pytest.fail(f"{codec}: a flipped byte at {at} decoded to {len(out)} bytes")
    assert refused > 50


def test_frames_without_a_checksum_are_refused() -> None:
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=True, write_checksum=False).compress(SOURCE)
    with pytest.raises(comp.CompressionError, match="without a content checksum"):
        comp.decompress("zstd", frame, 1 << 30)


def test_the_client_loads_the_c_extension_only() -> None:
    """The compile client's path: no `zstandard` or `lz4` package __init__ (16 ms / 2 ms of
    imports), only their C extensions, and both still work."""
    code = (
        "import sys\n"
        "from meshcc import compression as c\n"
        "d = b'int x;' * 5000\n"
        "for k in ('zstd', 'lz4'):\n"
        "    assert c.decompress(k, c.compress(k, d), len(d)) == d\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zstandard', 'lz4')),"
        " 'platform' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == "['lz4.frame._frame', 'zstandard.backend_c'] False", out


def test_spoken_lists_what_this_install_decodes() -> None:
    assert comp.spoken() == ("zstd", "lz4")


# ---------------------------------------------------------------- the choice


MB = 1e6


def test_choice_follows_the_link() -> None:
    offered = ("zstd", "lz4")
    size = 126_000  # a typical .i
    assert ch.choose(offered, size, 1.25 * MB, 20e-6) == "zstd"  # 10 Mbit/s
    assert ch.choose(offered, size, 12.5 * MB, 20e-6) == "zstd"  # 100 Mbit/s
    assert ch.choose(offered, size, 1000 * MB, 20e-6) == "none"  # an unshaped veth
    assert ch.choose(offered, 2000, 100 * MB, 20e-6) == "none"  # a tiny body
    assert ch.choose(offered, size, None, None) == "zstd"  # not measured yet: 100 Mbit/s
    assert ch.choose(("lz4",), size, 1.25 * MB, None) == "lz4"  # what the peer speaks
    assert ch.choose((), size, 1.25 * MB, None) == "none"
    assert ch.choose(offered, 0, 1.25 * MB, None) == "none"


def test_a_long_round_trip_favours_fewer_bytes() -> None:
    """Slow start: at 1 GB/s the bytes cost nothing, but each window is a round trip."""
    size = 400_000
    assert ch.choose(("zstd",), size, 1000 * MB, 20e-6) == "none"
    assert ch.choose(("zstd",), size, 1000 * MB, 20e-3) == "zstd"
    assert ch.slow_start_rounds(ch.INITIAL_WINDOW) == 0
    assert ch.slow_start_rounds(3 * ch.INITIAL_WINDOW) == 1  # 10 + 20 segments
    assert ch.slow_start_rounds(3 * ch.INITIAL_WINDOW + 1) == 2


def test_a_loaded_codec_costs_nothing_to_load() -> None:
    size = 40_000
    rate = 150 * MB
    cold = ch.estimate_s("zstd", size, rate, 10e-6)
    assert ch.estimate_s("zstd", size, rate, 10e-6, loaded=True) < cold
    assert ch.choose(("zstd",), size, rate, 10e-6, loaded=("zstd",)) in ("zstd", "none")


# ---------------------------------------------------------------- the link book


def test_link_book_smooths_and_ignores_sender_limited_samples() -> None:
    now = [0.0]
    book = LinkBook(clock=lambda: now[0])
    assert book.get("m:a") is None
    book.record("m:a", 1_000_000_000, False, 20)
    book.record("m:a", 90_000_000, True, 20)  # app-limited: a 5 KB body, ignored
    assert book.get("m:a").rate == pytest.approx(1e9)  # type: ignore[union-attr]
    for _ in range(3):  # the link became 10 Mbit/s: followed within a few jobs
        book.record("m:a", 1_250_000, False, 30)
    est = book.get("m:a")
    assert est is not None and est.rate < 5_000_000 and 20 <= est.rtt_us <= 30
    for bad in (0, -5, 10**13):
        book.record("m:b", bad, False)
    assert book.get("m:b") is None
    now[0] += STALE_S + 1
    assert book.get("m:a") is None  # links change: an old estimate is dropped


# ---------------------------------------------------------------- announcement and grant


def test_announced_codecs_reach_the_peer_record() -> None:
    node = records.LocalNode(
        "0123456789ab", "box", 3632, 4, 4, (), "0.1.0", (1, 2), frozenset({"lzo", "zstd", "lz4"})
    )
    spec, _ = records.build_meshcc_service(node)
    assert spec.properties["caps"] == "lz4,lzo,zstd"
    rec = records.parse_meshcc(spec.name, spec.properties, ["10.0.0.2"], 3632)
    assert rec.codecs == ("zstd", "lz4") and rec.lzo
    pyz = records.parse_meshcc(spec.name, dict(spec.properties, caps="lzo"), ["10.0.0.2"], 3632)
    assert pyz.codecs == ()
    stock = records.parse_distcc(
        "d._distcc._tcp.local.", {"distcc": "3.4", "caps": "zstd"}, ["10.0.0.3"], 3632
    )
    assert stock.codecs == () and stock.lzo  # a stock distccd: LZO by protocol 2, no CODC


def test_grant_and_done_carry_codecs_and_the_link() -> None:
    grant = control.LeaseGranted(
        "10.0.0.2", 3632, 2, "gcc", "m:abc", True, ("zstd", "lz4"), 1_250_000, 180
    )
    assert control.decode_lease_reply(grant.to_message()) == grant
    plain = control.LeaseGranted("10.0.0.2", 3632, 2, "gcc", "m:abc")
    assert "codecs" not in plain.to_message()  # an older client sees the grant it knows
    assert control.decode_lease_reply(plain.to_message()) == plain
    for bad in ([1], "zstd", ["z" * 17], ["zs td"], ["zstd"] * 9):
        msg = dict(grant.to_message(), codecs=bad)
        with pytest.raises(control.ControlError, match="malformed lease grant"):
            control.decode_lease_reply(msg)
    with pytest.raises(control.ControlError):
        control.decode_lease_reply(dict(grant.to_message(), rate=-1))

    done = control.DoneMessage(True, link=(1_250_000, False, 180))
    assert control.decode_request(done.to_message()) == done
    for bad_link in ([1, 2], ["x", False, 1], [1, 1, 1], [-1, False, 1], "fast"):
        got = control.decode_request(dict(done.to_message(), link=bad_link))
        assert isinstance(got, control.DoneMessage) and got.link is None and got.ok


def test_without_the_libraries_nothing_is_announced_or_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A meshcc.pyz (no compiled libraries): it announces no codec, and as a client it
    sends a body as it is to a peer that offers one."""
    from meshcc.client import wrapper
    from meshcc.compression import _frames
    from meshcc.mesh import service

    monkeypatch.setattr(_frames, "_modules", {"zstd": None, "lz4": None})
    assert comp.spoken() == ()
    caps = service._default_caps()
    assert not caps & {"zstd", "lz4"} and {"busy", "ping"} <= caps
    with pytest.raises(comp.CompressionError, match="needs the zstandard package"):
        comp.compress("zstd", b"x" * 100)

    class Leased:
        rate, rtt_us = 1_250_000, 200  # a slow link: zstd would be chosen

    assert wrapper._pick_codec(Leased(), ("zstd", "lz4"), 126_000, None) == ""
    monkeypatch.undo()
    assert wrapper._pick_codec(Leased(), ("zstd", "lz4"), 126_000, None) == "zstd"
    assert wrapper._pick_codec(Leased(), ("zstd", "lz4"), 126_000, "none") == ""
    assert wrapper._pick_codec(Leased(), ("zstd", "lz4"), 126_000, "lz4") == "lz4"
    assert wrapper._pick_codec(Leased(), ("lz4",), 126_000, "zstd") == "lz4"  # not forced on it
