"""Negotiated body codecs (zstd, lz4) against a real meshcc daemon, and the stock paths.

- Real preprocessed zlib sources go to a real ``meshcc daemon`` on loopback with ``CODC``
  (meshcc.transport.client with each codec): the object must be byte-identical to a local
  compile of the same ``.i``, and the reply must really come back in that codec.
- A corrupt frame, a codec the server does not speak, and ``CODC`` in a protocol 2 request
  are refused with an ``ERRM`` that says so (the daemon keeps serving).
- Stock distcc 3.4 clients keep LZO (``,lzo``) and no compression with the daemon, and
  meshcc-gcc still works with a stock distccd (no ``CODC`` ever reaches it).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import meshcc.compression as comp
from conftest import LOOPBACK, Daemon
from meshcc.transport import client
from meshcc.wire import codecs
from meshcc.wire import protocol as wire

SOURCES = ["adler32.c", "deflate.c", "trees.c"]
GCC_ARGS = ["-O2", "-D_LARGEFILE64_SOURCE=1"]


def _preprocess(zlib_source: Path, tmp_path: Path, name: str) -> tuple[bytes, bytes]:
    """(the .i, the object gcc makes of it here)."""
    pre = tmp_path / (name[:-2] + ".i")
    subprocess.run(["gcc", "-E", *GCC_ARGS, str(zlib_source / name), "-o", pre], check=True)
    ref = tmp_path / (name[:-2] + ".ref.o")
    subprocess.run(["gcc", "-O2", "-c", pre, "-o", ref], check=True, cwd=tmp_path)
    return pre.read_bytes(), ref.read_bytes()


def _raw_job(port: int, request: bytes) -> tuple[list[object], bytes]:
    """Send ``request`` as is; (the reply's events, its raw bytes)."""
    reader = wire.ReplyReader(1)
    events: list[object] = []
    raw = b""
    with socket.create_connection((LOOPBACK, port), timeout=60) as s:
        s.sendall(request)
        while True:
            event = reader.next_event()
            if event is wire.NEED_DATA:
                chunk = s.recv(1 << 16)
                raw += chunk
                if chunk:
                    reader.feed(chunk)
                else:
                    reader.feed_eof()
                continue
            events.append(event)
            if isinstance(event, (wire.ReplyEnd, wire.ReplyRefused)):
                return events, raw


@pytest.mark.parametrize("codec", codecs.KNOWN)
def test_real_compile_over_each_codec_is_byte_identical(
    codec: str,
    meshcc_daemon: Callable[..., Daemon],
    zlib_source: Path,
    tmp_path: Path,
) -> None:
    assert comp.available(codec), f"{codec}: its library is a meshcc dependency"
    server = meshcc_daemon()
    for name in SOURCES:
        source, ref = _preprocess(zlib_source, tmp_path, name)
        argv = [b"gcc", b"-O2", b"-c", name.encode(), b"-o", name[:-2].encode() + b".o"]
        with client.Connection(LOOPBACK, server.port, 1, io_timeout=60) as conn:
            conn.connect()
            conn.send_head(argv)
            conn.send_source(source, codec)
            reply = conn.read_reply()
            sample = conn.link_sample()
        assert reply.status == 0, reply.stderr.decode(errors="replace") + server.diagnostics()
        assert reply.obj == ref, f"{name} over {codec}: object differs"
        assert sample is not None and sample[0] > 0, "TCP_INFO gave no delivery rate"

    # The reply really is in the codec: its DOTO body is one frame of it, stating the size.
    source, ref = _preprocess(zlib_source, tmp_path, "deflate.c")
    body = comp.compress(codec, source)
    request = (
        wire.encode_request_head(1, [b"gcc", b"-O2", b"-c", b"deflate.c", b"-o", b"deflate.o"])
        + codecs.encode_codec_request(codec)
        + wire.encode_source(body)
    )
    events, _ = _raw_job(server.port, request)
    (obj,) = [e for e in events if isinstance(e, wire.ReplyObject)]
    info = codecs.frame_info(codec, obj.data)
    assert info.content_size == len(ref) and len(obj.data) < len(ref)
    assert comp.decompress(codec, obj.data, len(ref)) == ref
    assert len(server.wait_for_jobs(len(SOURCES) + 1)) == len(SOURCES) + 1, server.diagnostics()


def restate_zstd_size(frame: bytes, size: int) -> bytes:
    """``frame`` with its header claiming ``size`` decompressed bytes (an 8-byte field)."""
    fhd = frame[4]
    at = 5 + (0 if fhd >> 5 & 1 else 1)
    fcs_len = (1 if fhd >> 5 & 1 else 0, 2, 4, 8)[fhd >> 6]
    return (
        frame[:4]
        + bytes([fhd | 0xC0])
        + frame[5:at]
        + size.to_bytes(8, "little")
        + frame[at + fcs_len :]
    )


def _refusal(port: int, request: bytes) -> str:
    events, _ = _raw_job(port, request)
    assert isinstance(events[-1], wire.ReplyRefused), events
    return events[-1].message


def test_bad_bodies_and_codecs_are_refused_with_a_reason(
    meshcc_daemon: Callable[..., Daemon], zlib_source: Path, tmp_path: Path
) -> None:
    server = meshcc_daemon()
    source, _ = _preprocess(zlib_source, tmp_path, "adler32.c")
    head = wire.encode_request_head(1, [b"gcc", b"-O2", b"-c", b"adler32.c", b"-o", b"a.o"])
    frame = bytearray(comp.compress("zstd", source))
    frame[len(frame) // 2] ^= 0xFF  # inside a compressed block: only decoding notices
    why = _refusal(
        server.port, head + codecs.encode_codec_request("zstd") + wire.encode_source(bytes(frame))
    )
    assert "cannot decode the preprocessed source" in why and "corrupt zstd body" in why, why

    lz4 = comp.compress("lz4", source)
    why = _refusal(
        server.port, head + codecs.encode_codec_request("lz4") + wire.encode_source(lz4 + b"junk")
    )
    assert "after the end of the LZ4 frame" in why, why

    # A frame stating more than the server accepts (max_source) is refused from its header.
    bomb = restate_zstd_size(comp.compress("zstd", b"\0" * 4096), 1 << 40)
    why = _refusal(
        server.port, head + codecs.encode_codec_request("zstd") + wire.encode_source(bomb)
    )
    assert "over the limit" in why, why

    why = _refusal(
        server.port,
        head + wire.string_token(codecs.CODEC_TOKEN, b"brotli") + wire.encode_source(source),
    )
    assert "does not speak the body codec 'brotli'" in why and "zstd" in why, why

    head2 = wire.encode_request_head(2, [b"gcc", b"-O2", b"-c", b"adler32.c", b"-o", b"a.o"])
    why = _refusal(
        server.port, head2 + codecs.encode_codec_request("zstd") + wire.encode_source(b"x")
    )
    assert "CODC in a protocol 2 request" in why, why

    # Still serving, and each refusal was one job summary of a bad request.
    events, _ = _raw_job(server.port, head + wire.encode_source(source))
    assert any(isinstance(e, wire.ReplyObject) and e.data for e in events), server.diagnostics()


@pytest.mark.parametrize("lzo", [True, False], ids=["lzo", "none"])
def test_stock_distcc_client_still_gets_lzo_or_none(
    lzo: bool,
    meshcc_daemon: Callable[..., Daemon],
    client_env: dict[str, str],
    zlib_tree: Path,
    tmp_path: Path,
) -> None:
    server = meshcc_daemon()
    env = dict(client_env, DISTCC_HOSTS=server.host_spec(lzo=lzo), DISTCC_FALLBACK="0")
    src = zlib_tree / "deflate.c"
    subprocess.run(["gcc", *GCC_ARGS, "-c", src, "-o", tmp_path / "ref.o"], check=True)
    done = subprocess.run(
        ["distcc", "gcc", *GCC_ARGS, "-c", str(src), "-o", str(tmp_path / "d.o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + server.diagnostics()
    assert (tmp_path / "d.o").read_bytes() == (tmp_path / "ref.o").read_bytes()
    assert len(server.wait_for_jobs(1)) == 1, server.diagnostics()


def test_meshcc_gcc_to_a_stock_distccd_still_works(
    distccd: Callable[..., Daemon],
    client_env: dict[str, str],
    zlib_tree: Path,
    tmp_path: Path,
) -> None:
    server = distccd()
    env = dict(client_env, DISTCC_HOSTS=server.host_spec(lzo=True), DISTCC_FALLBACK="0")
    src = zlib_tree / "trees.c"
    subprocess.run(["gcc", *GCC_ARGS, "-c", src, "-o", tmp_path / "ref.o"], check=True)
    done = subprocess.run(
        ["meshcc-gcc", *GCC_ARGS, "-c", str(src), "-o", str(tmp_path / "m.o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + server.diagnostics()
    assert (tmp_path / "m.o").read_bytes() == (tmp_path / "ref.o").read_bytes()
    assert len(server.wait_for_jobs(1)) == 1, server.diagnostics()
    assert os.path.exists(tmp_path / "m.o")
