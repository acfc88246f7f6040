"""The asyncio side of the live-load channel: one UDP socket, one loop (see load.py).

The socket listens on the compile port's number (UDP and TCP ports are separate spaces:
the mDNS announcement already tells every peer where to send, and a firewall rule for
the compile port reads naturally as "3632 tcp+udp"). The loop wakes on a change
(:meth:`LoadChannel.poke`, e.g. the broker's demand), at least every ``POLL_S`` to pick
up this box's own figures (running compiles), and sends what :meth:`LoadBook.outgoing`
says; rounds are at least ``min_interval_s`` apart, so bursts of changes coalesce, and a
change after a quiet spell goes out at once.
A received record goes to the book (which checks it) and, if accepted, to ``on_update``
(the broker re-dispatches: a share may have grown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from meshcc.mesh.load import LoadBook, RemotePeer
from meshcc.supervisor import supervise

__all__ = ["LoadChannel", "bind_load_socket"]

log = logging.getLogger("meshcc.mesh")

POLL_S = 0.1  # this box's own figures are looked at this often
PEERS_S = 0.1  # the peer list is rebuilt from the table at most this often


def bind_load_socket(port: int, host: str = "0.0.0.0") -> socket.socket:
    """The channel's UDP socket (OSError if the port is taken)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, channel: LoadChannel) -> None:
        self.channel = channel

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.channel.received(data, str(addr[0]))

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
        self._wake = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.received_count = 0

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
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

    def received(self, data: bytes, source: str) -> None:
        key = self.book.receive(data, source)
        if key is None:
            return
        self.received_count += 1
        if self.on_update is not None:
            try:
                self.on_update(key)
            except Exception:
                log.exception("load channel: update handler failed")
        self._wake.set()  # it may need an ack, or our shares changed

    async def _run(self) -> None:
        peers_at = -float("inf")
        last_figures: tuple[int, int, int] | None = None
        while True:
            # A peer that just came up is in the book within PEERS_S; the broker waits
            # for it meanwhile (leases.py) rather than guess its free slots.
            if self.book.now() - peers_at >= PEERS_S:
                self.book.set_peers(self._peers())
                peers_at = self.book.now()
            if self.figures is not None:
                running, queued, speed = self.figures()
                if (running, queued, speed) != last_figures:
                    self.book.set_local(running=running, queued=queued, speed=speed)
                    last_figures = (running, queued, speed)
            transport = self._transport
            if transport is not None:
                for host, port, data in self.book.outgoing():
                    try:
                        transport.sendto(data, (host, port))
                        self.sent += 1
                    except OSError as e:
                        log.debug("load channel: sending to %s:%d: %s", host, port, e)
            self._wake.clear()
            nxt = self.book.next_due()
            delay = POLL_S if nxt is None else min(POLL_S, max(0.0, nxt - self.book.now()))
            last = self.book.now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            # A change after a quiet spell goes at once; a burst of changes coalesces
            # into one round per min_interval_s.
            rest = last + self.book.timings.min_interval_s - self.book.now()
            if rest > 0:
                await asyncio.sleep(rest)
