"""The liveness layer's probes against real listeners on 127.0.0.1 (the peer table's state
machine: unit/test_mesh_peers.py).

* ``tcp_probe`` (older meshcc peers): connect and close.
* ``ping_probe`` (peers announcing ``ping``): PONG from a real ``meshcc daemon``, which logs
  nothing above DEBUG for it and runs no job; ERRM or a close (an older daemon) still means
  alive; a listener that never answers does not; a refused port is a final failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from conftest import Daemon
from meshcc.mesh.liveness import ping_probe, tcp_probe
from meshcc.wire import protocol as wire


def test_tcp_probe_on_loopback() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ok, detail, rtt, final = await tcp_probe("127.0.0.1", port, 1.0)
        assert ok and detail is None and rtt is not None and not final
        server.close()
        await server.wait_closed()
        ok, detail, _, final = await tcp_probe("127.0.0.1", port, 1.0)
        assert not ok and detail == "connection refused" and final

    asyncio.run(main())


def test_ping_probe_judges_every_kind_of_answer() -> None:
    async def errm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(12)  # an older meshcc: PING is a bad request, refused with ERRM
        writer.write(wire.encode_refusal("protocol error: expected DIST token, got PING"))
        writer.close()

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(12)
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # accepts, never answers (a hung daemon)
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        writer.close()

    async def main() -> None:
        results = {}
        for name, handler in (
            ("errm", errm),
            ("close", close),
            ("silent", silent),
            ("garbage", garbage),
        ):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            results[name] = await ping_probe("127.0.0.1", port, 0.5)
            server.close()
            results["refused"] = await ping_probe("127.0.0.1", port, 0.5)
        assert results["errm"].ok and results["close"].ok
        assert not results["silent"].ok and "no reply" in (results["silent"].detail or "")
        assert not results["silent"].final
        garbage_result = results["garbage"]
        assert not garbage_result.ok and "not a meshcc reply" in (garbage_result.detail or "")
        assert not results["refused"].ok and results["refused"].final

    asyncio.run(asyncio.wait_for(main(), 30))


def test_meshcc_daemon_answers_ping_quietly(meshcc_daemon: Callable[..., Daemon]) -> None:
    daemon = meshcc_daemon(jobs=1)
    time.sleep(0.3)
    start = len(daemon.log_text())

    async def probes() -> list[bool]:
        out = []
        for _ in range(20):
            result = await ping_probe("127.0.0.1", daemon.port, 5.0)
            assert result.detail is None, result
            out.append(result.ok)
        return out

    assert all(asyncio.run(probes()))

    # The explicit reply, byte for byte.
    async def raw() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(wire.PROBE_REQUEST)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    assert asyncio.run(raw()) == wire.PROBE_REPLY
    time.sleep(0.3)  # let the log flush
    text = daemon.log_text()[start:]
    for bad in ("ERROR", "WARNING", "connection from", "client: 127.0.0.1", "refused"):
        assert bad not in text, f"{bad!r} in the daemon log after probes:\n{text}"
    assert daemon.jobs() == []  # no job summary: a probe is not a job
