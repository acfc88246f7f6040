"""The compile server's socket channel (meshcc.transport.server._SocketChannel) on real
connected sockets: what it reads and when it waits, what it keeps when the peer does not
read, how a close reaches a read in progress, and that the event loop is not left
watching a socket nobody reads (a readable socket with a reader registered and nobody
waiting would wake the loop on every turn).

The server's behaviour over it (refusals, stalls, shedding, BUSY) is covered end to end
by test_server.py, test_server_stalled.py, test_busy.py and test_daemon_limits.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from meshcc.transport.server import _SocketChannel


def _pair() -> tuple[socket.socket, socket.socket]:
    """A TCP connection on loopback (the server side non-blocking, as accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        client = socket.create_connection(lst.getsockname())
        server, _ = lst.accept()
    server.setblocking(False)
    return server, client


def _run(body: Callable[[_SocketChannel, socket.socket], Awaitable[None]]) -> None:
    server, client = _pair()

    async def main() -> None:
        ch = _SocketChannel(server)
        try:
            await body(ch, client)
        finally:
            ch.abort()

    try:
        asyncio.run(main())
    finally:
        client.close()
        server.close()


def _small_buffers(ch: _SocketChannel, client: socket.socket) -> None:
    """Socket buffers far below the tests' 128 KiB, so most of it must wait in the channel."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ch._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def _watched(ch: _SocketChannel) -> bool:
    """Whether the loop has a reader registered for the channel's socket."""
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    key = selector.get_map().get(ch._fd)
    return key is not None and key.data[0] is not None


def test_read_takes_what_is_there_and_waits_for_what_is_not() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        client.sendall(b"DIST00000001")
        await asyncio.sleep(0.05)
        assert await ch.read(1024) == b"DIST00000001"  # already there: no wait
        assert not _watched(ch)
        pending = asyncio.ensure_future(ch.read(1024))
        await asyncio.sleep(0.05)
        assert not pending.done() and _watched(ch)
        client.sendall(b"ARGC00000002")
        assert await asyncio.wait_for(pending, 5) == b"ARGC00000002"
        client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(ch.read(1024), 5) == b""

    _run(body)


def test_reader_goes_when_nobody_waits_on_a_readable_socket() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        pending = asyncio.ensure_future(ch.read(4))
        await asyncio.sleep(0.02)
        client.sendall(b"0123456789")
        assert await asyncio.wait_for(pending, 5) == b"0123"
        # Six bytes stay unread and nobody reads: the reader must not stay registered
        # (it would fire on every loop turn), and a later read still gets the bytes.
        for _ in range(20):
            await asyncio.sleep(0)
        assert not _watched(ch)
        assert await ch.read(100) == b"456789"

    _run(body)


def test_close_ends_a_read_in_progress_with_end_of_stream() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        pending = asyncio.ensure_future(ch.read(1024))
        await asyncio.sleep(0.02)
        ch.write(b"ERRM")
        ch.close()
        assert await asyncio.wait_for(pending, 5) == b""
        assert await ch.read(1024) == b""
        client.settimeout(5)
        assert client.recv(100) == b"ERRM"
        assert client.recv(100) == b""  # closed

    _run(body)


def test_a_cancelled_read_leaves_the_next_one_working() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        watcher = asyncio.ensure_future(ch.read(1024))
        await asyncio.sleep(0.02)
        watcher.cancel()
        later = asyncio.ensure_future(ch.read(1024))  # before the cancelled one has ended
        with pytest.raises(asyncio.CancelledError):
            await watcher
        client.sendall(b"more")
        assert await asyncio.wait_for(later, 5) == b"more"

    _run(body)


def test_write_keeps_what_the_peer_does_not_take_and_drain_waits_for_it() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        _small_buffers(ch, client)
        data = bytes(range(256)) * 512  # 128 KiB: far more than the shrunk buffers hold
        ch.write(data)
        assert ch.pending() > 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await ch.drain()  # the peer reads nothing: still pending
        assert ch.pending() > 0
        loop = asyncio.get_running_loop()
        client.setblocking(True)
        got = bytearray()

        def drain_client() -> None:
            while len(got) < len(data):
                chunk = client.recv(1 << 20)
                if not chunk:
                    break
                got.extend(chunk)

        reading = loop.run_in_executor(None, drain_client)
        async with asyncio.timeout(30):
            await ch.drain()
        assert ch.pending() == 0
        ch.write_eof()
        await asyncio.wait_for(reading, 30)
        assert bytes(got) == data

    _run(body)


def test_close_sends_what_is_pending_then_closes_and_abort_drops_it() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        _small_buffers(ch, client)
        data = b"x" * (128 << 10)
        ch.write(data)
        assert ch.pending() > 0
        ch.close()  # flushes first: the client gets every byte, then the end
        loop = asyncio.get_running_loop()
        client.setblocking(True)
        client.settimeout(30)

        def read_all() -> int:
            n = 0
            while chunk := client.recv(1 << 20):
                n += len(chunk)
            return n

        total = await loop.run_in_executor(None, read_all)
        assert total == len(data)
        async with asyncio.timeout(5):
            await ch.wait_closed()

    _run(body)

    async def aborting(ch: _SocketChannel, client: socket.socket) -> None:
        _small_buffers(ch, client)
        ch.write(b"y" * (128 << 10))
        assert ch.pending() > 0
        ch.abort()
        assert ch.pending() == 0
        assert not _watched(ch)
        async with asyncio.timeout(1):
            await ch.wait_closed()

    _run(aborting)


def test_a_send_error_is_raised_by_drain() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        client.close()  # linger 0: a reset
        await asyncio.sleep(0.05)
        with pytest.raises(OSError):
            for _ in range(100):  # the first send after a reset may still succeed
                ch.write(b"z" * 65536)
                await ch.drain()
                await asyncio.sleep(0.01)

    _run(body)


def test_watch_discards_what_the_peer_sends_and_resolves_at_its_end() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        watch = ch.watch()
        client.sendall(b"junk" * 10000)  # discarded, not an end
        await asyncio.sleep(0.05)
        assert not watch.done() and _watched(ch)
        client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(watch, 5) == "end of stream"

    _run(body)

    async def reset(ch: _SocketChannel, client: socket.socket) -> None:
        watch = ch.watch()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        client.close()  # linger 0: a reset
        assert (await asyncio.wait_for(watch, 5)).startswith("connection error")

    _run(reset)


def test_a_cancelled_watch_leaves_no_reader_and_reads_still_work() -> None:
    async def body(ch: _SocketChannel, client: socket.socket) -> None:
        watch = ch.watch()
        await asyncio.sleep(0.02)
        watch.cancel()  # the compile ended first
        client.sendall(b"late")  # readable, nobody waits: the reader must go
        for _ in range(50):
            await asyncio.sleep(0.001)
            if not _watched(ch):
                break
        assert not _watched(ch)
        assert await ch.read(100) == b"late"

    _run(body)
