"""The liveness layer's TCP probe against a real listener on 127.0.0.1 (the peer table's state
machine: unit/test_mesh_peers.py)."""

from __future__ import annotations

import asyncio

from meshcc.mesh.liveness import tcp_probe


def test_tcp_probe_on_loopback() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ok, detail, rtt = await tcp_probe("127.0.0.1", port, 1.0)
        assert ok and detail is None and rtt is not None
        server.close()
        await server.wait_closed()
        ok, detail, _ = await tcp_probe("127.0.0.1", port, 1.0)
        assert not ok and detail == "connection refused"

    asyncio.run(main())
