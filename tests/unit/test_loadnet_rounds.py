"""The live-load channel's loop is driven by events, not a poll: an idle daemon with a
peer wakes for its heartbeats only, a poke is sent at once, the peer list is re-read
only when the mesh hands over a new one, and a change of slots or demand that moves no
record wakes nothing. Real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from meshcc.mesh import loadnet
from meshcc.mesh.load import LoadBook, LoadTimings, RemotePeer
from meshcc.mesh.loadnet import LoadChannel
from meshcc.wire import load as wire

HEARTBEAT_S = 0.2
SLOW_HEARTBEAT_S = 1.0


class _CountingBook(LoadBook):
    """A real book that counts the channel's rounds and peer-list changes."""

    def __init__(self, heartbeat_s: float = HEARTBEAT_S) -> None:
        # stale_s: a peer's one record stays fresh however long a slow heartbeat takes
        timings = LoadTimings(heartbeat_s=heartbeat_s, stale_s=max(2.0, 4 * heartbeat_s))
        super().__init__("0000000000aa", 2, timings)
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


async def _with_channel(
    test: Callable[[LoadChannel, _CountingBook, list[bytes]], object],
    heartbeat_s: float = HEARTBEAT_S,
) -> None:
    book = _CountingBook(heartbeat_s)
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
        book.set_local(running=2)  # a change the peer acts on: every slot busy
        channel.poke()
        await asyncio.sleep(0.03)  # far less than a heartbeat
        assert len(got) >= sent + 1  # not held for the next heartbeat
        replaced = [_peer(book._remotes["m:b"].peer.port)]
        channel._peers = lambda: replaced  # the mesh built a new list (a peer changed)
        channel.poke()
        await asyncio.sleep(0.03)
        assert book.peer_sets == 2

    asyncio.run(_with_channel(poke))


def test_a_leased_jobs_slot_rides_with_the_heartbeat_and_a_stock_jobs_goes_at_once() -> None:
    """A job the peer leased taking its slot moves nothing the peer acts on (its share and
    our free slots were already counted when it said it holds the lease): no record, no
    wake-up, until the heartbeat carries the new running count. The slot that makes every
    slot busy goes at once (a broker queues ahead of time only on a full peer), and so
    does a job no lease accounts for (stock distcc): it shrinks what we share out."""
    running, queued = [0], [0]

    async def served(channel: LoadChannel, book: _CountingBook, got: list[bytes]) -> None:
        channel.figures = lambda: (running[0], queued[0], 0)
        await asyncio.sleep(0.05)  # the channel's first round: it knows its peer
        remote = book._remotes["m:b"]
        # The peer says it holds both our slots.
        record = wire.LoadRecord("0000000000bb", 7, 1, jobs=2, free=2, held=2, want=2)
        await _from_peer(channel, record, lambda: remote.their_held == 2)
        await asyncio.sleep(0.05)  # the answer to that record (our free slots fell) is out
        sent, rounds = len(got), book.rounds
        running[0] = 1  # one of its leased jobs took its slot
        channel.slots_changed()
        await asyncio.sleep(0.03)
        assert book.rounds == rounds, "a leased job's slot does not wake the channel"
        # Nor would a round that ran for another reason send it.
        assert book.outgoing() == []
        assert len(got) == sent
        await _until(lambda: len(got) > sent, timeout=3 * SLOW_HEARTBEAT_S)
        assert wire.decode(got[-1]).running == 1  # the heartbeat carried it

        async def sent_at_once(now_running: int, now_queued: int) -> wire.LoadRecord:
            sent = len(got)
            running[0], queued[0] = now_running, now_queued
            channel.slots_changed()
            await _until(lambda: len(got) > sent, timeout=0.5)  # the heartbeat: 0.8 s on
            return wire.decode(got[-1])

        full = await sent_at_once(2, 0)  # its second job: every slot is busy now
        assert (full.running, full.free) == (2, 0)
        stock = await sent_at_once(2, 1)  # a stock distcc job queues: capacity shrinks
        assert stock.queued == 1 and stock.share < full.share

    # A slow heartbeat: none falls into the moments that must stay silent, however late
    # this box wakes the test.
    asyncio.run(_with_channel(served, SLOW_HEARTBEAT_S))


def test_a_lease_taken_and_ended_within_the_share_wakes_nothing_until_the_hold_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker's demand moves twice per leased job. A lease taken within what we last
    told the peer we hold, or ended while its share still spreads spare slots to us (the
    release hold), changes no record: no round is woken for it. The held-back end still
    goes out when the hold ends, long before the heartbeat, because the planned wake was
    moved forward; a lease taken again meanwhile sends nothing at all."""
    demand = {"m:b": (0, 0)}
    heartbeat_s = 30.0  # nothing in this test may be a heartbeat...
    monkeypatch.setattr(loadnet, "BACKSTOP_S", 60.0)  # ...nor the loop's longest sleep

    async def leased(channel: LoadChannel, book: _CountingBook, got: list[bytes]) -> None:
        book.demand_source = lambda: (dict(demand), 0, 0)
        await asyncio.sleep(0.05)  # the first round: it knows its peer
        remote = book._remotes["m:b"]
        # The peer spreads both its slots to us (headroom).
        record = wire.LoadRecord("0000000000bb", 7, 1, jobs=2, free=2, share=2)
        await _from_peer(channel, record, lambda: remote.share == 2)
        await asyncio.sleep(0.05)  # the answer to its record is out
        assert not channel._wake.is_set()

        async def change(held: int) -> bool:
            """The broker's demand moves: did it wake the channel? (Apart, as leases are:
            changes within min_interval_s of each other are a burst, and just poke.)"""
            await asyncio.sleep(3 * book.timings.min_interval_s)
            demand["m:b"] = (held, held)
            channel.demand_changed()
            return channel._wake.is_set()

        sent = len(got)
        assert await change(1)  # the first lease: the peer must hear we hold one
        await _until(lambda: len(got) > sent)
        assert wire.decode(got[-1]).held == 1
        await asyncio.sleep(0.02)
        sent, rounds = len(got), book.rounds

        assert not await change(0), "a lease ended within the share waits for the hold"
        assert not await change(1), "taken again within what we told: nothing to tell"
        hold = book.timings.release_hold_s
        await asyncio.sleep(2 * hold)  # the hold's planned wake passes: nothing to send
        assert len(got) == sent
        assert not await change(0)
        await _until(lambda: len(got) > sent, timeout=20 * hold)  # the hold, not a backstop
        assert wire.decode(got[-1]).held == 0
        assert book.rounds <= rounds + 4  # the two planned wakes, and slack for a slow box

    asyncio.run(_with_channel(leased, heartbeat_s))


def test_a_stock_job_in_a_mesh_that_leases_nothing_sends_no_record_until_slots_run_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Portage's stock distcc: jobs no lease accounts for. While no peer holds, wants or
    lately used a slot here, no share moves, and a job taking or freeing a slot changes
    only how many are free: that rides with the next record. Free slots running out, or
    coming back, go at once (a broker waits for a peer with idle slots rather than compile
    locally)."""
    running = [0]
    monkeypatch.setattr(loadnet, "BACKSTOP_S", 60.0)

    async def stock(channel: LoadChannel, book: _CountingBook, got: list[bytes]) -> None:
        channel.figures = lambda: (running[0], 0, 0)
        await asyncio.sleep(0.05)  # the first round: it knows its peer

        async def job_slots(now_running: int) -> bool:
            """The compile server's slots moved: did it wake the channel?"""
            await asyncio.sleep(3 * book.timings.min_interval_s)  # apart, as jobs are
            running[0] = now_running
            channel.slots_changed()
            woke = channel._wake.is_set()
            await asyncio.sleep(0.01)  # the round, if any, is out
            return woke

        sent = len(got)
        assert not await job_slots(1), "one of two slots taken: nothing a peer acts on"
        assert not await job_slots(0)
        assert len(got) == sent
        assert await job_slots(1) is False
        assert await job_slots(2), "the last free slot taken goes at once"
        assert wire.decode(got[-1]).free == 0
        assert await job_slots(1), "a slot free again goes at once"
        assert wire.decode(got[-1]).free == 1

    asyncio.run(_with_channel(stock, 30.0))  # no heartbeat within the test


async def _from_peer(
    channel: LoadChannel, record: wire.LoadRecord, applied: Callable[[], bool]
) -> None:
    """The peer's ``record``, a real datagram over UDP from its address (the book checks
    the address, not the port), once the book shows ``applied``."""
    near_port = channel._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer_sock:
        peer_sock.bind(("127.0.0.1", 0))
        peer_sock.sendto(wire.encode(record), ("127.0.0.1", near_port))
        await _until(applied)


async def _until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)
