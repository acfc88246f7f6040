"""The asyncio driver of the peer table's probes: probe, report, sleep.

Two probes, both on the peer's compile port, chosen per peer by the table
(``ProbeTarget.method``):

* ``ping`` (meshcc peers announcing the ``ping`` capability): connect, send
  ``PING00000001``, read ``PONG00000001`` and close (wire/protocol.py). The server answers
  from its first read: no job slot, no read slot, no fork, a DEBUG line only. An ``ERRM``
  or a plain close also counts as alive (a daemon that does not know PING yet); a
  connection that never answers within the timeout does not (the daemon is hung:
  clients would hang on it too).
* ``connect`` (older meshcc peers, which log a bare connect + close at DEBUG): connect
  and close without a byte.

Stock distccd peers are never probed (peers.py says why and what replaces it). A
refused connection is reported as final: the peer's kernel says nothing listens there,
so the table need not re-check it. The probe function is injectable, so tests run the
loop with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from meshcc.asyncwait import wait_set
from meshcc.mesh.peers import Liveness, PeerTable, ProbeTarget
from meshcc.wire import protocol as wire

__all__ = ["LivenessLoop", "ProbeFn", "ProbeResult", "peer_probe", "ping_probe", "tcp_probe"]

log = logging.getLogger("meshcc.mesh")


class ProbeResult(NamedTuple):
    """A probe's outcome: alive?, why not, round-trip seconds, refused (no re-check)."""

    ok: bool
    detail: str | None = None
    rtt_s: float | None = None
    final: bool = False


ProbeFn = Callable[[ProbeTarget], Awaitable[ProbeResult | tuple[bool, str | None, float | None]]]

_MAX_SLEEP_S = 1.0


async def _connect(
    host: str, port: int, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | ProbeResult:
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return ProbeResult(False, f"no answer within {timeout_s:g}s")
    except ConnectionRefusedError:
        return ProbeResult(False, "connection refused", final=True)
    except OSError as e:
        return ProbeResult(False, e.strerror or str(e))


async def _close(writer: asyncio.StreamWriter, timeout_s: float) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), timeout_s)


async def tcp_probe(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Connect to host:port within timeout_s and close; (ok, why not, rtt, final)."""
    started = time.monotonic()
    conn = await _connect(host, port, timeout_s)
    if isinstance(conn, ProbeResult):
        return conn
    rtt = time.monotonic() - started
    await _close(conn[1], timeout_s)
    return ProbeResult(True, None, rtt)


async def ping_probe(host: str, port: int, timeout_s: float) -> ProbeResult:
    """PING host:port and wait for PONG (or ERRM / close: an older meshcc) within timeout_s.

    One deadline for the connect and the reply (``asyncio.timeout``: no task per step, the
    prober runs up to ``max_probe_rate`` of these a second)."""
    started = time.monotonic()
    got = b""
    verdict: str | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(wire.PROBE_REQUEST)
            while verdict is None:
                chunk = await reader.read(64)
                got += chunk
                verdict = wire.classify_probe_reply(got, eof=not chunk)
    except TimeoutError:
        if writer is None:
            return ProbeResult(False, f"no answer within {timeout_s:g}s")
        return ProbeResult(False, f"connected, but no reply within {timeout_s:g}s")
    except ConnectionRefusedError:
        return ProbeResult(False, "connection refused", final=True)
    except OSError as e:
        if writer is None:
            return ProbeResult(False, e.strerror or str(e))
        # A reset after the connect: something listens and closed on us (alive).
        verdict = "closed"
        log.debug("probe of %s:%d: %s after connect", host, port, e.strerror or e)
    finally:
        if writer is not None:
            writer.close()  # the transport closes the socket on the next loop turn
    rtt = time.monotonic() - started
    if verdict == "other":
        return ProbeResult(False, f"not a meshcc reply: {got[:12]!r}")
    return ProbeResult(True, None, rtt)


async def peer_probe(target: ProbeTarget) -> ProbeResult:
    """The probe the table asked for (``target.method``)."""
    fn = ping_probe if target.method == "ping" else tcp_probe
    return await fn(target.host, target.port, target.timeout_s)


class LivenessLoop:
    """Runs due probes (bounded concurrency) and sleeps until the next one or a wake()."""

    def __init__(
        self,
        table: PeerTable,
        probe: ProbeFn = peer_probe,
        *,
        max_concurrent: int = 64,
        on_change: Callable[[str, Liveness | None], None] | None = None,
    ) -> None:
        self.table = table
        self._probe = probe
        self._sem = asyncio.Semaphore(max_concurrent)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_change = on_change

    def wake(self) -> None:
        """Re-check the schedule now (a peer was added or reported down)."""
        self._wake.set()

    async def _run_one(self, target: ProbeTarget) -> None:
        async with self._sem:
            try:
                result = ProbeResult(*await self._probe(target))
            except Exception as e:  # noqa: BLE001 - a probe bug must not stop liveness for all
                log.debug("probe of %s:%d raised %r", target.host, target.port, e)
                result = ProbeResult(False, f"probe error: {e}")
        before = self.table.state(target.key)
        after = self.table.probe_done(
            target, result.ok, result.detail, result.rtt_s, final=result.final
        )
        if before is not None and after is not None and before.liveness is not after:
            if self._on_change is not None:
                self._on_change(target.key, after)
        self._wake.set()

    async def run(self) -> None:
        """Forever (until cancelled)."""
        try:
            while True:
                self._wake.clear()
                for target in self.table.due():
                    task = asyncio.create_task(self._run_one(target))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                nxt = self.table.next_wakeup()
                delay = _MAX_SLEEP_S if nxt is None else max(0.0, nxt - self.table.now())
                await wait_set(self._wake, min(delay, _MAX_SLEEP_S))
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
