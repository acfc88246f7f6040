"""Lease scheduling: which peer slot a local compile client gets, and who waits.

The daemon's control socket asks this broker for a slot on a peer whose toolchain matches
the client's compiler. Per-peer slots are the peer's announced job limit, counted here; the
free-est peer among the best-ranked wins (fewest recent failures first). When every
matching peer is busy the client gets this box's own share (distcc's ``localhost/2``), and
when that is taken too, requests wait in FIFO order; a release, or the 0.5 s tick (peers
that appear or vanish meanwhile), serves them. No I/O here beyond the event loop's timer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.defaults import LOCALHOST_SHARE
from meshcc.mesh.matching import Verdict
from meshcc.supervisor import supervise

log = logging.getLogger("meshcc.leases")

DISPATCH_TICK_S = 0.5
# A peer that answered BUSY is not handed out again for this long (or until one of our own
# leases on it ends): long enough not to bounce between full peers, short next to a compile,
# and shorter than the server's turn grace (transport.server ServerConfig.turn_grace), so a box kept
# out by another's quick re-asking still gets its turn.
BUSY_HOLD_S = 0.1


class _MeshStatus(Protocol):
    @property
    def off_reason(self) -> str | None: ...


class PeerView(Protocol):
    """What the broker needs of the mesh: the judged peers for a compiler, and its state."""

    @property
    def status(self) -> _MeshStatus: ...

    def explain(self, fingerprint: ClientCompiler | None) -> list[Verdict]: ...


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot on a peer, held until :meth:`LeaseBroker.release`."""

    key: str
    host: str
    port: int
    protocol: int
    compiler: str
    busy: bool = False  # the peer announces ``busy``: the client may ask it for a slot first


@dataclass(frozen=True, slots=True)
class Local:
    """Compile locally: no peer for this compiler, or (``held``) one of this box's own
    slots while every matching peer is busy, counted until the client's connection closes."""

    reason: str
    held: bool = False


LOCAL_KEY = "localhost"  # in_use key of this box's own share


@dataclass(slots=True, eq=False)
class _Waiter:
    fp: ClientCompiler
    future: asyncio.Future[Grant | Local]
    since: float
    local_ok: bool = True


def no_peer_reason(verdicts: list[Verdict], off_reason: str | None) -> str:
    """Why nothing matched, in one line (the first few exclusions)."""
    if not verdicts:
        return f"no peers (discovery is off: {off_reason})" if off_reason else "no peers seen"
    shown = "; ".join(f"{v.peer.record.host}: {v.reason}" for v in verdicts[:3])
    more = f"; and {len(verdicts) - 3} more" if len(verdicts) > 3 else ""
    return f"no matching peer ({len(verdicts)} seen, all excluded: {shown}{more})"


class LeaseBroker:
    """Counts slots per peer and serves waiting requests in FIFO order."""

    def __init__(
        self,
        mesh: PeerView,
        *,
        clock: Callable[[], float] = time.monotonic,
        local_slots: int = LOCALHOST_SHARE,
    ) -> None:
        self.mesh = mesh
        self.local_slots = local_slots
        self.in_use: dict[str, int] = {}
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.busy_until: dict[str, float] = {}  # peers that answered BUSY, until when

    @property
    def held(self) -> int:
        return sum(self.in_use.values())

    def _off_reason(self) -> str | None:
        return self.mesh.status.off_reason

    def _pick(self, verdicts: list[Verdict], local_ok: bool = True) -> Grant | Local | None:
        """A free slot on the best peer; Local if nothing matches; None if all are busy."""
        best: tuple[tuple[int, int, int], Verdict] | None = None
        matching = 0
        for rank, v in enumerate(verdicts):
            if not v.included or v.address is None:
                continue
            matching += 1
            r = v.peer.record
            free = r.limit - self.in_use.get(r.key, 0)
            if free <= 0 or self._full(r.key):
                continue
            score = (v.peer.job_failures, -free, rank)
            if best is None or score < best[0]:
                best = (score, v)
        if matching == 0:
            return Local(no_peer_reason(verdicts, self._off_reason()))
        if best is None:
            # Every matching peer is busy: this box compiles its own share too (peers
            # first, then `localhost/2`, as distcc walks its host list), else wait.
            if local_ok and self.in_use.get(LOCAL_KEY, 0) < self.local_slots:
                self.in_use[LOCAL_KEY] = self.in_use.get(LOCAL_KEY, 0) + 1
                return Local(
                    f"all {matching} matching peers are busy: compiling here (this box's share)",
                    held=True,
                )
            return None
        v = best[1]
        r = v.peer.record
        self.in_use[r.key] = self.in_use.get(r.key, 0) + 1
        return Grant(
            r.key, v.address or "", r.port, 2 if r.lzo else 1, v.remote_name or "", "busy" in r.caps
        )

    def _full(self, key: str) -> bool:
        until = self.busy_until.get(key)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self.busy_until[key]
        return False

    async def acquire(self, fp: ClientCompiler, local_ok: bool = True) -> Grant | Local:
        """A grant now, Local now, or (all busy) wait in line; cancel-safe."""
        if not self.waiters:
            got = self._pick(self.mesh.explain(fp), local_ok)
            if got is not None:
                return got
        waiter = _Waiter(fp, asyncio.get_running_loop().create_future(), self._clock(), local_ok)
        self.waiters.append(waiter)
        self._ensure_ticking()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                got = waiter.future.result()
                if isinstance(got, Grant):
                    self.release(got.key)  # granted just as the client went away
                elif got.held:
                    self.release(LOCAL_KEY)
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            raise

    def release(self, key: str, busy: bool = False) -> None:
        """A lease ends. ``busy``: the peer answered BUSY (full with other boxes' jobs), so
        it is skipped for BUSY_HOLD_S and waiters get another peer or our share meanwhile;
        any other release frees one of its slots, ours at least, so it is tried again."""
        if busy:
            self.busy_until[key] = self._clock() + BUSY_HOLD_S
            if self.waiters:
                asyncio.get_running_loop().call_later(BUSY_HOLD_S, self.dispatch)
        else:
            self.busy_until.pop(key, None)
        n = self.in_use.get(key, 0) - 1
        if n > 0:
            self.in_use[key] = n
        else:
            self.in_use.pop(key, None)
        if self.waiters:
            self.dispatch()

    def dispatch(self) -> None:
        """Serve waiters in order while slots last (one explain per distinct compiler)."""
        verdicts: dict[ClientCompiler, list[Verdict]] = {}
        exhausted: set[tuple[ClientCompiler, bool]] = set()
        for waiter in list(self.waiters):
            if waiter.future.done():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
                continue
            if (waiter.fp, waiter.local_ok) in exhausted:
                continue
            vs = verdicts.get(waiter.fp)
            if vs is None:
                vs = verdicts[waiter.fp] = self.mesh.explain(waiter.fp)
            got = self._pick(vs, waiter.local_ok)
            if got is None:
                exhausted.add((waiter.fp, waiter.local_ok))
                continue
            self.waiters.remove(waiter)
            waiter.future.set_result(got)

    def _ensure_ticking(self) -> None:
        if self._task is None or self._task.done():
            self._task = supervise("meshcc-leases", self._tick, log)

    async def _tick(self) -> None:
        """Peers appear, vanish or get backed off while requests wait: look again."""
        while self.waiters:
            await asyncio.sleep(self._next_look())
            self.dispatch()

    def _next_look(self) -> float:
        """The tick, or sooner when a peer's BUSY hold ends first."""
        now = self._clock()
        for key in [k for k, until in self.busy_until.items() if until <= now]:
            del self.busy_until[key]  # over (a peer that vanished is never looked at again)
        if not self.busy_until:
            return DISPATCH_TICK_S
        return min(DISPATCH_TICK_S, max(0.01, min(self.busy_until.values()) - now))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.set_result(Local("the daemon is stopping"))
        self.waiters.clear()
