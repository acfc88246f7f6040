"""The live peer table: mDNS announcements are hints, reachability is ours to confirm.

Theory of operation. Browse events (resolved records, goodbyes) go in through
:meth:`PeerTable.upsert` / :meth:`PeerTable.remove`; liveness comes from cheap probes that
the async driver (liveness.py) runs for whatever :meth:`PeerTable.due` hands out and
reports back with :meth:`PeerTable.probe_done`; the daemon's lease handling adds job
outcomes with :meth:`PeerTable.report_job`. The table never sleeps or does I/O: it takes
its clocks from the constructor, so tests drive it with a fake clock.

Why: a peer killed without a goodbye stays in mDNS caches for ≥ 1125 s, and one that
restarts under the same name produces no browser event at all (zeroconf.md A7). So, for
**meshcc peers** (probed through meshcc's own channel, see liveness.py):

* every peer is in ``PENDING`` until a probe succeeds; only ``UP`` peers are used;
* ``UP`` peers are probed every ``up_interval_s`` (± ``jitter``), except while the live-load
  channel hears from them (:meth:`PeerTable.heard_from`, a record within ``up_interval_s``:
  their daemon is running): then every ``heard_probe_s``, for the round trip and that the
  compile port still answers. The first probe after the records stop is due
  ``up_interval_s`` (+ up to ``jitter``) after the last one, so kill -9 is seen as soon
  as without them. On a LAN of meshcc daemons that is what keeps an idle mesh quiet: a TCP
  probe a second each way per pair of boxes cost each daemon more CPU than all else it does
  when idle; a refused connection is
  final (the peer's kernel says nothing listens: ``DOWN`` at once); any other failure is
  re-checked after ``retry_s`` and ``fail_threshold`` consecutive failures mean ``DOWN``.
  A client's connect failure (``report_job(..., connect_failed=True)``) marks it ``DOWN``
  at once. kill -9 -> DOWN with the defaults: ≤ 1.2 s (interval + jitter) + one RTT; a
  host that vanished (probes time out): ≤ 1.2 + 1 + 0.25 + 1 = 3.45 s;
* probes are per peer and bounded: at most ``max_probe_rate`` per second from this
  daemon (a token bucket, bursts of a tenth of a second's worth), so on a LAN with more
  meshcc peers than that the interval stretches (``peers / max_probe_rate``) instead of
  the load growing; jitter desynchronises them;
* ``DOWN`` peers stay in the table (explained as "not responding since …") and keep being
  probed every ``down_interval_s`` for as long as mDNS lists them, so a restart with no
  mDNS event is noticed within that interval (target 5 s). A goodbye (``remove``) drops
  the peer; mDNS cache expiry does too, which bounds the probing of long-dead peers.

**Stock distccd peers are never connected to by the table**: distccd forks (or wakes a
preforked child) for every connection and logs ``ERROR: client did not provide distcc
magic fairy dust`` for anything that is not a job. They are ``UP`` on their announcement
(avahi withdraws a distccd's record with a goodbye when the process exits, even on
SIGKILL, so a dead distccd on a live box leaves the list in milliseconds); a client's
connect failure marks one ``DOWN`` at once; it is trusted again after
``distcc_readmit_s`` (doubling on each repeat, up to ``distcc_readmit_max_s``), as distcc's
own client backs a failed host off, or at once when its record changes. A box that dies
without a goodbye therefore stays listed until the first client fails to connect to it
(that job is retried elsewhere or locally), and costs one failed connect per re-admission
until mDNS expires its record. Announced-only entries are not proof of life: a full table
evicts them before probe-confirmed peers;
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
    """All in seconds. Defaults meet kill -9 -> removal ≤ 2 s and restart -> back ≤ 5 s."""

    up_interval_s: float = 1.0
    retry_s: float = 0.25
    down_interval_s: float = 2.0
    connect_timeout_s: float = 1.0  # the whole probe: connect and the reply
    fail_threshold: int = 2  # failures other than a refused connection
    jitter: float = 0.2  # ± fraction applied to the intervals, so probes do not synchronise
    max_probe_rate: float = 100.0  # probes per second this daemon starts, at most
    heard_probe_s: float = 10.0  # an UP peer the live-load channel hears from: probed this often
    distcc_readmit_s: float = 60.0  # stock distccd a client could not reach: trusted again
    distcc_readmit_max_s: float = 600.0
    job_fail_threshold: int = 3
    backoff_s: float = 60.0
    backoff_max_s: float = 600.0
    max_peers: int = 1024  # announcements beyond this are ignored (a flooded LAN)


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One probe to run on (host, port) within the timeout.

    ``method`` is ``"ping"`` for peers announcing the ``ping`` capability (PING/PONG on the
    compile port), ``"connect"`` for older meshcc peers (connect and close, which they log
    at DEBUG only)."""

    key: str
    host: str
    port: int
    timeout_s: float
    method: str = "connect"


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
    confirmed: bool = False  # reached by a probe or a job (not only announced)

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
            "confirmed": self.confirmed,
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
    confirmed: bool = False
    readmits: int = 0  # stock distccd: consecutive connect failures reported by clients
    heard_at: float | None = None  # the live-load channel's last record from it


_NEVER = float("inf")


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
        # Bumped whenever the set of entries or one's record changes (not on probes): what
        # is derived from the records alone (the load channel's peers) is rebuilt only then.
        self.records_version = 0
        # Token bucket for probes: max_probe_rate per second, bursts of a tenth of that.
        self._budget = self._burst()
        self._budget_at = clock()

    def _burst(self) -> float:
        return max(1.0, self.timings.max_probe_rate / 10)

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
                if self._entries.pop(record.key, None) is not None:
                    self.records_version += 1
                return False
        else:
            # A meshcc daemon hides its own distcc record and replaces an older self.
            for k, e in list(self._entries.items()):
                if k != record.key and e.record.endpoints() == eps:
                    if e.record.kind is PeerKind.DISTCC:
                        self._shadowed[k] = e.record
                    del self._entries[k]
                    self.records_version += 1
        existing = self._entries.get(record.key)
        if existing is None:
            if len(self._entries) >= self.timings.max_peers and not self._evict_one():
                return False
            entry = _Entry(record, first_seen=now, next_probe=now)
            if record.kind is PeerKind.DISTCC:
                # Never probed (see the module docstring): up on its announcement.
                entry.liveness, entry.next_probe = Liveness.UP, _NEVER
            self._entries[record.key] = entry
            self.records_version += 1
            return True
        moved = existing.record.endpoints() != eps
        changed = existing.record != record
        existing.record = record
        if changed:
            self.records_version += 1
        if record.kind is PeerKind.DISTCC:
            if existing.liveness is not Liveness.UP and (moved or changed):
                # A new announcement of a distccd we saw fail: take it at its word.
                existing.liveness, existing.next_probe = Liveness.UP, _NEVER
                existing.down_since = existing.down_detail = None
                existing.readmits = 0
            return False
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
        rank = {Liveness.PENDING: 3, Liveness.DOWN: 2, Liveness.UP: 1}  # UP: announced only
        victims = [
            (rank[e.liveness], not e.record.verified, -e.first_seen, k)
            for k, e in self._entries.items()
            if e.liveness is not Liveness.UP or not e.confirmed
        ]
        if not victims:
            return False
        del self._entries[max(victims)[3]]
        self.records_version += 1
        return True

    def remove(self, key: str) -> bool:
        """The peer said goodbye (or its PTR expired): forget it, and unhide its distcc record."""
        self._shadowed.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.records_version += 1
        if entry.record.kind is PeerKind.MESHCC:
            eps = entry.record.endpoints()
            for k, rec in list(self._shadowed.items()):
                if rec.endpoints() == eps:
                    # It was this daemon's compatibility record: it goes with it.
                    del self._shadowed[k]
        return True

    # -- liveness

    def _interval(self, base: float) -> float:
        """``base``, stretched so the probes of all meshcc peers stay ≤ max_probe_rate/s."""
        n = sum(1 for e in self._entries.values() if e.record.kind is PeerKind.MESHCC)
        rate = self.timings.max_probe_rate
        return max(base, n / rate) if rate > 0 else base

    def _refill(self, now: float) -> None:
        rate = self.timings.max_probe_rate
        if rate > 0:
            self._budget = min(self._burst(), self._budget + (now - self._budget_at) * rate)
        self._budget_at = now

    def due(self) -> list[ProbeTarget]:
        """Probes to start now (at most the rate budget); each is in flight until probe_done()."""
        now = self._clock()
        self._refill(now)
        limited = self.timings.max_probe_rate > 0
        up = self._interval(self.timings.up_interval_s)  # counts the peers: once per call
        targets = []
        for key, e in self._entries.items():
            if e.probing or e.next_probe > now:
                continue
            if e.record.kind is PeerKind.DISTCC:
                # Never probed: its re-admission time has come (see report_job).
                e.liveness, e.next_probe = Liveness.UP, _NEVER
                continue
            if not e.record.toolchains:
                # A mesh-only meshcc daemon (no gcc): no compile server listens on its
                # port, so a probe would only mark it down. It is never a host
                # (matching.py); a new announcement with toolchains schedules a probe.
                e.next_probe = _NEVER
                continue
            if (
                e.liveness is Liveness.UP
                and e.heard_at is not None
                and e.last_ok is not None
                and now - e.heard_at < self.timings.up_interval_s
                and now - e.last_ok < self.timings.heard_probe_s
            ):
                # Its records are proof of life: look again an interval after the last one (never
                # earlier, so the deferral cannot come due again before its time).
                e.next_probe = e.heard_at + up * (1.0 + self.timings.jitter * self._rng.random())
                continue
            if limited and self._budget < 1.0:
                continue  # over budget: stays due, next_wakeup() says when to come back
            host = self._address_for(e.record)
            if host is None:  # nothing we may connect to (outside allowed subnets)
                e.next_probe = now + self.timings.down_interval_s * 5
                continue
            e.probing = True
            self._budget -= 1.0
            targets.append(
                ProbeTarget(
                    key=key,
                    host=host,
                    port=e.record.port,
                    timeout_s=self.timings.connect_timeout_s,
                    method="ping" if "ping" in e.record.caps else "connect",
                )
            )
        return targets

    def next_wakeup(self) -> float | None:
        """Monotonic time of the next due probe (None when the table is empty)."""
        times = [e.next_probe for e in self._entries.values() if not e.probing]
        nxt = min(times) if times else None
        if nxt is None or nxt == _NEVER:
            return None
        rate = self.timings.max_probe_rate
        if rate > 0 and self._budget < 1.0:
            # Waiting for budget (refilled lazily in due()).
            now = self._clock()
            self._refill(now)
            nxt = max(nxt, now + (1.0 - self._budget) / rate)
        return nxt

    def probe_done(
        self,
        target: ProbeTarget,
        ok: bool,
        detail: str | None = None,
        rtt_s: float | None = None,
        *,
        final: bool = False,
    ) -> Liveness | None:
        """Record a probe outcome; returns the peer's new liveness (None if it is gone).

        ``final``: the failure needs no re-check (the connection was refused)."""
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
            e.confirmed = True
            e.rtt_s = rtt_s
            e.next_probe = now + self._jittered(self._interval(t.up_interval_s))
            return e.liveness
        e.probe_failures += 1
        e.down_detail = detail
        if e.liveness is Liveness.UP and e.probe_failures < t.fail_threshold and not final:
            if e.down_since is None:
                e.down_since = now  # first failure: what "not responding since" reports
            e.next_probe = now + t.retry_s
            return e.liveness
        if e.liveness is not Liveness.DOWN:
            if e.down_since is None:
                e.down_since = now
            e.liveness = Liveness.DOWN
        e.next_probe = now + self._jittered(self._interval(t.down_interval_s))
        return e.liveness

    def heard_from(self, key: str) -> None:
        """The live-load channel accepted a record from this peer (its source address and
        node id checked): its daemon is running. Stands in for probes of an ``UP`` peer
        (see the module docstring); a peer not yet confirmed is still probed."""
        e = self._entries.get(key)
        if e is not None:
            e.heard_at = self._clock()

    # -- job outcomes (lease handling)

    def report_job(self, key: str, ok: bool, *, connect_failed: bool = False) -> bool:
        """A client's job on this peer succeeded or failed; a failed connect means DOWN now.
        True if that changed what the peer is judged by (its liveness, failures, back-off):
        a job that went as the last one did changes no verdict."""
        e = self._entries.get(key)
        if e is None:
            return False
        before = (e.liveness, e.job_failures, e.backoff_until)
        self._job_outcome(e, ok, connect_failed)
        return (e.liveness, e.job_failures, e.backoff_until) != before

    def _job_outcome(self, e: _Entry, ok: bool, connect_failed: bool) -> None:
        now = self._clock()
        t = self.timings
        if connect_failed:
            if e.liveness is not Liveness.DOWN:
                e.liveness = Liveness.DOWN
                e.down_since = now
                e.down_detail = "a client could not connect"
                if e.record.kind is PeerKind.DISTCC:
                    # Not probed: trusted again after distcc's kind of back-off.
                    period = t.distcc_readmit_s * (2 ** min(e.readmits, 16))
                    e.next_probe = now + min(t.distcc_readmit_max_s, period)
                    e.readmits += 1
                    return
            if e.record.kind is not PeerKind.DISTCC:
                e.next_probe = min(e.next_probe, now + t.retry_s)
            return
        e.confirmed = True  # a job reached it
        e.readmits = 0
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
            confirmed=e.confirmed,
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
