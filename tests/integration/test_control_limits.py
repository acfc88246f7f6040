"""The control socket's bounds: a per-user connection cap, a total cap, and a send deadline
for a client that never reads its replies. A real ControlServer on a real Unix socket, in
this process's event loop; the clients are plain blocking sockets in threads."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from meshcc.daemon.control_server import ControlLimits, ControlServer
from meshcc.mesh.matching import Verdict
from meshcc.transport.control_socket import open_control_socket
from meshcc.wire import control


class _Status:
    off_reason: str | None = "test"


class _Mesh:
    status = _Status()

    def explain(self, fingerprint: object) -> list[Verdict]:
        return []

    def report_job_result(self, peer: str, ok: bool, *, connect_failed: bool = False) -> bool:
        return True


def _status() -> control.StatusReply:
    return control.StatusReply(version="test", peers=0)


def _run(limits: ControlLimits, scenario: Callable[[str, ControlServer], Awaitable[None]]) -> None:
    with tempfile.TemporaryDirectory(prefix="meshcc-ctl-limits-") as tmp:
        path = str(Path(tmp) / "control.sock")

        async def main() -> None:
            server = ControlServer(_Mesh(), _status, path=path, limits=limits)  # type: ignore[arg-type]
            await server.start(open_control_socket(path))
            try:
                await scenario(path, server)
            finally:
                await server.stop()

        asyncio.run(asyncio.wait_for(main(), 60))


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _ask(s: socket.socket, msg: dict[str, object]) -> dict[str, object]:
    """One round trip; a daemon that refused the connection has already answered and
    closed, so a failed send still leaves its refusal to read."""
    try:
        s.sendall(control.encode(msg))
    except BrokenPipeError:
        pass
    reader = control.MessageReader()
    while (reply := reader.next_message()) is None:
        data = s.recv(65536)
        assert data, "the daemon closed the connection"
        reader.feed(data)
    return reply


def test_one_user_cannot_take_every_connection() -> None:
    async def scenario(path: str, server: ControlServer) -> None:
        held = [await asyncio.to_thread(_connect, path) for _ in range(3)]
        for s in held:  # each is served (status round trip)
            assert (await asyncio.to_thread(_ask, s, control.StatusRequest().to_message()))["ok"]
        extra = await asyncio.to_thread(_connect, path)
        reply = await asyncio.to_thread(_ask, extra, control.StatusRequest().to_message())
        assert reply["ok"] is False and "per-user limit" in str(reply["error"])
        extra.close()
        held.pop().close()
        await asyncio.sleep(0.2)  # the daemon notices the close
        again = await asyncio.to_thread(_connect, path)
        assert (await asyncio.to_thread(_ask, again, control.StatusRequest().to_message()))["ok"]
        for s in [*held, again]:
            s.close()

    _run(ControlLimits(max_connections=100, max_per_user=3), scenario)


def test_total_cap() -> None:
    async def scenario(path: str, server: ControlServer) -> None:
        held = [await asyncio.to_thread(_connect, path) for _ in range(2)]
        for s in held:
            await asyncio.to_thread(_ask, s, control.StatusRequest().to_message())
        extra = await asyncio.to_thread(_connect, path)
        reply = await asyncio.to_thread(_ask, extra, control.StatusRequest().to_message())
        assert reply["ok"] is False and "its limit" in str(reply["error"])
        for s in [*held, extra]:
            s.close()

    _run(ControlLimits(max_connections=2, max_per_user=10), scenario)


def test_a_client_that_never_reads_is_dropped_after_the_send_deadline() -> None:
    async def scenario(path: str, server: ControlServer) -> None:
        def flood() -> float:
            """Ask for status without ever reading: the replies fill both socket buffers."""
            s = _connect(path)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            request = control.encode(control.StatusRequest().to_message())
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 20:
                    s.sendall(request * 16)
            except OSError:  # the daemon gave up on us and closed
                return time.monotonic() - t0
            finally:
                s.close()
            return -1.0

        took = await asyncio.to_thread(flood)
        assert took >= 0, "the daemon kept a client that never reads"
        assert server.connections == 0
        # ...and the daemon still serves others.
        s = await asyncio.to_thread(_connect, path)
        assert (await asyncio.to_thread(_ask, s, control.StatusRequest().to_message()))["ok"]
        s.close()

    _run(ControlLimits(send_timeout_s=0.5, idle_timeout_s=30), scenario)


def test_limits_follow_the_descriptor_limit() -> None:
    small = ControlLimits.for_fd_limit(1024)
    assert small.max_connections == 256 and small.max_per_user == 128
    assert ControlLimits.for_fd_limit(65536).max_connections < 65536
