"""A zstd body naming a kept body (``ZREF``) the server does not hold is an expected answer,
not a refusal: after a daemon restart every client's first ``zref`` job names a body the new
daemon never saw. The client is told (the ``unknown body prefix`` ERRM, which it answers by
sending the job whole), the daemon logs one info line and no warning, and the job is
counted as ``prefix_unknown``, not as ``refused`` or ``rej_bad_req``. A real refusal on the
same server still warns and counts as before.

An in-process CompileServer (the daemon's class) on a real loopback socket, real gcc.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import pytest

from meshcc import compression
from meshcc.compiler.toolchain import ToolchainRegistry
from meshcc.compression import kept
from meshcc.transport.server import CompileServer, ServerConfig
from meshcc.wire import codecs
from meshcc.wire import protocol as wire

pytestmark = pytest.mark.skipif(
    compression.Codec.ZSTD not in compression.spoken(), reason="no zstd in this environment"
)

SOURCE = b"int twice(int x) { return 2 * x; }\n"


def _request(argv: list[bytes], keep: str, prefix: str = "") -> bytes:
    head = wire.encode_request_head(1, argv)
    frame = compression.compress("zstd", SOURCE, 3, SOURCE if prefix else None)
    return (
        head
        + codecs.encode_codec_request("zstd")
        + codecs.encode_prefix_tokens(keep, prefix)
        + wire.encode_source(frame)
    )


def _send(port: int, request: bytes) -> list[object]:
    reader = wire.ReplyReader(1)
    events: list[object] = []
    with socket.create_connection(("127.0.0.1", port), 30) as s:
        s.sendall(request)
        while True:
            event = reader.next_event()
            if event is wire.NEED_DATA:
                chunk = s.recv(1 << 16)
                reader.feed(chunk) if chunk else reader.feed_eof()
                continue
            events.append(event)
            if isinstance(event, (wire.ReplyEnd, wire.ReplyRefused)):
                return events


def test_an_unknown_prefix_is_its_own_expected_outcome(caplog: pytest.LogCaptureFixture) -> None:
    registry = ToolchainRegistry.from_paths(["/usr/bin/gcc"])
    config = ServerConfig(allowed=(ipaddress.ip_network("127.0.0.0/8"),), jobs=1)
    argv = [b"gcc", b"-O2", b"-c", b"t.c", b"-o", b"t.o"]
    replies: dict[str, list[object]] = {}

    async def main() -> dict[str, int]:
        server = CompileServer(registry, config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await server.start(sock)
        port = sock.getsockname()[1]
        try:
            # A client's first job after the daemon restarted: it names a body it sent
            # to the daemon that ran before.
            replies["unknown"] = await asyncio.to_thread(
                _send, port, _request(argv, kept.new_id(), kept.new_id())
            )
            # What the client does next: the same job whole, kept for later jobs.
            first = kept.new_id()
            replies["whole"] = await asyncio.to_thread(_send, port, _request(argv, first))
            replies["prefixed"] = await asyncio.to_thread(
                _send, port, _request(argv, kept.new_id(), first)
            )
            # A real refusal on the same server is still a refusal.
            replies["refused"] = await asyncio.to_thread(
                _send, port, _request([*argv, b"-fplugin=x.so"], kept.new_id())
            )
        finally:
            server.request_stop()
            await server.serve_until_stopped()
        return dict(server.stats.jobs)

    with caplog.at_level(logging.DEBUG, logger="meshcc"):
        jobs = asyncio.run(main())

    why = replies["unknown"][-1]
    assert isinstance(why, wire.ReplyRefused) and codecs.is_unknown_prefix(why.message), why
    for name in ("whole", "prefixed"):
        assert isinstance(replies[name][-1], wire.ReplyEnd), replies[name]
        (status,) = [e for e in replies[name] if isinstance(e, wire.ReplyStatus)]
        assert status.wait_status == 0, replies[name]
    refused = replies["refused"][-1]
    assert isinstance(refused, wire.ReplyRefused) and "-fplugin" in refused.message

    assert jobs["prefix_unknown"] == 1, jobs
    assert jobs["compile_ok"] == 2, jobs
    assert jobs["refused"] == 1 and jobs["rej_bad_req"] == 0, jobs

    prefix_lines = [r for r in caplog.records if "unknown body prefix" in r.getMessage()]
    assert prefix_lines and all(r.levelno == logging.INFO for r in prefix_lines), [
        (r.levelname, r.getMessage()) for r in prefix_lines
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith(f"job refused: {refused.message}")
    # The resend's connection has its summary at debug; the jobs' summaries stay at notice.
    summaries = [r for r in caplog.records if " exit:" in r.getMessage()]
    assert sorted(r.levelno for r in summaries) == sorted(
        [logging.DEBUG, 25, 25, 25]  # 25: NOTICE
    ), [(r.levelname, r.getMessage()) for r in summaries]
