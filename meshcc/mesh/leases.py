"""Lease scheduling: which peer slot a local compile client gets, and who waits.

The daemon's control socket asks this broker for a slot on a peer whose toolchain matches
the client's compiler. Requests wait in FIFO order when nothing is free; a release, a
load record from a peer (``dispatch``), or the 0.5 s tick serves them. No I/O here beyond
the event loop's timer.

With the live-load channel (``load``: a :class:`meshcc.mesh.load.LoadBook`), the mesh is
one machine: a peer that speaks it is used only up to the *share* it promised this
daemon (its slots, fairly divided among every box that wants them, its own clients
included), so the leases on one box never exceed its jobs whoever grants them. This box
is one more candidate on the same terms (its share of its own slots, its measured
speed), and the choice is :func:`meshcc.mesh.load.choose`: power of two choices weighted
by free slots and speed. After every change the broker tells the book what it holds and
wants on each peer (``on_demand``: the channel sends it). Peers without the channel
(stock distccd, older meshcc, or silent for the stale time) are counted as before: their
announced limit minus this daemon's own leases.

Without a load book (discovery off) the old order holds: the free-est peer among the
best-ranked (fewest recent failures first); when every matching peer is busy, this box's
own share (distcc's ``localhost/2``).

Reservations (opt-in: ``MESHCC_RESERVE_NEXT=1`` in the daemon's environment). A leased job
starts only after its client hears of the grant, wakes, connects and sends: on a loaded box
the server's slot idles meanwhile, where a stock client's request queued in the server
starts at once. With reservations, when a peer is full with jobs of ours that its fair
division gives us (its share for us covers all we hold there), one more waiting request of
ours goes to it ahead of time *without* asking for a slot first: the server queues it as it
queues stock distcc's, in the open (its status's ``slot_waiting``, the job log's ``queue:``),
and starts it the moment one of our jobs frees the slot. At most one per peer; never on a
peer whose share for us is below what we hold (someone else's turn comes first); the
server still never runs more than its ``--jobs``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.defaults import LOCALHOST_SHARE
from meshcc.mesh.load import Candidate, Demand, LoadBook, choose
from meshcc.mesh.matching import Verdict
from meshcc.supervisor import supervise

log = logging.getLogger("meshcc.leases")

DISPATCH_TICK_S = 0.5
DEMAND_VERDICTS_S = 0.1  # demand() reuses a compiler's verdicts this long
# With the mesh's change signal (follow_changes): a compiler's verdicts are reused this long
# while no peer came, went, changed its record, liveness or standing. Judging 100 peers
# costs ~1-1.5 ms, paid by every lease; what changes with time alone (a back-off ending,
# probes' round trips) is seen within this.
VERDICTS_S = 1.0
# A peer that answered BUSY is not handed out again for this long (or until one of our own
# leases on it ends): long enough not to bounce between full peers, short next to a compile,
# and shorter than the server's turn grace (ServerConfig.turn_grace in transport.server),
# so a box kept out by another's quick re-asking still gets its turn.
BUSY_HOLD_S = 0.1
RESERVE_ENV = "MESHCC_RESERVE_NEXT"  # "1": queue one request per full peer ahead of time


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
    codecs: tuple[str, ...] = ()  # body codecs it negotiates (CODC, wire.codecs), best first
    rtt_s: float | None = None  # its probes' round trip (liveness), for the codec choice
    reserved: bool = False  # ahead of time: the request queues in the peer until a slot frees


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
        load: LoadBook | None = None,
        on_demand: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        reserve: bool | None = None,
    ) -> None:
        self.mesh = mesh
        # Reservations (see the module's docstring); None: as MESHCC_RESERVE_NEXT says.
        self.reserve = os.environ.get(RESERVE_ENV) == "1" if reserve is None else reserve
        self.reserved: dict[str, int] = {}  # leases per peer that queue there, not yet running
        self.local_slots = local_slots
        self.load = load
        self.on_demand = on_demand
        if load is not None:
            load.demand_source = self.demand
        self.rng = rng or random.Random()
        self.in_use: dict[str, int] = {}
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # A compiler's verdicts: (judged at, the mesh's change count then, verdicts).
        self._verdicts: dict[ClientCompiler, tuple[float, int, list[Verdict]]] = {}
        self._mesh_changes = 0
        self._kept_s: float | None = None  # VERDICTS_S once it follows the mesh's changes
        self._unfollow: Callable[[], None] | None = None
        self.busy_until: dict[str, float] = {}  # peers that answered BUSY, until when

    @property
    def held(self) -> int:
        return sum(self.in_use.values())

    def follow_changes(self, subscribe: Callable[[Callable[[], None]], Callable[[], None]]) -> None:
        """Reuse a compiler's verdicts for up to VERDICTS_S until ``subscribe``'s callback
        says the mesh changed (:meth:`meshcc.mesh.service.Mesh.on_change`); without it every
        new request and every release judges every peer again."""
        self._unfollow = subscribe(self._mesh_changed)
        self._kept_s = VERDICTS_S

    def _mesh_changed(self) -> None:
        self._mesh_changes += 1

    @property
    def _record_reuse_s(self) -> float:
        """How long demand() and a load record's dispatch reuse a compiler's verdicts."""
        return max(DEMAND_VERDICTS_S, self._kept_s or 0.0)

    def _judged(self, fp: ClientCompiler, max_age_s: float | None) -> list[Verdict]:
        """The verdicts for ``fp``: kept ones if judged within ``max_age_s`` and the mesh
        has not changed since, else (or with None) judged now, and kept."""
        now = self._clock()
        kept = self._verdicts.get(fp)
        if (
            max_age_s is not None
            and kept is not None
            and kept[1] == self._mesh_changes
            and now - kept[0] <= max_age_s
        ):
            return kept[2]
        verdicts = self.mesh.explain(fp)
        self._verdicts[fp] = (now, self._mesh_changes, verdicts)
        return verdicts

    def _off_reason(self) -> str | None:
        return self.mesh.status.off_reason

    def _take(self, v: Verdict) -> Grant:
        r = v.peer.record
        self.in_use[r.key] = self.in_use.get(r.key, 0) + 1
        return Grant(
            r.key,
            v.address or "",
            r.port,
            2 if r.lzo else 1,
            v.remote_name or "",
            "busy" in r.caps,
            r.codecs,
            v.peer.rtt_s,
        )

    def _full(self, key: str) -> bool:
        """The peer answered BUSY less than BUSY_HOLD_S ago."""
        until = self.busy_until.get(key)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self.busy_until[key]
        return False

    def _take_local(self, why: str) -> Local:
        self.in_use[LOCAL_KEY] = self.in_use.get(LOCAL_KEY, 0) + 1
        return Local(why, held=True)

    def local_free(self) -> int:
        """This box's own slots its clients may take now."""
        held = self.in_use.get(LOCAL_KEY, 0)
        if self.load is None or self.load.jobs == 0:
            return self.local_slots - held  # no compile server here: distcc's localhost/2
        return self.load.local_share(asking=1) - held

    def peer_free(self, v: Verdict) -> tuple[int, float]:
        """(slots this daemon may still take on the peer, its speed; 0 unknown)."""
        r = v.peer.record
        mine = self.in_use.get(r.key, 0)
        if self._full(r.key):
            return 0, 0.0  # it said BUSY a moment ago
        if self.load is not None and r.key in self.load:
            live = self.load.live(r.key)
            if live is not None:
                return live.share - mine, float(live.speed)
            if self.load.awaiting(r.key):
                return 0, 0.0  # its first share is a round trip away
        elif self.load is not None and "load" in r.caps and ":" not in (v.address or ":"):
            return 0, 0.0  # just came up: the channel adds it on its next round
        return r.limit - mine, 0.0

    def _share_coming(self, v: Verdict) -> bool:
        """A peer that will promise us a slot within a round trip: its first record is on
        its way, or it has idle slots (our demand reaches it with the next record)."""
        assert self.load is not None
        key = v.peer.record.key
        if key not in self.load:
            return "load" in v.peer.record.caps and ":" not in (v.address or ":")
        if self.load.awaiting(key):
            return True
        live = self.load.live(key)
        return live is not None and live.free > 0

    def _pick_mesh(self, verdicts: list[Verdict], local_ok: bool) -> Grant | Local | None:
        """The whole mesh, this box included, as candidates of one weighted choice."""
        assert self.load is not None
        cands: list[Candidate] = []
        usable: list[Verdict] = []
        for v in verdicts:
            if not v.included or v.address is None:
                continue
            free, speed = self.peer_free(v)
            cands.append(Candidate(v.peer.record.key, free, speed, v.peer.job_failures))
            usable.append(v)
        if not usable:
            return Local(no_peer_reason(verdicts, self._off_reason()))
        if self.load.jobs == 0:
            # A mesh-only box serves no slots: its own share is the last resort, as
            # distcc's `localhost/2` (peers first, even one whose share is on its way).
            i = choose(cands, self.rng)
            if i >= 0:
                return self._take(usable[i])
            waiting = any(self._share_coming(v) for v in usable)
            if local_ok and not waiting and self.local_free() > 0:
                return self._take_local(
                    f"all {len(usable)} matching peers are busy: compiling here (this box's share)"
                )
            return None
        if local_ok:
            cands.append(Candidate(LOCAL_KEY, self.local_free(), float(self.load.speed)))
        i = choose(cands, self.rng)
        if i < 0:
            return None
        if i == len(usable):
            n = len(usable)
            return self._take_local(f"this box's own share is the best of {n + 1} candidates")
        return self._take(usable[i])

    def _reserve(self, verdicts: list[Verdict]) -> Grant | None:
        """A request queued ahead of time on a full peer whose every slot we hold by its
        own fair division (the fastest such), or None. Only peers that speak the live-load
        channel and BUSY (meshcc servers: their queue is counted and shown)."""
        assert self.load is not None
        best: tuple[float, Verdict] | None = None
        for v in verdicts:
            r = v.peer.record
            if not v.included or v.address is None or "busy" not in r.caps:
                continue
            if self.reserved.get(r.key, 0) or self._full(r.key):
                continue
            live = self.load.live(r.key)
            mine = self.in_use.get(r.key, 0)
            # Full (nothing free for anyone), with our jobs, all of them ours by its share.
            if live is None or mine == 0 or live.share < mine or live.running < live.jobs:
                continue
            if best is None or live.speed > best[0]:
                best = (float(live.speed), v)
        if best is None:
            return None
        v = best[1]
        r = v.peer.record
        self.in_use[r.key] = self.in_use.get(r.key, 0) + 1
        self.reserved[r.key] = 1
        proto = 2 if r.lzo else 1
        return Grant(
            r.key,
            v.address or "",
            r.port,
            proto,
            v.remote_name or "",
            False,  # no SLOT: the server queues the request until a slot frees
            r.codecs,
            v.peer.rtt_s,
            reserved=True,
        )

    def _pick(self, verdicts: list[Verdict], local_ok: bool = True) -> Grant | Local | None:
        """A free slot on the best peer; Local if nothing matches; None if all are busy (or,
        with reservations, a request to queue on a full peer of ours)."""
        if self.load is not None:
            got = self._pick_mesh(verdicts, local_ok)
            if got is None and self.reserve:
                return self._reserve(verdicts)
            return got
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
                return self._take_local(
                    f"all {matching} matching peers are busy: compiling here (this box's share)"
                )
            return None
        return self._take(best[1])

    async def acquire(self, fp: ClientCompiler, local_ok: bool = True) -> Grant | Local:
        """A grant now, Local now, or (all busy) wait in line; cancel-safe."""
        if not self.waiters:
            got = self._pick(self._judged(fp, self._kept_s), local_ok)
            if got is not None:
                self._publish()
                return got
        waiter = _Waiter(fp, asyncio.get_running_loop().create_future(), self._clock(), local_ok)
        self.waiters.append(waiter)
        self._publish()
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
            self._publish()
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
        if self.reserved.get(key, 0):
            # One of our jobs there is over: the queued one takes (or took) its slot.
            self.reserved.pop(key)
        n = self.in_use.get(key, 0) - 1
        if n > 0:
            self.in_use[key] = n
        else:
            self.in_use.pop(key, None)
        if self.waiters:
            # Its outcome, if it changed the peer's standing, was reported first (the mesh
            # then signals a change): kept verdicts are good for the waiters.
            self.dispatch(judge_again=self._kept_s is None)
        else:
            self._publish()

    def _spread(self, n: int, verdicts: list[Verdict], want: dict[str, int]) -> None:
        """Ask for ``n`` waiting requests where they would go: the fastest peers first, up
        to what each could give us now (its unpromised slots and our unused share); what
        is left is claimed on the fastest peers again, up to their jobs, so a contended
        fast peer is shared fairly instead of every peer being asked for everything
        (promises to a client that does not use them idle slots others wait for)."""
        peers = []
        for v in verdicts:
            if not v.included or v.address is None:
                continue
            r = v.peer.record
            free, speed = self.peer_free(v)
            live = self.load.live(r.key) if self.load is not None else None
            # Its idle slots include our unused share: the larger, not the sum.
            could = max(free, live.free if live is not None else 0)
            peers.append((speed, could, r.limit, r.key))
        known = sorted(p[0] for p in peers if p[0] > 0)
        typical = known[len(known) // 2] if known else 1.0
        peers.sort(key=lambda p: (-(p[0] or typical), -p[1], p[3]))
        left = n
        for _, could, _, key in peers:
            give = min(left, max(0, could))
            if give:
                want[key] = want.get(key, 0) + give
                left -= give
        for _, _, limit, key in peers:
            if left <= 0:
                break
            give = min(left, limit)
            want[key] = want.get(key, 0) + give
            left -= give

    def _publish(self, verdicts: dict[ClientCompiler, list[Verdict]] | None = None) -> None:
        """Something changed: this box's own holds go to the book at once (its local share
        is computed from them), and the channel hears of it (``on_demand``: it sends a round
        only if a record changes); what this daemon holds and wants on each peer is
        computed from :meth:`demand`, which the book asks for."""
        if self.load is None:
            return
        self.load.set_local(held=self.in_use.get(LOCAL_KEY, 0), lease_waiting=len(self.waiters))
        if self.on_demand is not None:
            self.on_demand()

    def demand(self) -> Demand:
        """What this daemon holds and wants on each peer, and here: {key: (held, want)},
        local held, local want (the load book calls it before each round of records)."""
        want: dict[str, int] = {}
        local_want = 0
        waiting: collections.Counter[ClientCompiler] = collections.Counter()
        for waiter in self.waiters:
            if not waiter.future.done():
                waiting[waiter.fp] += 1
                local_want += waiter.local_ok
        # Judging 100 peers costs ~1.5 ms; rounds come up to 100 times a second.
        reuse_s = self._record_reuse_s
        for fp, n in waiting.items():  # one pass per compiler, not per waiter
            self._spread(n, self._judged(fp, reuse_s), want)
        now = self._clock()
        for fp in [fp for fp, kept in self._verdicts.items() if now - kept[0] > reuse_s]:
            if fp not in waiting:
                del self._verdicts[fp]  # a compiler nobody asks for any more
        out = {key: (n, n + want.pop(key, 0)) for key, n in self.in_use.items()}
        out.pop(LOCAL_KEY, None)
        for key, n in want.items():
            out[key] = (0, n)
        held = self.in_use.get(LOCAL_KEY, 0)
        return out, held, held + local_want

    def on_load(self, key: str) -> None:
        """A load record from peer ``key`` arrived: serve the waiters at once (a share may
        have grown: no polling). A share it now promises beyond our leases there, with an
        idle slot, ends a BUSY hold on it early: the record is newer news than the BUSY."""
        if key in self.busy_until and self.load is not None:
            live = self.load.live(key)
            if live is not None and live.free > 0 and live.share > self.in_use.get(key, 0):
                del self.busy_until[key]
        if self.waiters:
            self.dispatch(judge_again=False)

    def dispatch(self, judge_again: bool = True) -> None:
        """Serve waiters in order while slots last (one explain per distinct compiler).

        ``judge_again=False`` (a load record arrived, or a release while the broker follows
        the mesh's changes): a compiler's verdicts judged less than DEMAND_VERDICTS_S ago
        (VERDICTS_S when following, and the mesh has not changed since) are used again. A
        record changes a peer's live load, which _pick reads from the load book, not its
        verdict; judging every peer per record was 13 % of the daemon's CPU in a -j build
        (records come up to 100 times a second). The tick and the end of a BUSY hold judge
        again: what they look for changes with time alone.
        """
        reuse_s = None if judge_again else self._record_reuse_s
        verdicts: dict[ClientCompiler, list[Verdict]] = {}  # once per compiler per call
        exhausted: set[tuple[ClientCompiler, bool]] = set()
        served = False
        for waiter in list(self.waiters):
            if waiter.future.done():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
                continue
            if (waiter.fp, waiter.local_ok) in exhausted:
                continue
            vs = verdicts.get(waiter.fp)
            if vs is None:
                vs = verdicts[waiter.fp] = self._judged(waiter.fp, reuse_s)
            got = self._pick(vs, waiter.local_ok)
            if got is None:
                exhausted.add((waiter.fp, waiter.local_ok))
                continue
            self.waiters.remove(waiter)
            waiter.future.set_result(got)
            served = True
        if served:
            self._publish()

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
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        if self._task is not None:
            self._task.cancel()
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.set_result(Local("the daemon is stopping"))
        self.waiters.clear()
