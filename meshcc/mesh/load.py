"""Live load, mesh-wide: what every daemon tells its peers, and who may use how many slots.

Pure state (no I/O, injected clock); :mod:`meshcc.mesh.loadnet` carries its datagrams.

The channel. Each daemon sends one small UDP datagram (:mod:`meshcc.wire.load`) to each
meshcc peer it tracks that announces the ``load`` capability, to the peer's compile port
number: on any change a peer acts on (slots, whether any is free, whether all are busy,
shares, demand), at most every ``min_interval_s`` per peer (stretched so the daemon sends
at most ``max_send_rate`` a second however many peers there are), and at least every
``heartbeat_s``; figures that only inform (the exact free, running and queued counts,
speed) ride with those records. A record from
a peer is *fresh* for ``stale_s``; after that this daemon forgets the live figures and
falls back to the mDNS hint and its own lease count (distcc's behaviour).

Slots are promised, never guessed. Each daemon is the only authority over its own job
slots. A record tells the recipient three things about itself as a client of the
sender: ``held`` (leases it holds there), ``want`` (held plus requests waiting that the
sender could serve) and, in the other direction, ``share``: how many slots of the
sender the recipient's clients may hold. The sender computes shares by max-min fair
water-filling of its capacity over every client's ``want`` (this box's own clients are
one more client, on the same terms), and only ever *promises* a share when the slots
are uncommitted: a client's commitment is the largest of what it holds and every share
promised to it that it has not acknowledged (``ack`` = highest seq it applied) yet. So
the leases on one box never exceed its ``--jobs``, whoever grants them, however the
datagrams are delayed; a lost datagram only delays a share (the heartbeat re-sends it).

Trust: the same as discovery's. A record is accepted only from an address the peer
announced over mDNS and that the allowed subnets admit, with the node id of that
announcement; each peer's records are rate-limited (``max_recv_rate``), ordered by
(boot, seq), and clamped to the ``jobs`` the peer announced. State is per known peer
only, so it is bounded by the peer table.

Fairness, mesh-wide: each record also says how many leases the sender's clients hold on
the whole mesh (``held_all``). A contended slot goes to the client holding the fewest in
all (:func:`fair_fill`; ties to the one holding it here, so shares do not churn): a box
holding both servers' only slots yields one (its share there drops below what it holds, so
it takes no new job there) to a box holding none, while a box using one server each is left
alone. Without that, each server alone is fair to its clients but the mesh is not: the
holder of a slot re-takes it the instant its job ends, and the other box starves.

Speed: :class:`SpeedMeter` turns the compile server's totals (bytes of preprocessed
source compiled, seconds of compiler wall time) into an EWMA of bytes per second per job:
job-size independent (a big file counts as more work, not as a slow host), measured by
the server itself on real jobs (whoever sent them), so every client sees the same figure.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshcc.wire import load as wire

__all__ = [
    "HEADROOM_ABOVE_PEAK",
    "LOCAL",
    "Candidate",
    "Demand",
    "LoadBook",
    "LoadTimings",
    "PeerLoad",
    "RemotePeer",
    "SpeedMeter",
    "choose",
    "fair_fill",
    "water_fill",
]

LOCAL = "localhost"  # the key of this box's own share (leases.LOCAL_KEY)
# Headroom reaches this many slots above the most a client held or wanted lately: its next
# request is granted at once, and a lease it ended is inside its share (the release hold),
# while spare slots beyond that stay unpromised. Spreading every spare slot as headroom
# made each job no lease accounts for (stock distcc) move some client's share, a record
# and an ack each way, and a box asking first had to wait for that headroom to be cut.
HEADROOM_ABOVE_PEAK = 1

Demand = tuple[dict[str, tuple[int, int]], int, int]
"""{peer key: (held, want)}, local held, local want: what this daemon's clients use."""


@dataclass(frozen=True, slots=True)
class LoadTimings:
    heartbeat_s: float = 0.5
    # A heartbeat due within this fraction of heartbeat_s goes out with a round already
    # being sent: the peers' heartbeats fall into step, one wake-up for all of them.
    heartbeat_early: float = 0.2
    min_interval_s: float = 0.01  # per peer, between two records with changes
    stale_s: float = 2.0  # a peer's live figures are dropped this long after its last record
    max_send_rate: float = 1000.0  # datagrams per second this daemon sends, at most
    max_recv_rate: float = 200.0  # records per second accepted from one peer, at most
    max_pending: int = 64  # unacknowledged promises kept per peer (older: folded into one)
    forget_s: float = 30.0  # a silent peer's commitment is released after this at the latest
    # A client that held or wanted slots this recently keeps its part of the spare slots,
    # up to HEADROOM_ABOVE_PEAK above the most it held or wanted lately (headroom): a
    # serial build's next job is granted without a round trip, and a job's end costs no
    # round of records taking the headroom back and another giving it again.
    # Demand always comes first: a client that wants a slot takes it from headroom after
    # one acknowledged round, as from any promise.
    headroom_linger_s: float = 2.0
    # A lease ended while the peer still spreads spare slots to us (our share exceeds what
    # we told it we hold): it hears that we hold one fewer only after this long, unless
    # the share shrinks to what we hold first. A serial build's next job (the next
    # compile's start-up, make's or configure's own work: tens of ms) then takes the slot
    # again with nothing sent either way, where each job cost two records and the
    # server's two answers. Safe: a slot within our share is committed to us whether we
    # hold it or not, so reporting it held promises no one less. Free for others: spare
    # slots are spread only once every client's demand is met, and a box that then wants
    # more cuts our headroom first, which ends the hold.
    release_hold_s: float = 0.25


@dataclass(frozen=True, slots=True)
class PeerLoad:
    """One peer's live load as this daemon sees it (for the broker, status and top)."""

    jobs: int
    running: int
    queued: int
    free: int
    speed: int  # bytes/s per job; 0 unknown
    share: int  # slots this daemon's clients may hold there
    held: int  # leases this daemon's clients hold there
    age_s: float  # since its last record

    def to_dict(self) -> dict[str, object]:
        return {
            "jobs": self.jobs,
            "running": self.running,
            "queued": self.queued,
            "free": self.free,
            "speed": self.speed,
            "share": self.share,
            "held": self.held,
            "age_s": round(self.age_s, 4),
        }


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """A peer the channel talks to: from the peer table (meshcc, ``load`` cap, an address)."""

    key: str
    node: str
    address: str  # where to send (the address the mesh uses for it)
    port: int
    jobs: int  # as announced: the ceiling of anything it reports
    addresses: frozenset[str] = frozenset()  # any announced, allowed address it may send from


class SpeedMeter:
    """EWMA of bytes per second per job from monotonically growing totals."""

    def __init__(self, alpha: float = 0.3, min_seconds: float = 0.05) -> None:
        self.alpha = alpha
        self.min_seconds = min_seconds  # less compile time than this: wait for more
        self.value = 0.0
        self._bytes = 0
        self._seconds = 0.0

    def update(self, total_bytes: int, total_seconds: float) -> int:
        db, ds = total_bytes - self._bytes, total_seconds - self._seconds
        if ds >= self.min_seconds and db >= 0:
            rate = db / ds
            self.value = rate if self.value == 0 else self.value + self.alpha * (rate - self.value)
            self._bytes, self._seconds = total_bytes, total_seconds
        return round(self.value)


def water_fill(
    capacity: int, demands: Mapping[str, int], prefer: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Max-min fair integer shares of ``capacity`` (each at most its demand). Units that do
    not divide evenly go to those holding more (``prefer``), so shares do not churn."""
    prefer = prefer or {}
    alloc = dict.fromkeys(demands, 0)
    left = max(0, capacity)
    active = sorted((k for k, d in demands.items() if d > 0), key=lambda k: (-prefer.get(k, 0), k))
    while left > 0 and active:
        per = left // len(active)
        if per == 0:
            for k in active[:left]:
                alloc[k] += 1
            break
        still = []
        for k in active:
            give = min(per, demands[k] - alloc[k])
            alloc[k] += give
            left -= give
            if alloc[k] < demands[k]:
                still.append(k)
        active = still
    return alloc


def fair_fill(
    capacity: int,
    demands: Mapping[str, int],
    base: Mapping[str, int] | None = None,
    prefer: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Integer shares of ``capacity`` (each at most its demand), max-min fair over what each
    client holds in all: ``base`` is what it holds elsewhere (other peers), so each unit goes
    to the client with the fewest slots mesh-wide that still wants one. Ties go to those
    holding more here (``prefer``: shares do not churn), then by name."""
    base = base or {}
    prefer = prefer or {}
    alloc = dict.fromkeys(demands, 0)
    heap = [(max(0, base.get(k, 0)), -prefer.get(k, 0), k) for k, d in demands.items() if d > 0]
    heapq.heapify(heap)
    left = min(max(0, capacity), sum(d for d in demands.values() if d > 0))
    while left > 0 and heap:
        level, rank, k = heapq.heappop(heap)
        alloc[k] += 1
        left -= 1
        if alloc[k] < demands[k]:
            heapq.heappush(heap, (level + 1, rank, k))
    return alloc


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host the broker may give a job to: free slots (for us) and speed (bytes/s/job)."""

    key: str
    free: int
    speed: float
    failures: int = 0


def choose(cands: Sequence[Candidate], rng: random.Random) -> int:
    """Power of two choices: two hosts drawn with weights free x speed; the faster wins
    (then the freer). A fast idle host is preferred; a slow one is still used when the
    fast ones are full; and clients deciding at once do not all pile onto one host."""
    usable = [i for i, c in enumerate(cands) if c.free > 0]
    if not usable:
        return -1
    least = min(cands[i].failures for i in usable)
    usable = [i for i in usable if cands[i].failures == least]
    if len(usable) == 1:
        return usable[0]
    known = [cands[i].speed for i in usable if cands[i].speed > 0]
    typical = sorted(known)[len(known) // 2] if known else 1.0

    def speed(i: int) -> float:
        return cands[i].speed if cands[i].speed > 0 else typical

    weights = [cands[i].free * speed(i) for i in usable]
    a, b = rng.choices(usable, weights), rng.choices(usable, weights)
    x, y = a[0], b[0]
    return max((x, y), key=lambda i: (speed(i), cands[i].free, -i))


@dataclass(slots=True)
class _Peak:
    """The most slots a client held or wanted lately: a new high, or the level it is at
    once the last high is older than the window (a running max, not an exact one)."""

    level: int = 0
    at: float = -math.inf

    def note(self, level: int, now: float, window: float) -> None:
        if level >= self.level or now - self.at > window:
            self.level, self.at = level, now


@dataclass(slots=True)
class _RoundInputs:
    """What one round's records are made of (:meth:`LoadBook._round_inputs`)."""

    now: float
    held: dict[str, int]  # the leases to tell each peer we hold there (release hold applied)
    targets: dict[str, int]  # each client's fair share
    capacity: int
    committed: dict[str, int]  # each peer's commitment; updated as the round promises
    total: int  # everyone's commitment and ours; updated as the round promises
    free: int


@dataclass(slots=True)
class _Remote:
    peer: RemotePeer
    since: float  # tracked since (grace for its first record)
    # what it told us
    boot: int | None = None
    seq: int = 0
    got_at: float | None = None
    jobs: int = 0
    running: int = 0
    queued: int = 0
    free: int = 0
    speed: int = 0
    share: int = 0  # ours on it
    their_held: int = 0  # its clients' leases on us
    their_want: int = 0
    their_all: int = 0  # its clients' leases on the whole mesh (held_all)
    active_at: float = -math.inf  # when it last held or wanted anything (headroom_linger_s)
    peak: _Peak = field(default_factory=_Peak)  # the most it held or wanted lately
    ack: int = 0  # our seq it applied
    # promises we made (seq, share), unacknowledged; and the share it acknowledged
    pending: list[tuple[int, int]] = field(default_factory=list)
    acked_share: int = 0
    # our side of its demand
    my_held: int = 0
    my_want: int = 0
    told_held: int = 0  # held in the last record sent (a drop waits release_hold_s)
    drop_since: float | None = None  # when held fell below told_held within our share
    # sending
    sent_at: float = -math.inf
    last_sent: tuple[int | bool, ...] = ()
    must_ack: bool = False
    # receive rate limit (token bucket)
    tokens: float = 0.0
    tokens_at: float = 0.0

    def fresh(self, now: float, stale_s: float) -> bool:
        return self.got_at is not None and now - self.got_at <= stale_s

    def promise_inputs(self) -> tuple[int | None, ...]:
        """What the shares we promise depend on from this peer: its want and holdings, the
        promises it has not settled (every record acks the last seq it saw, which matters
        only when that settles one), and its boot (a restart drops them all)."""
        return (
            self.their_held,
            self.their_want,
            self.their_all,
            len(self.pending),
            self.acked_share,
            self.boot,
        )

    def committed(self, now: float, forget_s: float) -> int:
        """Slots of ours it may be using: what it holds, or any share it may still act on.
        A silent peer keeps its last commitment (its clients may still hold those slots)
        until it leaves the peer list (probes say it is down) or ``forget_s`` passes."""
        if self.got_at is None or now - self.got_at > forget_s:
            return 0
        pending = max((s for _, s in self.pending), default=0)
        return max(self.their_held, self.acked_share, pending)


class LoadBook:
    """This daemon's side of the channel: its peers' live load, and the shares it promises."""

    def __init__(
        self,
        node: str,
        jobs: int,
        timings: LoadTimings = LoadTimings(),
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.jobs = max(0, jobs)
        self.timings = timings
        self._clock = clock
        self.rng = rng or random.Random()
        self.boot = self.rng.getrandbits(32)
        self._seq = 0
        self._remotes: dict[str, _Remote] = {}
        self._by_node: dict[str, str] = {}
        # this box's figures
        self.running = 0
        self.queued = 0
        self.speed = 0
        self.local_held = 0
        self.local_want = 0
        self.lease_waiting = 0  # requests waiting in this box's broker (published as queued)
        self.local_all = 0  # leases this box's clients hold on the whole mesh (held_all)
        self._local_active_at = -math.inf  # as _Remote.active_at, for this box's clients
        self._local_peak = _Peak()  # as _Remote.peak
        self.rejected: dict[str, int] = {}  # reason -> count (status, debugging)
        # A received record changed what this daemon promises or owes an ack: the channel
        # sends a round now rather than at the next heartbeat (it clears this).
        self.round_due = False
        # The broker's demand, asked for once per round of records (None: set_demand()).
        self.demand_source: Callable[[], Demand] | None = None

    def now(self) -> float:
        return self._clock()

    def _burst(self) -> float:
        return max(1.0, self.timings.max_recv_rate / 10)

    # -- peers

    def set_peers(self, peers: Iterable[RemotePeer]) -> None:
        """The peers to talk to now (the table's live meshcc peers with ``load``)."""
        now = self._clock()
        seen = set()
        for p in peers:
            seen.add(p.key)
            r = self._remotes.get(p.key)
            if r is None:
                self._remotes[p.key] = _Remote(p, since=now, tokens=self._burst(), tokens_at=now)
            elif r.peer != p:
                if r.peer.node != p.node:
                    self._remotes[p.key] = _Remote(
                        p, since=now, tokens=self._burst(), tokens_at=now
                    )
                else:
                    r.peer = p
        for key in set(self._remotes) - seen:
            del self._remotes[key]
        self._by_node = {r.peer.node: k for k, r in self._remotes.items()}

    def __contains__(self, key: object) -> bool:
        return key in self._remotes

    def keys(self) -> list[str]:
        return list(self._remotes)

    # -- receiving

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def receive(self, data: bytes, source: str) -> str | None:
        """A datagram from ``source``; the key of the peer it updated, else None (dropped:
        unreadable, unknown node, wrong source address, over its rate, or old)."""
        try:
            rec = wire.decode(data)
        except wire.LoadError as e:
            self._reject(e.reason)
            return None
        key = self._by_node.get(rec.node)
        if key is None:
            self._reject("unknown")
            return None
        r = self._remotes[key]
        # A link-local source comes with its %scope, as the table holds link-local
        # addresses; an unscoped form must match exactly (never a bare fe80:: for any link).
        if source not in r.peer.addresses | {r.peer.address}:
            self._reject("source")
            return None
        now = self._clock()
        rate = self.timings.max_recv_rate
        r.tokens = min(self._burst(), r.tokens + (now - r.tokens_at) * rate)
        r.tokens_at = now
        if r.tokens < 1.0:
            self._reject("rate")
            return None
        r.tokens -= 1.0
        if rec.boot == r.boot and rec.seq <= r.seq:
            self._reject("old")
            return None
        if rec.boot != r.boot and r.boot is not None:
            # The peer restarted: whatever it held or was promised is gone.
            r.pending.clear()
            r.acked_share = 0
            r.ack = 0
        cap = max(0, r.peer.jobs)  # never more than it announced (mesh-only: none)
        # A record that changes nothing our shares depend on (a heartbeat) needs no round
        # of records back.
        before = r.promise_inputs()
        was_active = r.their_held > 0 or r.their_want > 0
        r.boot, r.seq, r.got_at = rec.boot, rec.seq, now
        r.jobs = min(rec.jobs, cap)
        r.running, r.queued = rec.running, rec.queued
        r.free = min(rec.free, r.jobs)
        r.speed = rec.speed
        if rec.share != r.share:
            r.must_ack = True  # a new promise: tell it we have it, so it may promise others
        r.share = min(rec.share, r.jobs)
        r.their_held = min(rec.held, self.jobs)
        r.their_want = min(max(rec.want, r.their_held), self.jobs)
        r.their_all = max(rec.held_all, r.their_held)
        if was_active or r.their_want > 0:  # (want is never below held)
            r.active_at = now
        r.peak.note(r.their_want, now, self.timings.headroom_linger_s)
        if rec.ack_boot == self.boot and rec.ack >= r.ack:
            r.ack = rec.ack
            acked = [s for q, s in r.pending if q <= rec.ack]
            if acked:
                r.acked_share = acked[-1]
            r.pending = [(q, s) for q, s in r.pending if q > rec.ack]
        if r.must_ack or r.promise_inputs() != before:
            self.round_due = True
        return key

    # -- this box

    def set_local(
        self,
        *,
        running: int | None = None,
        queued: int | None = None,
        speed: int | None = None,
        held: int | None = None,
        want: int | None = None,
        lease_waiting: int | None = None,
    ) -> None:
        """This box's figures: ``running`` job slots taken and ``queued`` requests waiting
        for one in its compile server (the server's exact counts), its ``speed``, what its
        own clients ``held`` and ``want`` of its own slots, and the requests waiting in its
        broker (``lease_waiting``: published with ``queued``, not load on this server)."""
        if lease_waiting is not None:
            self.lease_waiting = max(0, lease_waiting)
        if running is not None:
            self.running = max(0, running)
        if queued is not None:
            self.queued = max(0, queued)
        if speed is not None:
            self.speed = max(0, speed)
        was_active = self.local_held > 0 or self.local_want > 0
        if held is not None:
            self.local_held = max(0, held)
        if want is not None:
            self.local_want = max(0, want)
        if was_active or self.local_held > 0 or self.local_want > 0:
            self._local_active_at = self._clock()
        if held is not None or want is not None:
            level = max(self.local_held, self.local_want)
            self._local_peak.note(level, self._clock(), self.timings.headroom_linger_s)

    def set_figures(self, running: int, queued: int, speed: int) -> bool:
        """This box's compile server's figures (as :meth:`set_local`); True when peers may
        need to hear of them at once (:meth:`news` says whether they do): the capacity
        this daemon shares out moved (a job no lease accounts for came, went or queued),
        so shares may have and free slots may have run out, or every slot became busy or
        stopped being (a broker queues a request ahead of time only on a full peer).
        Otherwise a leased job taking or freeing its slot, or a new speed, is
        news only: it rides with the next record that goes out anyway, a heartbeat at the
        latest (:meth:`outgoing`), rather than costing every peer a record and a wake-up
        twice per served job."""
        now = self._clock()
        before = (self._capacity(now), self._full)
        self.set_local(running=running, queued=queued, speed=speed)
        return (self._capacity(now), self._full) != before

    @property
    def _full(self) -> bool:
        return self.running >= self.jobs

    def set_demand(self, key: str, held: int, want: int) -> None:
        """This daemon's clients hold ``held`` leases on peer ``key`` and want ``want``."""
        r = self._remotes.get(key)
        if r is not None:
            r.my_held, r.my_want = max(0, held), max(held, want)

    # -- shares

    def _capacity(self, now: float) -> int:
        """Our slots minus work no lease accounts for (stock distcc clients' jobs): from the
        server's exact slots taken and requests queued (not the broker's waiting leases,
        which are demand for the whole mesh, not load here)."""
        unleased = max(0, self.running + self.queued - self._leased(now))
        return max(0, self.jobs - unleased)

    @property
    def _stale(self) -> float:
        return self.timings.stale_s

    def _targets(self, now: float, asking: int = 0) -> dict[str, int]:
        """Each client's fair share: water-filling of the wants, then what is left over
        spread over the clients that hold or want anything, or did within
        ``headroom_linger_s``, each up to :data:`HEADROOM_ABOVE_PEAK` slots above the most it
        held or wanted lately (headroom: its next request is granted at once, without a
        round trip to ask for more)."""
        demands = {k: r.their_want for k, r in self._remotes.items() if r.fresh(now, self._stale)}
        demands[LOCAL] = min(max(self.local_want, self.local_held + asking), self.jobs)
        held = {k: self._remotes[k].their_held for k in demands if k != LOCAL}
        held[LOCAL] = self.local_held
        elsewhere = {k: self._remotes[k].their_all - held[k] for k in demands if k != LOCAL}
        elsewhere[LOCAL] = self.local_all - self.local_held
        capacity = self._capacity(now)
        alloc = fair_fill(capacity, demands, elsewhere, held)
        left = capacity - sum(alloc.values())
        since = now - self.timings.headroom_linger_s
        recent = {k for k, r in self._remotes.items() if r.active_at >= since}
        if self._local_active_at >= since:
            recent.add(LOCAL)
        room = {}
        for k, d in demands.items():
            if d > 0 or held[k] > 0 or k in recent:
                peak = (self._local_peak if k == LOCAL else self._remotes[k].peak).level
                limit = min(capacity, max(peak, held[k], d) + HEADROOM_ABOVE_PEAK)
                room[k] = max(0, limit - alloc[k])
        if left > 0 and room:
            for k, extra in water_fill(left, room, held).items():
                alloc[k] += extra
        return alloc

    def _room_for(self, key: str, now: float) -> int:
        """Slots we may promise ``key`` now: capacity minus everyone else's commitment."""
        others = sum(
            r.committed(now, self.timings.forget_s) for k, r in self._remotes.items() if k != key
        )
        if key != LOCAL:
            others += self.local_held
        return max(0, self._capacity(now) - others)

    def local_share(self, asking: int = 0) -> int:
        """Slots this box's own clients may hold on it (its share, as any client's), counting
        ``asking`` more requests as wanted: the local client needs no round trip to ask."""
        now = self._clock()
        target = self._targets(now, asking).get(LOCAL, 0)
        return max(self.local_held, min(target, self._room_for(LOCAL, now)))

    def leased(self) -> int:
        """Leases peers' clients hold on this box now (as they last reported)."""
        return self._leased(self._clock())

    def _leased(self, now: float) -> int:
        return sum(
            r.their_held for r in self._remotes.values() if r.fresh(now, self.timings.forget_s)
        )

    def free(self) -> int:
        """Our idle slots: nobody holds them (a promise not used yet still counts as free:
        the promise moves to whoever asks, after one acknowledged round)."""
        now = self._clock()
        return self._free(now, self._capacity(now))

    def _free(self, now: float, capacity: int) -> int:
        return max(0, capacity - self._leased(now) - self.local_held)

    # -- what the broker asks

    def live(self, key: str) -> PeerLoad | None:
        """The peer's live load, None when we have none fresh (then: the mDNS hint)."""
        r = self._remotes.get(key)
        now = self._clock()
        if r is None or not r.fresh(now, self._stale):
            return None
        assert r.got_at is not None
        return PeerLoad(
            r.jobs, r.running, r.queued, r.free, r.speed, r.share, r.my_held, now - r.got_at
        )

    def awaiting(self, key: str) -> bool:
        """A load peer not heard from yet, within its grace period: grant nothing there yet
        (its first share comes within a round trip); after the grace, fall back."""
        r = self._remotes.get(key)
        if r is None or r.got_at is not None:
            return False
        return self._clock() - r.since <= self._stale

    def loads(self) -> dict[str, PeerLoad]:
        out = {}
        for key in self._remotes:
            v = self.live(key)
            if v is not None:
                out[key] = v
        return out

    # -- sending

    def _interval(self) -> float:
        rate = self.timings.max_send_rate
        n = len(self._remotes)
        return max(self.timings.min_interval_s, n / rate if rate > 0 else 0.0)

    def _round_inputs(self) -> _RoundInputs:
        """Bring the book up to date for a round (the broker's demand, the release hold)
        and compute what every record in it is made of."""
        if self.demand_source is not None:
            per_peer, local_held, local_want = self.demand_source()
            for key, r in self._remotes.items():
                r.my_held, r.my_want = per_peer.get(key, (0, 0))
            self.set_local(held=local_held, want=local_want)
            self.local_all = local_held + sum(h for h, _ in per_peer.values())
        else:
            self.local_all = self.local_held + sum(r.my_held for r in self._remotes.values())
        now = self._clock()
        held = {key: self._held_to_tell(r, now) for key, r in self._remotes.items()}
        self.local_all += sum(held[key] - r.my_held for key, r in self._remotes.items())
        forget = self.timings.forget_s
        committed = {k: r.committed(now, forget) for k, r in self._remotes.items()}
        capacity = self._capacity(now)
        return _RoundInputs(
            now,
            held,
            self._targets(now),
            capacity,
            committed,
            sum(committed.values()) + self.local_held,
            self._free(now, capacity),
        )

    def _fields(self, key: str, r: _Remote, inputs: _RoundInputs) -> tuple[int | bool, ...]:
        """What peer ``key`` acts on: our slots, whether any is free, whether all are busy,
        its share and our demand on it. The exact free, running and queued counts and the
        speed inform (status, top, how a broker spreads its demand) and go out with the
        next record that does, or with the heartbeat: what a broker may take is its share,
        not our free slots, and a stock distcc job on this box moved them twice per job."""
        share = min(
            inputs.targets.get(key, 0),
            max(0, inputs.capacity - (inputs.total - inputs.committed[key])),
        )
        told = inputs.held[key]
        want = max(r.my_want, told)
        return (self.jobs, inputs.free > 0, self._full, told, want, share, self.local_all)

    def news(self) -> bool:
        """Whether a round now would send a record for what changed (a heartbeat aside): a
        peer must hear of it, or owes an ack. The broker's demand moves many times per job
        (each lease taken and ended); most of those moves change no record (a lease taken
        within what we told the peer we hold, one ended within the release hold), and
        asking costs less than a round and its wake-ups."""
        if self.round_due:
            return True
        inputs = self._round_inputs()
        return any(
            r.must_ack or self._fields(key, r, inputs) != r.last_sent
            for key, r in self._remotes.items()
        )

    def outgoing(self) -> list[tuple[str, int, bytes]]:
        """Datagrams to send now: (address, port, bytes)."""
        inputs = self._round_inputs()
        now = inputs.now
        interval = self._interval()
        forget = self.timings.forget_s
        heartbeat = self.timings.heartbeat_s * (1.0 - self.timings.heartbeat_early)
        committed = inputs.committed
        out = []
        for key, r in self._remotes.items():
            since = now - r.sent_at
            if since < interval:
                continue
            fields = self._fields(key, r, inputs)
            if fields == r.last_sent and not r.must_ack and since < heartbeat:
                continue
            _, _, _, told, want, share, _ = fields
            free = inputs.free
            self._seq += 1
            rec = wire.LoadRecord(
                self.node,
                self.boot,
                self._seq,
                ack=r.seq if r.boot is not None else 0,
                ack_boot=r.boot or 0,
                jobs=self.jobs,
                running=self.running,
                queued=self.queued + self.lease_waiting,
                free=free,
                speed=self.speed,
                held=told,
                want=want,
                share=share,
                held_all=self.local_all,
            )
            if r.pending or share != r.acked_share:
                # A promise (or a smaller one) it has not acknowledged yet: count it.
                r.pending.append((self._seq, share))
                if len(r.pending) > self.timings.max_pending:
                    # Fold the oldest into the next: keep the larger promise.
                    (_, s0), (q1, s1) = r.pending[0], r.pending[1]
                    r.pending[:2] = [(q1, max(s0, s1))]
                now_committed = r.committed(now, forget)
                inputs.total += now_committed - committed[key]  # later peers' room
                committed[key] = now_committed
            r.sent_at, r.last_sent, r.must_ack, r.told_held = now, fields, False, told
            out.append((r.peer.address, r.peer.port, wire.encode(rec)))
        return out

    def _held_to_tell(self, r: _Remote, now: float) -> int:
        """The leases to report holding on ``r``: what we hold, or for release_hold_s after
        a drop, what we last told it while its share still exceeds that (headroom)."""
        hold = self.timings.release_hold_s
        if r.my_held < r.told_held < r.share and hold > 0:
            if r.drop_since is None:
                r.drop_since = now
            if now - r.drop_since < hold:
                return r.told_held
        r.drop_since = None
        return r.my_held

    def next_due(self) -> float | None:
        """Monotonic time of the next heartbeat or held-back drop (changes: call outgoing()
        after them)."""
        if not self._remotes:
            return None
        due = min(r.sent_at for r in self._remotes.values()) + self.timings.heartbeat_s
        drops = [r.drop_since for r in self._remotes.values() if r.drop_since is not None]
        if drops:
            due = min(due, min(drops) + self.timings.release_hold_s)
        return due
