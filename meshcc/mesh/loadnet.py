"""The asyncio side of the live-load channel: one UDP socket, one loop (see load.py).

The socket listens on the compile port's number (UDP and TCP ports are separate spaces:
the mDNS announcement already tells every peer where to send, and a firewall rule for
the compile port reads naturally as "3632 tcp+udp"). The loop wakes on a change
(:meth:`LoadChannel.poke`: a peer announced or gone; :meth:`LoadChannel.demand_changed`
when the broker's leases or requests moved, and :meth:`LoadChannel.slots_changed` when a
job slot is taken, freed or queued for, each only when that moves what peers act on), on a
received record, and when the next heartbeat or held-back lease end is due, and sends what
:meth:`LoadBook.outgoing` says; rounds are at least ``min_interval_s`` apart, so bursts of
changes coalesce, and a change after a quiet spell goes out at once.

Why not a poll: every daemon on the LAN runs this loop all day. Polling this box's
figures and rebuilding the peer list ten times a second cost an idle daemon with one peer
~13 ms of CPU a second (1.3 % of a core, on every box); the pokes carry every change, and
``BACKSTOP_S`` only bounds what a missed one could cost.
A received record goes to the book (which checks it) and, if accepted, to ``on_update``
(the broker re-dispatches: a share may have grown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable

from meshcc.mesh.load import LoadBook, RemotePeer
from meshcc.supervisor import supervise
from meshcc.transport.addresses import peer_ip

__all__ = ["LoadChannel", "bind_load_socket"]

log = logging.getLogger("meshcc.mesh")

BACKSTOP_S = 2.0  # the longest the loop sleeps without a poke, a record or a heartbeat


def bind_load_socket(port: int) -> socket.socket:
    """The channel's UDP socket on every address, IPv4 and IPv6 (an IPv6-only LAN's
    peers need it as much as an IPv4 one's); IPv4 only where the kernel has no IPv6.
    OSError if the port is taken."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:  # IPv6 disabled in this kernel
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        else:
            sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _destination(family: int, host: str) -> str:
    """``host`` as a socket of ``family`` can send to it: a dual-stack socket reaches an
    IPv4 peer at its IPv4-mapped address."""
    if family == socket.AF_INET6 and ":" not in host:
        return f"::ffff:{host}"
    return host


_SOURCES = 256  # source addresses whose normal form is remembered (cleared when full)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, channel: LoadChannel) -> None:
        self.channel = channel
        # Each peer sends a record every heartbeat: parse its address once, not each time.
        self._sources: dict[tuple[object, ...], str] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source = self._sources.get(addr)
        if source is None:
            try:
                ip, _ = peer_ip(addr)  # IPv4-mapped back to IPv4; link-local keeps its scope
            except ValueError:
                return
            if len(self._sources) >= _SOURCES:
                self._sources.clear()
            source = self._sources[addr] = str(ip)
        self.channel.received(data, source)

    def error_received(self, exc: Exception) -> None:
        log.debug("load channel: %s", exc)


class LoadChannel:
    """Sends the book's records to its peers and feeds it what they send."""

    def __init__(
        self,
        book: LoadBook,
        peers: Callable[[], list[RemotePeer]],
        figures: Callable[[], tuple[int, int, int]] | None = None,
    ) -> None:
        self.book = book
        self._peers = peers
        self.figures = figures  # () -> (running, queued, speed) of this box
        self.on_update: Callable[[str], None] | None = None
        self.on_heard: Callable[[str], None] | None = None  # a peer's record was accepted
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None  # the planned wake (a heartbeat...)
        self._asked_at = -math.inf  # the book's time of _changed's last LoadBook.news()
        self._transport: asyncio.DatagramTransport | None = None
        self._family = socket.AF_INET6
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.received_count = 0

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        self._family = sock.family
        self._task = supervise("meshcc-load-channel", self._run, log)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()

    def poke(self) -> None:
        """Something the peers should know changed: send soon."""
        self._wake.set()

    def demand_changed(self) -> None:
        """The broker's leases or waiting requests moved: send a round now only if that
        changes a record (:meth:`LoadBook.news`). Otherwise it may still move the next
        round that time brings: closer for a lease end held back for ``release_hold_s``,
        back to the heartbeat when the lease is taken again within the hold; the planned
        wake moves, with no wake now. A serial build's lease taken and ended each cost a
        round that sent nothing, and the hold's end a third. In a burst (a -j build's
        leases) the question would cost more than the rounds it spares: a change within
        ``min_interval_s`` of the last question, or while a round is already coming, just
        pokes (rounds coalesce)."""
        self._changed()

    def slots_changed(self) -> None:
        """This box's compile server took, freed or queued for a slot: read its figures.
        A leased job's slot is news only (LoadBook.set_figures), and goes with the next
        record. A job no lease accounts for (stock distcc) moves what this box shares out,
        and a round goes if that changes a record (:meth:`demand_changed`'s rule): a share,
        or free slots running out or coming back. Otherwise it cost every peer a record and
        a wake-up twice per job, in a mesh that leases nothing (Portage's stock distcc)."""
        if self.figures is None:
            self.poke()
            return
        if self.book.set_figures(*self.figures()):
            self._changed()

    def _changed(self) -> None:
        """A change that may or may not move a record (:meth:`demand_changed` says when a
        round goes, and when the planned wake moves instead)."""
        if self._wake.is_set():
            return  # a round is coming: it sees this change
        now = self.book.now()
        if now - self._asked_at < self.book.timings.min_interval_s:
            self.poke()
            return
        self._asked_at = now
        if self.book.news():
            self.poke()
            return
        timer = self._timer
        if timer is None or timer.cancelled():
            return  # not asleep: the loop plans its wake when it next sleeps
        loop = asyncio.get_running_loop()
        at = loop.time() + self._delay()
        if abs(at - timer.when()) > self.book.timings.min_interval_s:
            timer.cancel()  # a lease end now held back, or one taken again after all
            self._timer = loop.call_at(at, self._wake.set)

    def received(self, data: bytes, source: str) -> None:
        key = self.book.receive(data, source)
        if key is None:
            return
        self.received_count += 1
        for handler in (self.on_heard, self.on_update):
            if handler is not None:
                try:
                    handler(key)
                except Exception:
                    log.exception("load channel: a record's handler failed")
        if self.book.round_due:  # it needs an ack, or our shares changed: answer now
            self._wake.set()

    async def _run(self) -> None:
        peers: list[RemotePeer] | None = None
        while True:
            # The mesh pokes when a peer comes or goes; the broker waits for a new one
            # meanwhile (leases.py) rather than guess its free slots. The same list object
            # means nothing changed.
            latest = self._peers()
            if latest is not peers:
                self.book.set_peers(latest)
                peers = latest
            if self.figures is not None:
                running, queued, speed = self.figures()
                self.book.set_local(running=running, queued=queued, speed=speed)
            transport = self._transport
            if transport is not None:
                family = self._family
                for host, port, data in self.book.outgoing():
                    try:
                        transport.sendto(data, (_destination(family, host), port))
                        self.sent += 1
                    except OSError as e:
                        log.debug("load channel: sending to %s:%d: %s", host, port, e)
            self._wake.clear()
            self.book.round_due = False
            last = self.book.now()
            await self._sleep(self._delay())
            # A change after a quiet spell goes at once; a burst of changes coalesces
            # into one round per min_interval_s.
            rest = last + self.book.timings.min_interval_s - self.book.now()
            if rest > 0:
                await asyncio.sleep(rest)

    def _delay(self) -> float:
        """Seconds to the next round that time alone brings: a heartbeat or a held-back
        lease end (:meth:`LoadBook.next_due`), ``BACKSTOP_S`` at most."""
        due = self.book.next_due()
        if due is None:
            return BACKSTOP_S
        return min(BACKSTOP_S, max(0.0, due - self.book.now()))

    async def _sleep(self, delay: float) -> None:
        """Until poked or ``delay`` seconds pass, by a timer (asyncwait.wait_set's) kept
        where :meth:`_changed` can move it when what time brings next moved."""
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()  # one _changed moved after it had fired
        self._timer = loop.call_at(loop.time() + delay, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            self._timer.cancel()
