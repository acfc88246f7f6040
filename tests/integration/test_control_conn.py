"""The control server's own connection handling (no asyncio streams): a lease wait ends
when the client goes away or says anything, but not on half a message; a request that
arrives in pieces is served; a granted lease is held until ``done`` and its report used.

A real ControlServer on a real Unix socket in this process's loop, the real fingerprint
cache on the box's gcc, a stub mesh with one matching peer of one slot (so a second
request queues); the clients are plain blocking sockets in threads.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from meshcc.daemon.control_server import ControlServer
from meshcc.mesh.matching import Verdict
from meshcc.transport.control_socket import open_control_socket
from meshcc.wire import control
from meshstub import matching_peer

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="needs gcc")


class _Status:
    off_reason: str | None = None


class _Mesh:
    def __init__(self) -> None:
        self.status = _Status()
        self.verdicts = [matching_peer("192.0.2.1", 1)]
        self.reports: list[tuple[str, bool, bool]] = []

    def explain(self, fingerprint: object) -> list[Verdict]:
        return list(self.verdicts)

    def report_job_result(self, peer: str, ok: bool, *, connect_failed: bool = False) -> bool:
        self.reports.append((peer, ok, connect_failed))
        return True


Scenario = Callable[[str, ControlServer, _Mesh], Awaitable[None]]


def _run(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory(prefix="meshcc-ctl-conn-") as tmp:
        path = str(Path(tmp) / "control.sock")

        async def main() -> None:
            mesh = _Mesh()
            server = ControlServer(
                mesh,  # type: ignore[arg-type]
                lambda: control.StatusReply(version="test"),
                path=path,
            )
            server.broker.local_slots = 0  # no share of this box's own: the second waits
            await server.start(open_control_socket(path))
            try:
                await scenario(path, server, mesh)
            finally:
                await server.stop()

        asyncio.run(asyncio.wait_for(main(), 60))


def _lease_request() -> bytes:
    assert GCC is not None
    return control.encode(control.LeaseRequest("gcc", GCC, "x.c").to_message())


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _reply(s: socket.socket) -> dict[str, object] | None:
    reader = control.MessageReader()
    while (msg := reader.next_message()) is None:
        data = s.recv(65536)
        if not data:
            return None
        reader.feed(data)
    return msg


async def _until(what: str, test: Callable[[], bool]) -> None:
    for _ in range(200):
        if test():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def _holder_and_waiter(
    path: str, server: ControlServer
) -> tuple[socket.socket, socket.socket]:
    """One client holding the peer's only slot, one queued behind it."""
    holder = await asyncio.to_thread(_connect, path)
    await asyncio.to_thread(holder.sendall, _lease_request())
    grant = await asyncio.to_thread(_reply, holder)
    assert grant is not None and grant["ok"] is True, grant
    waiter = await asyncio.to_thread(_connect, path)
    await asyncio.to_thread(waiter.sendall, _lease_request())
    await _until("the second request queued", lambda: len(server.broker.waiters) == 1)
    return holder, waiter


def test_a_queued_client_that_closes_leaves_the_queue() -> None:
    async def scenario(path: str, server: ControlServer, mesh: _Mesh) -> None:
        holder, waiter = await _holder_and_waiter(path, server)
        waiter.close()
        await _until("the waiter gone", lambda: not server.broker.waiters)
        await _until("its connection closed", lambda: server.connections == 1)
        assert server.broker.held == 1  # the holder's lease is untouched
        holder.close()
        await _until("the lease released", lambda: server.broker.held == 0)
        assert server.connections == 0

    _run(scenario)


def test_half_a_message_keeps_the_wait_and_a_whole_one_ends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(path: str, server: ControlServer, mesh: _Mesh) -> None:
        holder, waiter = await _holder_and_waiter(path, server)
        done = control.encode(control.DoneMessage(True).to_message())
        await asyncio.to_thread(waiter.sendall, done[:3])
        await asyncio.sleep(0.2)
        assert len(server.broker.waiters) == 1, "half a message ended the wait"
        await asyncio.to_thread(waiter.sendall, done[3:])
        await _until("the waiter gone", lambda: not server.broker.waiters)
        assert await asyncio.to_thread(_reply, waiter) is None  # closed, no grant
        waiter.close()
        # Garbage while queued ends the wait too, and says why in the log.
        second = await asyncio.to_thread(_connect, path)
        await asyncio.to_thread(second.sendall, _lease_request())
        await _until("queued again", lambda: len(server.broker.waiters) == 1)
        with caplog.at_level(logging.WARNING, logger="meshcc.control"):
            await asyncio.to_thread(second.sendall, b"\x01")  # not a map
            await _until("the garbage-sender gone", lambda: not server.broker.waiters)
            await _until("its connection closed", lambda: server.connections == 1)
        assert "expected a map" in caplog.text
        second.close()
        assert server.broker.held == 1
        holder.close()

    _run(scenario)


def test_a_request_in_pieces_is_served_and_done_is_reported() -> None:
    async def scenario(path: str, server: ControlServer, mesh: _Mesh) -> None:
        s = await asyncio.to_thread(_connect, path)
        request = _lease_request()
        for i in range(len(request)):  # one byte at a time, each read separately
            await asyncio.to_thread(s.sendall, request[i : i + 1])
            await asyncio.sleep(0.001)
        grant = await asyncio.to_thread(_reply, s)
        assert grant is not None and grant["ok"] is True and grant["peer"] == "m:a", grant
        assert server.broker.held == 1
        done = control.DoneMessage(False, False, "refused", link=(12345678, False, 250))
        await asyncio.to_thread(s.sendall, control.encode(done.to_message()))
        assert await asyncio.to_thread(_reply, s) is None  # one lease per connection
        s.close()
        await _until("released", lambda: server.broker.held == 0)
        assert mesh.reports == [("m:a", False, False)]
        link = server.links.get("m:a")
        assert link is not None and link.rtt_us == 250

    _run(scenario)


def test_status_and_several_requests_on_one_connection() -> None:
    async def scenario(path: str, server: ControlServer, mesh: _Mesh) -> None:
        s = await asyncio.to_thread(_connect, path)
        # Two requests in one write: both answered, in order.
        both = control.encode(control.StatusRequest().to_message()) * 2
        await asyncio.to_thread(s.sendall, both)
        reader = control.MessageReader()
        got: list[dict[str, object]] = []
        while len(got) < 2:
            data = await asyncio.to_thread(s.recv, 65536)
            assert data
            reader.feed(data)
            got.extend(reader)
        assert [m["version"] for m in got] == ["test", "test"]
        s.close()
        await _until("closed", lambda: server.connections == 0)

    _run(scenario)


def test_out_of_descriptors_pauses_accepting_then_serves_the_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """accept() failing with EMFILE (a real descriptor limit, lowered for the moment)
    pauses the listener instead of spinning on it; the clients wait in the backlog and
    are served once descriptors are free again."""
    import os
    import resource

    async def scenario(path: str, server: ControlServer, mesh: _Mesh) -> None:
        loop = asyncio.get_running_loop()
        clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        lowest = os.dup(0)  # the lowest free descriptor: with the limit there, none more
        os.close(lowest)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            with caplog.at_level(logging.WARNING, logger="meshcc.control"):
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
                for c in clients:
                    c.setblocking(False)
                    c.connect(path)  # completes in the kernel's backlog
                    c.send(control.encode(control.StatusRequest().to_message()))
                await asyncio.sleep(0.3)
                assert server.connections == 0
                assert caplog.text.count("cannot accept") == 1, caplog.text  # no spinning
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for c in clients:
            reader = control.MessageReader()
            while (msg := reader.next_message()) is None:
                data = await asyncio.wait_for(loop.sock_recv(c, 65536), 5)
                assert data
                reader.feed(data)
            assert msg["ok"] is True
            c.close()

    _run(scenario)
