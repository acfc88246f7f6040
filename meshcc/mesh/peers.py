"""The live peer table: mDNS announcements are hints, reachability is ours to confirm.

Theory of operation. Browse events (resolved records, goodbyes) go in through
:meth:`PeerTable.upsert` / :meth:`PeerTable.remove`; liveness comes from cheap TCP connect
probes that the async driver (liveness.py) runs for whatever :meth:`PeerTable.due` hands
out and reports back with :meth:`PeerTable.probe_done`; the daemon's lease handling adds
job outcomes with :meth:`PeerTable.report_job`. The table never sleeps or does I/O: it
takes its clocks from the constructor, so tests drive it with a fake clock.

Why: a peer killed without a goodbye stays in mDNS caches for ≥ 1125 s, and one that
restarts under the same name produces no browser event at all (zeroconf.md A7). So:

* every peer is in ``PENDING`` until a probe succeeds; only ``UP`` peers are used;
* ``UP`` peers are probed every ``up_interval_s``; a failure is re-checked after
  ``retry_s``; ``fail_threshold`` consecutive failures mean ``DOWN``. A client's connect
  failure (``report_job(..., connect_failed=True)``) marks it ``DOWN`` at once.
  Worst case kill -9 -> DOWN (with the defaults, a host that times out):
  3 + 1 (timeout) + 0.5 + 1 = 5.5 s; a refused connection: ≤ 3.5 s. Target: 10 s;
* ``DOWN`` peers stay in the table (explained as "not responding since …") and keep being
  probed every ``down_interval_s`` for as long as mDNS lists them, so a restart with no
  mDNS event is noticed within that interval (target 5 s). A goodbye (``remove``) drops
  the peer; mDNS cache expiry does too, which bounds the probing of long-dead peers;
* ``job_fail_threshold`` consecutive failed jobs back a peer off for ``backoff_s``,
  doubling per repeated back-off up to ``backoff_max_s``; after the period the peer gets
  one more chance; a good job resets it (distcc's 60 s backoff, made adaptive);
* dedupe: records are keyed by node id (meshcc) or instance name (distcc). A new key
  announcing the same endpoint set (addresses, port) as another entry is the same daemon
  restarted under a new id, so the old entry is dropped; a stock-distcc record with a
  meshcc peer's endpoints is that daemon's compatibility record and is hidden. (Equal
  sets, not overlap: two boxes may both announce e.g. a docker0 address.)
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshcc.mesh.records import PeerKind, PeerRecord

__all__ = ["Liveness", "LivenessTimings", "PeerState", "PeerTable", "ProbeTarget"]


class Liveness(enum.Enum):
    """Reachability as confirmed by our own probes (not by mDNS)."""

    PENDING = "pending"  # announced, not yet confirmed
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class LivenessTimings:
    """All in seconds. Defaults meet kill -9 -> removal ≤ 10 s and restart -> back ≤ 5 s."""

    up_interval_s: float = 3.0
    retry_s: float = 0.5
    down_interval_s: float = 2.0
    connect_timeout_s: float = 1.0
    fail_threshold: int = 2
    jitter: float = 0.1  # ± fraction applied to the intervals, so probes do not synchronise
    job_fail_threshold: int = 3
    backoff_s: float = 60.0
    backoff_max_s: float = 600.0
    max_peers: int = 1024  # announcements beyond this are ignored (a flooded LAN)


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One probe to run: connect to (host, port) within the timeout."""

    key: str
    host: str
    port: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class PeerState:
    """An immutable view of one peer for explain/snapshot (wall-clock times, seconds)."""

    record: PeerRecord
    liveness: Liveness
    first_seen: float
    last_ok: float | None
    down_since: float | None
    down_detail: str | None
    rtt_s: float | None
    probe_failures: int
    job_failures: int
    backoffs: int
    backoff_until: float | None  # set only while backed off

    @property
    def key(self) -> str:
        return self.record.key

    def to_dict(self) -> dict[str, object]:
        """JSON/msgpack-safe form for the control socket and ``meshcc hosts --json``."""
        r = self.record
        return {
            "key": r.key,
            "kind": r.kind.value,
            "host": r.host,
            "instance": r.instance,
            "node_id": r.node_id,
            "addresses": list(r.addresses),
            "port": r.port,
            "cpus": r.cpus,
            "jobs": r.jobs,
            "limit": r.limit,
            "free": r.free,
            "protocols": list(r.protocols),
            "caps": sorted(r.caps),
            "version": r.version,
            "verified": r.verified,
            "toolchains": [
                {
                    "driver": t.driver,
                    "version": t.version,
                    "target": t.target,
                    "binutils": t.binutils,
                    "names": list(t.names),
                }
                for t in r.toolchains
            ],
            "liveness": self.liveness.value,
            "first_seen": self.first_seen,
            "last_ok": self.last_ok,
            "down_since": self.down_since,
            "down_detail": self.down_detail,
            "rtt_s": self.rtt_s,
            "job_failures": self.job_failures,
            "backoff_until": self.backoff_until,
        }


@dataclass
class _Entry:
    record: PeerRecord
    first_seen: float
    next_probe: float
    liveness: Liveness = Liveness.PENDING
    probing: bool = False
    last_ok: float | None = None
    down_since: float | None = None
    down_detail: str | None = None
    rtt_s: float | None = None
    probe_failures: int = 0
    job_failures: int = 0
    backoffs: int = 0
    backoff_until: float | None = None


class PeerTable:
    """Peers by key, with their liveness; all times from the injected monotonic clock."""

    def __init__(
        self,
        timings: LivenessTimings = LivenessTimings(),
        *,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        address_for: Callable[[PeerRecord], str | None] | None = None,
    ) -> None:
        self.timings = timings
        self._clock = clock
        self._wallclock = wallclock
        self._rng = rng or random.Random()
        # Which address to probe (None: none we may use). Matching supplies the real rule.
        self._address_for = address_for or (lambda r: r.addresses[0] if r.addresses else None)
        self._entries: dict[str, _Entry] = {}
        self._shadowed: dict[str, PeerRecord] = {}  # distcc records of meshcc daemons

    # -- helpers

    def _jittered(self, interval: float) -> float:
        j = self.timings.jitter
        return interval * (1.0 + self._rng.uniform(-j, j)) if j else interval

    def _wall(self, t: float | None) -> float | None:
        return None if t is None else self._wallclock() - (self._clock() - t)

    def now(self) -> float:
        """The table's monotonic clock (what next_wakeup() is measured on)."""
        return self._clock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def record(self, key: str) -> PeerRecord | None:
        e = self._entries.get(key)
        return e.record if e else None

    # -- browse events

    def upsert(self, record: PeerRecord) -> bool:
        """A resolved announcement; True if the table changed in a way worth probing now."""
        now = self._clock()
        eps = record.endpoints()
        # Same endpoint set = same listening daemon. Equal sets, not overlap: two boxes may
        # both announce e.g. a docker0 address, and must not be merged.
        if record.kind is PeerKind.DISTCC:
            if any(
                e.record.kind is PeerKind.MESHCC and e.record.endpoints() == eps
                for e in self._entries.values()
            ):
                self._shadowed[record.key] = record
                self._entries.pop(record.key, None)
                return False
        else:
            # A meshcc daemon hides its own distcc record and replaces an older self.
            for k, e in list(self._entries.items()):
                if k != record.key and e.record.endpoints() == eps:
                    if e.record.kind is PeerKind.DISTCC:
                        self._shadowed[k] = e.record
                    del self._entries[k]
        existing = self._entries.get(record.key)
        if existing is None:
            if len(self._entries) >= self.timings.max_peers and not self._evict_one():
                return False
            self._entries[record.key] = _Entry(record, first_seen=now, next_probe=now)
            return True
        moved = existing.record.endpoints() != eps
        existing.record = record
        if existing.liveness is not Liveness.UP or moved:
            # An announcement from a peer we think is down may mean it is back: check now.
            existing.next_probe = min(existing.next_probe, now)
            return True
        return False

    def _evict_one(self) -> bool:
        """The table is full: make room for a newcomer if an entry that is not live can go.

        Live peers are never displaced. The first to go is one our probes never reached (a
        flood of junk announcements stays unconfirmed), then a down one; stock distccd
        records (unverified) before meshcc's; the oldest first. So a flood fills the table
        only with entries that the next real peer displaces, and it displaces the junk
        that has been waiting longest, not the peers that just arrived."""
        rank = {Liveness.PENDING: 2, Liveness.DOWN: 1}
        victims = [
            (rank[e.liveness], not e.record.verified, -e.first_seen, k)
            for k, e in self._entries.items()
            if e.liveness is not Liveness.UP
        ]
        if not victims:
            return False
        del self._entries[max(victims)[3]]
        return True

    def remove(self, key: str) -> bool:
        """The peer said goodbye (or its PTR expired): forget it, and unhide its distcc record."""
        self._shadowed.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        if entry.record.kind is PeerKind.MESHCC:
            eps = entry.record.endpoints()
            for k, rec in list(self._shadowed.items()):
                if rec.endpoints() == eps:
                    # It was this daemon's compatibility record: it goes with it.
                    del self._shadowed[k]
        return True

    # -- liveness

    def due(self) -> list[ProbeTarget]:
        """Probes to start now; each entry is marked in flight until probe_done()."""
        now = self._clock()
        targets = []
        for key, e in self._entries.items():
            if e.probing or e.next_probe > now:
                continue
            host = self._address_for(e.record)
            if host is None:  # nothing we may connect to (outside allowed subnets)
                e.next_probe = now + self.timings.down_interval_s * 5
                continue
            e.probing = True
            targets.append(
                ProbeTarget(
                    key=key,
                    host=host,
                    port=e.record.port,
                    timeout_s=self.timings.connect_timeout_s,
                )
            )
        return targets

    def next_wakeup(self) -> float | None:
        """Monotonic time of the next due probe (None when the table is empty)."""
        times = [e.next_probe for e in self._entries.values() if not e.probing]
        return min(times) if times else None

    def probe_done(
        self, target: ProbeTarget, ok: bool, detail: str | None = None, rtt_s: float | None = None
    ) -> Liveness | None:
        """Record a probe outcome; returns the peer's new liveness (None if it is gone)."""
        e = self._entries.get(target.key)
        if e is None:
            return None
        now = self._clock()
        e.probing = False
        if (target.host, target.port) not in e.record.endpoints():
            e.next_probe = now  # the peer moved while we probed: the result says nothing
            return e.liveness
        t = self.timings
        if ok:
            e.liveness = Liveness.UP
            e.last_ok = now
            e.down_since = None
            e.down_detail = None
            e.probe_failures = 0
            e.rtt_s = rtt_s
            e.next_probe = now + self._jittered(t.up_interval_s)
            return e.liveness
        e.probe_failures += 1
        e.down_detail = detail
        if e.liveness is Liveness.UP and e.probe_failures < t.fail_threshold:
            if e.down_since is None:
                e.down_since = now  # first failure: what "not responding since" reports
            e.next_probe = now + t.retry_s
            return e.liveness
        if e.liveness is not Liveness.DOWN:
            if e.down_since is None:
                e.down_since = now
            e.liveness = Liveness.DOWN
        e.next_probe = now + self._jittered(t.down_interval_s)
        return e.liveness

    # -- job outcomes (lease handling)

    def report_job(self, key: str, ok: bool, *, connect_failed: bool = False) -> None:
        """A client's job on this peer succeeded or failed; a failed connect means DOWN now."""
        e = self._entries.get(key)
        if e is None:
            return
        now = self._clock()
        t = self.timings
        if connect_failed:
            if e.liveness is not Liveness.DOWN:
                e.liveness = Liveness.DOWN
                e.down_since = now
                e.down_detail = "a client could not connect"
            e.next_probe = min(e.next_probe, now + t.retry_s)
            return
        if ok:
            e.job_failures = 0
            e.backoffs = 0
            e.backoff_until = None
            return
        e.job_failures += 1
        if e.backoff_until is not None and e.backoff_until > now:
            return  # already backed off
        if e.job_failures >= t.job_fail_threshold:
            period = min(t.backoff_max_s, t.backoff_s * (2**e.backoffs))
            e.backoff_until = now + period
            e.backoffs += 1
            # After the period, one more failure backs it off again (for longer).
            e.job_failures = t.job_fail_threshold - 1

    def backed_off(self, key: str) -> bool:
        e = self._entries.get(key)
        return bool(e and e.backoff_until is not None and e.backoff_until > self._clock())

    # -- views

    def state(self, key: str) -> PeerState | None:
        e = self._entries.get(key)
        return None if e is None else self._view(e)

    def _view(self, e: _Entry) -> PeerState:
        now = self._clock()
        backoff = e.backoff_until if e.backoff_until is not None and e.backoff_until > now else None
        return PeerState(
            record=e.record,
            liveness=e.liveness,
            first_seen=self._wall(e.first_seen) or 0.0,
            last_ok=self._wall(e.last_ok),
            down_since=self._wall(e.down_since) if e.liveness is Liveness.DOWN else None,
            down_detail=e.down_detail if e.liveness is Liveness.DOWN else None,
            rtt_s=e.rtt_s,
            probe_failures=e.probe_failures,
            job_failures=max(e.job_failures, self.timings.job_fail_threshold if backoff else 0),
            backoffs=e.backoffs,
            backoff_until=self._wall(backoff),
        )

    def snapshot(self) -> list[PeerState]:
        """Every peer (hidden distcc records of meshcc daemons left out), in table order."""
        return [self._view(e) for e in self._entries.values()]

    def find(self, spec: str) -> str | None:
        """The key for a peer key, or an ``ADDR:PORT`` / ``[ADDR]:PORT`` host spec."""
        if spec in self._entries:
            return spec
        host, _, port = spec.split("/", maxsplit=1)[0].split(",", maxsplit=1)[0].rpartition(":")
        host = host.strip("[]")
        try:
            port_n = int(port)
        except ValueError:
            return None
        for k, e in self._entries.items():
            if e.record.port == port_n and host in e.record.addresses:
                return k
        return None
