"""The live-load channel's loop is driven by events, not a poll: an idle daemon with a
peer wakes for its heartbeats only, a poke is sent at once, and the peer list is re-read
only when the mesh hands over a new one. Real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from meshcc.mesh.load import LoadBook, LoadTimings, RemotePeer
from meshcc.mesh.loadnet import LoadChannel

HEARTBEAT_S = 0.2


class _CountingBook(LoadBook):
    """A real book that counts the channel's rounds and peer-list changes."""

    def __init__(self) -> None:
        super().__init__("0000000000aa", 2, LoadTimings(heartbeat_s=HEARTBEAT_S))
        self.rounds = 0
        self.peer_sets = 0

    def outgoing(self) -> list[tuple[str, int, bytes]]:
        self.rounds += 1
        return super().outgoing()

    def set_peers(self, peers: object) -> None:
        self.peer_sets += 1
        super().set_peers(peers)  # type: ignore[arg-type]


def _peer(port: int) -> RemotePeer:
    return RemotePeer("m:b", "0000000000bb", "127.0.0.1", port, 2, frozenset({"127.0.0.1"}))


async def _with_channel(test: Callable[[LoadChannel, _CountingBook, list[bytes]], object]) -> None:
    book = _CountingBook()
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.setblocking(False)
    peers = [_peer(far.getsockname()[1])]
    channel = LoadChannel(book, lambda: peers)
    near = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    near.bind(("127.0.0.1", 0))
    near.setblocking(False)
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(far.fileno(), lambda: got.append(far.recv(2048)))
    await channel.start(near)
    try:
        result = test(channel, book, got)
        if asyncio.iscoroutine(result):
            await result
    finally:
        loop.remove_reader(far.fileno())
        await channel.stop()
        far.close()


def test_an_idle_channel_wakes_for_heartbeats_only() -> None:
    async def idle(channel: LoadChannel, book: _CountingBook, got: list[bytes]) -> None:
        await asyncio.sleep(1.0)  # 5 heartbeat periods: a 0.1 s poll made 10+ rounds
        assert 2 <= len(got) <= 7, got  # about 5 (fewer on a loaded box)
        assert book.rounds <= len(got) + 2, (book.rounds, len(got))
        assert book.peer_sets == 1  # the same list object: never re-read

    asyncio.run(_with_channel(idle))


def test_a_poke_is_sent_at_once_and_a_new_peer_list_is_read() -> None:
    async def poke(channel: LoadChannel, book: _CountingBook, got: list[bytes]) -> None:
        await asyncio.sleep(0.05)
        sent = len(got)
        book.set_local(running=1)  # a change the peer has not seen
        channel.poke()
        await asyncio.sleep(0.03)  # far less than a heartbeat
        assert len(got) >= sent + 1  # not held for the next heartbeat
        replaced = [_peer(book._remotes["m:b"].peer.port)]
        channel._peers = lambda: replaced  # the mesh built a new list (a peer changed)
        channel.poke()
        await asyncio.sleep(0.03)
        assert book.peer_sets == 2

    asyncio.run(_with_channel(poke))
