"""The asyncio driver of the peer table's probes: connect, close, report.

A probe is a TCP connect to the peer's compile port, closed at once without sending a
byte: the cheapest thing that proves a daemon is accepting. (meshcc's server logs such a
connection at info level only; a SIGKILLed daemon on a live host answers ECONNREFUSED in
under a millisecond, a vanished host runs into the timeout.) The probe function is
injectable, so tests run the loop with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from meshcc.mesh.peers import Liveness, PeerTable, ProbeTarget

__all__ = ["LivenessLoop", "ProbeFn", "ProbeResult", "tcp_probe"]

log = logging.getLogger("meshcc.mesh")

ProbeResult = tuple[bool, str | None, float | None]  # ok, failure detail, round-trip seconds
ProbeFn = Callable[[str, int, float], Awaitable[ProbeResult]]

_MAX_SLEEP_S = 1.0


async def tcp_probe(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Connect to host:port within timeout_s and close; (ok, why not, rtt)."""
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return False, f"no answer within {timeout_s:g}s", None
    except ConnectionRefusedError:
        return False, "connection refused", None
    except OSError as e:
        return False, e.strerror or str(e), None
    rtt = time.monotonic() - started
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), timeout_s)
    return True, None, rtt


class LivenessLoop:
    """Runs due probes (bounded concurrency) and sleeps until the next one or a wake()."""

    def __init__(
        self,
        table: PeerTable,
        probe: ProbeFn = tcp_probe,
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
                ok, detail, rtt = await self._probe(target.host, target.port, target.timeout_s)
            except Exception as e:  # noqa: BLE001 - a probe bug must not stop liveness for all
                log.debug("probe of %s:%d raised %r", target.host, target.port, e)
                ok, detail, rtt = False, f"probe error: {e}", None
        before = self.table.state(target.key)
        after = self.table.probe_done(target, ok, detail, rtt)
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, _MAX_SLEEP_S))
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
