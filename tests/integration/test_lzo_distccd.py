"""LZO1X interop with stock distccd 3.4 (miniLZO), on both of meshcc's LZO back ends.

Real preprocessed zlib sources go to a real distccd as protocol-2 jobs, compressed by
meshcc.compression with the system liblzo2 (what clients with liblzo2-2 use) and with
lzallright (what they use without it); distccd must decompress them, compile, and send an
object that meshcc decompresses byte-identical to a local compile of the same ``.i``.
Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import meshcc.compression as comp
from conftest import LOOPBACK, Daemon
from meshcc.wire import protocol as wire

SOURCES = ["adler32.c", "deflate.c", "gzlib.c", "trees.c"]  # 85-170 KB once preprocessed


@pytest.fixture(params=["liblzo2", "lzallright"])
def lzo_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = comp._liblzo2
    if request.param == "lzallright":
        comp._liblzo2 = False
    else:
        comp._liblzo2 = None
        if comp._lib() is None:
            pytest.fail("liblzo2.so.2 not found (Debian package liblzo2-2)", pytrace=False)
    yield request.param
    comp._liblzo2 = saved


def _job(port: int, argv: list[str], source: bytes) -> tuple[int, bytes, bytes]:
    """One protocol-2 job: (wait status, stderr, object), bodies through meshcc.compression."""
    head = wire.encode_request_head(2, [a.encode() for a in argv])
    body = wire.encode_source(comp.compress(comp.Codec.LZO, source))
    reader = wire.ReplyReader(2)
    status, stderr, obj = -1, b"", b""
    with socket.create_connection((LOOPBACK, port), timeout=60) as s:
        s.sendall(head + body)
        while True:
            event = reader.next_event()
            if event is wire.NEED_DATA:
                chunk = s.recv(1 << 16)
                if chunk:
                    reader.feed(chunk)
                else:
                    reader.feed_eof()
            elif isinstance(event, wire.ReplyStatus):
                status = event.wait_status
            elif isinstance(event, wire.ReplyStderr):
                stderr = comp.decompress(comp.Codec.LZO, event.data, 1 << 28)
            elif isinstance(event, wire.ReplyObject):
                obj = comp.decompress(comp.Codec.LZO, event.data, 1 << 28)
            elif isinstance(event, wire.ReplyEnd):
                return status, stderr, obj
            elif isinstance(event, wire.ReplyRefused):
                pytest.fail(f"distccd refused the job: {event.message}")


def test_distccd_reads_ours_and_we_read_its(
    lzo_backend: str, distccd: Callable[..., Daemon], zlib_source: Path, tmp_path: Path
) -> None:
    server = distccd()
    for name in SOURCES:
        pre = tmp_path / (name[:-2] + ".i")
        subprocess.run(
            ["gcc", "-E", "-O2", "-D_LARGEFILE64_SOURCE=1", str(zlib_source / name), "-o", pre],
            check=True,
        )
        ref = tmp_path / (name[:-2] + ".ref.o")
        subprocess.run(["gcc", "-O2", "-c", pre, "-o", ref], check=True, cwd=tmp_path)
        source = pre.read_bytes()
        assert len(source) > 50_000
        status, stderr, obj = _job(
            server.port, ["gcc", "-O2", "-c", name, "-o", name[:-2] + ".o"], source
        )
        assert status == 0, stderr.decode(errors="replace") + server.diagnostics()
        assert obj == ref.read_bytes(), f"{name} ({lzo_backend}): object differs"
    assert len(server.wait_for_jobs(len(SOURCES))) == len(SOURCES), server.diagnostics()
