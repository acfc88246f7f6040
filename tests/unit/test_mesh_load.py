"""The live-load channel without sockets: the record codec, the shares a box promises, the
choice among hosts, and the broker that uses them (meshcc.wire.load, meshcc.mesh.load,
meshcc.mesh.leases). Books exchange datagrams through an in-memory network that delays,
reorders and drops them, driven by a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.mesh.leases import LOCAL_KEY, Grant, LeaseBroker, Local
from meshcc.mesh.load import (
    HEADROOM_ABOVE_PEAK,
    LOCAL,
    Candidate,
    LoadBook,
    LoadTimings,
    RemotePeer,
    SpeedMeter,
    choose,
    fair_fill,
    water_fill,
)
from meshcc.mesh.matching import Verdict
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo
from meshcc.wire import load as wire

# ---------------------------------------------------------------- codec

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def records(draw: st.DrawFn) -> wire.LoadRecord:
    jobs = draw(u16)
    return wire.LoadRecord(
        draw(st.binary(min_size=6, max_size=6)).hex(),
        draw(u32),
        draw(u32),
        ack=draw(u32),
        ack_boot=draw(u32),
        jobs=jobs,
        running=draw(u16),
        queued=draw(u16),
        free=draw(st.integers(0, jobs)),
        speed=draw(u32),
        held=draw(u16),
        want=draw(u16),
        share=draw(st.integers(0, jobs)),
        held_all=draw(u16),
    )


@given(records())
def test_record_round_trip(rec: wire.LoadRecord) -> None:
    data = wire.encode(rec)
    assert len(data) == wire.SIZE + 2 == 48  # the 46 bytes of every record, then held_all
    assert wire.decode(data) == rec
    assert wire.decode(data + b"later minor fields") == rec  # appended fields are ignored
    # A sender that knows only the first 46 bytes: held_all reads as its held.
    old = wire.decode(data[: wire.SIZE])
    assert old.held_all == rec.held and old.share == rec.share


@given(st.binary(max_size=600))
def test_decode_never_raises_anything_but_load_error(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.LoadError as e:
        assert e.reason in {"size", "magic", "version", "field"}


def test_decode_rejects_with_reasons() -> None:
    good = wire.encode(wire.LoadRecord("0123456789ab", 1, 1, jobs=4, free=2, share=3))
    cases = {
        "size": [good[:45], good[:3], good + bytes(wire.MAX_DATAGRAM)],
        "magic": [b"DIST" + good[4:]],
        "version": [good[:4] + b"\x02" + good[5:]],
    }
    for reason, datas in cases.items():
        for data in datas:
            with pytest.raises(wire.LoadError) as e:
                wire.decode(data)
            assert e.value.reason == reason
    over = bytearray(good)
    over[34:36] = (5).to_bytes(2, "big")  # free 5 > jobs 4
    with pytest.raises(wire.LoadError, match="beyond jobs"):
        wire.decode(bytes(over))
    with pytest.raises(wire.LoadError, match="hex"):
        wire.encode(wire.LoadRecord("not-hex-id!!", 1, 1))


def test_encode_saturates_counts() -> None:
    rec = wire.LoadRecord("0123456789ab", 1, 2**40, jobs=70000, running=-3, free=70000)
    back = wire.decode(wire.encode(rec))
    assert (back.seq, back.jobs, back.running, back.free) == (2**32 - 1, 0xFFFF, 0, 0xFFFF)


# ---------------------------------------------------------------- shares and choice


@given(st.integers(0, 64), st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 40)))
def test_water_fill_is_max_min_fair(capacity: int, demands: dict[str, int]) -> None:
    alloc = water_fill(capacity, demands)
    assert sum(alloc.values()) <= capacity
    assert all(0 <= alloc[k] <= d for k, d in demands.items())
    if sum(alloc.values()) < capacity:
        assert alloc == demands  # capacity left over only when every demand is met
    for k, d in demands.items():
        if alloc[k] < d:  # an unsatisfied client: nobody gets more than one unit above it
            assert all(v <= alloc[k] + 1 for v in alloc.values())


@given(
    st.integers(0, 64),
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 40)),
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 20)),
)
def test_fair_fill_is_max_min_fair_over_what_each_holds_in_all(
    capacity: int, demands: dict[str, int], base: dict[str, int]
) -> None:
    alloc = fair_fill(capacity, demands, base)
    assert sum(alloc.values()) == min(capacity, sum(demands.values()))
    assert all(0 <= alloc[k] <= d for k, d in demands.items())
    total = {k: base.get(k, 0) + alloc[k] for k in demands}
    for j, dj in demands.items():
        if alloc[j] < dj:  # j wants more: nobody got a unit j had a better claim to
            assert all(total[k] <= total[j] + 1 for k in demands if alloc[k] > 0), total
    assert fair_fill(capacity, demands) == fair_fill(capacity, demands, {}, {})


def test_fair_fill_gives_a_contended_slot_to_the_client_holding_fewest_in_all() -> None:
    want = {"a": 5, "b": 5}
    assert fair_fill(1, want, {"a": 1, "b": 0}, {"a": 1}) == {"a": 0, "b": 1}
    assert fair_fill(1, want, {"a": 0, "b": 1}, {"a": 1}) == {"a": 1, "b": 0}  # balanced
    assert fair_fill(1, want, {}, {"b": 1}) == {"a": 0, "b": 1}  # a tie: the holder keeps it


def test_a_box_holding_slots_elsewhere_yields_a_contended_slot() -> None:
    """s has one slot and a holds it. b wants it too. Once a's clients also hold a slot
    elsewhere (here: one of a's own), s promises a less than it holds (a takes no new job
    there) and, when a's job ends, the slot goes to b; a box that does not hold more in all
    keeps its slot (no churn: each client keeps the one it uses)."""
    for a_elsewhere in (True, False):
        net = Net(jobs=1)
        a, b = net.books["a"], net.books["b"]
        a.set_demand("m:s", 0, 5)
        net.settle()
        assert a.live("m:s").share == 1  # type: ignore[union-attr]
        a.set_demand("m:s", 1, 5)
        if a_elsewhere:
            a.set_local(held=1)
        else:
            b.set_local(held=1)
        b.set_demand("m:s", 0, 5)
        net.settle()
        shares = (a.live("m:s").share, b.live("m:s").share)  # type: ignore[union-attr]
        assert shares == ((0, 0) if a_elsewhere else (1, 0)), shares
        a.set_demand("m:s", 0, 5)  # a's job on s ends
        net.settle()
        shares = (a.live("m:s").share, b.live("m:s").share)  # type: ignore[union-attr]
        assert shares == ((0, 1) if a_elsewhere else (1, 0)), shares


def test_water_fill_remainder_goes_to_holders() -> None:
    assert water_fill(3, {"a": 5, "b": 5}, {"b": 2}) == {"a": 1, "b": 2}
    assert water_fill(3, {"a": 5, "b": 5}, {"a": 2}) == {"a": 2, "b": 1}


def test_choose_prefers_fast_idle_and_still_uses_slow() -> None:
    rng = random.Random(1)
    cands = [Candidate("slow", 4, 100.0), Candidate("fast", 4, 400.0)]
    picks = Counter(cands[choose(cands, rng)].key for _ in range(2000))
    assert picks["fast"] > 3 * picks["slow"] > 0  # both used, the fast one far more
    full_fast = [Candidate("slow", 4, 100.0), Candidate("fast", 0, 400.0)]
    assert all(choose(full_fast, rng) == 0 for _ in range(50))  # fast full: slow serves
    assert choose([Candidate("a", 0, 1.0)], rng) == -1
    failing = [Candidate("bad", 8, 900.0, failures=2), Candidate("ok", 1, 10.0)]
    assert all(choose(failing, rng) == 1 for _ in range(50))  # fewer failures first
    unknown = [Candidate("new", 2, 0.0), Candidate("known", 2, 50.0)]
    assert {choose(unknown, rng) for _ in range(200)} == {0, 1}  # unmeasured: typical speed


def test_speed_meter_is_an_ewma_of_bytes_per_second() -> None:
    m = SpeedMeter(alpha=0.5)
    assert m.update(0, 0.0) == 0
    assert m.update(1000, 1.0) == 1000
    assert m.update(1000, 1.01) == 1000  # too little compile time: wait for more
    assert m.update(4000, 2.0) == 2000  # (1000 + 3000) / 2


# ---------------------------------------------------------------- books on a fake network

IDS = {"a": "0000000000aa", "b": "0000000000bb", "s": "0000000000cc"}
ADDR = {"a": "10.0.0.1", "b": "10.0.0.2", "s": "10.0.0.3"}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Net:
    """Books a, b, s (s serves with ``jobs``; a and b too, with 2); datagrams in flight
    are delivered, delayed, reordered or dropped as the test says."""

    def __init__(self, jobs: int = 3, seed: int = 0, **timings: float) -> None:
        self.clock = Clock()
        self.rng = random.Random(seed)
        t = LoadTimings(**timings)  # type: ignore[arg-type]
        self.jobs = {"a": 2, "b": 2, "s": jobs}
        self.books = {
            n: LoadBook(IDS[n], self.jobs[n], t, clock=self.clock, rng=random.Random(n))
            for n in IDS
        }
        for n, book in self.books.items():
            book.set_peers(
                RemotePeer(f"m:{o}", IDS[o], ADDR[o], 3632, self.jobs[o], frozenset({ADDR[o]}))
                for o in IDS
                if o != n
            )
        self.flight: list[tuple[str, str, bytes]] = []  # (from, to, data)

    def send_all(self) -> None:
        by_addr = {a: n for n, a in ADDR.items()}
        for n, book in self.books.items():
            for host, _, data in book.outgoing():
                self.flight.append((n, by_addr[host], data))

    def deliver(self, loss: float = 0.0, shuffle: bool = False) -> None:
        flight, self.flight = self.flight, []
        if shuffle:
            self.rng.shuffle(flight)
        for src, dst, data in flight:
            if self.rng.random() >= loss:
                self.books[dst].receive(data, ADDR[src])

    def settle(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            self.clock.t += 0.02
            self.send_all()
            self.deliver()


def test_books_share_a_server_fairly_and_see_its_load() -> None:
    net = Net(jobs=4)
    a, b, s = net.books["a"], net.books["b"], net.books["s"]
    s.set_local(running=1, queued=0, speed=1234)  # a job no lease accounts for (stock distcc)
    a.set_demand("m:s", 0, 10)
    b.set_demand("m:s", 0, 10)
    net.settle()
    la, lb = a.live("m:s"), b.live("m:s")
    assert la is not None and lb is not None
    assert (la.jobs, la.running, la.speed) == (4, 1, 1234)
    assert la.share + lb.share <= 4 and abs(la.share - lb.share) <= 1 and la.share >= 1
    assert la.share + lb.share == 3  # 4 slots, one busy with the unleased job
    # b stops wanting: its share shrinks, and a's grows to the whole rest once b acked.
    b.set_demand("m:s", 0, 0)
    net.settle()
    assert (a.live("m:s").share, b.live("m:s").share) == (3, 0)  # type: ignore[union-attr]
    s.set_local(running=0)
    net.settle()
    assert a.live("m:s").share == 4  # type: ignore[union-attr]
    # This box's own clients are one more client on the same terms.
    s.set_local(held=0, want=10)
    net.settle()
    local, share_a = s.local_share(), a.live("m:s").share  # type: ignore[union-attr]
    assert local + share_a <= 4 and local >= 1 and share_a >= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.floats(0.0, 0.5))
def test_leases_on_a_box_never_exceed_its_jobs(seed: int, jobs: int, loss: float) -> None:
    """Whatever the delays, reordering and losses: a and b grant only within the share s
    promised them, s's own clients within its local share; their sum stays <= s's jobs."""
    net = Net(jobs=jobs, seed=seed)
    rng = random.Random(seed)
    a, b, s = net.books["a"], net.books["b"], net.books["s"]
    held = {"a": 0, "b": 0, "s": 0}
    want = {"a": 0, "b": 0, "s": 0}
    for _ in range(150):
        for n in ("a", "b", "s"):
            if rng.random() < 0.3:
                want[n] = rng.randint(0, 8)
            if held[n] and rng.random() < 0.3:
                held[n] -= 1
        for n, book in (("a", a), ("b", b)):
            live = book.live("m:s")
            while live is not None and held[n] < min(want[n], live.share):
                held[n] += 1
            book.set_demand("m:s", held[n], max(held[n], want[n]))
        s.set_local(held=held["s"], want=max(held["s"], want["s"]))
        while held["s"] < min(want["s"], s.local_share()):
            held["s"] += 1
            s.set_local(held=held["s"])
        assert sum(held.values()) <= jobs, (held, jobs)
        net.clock.t += rng.choice([0.0, 0.005, 0.02, 0.3])
        net.send_all()
        if rng.random() < 0.7:
            net.deliver(loss=loss, shuffle=True)


def test_receive_trusts_only_known_peers_at_their_addresses() -> None:
    net = Net(jobs=4)
    s = net.books["s"]
    rec = wire.LoadRecord(IDS["a"], 7, 1, jobs=2, held=1, want=3)
    assert s.receive(wire.encode(rec), "10.9.9.9") is None  # not a's address
    stranger = wire.LoadRecord("00000000dead", 7, 1, jobs=2)
    assert s.receive(wire.encode(stranger), ADDR["a"]) is None  # unknown node
    assert s.receive(b"junk", ADDR["a"]) is None
    assert s.receive(wire.encode(rec), ADDR["a"]) == "m:a"
    assert s.receive(wire.encode(rec), ADDR["a"]) is None  # replay: same seq
    huge = wire.LoadRecord(IDS["a"], 7, 2, jobs=999, free=999, share=999, held=999, want=999)
    assert s.receive(wire.encode(huge), ADDR["a"]) == "m:a"
    live = s.live("m:a")
    assert live is not None and (live.jobs, live.free, live.share) == (2, 2, 2)  # announced 2
    assert s.leased() == 4  # held clamped to our own jobs
    s.set_peers([RemotePeer("m:a", IDS["a"], ADDR["a"], 3632, 0, frozenset({ADDR["a"]}))])
    claim = wire.LoadRecord(IDS["a"], 7, 3, jobs=50, free=50, share=50)
    assert s.receive(wire.encode(claim), ADDR["a"]) == "m:a"
    live = s.live("m:a")  # announced no slots (mesh-only): claims no slots
    assert live is not None and (live.jobs, live.free, live.share) == (0, 0, 0)
    restart = wire.LoadRecord(IDS["a"], 8, 1, jobs=2)  # new boot: seq starts again
    assert s.receive(wire.encode(restart), ADDR["a"]) == "m:a"
    assert {"source", "unknown", "size", "old"} <= set(s.rejected)


def test_an_ack_from_before_a_restart_acknowledges_nothing() -> None:
    net = Net(jobs=4)
    a, s = net.books["a"], net.books["s"]
    a.set_demand("m:s", 0, 4)
    net.settle()
    old_boot = s.boot
    stale_ack = wire.LoadRecord(IDS["a"], a.boot, 10_000, ack=10_000, ack_boot=old_boot, want=4)
    # s restarts (a new book, a new boot) and promises a its share again.
    s2 = LoadBook(IDS["s"], 4, clock=net.clock, rng=random.Random("s2"))
    s2.set_peers([RemotePeer("m:a", IDS["a"], ADDR["a"], 3632, 2, frozenset({ADDR["a"]}))])
    s2.receive(wire.encode(wire.LoadRecord(IDS["a"], a.boot, 9_000, want=4)), ADDR["a"])
    assert s2.outgoing()
    promised = s2._remotes["m:a"].pending
    assert promised and promised[-1][1] > 0
    s2.receive(wire.encode(stale_ack), ADDR["a"])  # acks seq 10000 of the *old* s
    assert s2._remotes["m:a"].pending == promised  # the new promise still counts


def test_receive_is_rate_limited_per_peer() -> None:
    net = Net(jobs=4, max_recv_rate=100.0)
    s = net.books["s"]
    ok = sum(
        s.receive(wire.encode(wire.LoadRecord(IDS["a"], 1, i, jobs=2)), ADDR["a"]) is not None
        for i in range(1, 200)
    )
    assert ok == 10  # a burst of a tenth of a second's worth, then nothing until time passes
    net.clock.t += 0.1
    assert s.receive(wire.encode(wire.LoadRecord(IDS["a"], 1, 500, jobs=2)), ADDR["a"])


def test_stale_records_are_dropped_and_sending_is_paced() -> None:
    net = Net(jobs=4, stale_s=1.0, heartbeat_s=0.5, min_interval_s=0.1)
    a, s = net.books["a"], net.books["s"]
    net.settle(2)
    assert a.live("m:s") is not None
    net.clock.t += 1.5  # nothing delivered for longer than stale_s
    assert a.live("m:s") is None and not a.awaiting("m:s")
    assert a.outgoing() and not a.outgoing()  # heartbeat due; then nothing until a change
    net.clock.t += 0.05
    a.set_demand("m:s", 0, 2)
    assert not a.outgoing()  # a change within min_interval waits
    net.clock.t += 0.06
    assert len(a.outgoing()) == 1  # only s's figures changed
    assert s.free() == 4


# ---------------------------------------------------------------- the broker with a book

FP = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40")


def _verdict(name: str, jobs: int, caps: frozenset[str] = frozenset({"lzo", "load"})) -> Verdict:
    tc = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc",))
    rec = PeerRecord(
        f"m:{name}",
        PeerKind.MESHCC,
        f"{name}._meshcc._tcp.local.",
        name,
        (ADDR[name],),
        3632,
        2,
        jobs,
        (tc,),
        node_id=IDS[name],
        protocols=(1, 2),
        caps=caps,
    )
    state = PeerState(rec, Liveness.UP, 0.0, 0.0, None, None, 0.001, 0, 0, 0, None)
    return Verdict(state, True, "ok", rec.addresses[0], "gcc")


class _Status:
    off_reason: str | None = None


class _Mesh:
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.status = _Status()

    def explain(self, fp: ClientCompiler | None) -> list[Verdict]:
        return list(self.verdicts)


def test_broker_waits_for_a_share_then_uses_peer_and_own_box() -> None:
    async def scenario() -> None:
        net = Net(jobs=2)
        a, s = net.books["a"], net.books["s"]
        broker = LeaseBroker(_Mesh([_verdict("s", 2)]), load=a, rng=random.Random(3))
        a.set_local(running=2)  # a's own slots are busy serving others: only s can help
        first = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        assert not first.done()  # s has promised nothing yet: wait, do not guess
        assert broker.demand() == ({"m:s": (0, 1)}, 0, 0)  # what a tells s in its next record
        net.settle()
        broker.dispatch()
        got = await asyncio.wait_for(first, 1)
        assert isinstance(got, Grant) and got.key == "m:s"
        # s's share for a is 2 (nobody else wants it): one more, then a waits.
        second = await asyncio.wait_for(broker.acquire(FP, local_ok=False), 1)
        assert isinstance(second, Grant)
        third = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        assert not third.done()
        broker.release("m:s")
        assert isinstance(await asyncio.wait_for(third, 1), Grant)
        assert s.leased() <= 2
        broker.stop()

    asyncio.run(scenario())


def test_a_load_record_wakes_a_waiting_lease_and_ends_a_busy_hold() -> None:
    """No polling: a waiter is served when s's record promises a slot (on_load), even one
    held back by s's BUSY a moment ago (the record is newer news); the broker publishes its
    waiting leases with the book's queued figure, not as load on a's own server."""

    async def scenario() -> None:
        net = Net(jobs=1)
        a, s = net.books["a"], net.books["s"]
        broker = LeaseBroker(_Mesh([_verdict("s", 1)]), load=a, rng=random.Random(3))
        a.set_local(running=2)  # a's own slots are busy: only s can help
        first = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        net.settle()
        broker.dispatch()
        got = await asyncio.wait_for(first, 1)
        assert isinstance(got, Grant)
        broker.release(got.key, busy=True)  # s said BUSY (e.g. a stock client took it)
        waiter = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        assert not waiter.done() and a.lease_waiting == 1
        assert a._capacity(a.now()) == 0  # its own two slots are taken; the waiter is not load
        # a told s: its 2 slots taken, nothing queued in its server, 1 lease waiting
        assert (s._remotes["m:a"].running, s._remotes["m:a"].queued) == (2, 1)
        net.clock.t += 0.6  # s's next record (a heartbeat: nothing changed for s)
        records = [data for host, _, data in s.outgoing() if host == ADDR["a"]]
        assert records and wire.decode(records[0]).share == 1
        key = a.receive(records[0], ADDR["s"])
        assert key == "m:s" and "m:s" in broker.busy_until
        broker.on_load(key)
        assert not broker.waiters, "served at the record, not by a timer"
        await asyncio.sleep(0)  # the acquire() task takes its grant
        assert waiter.done()
        got = waiter.result()
        assert isinstance(got, Grant) and got.key == "m:s"
        broker.stop()

    asyncio.run(scenario())


def test_broker_counts_this_box_as_a_candidate() -> None:
    async def scenario() -> None:
        net = Net(jobs=2)
        a = net.books["a"]
        a.set_local(speed=10_000)  # a is measured fast, s not at all yet
        broker = LeaseBroker(_Mesh([_verdict("s", 2)]), load=a, rng=random.Random(5))
        got = await broker.acquire(FP)
        # s promised nothing yet, a's own box has its share: compile here, held.
        assert isinstance(got, Local) and got.held and "own share" in got.reason
        assert broker.in_use == {LOCAL_KEY: 1}
        assert a.local_held == 1
        broker.release(LOCAL_KEY)
        assert a.local_held == 0
        broker.stop()

    asyncio.run(scenario())


def test_broker_asks_the_fastest_peers_first() -> None:
    async def scenario() -> None:
        net = Net(jobs=2)
        a, b, s = net.books["a"], net.books["b"], net.books["s"]
        s.set_local(speed=9000)
        b.set_local(speed=1000)
        net.settle()
        broker = LeaseBroker(_Mesh([_verdict("b", 2), _verdict("s", 2)]), load=a)
        a.set_local(running=2)  # no local slot: every request waits for a peer's share
        waiting = [asyncio.ensure_future(broker.acquire(FP, local_ok=False)) for _ in range(3)]
        await asyncio.sleep(0)
        # s is fast and idle: asked for what it can give (2); the third request goes to b.
        assert broker.demand() == ({"m:s": (0, 2), "m:b": (0, 1)}, 0, 0)
        net.settle()
        broker.dispatch()
        got = [await asyncio.wait_for(w, 1) for w in waiting]
        assert Counter(g.key for g in got if isinstance(g, Grant)) == {"m:s": 2, "m:b": 1}
        broker.stop()

    asyncio.run(scenario())


def test_local_key_is_the_books_local() -> None:
    assert LOCAL == LOCAL_KEY


BUSY_CAPS = frozenset({"lzo", "load", "busy"})


def test_reservation_queues_one_request_on_a_full_peer_of_ours() -> None:
    """MESHCC_RESERVE_NEXT: with s full of our job (its share for us covers it), the next
    waiting request is granted ahead of time without SLOT (it queues in s, counted there),
    one per peer; the reservation ends with one of our jobs there; off by default."""

    async def scenario() -> None:
        net = Net(jobs=1)
        a, s = net.books["a"], net.books["s"]
        assert LeaseBroker(_Mesh([]), load=a).reserve is False  # opt-in
        broker = LeaseBroker(_Mesh([_verdict("s", 1, BUSY_CAPS)]), load=a, reserve=True)
        a.set_local(running=2)  # a's own slots are busy: only s can help
        first = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        net.settle()
        broker.dispatch()
        got = await asyncio.wait_for(first, 1)
        assert isinstance(got, Grant) and got.busy and not got.reserved
        # Before s reports the job running, nothing is reserved: the next request waits.
        second = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        assert not second.done()
        s.set_local(running=1)  # the job took s's slot
        net.settle()
        assert a.live("m:s").running == 1  # type: ignore[union-attr]
        broker.dispatch()
        res = await asyncio.wait_for(second, 1)
        assert isinstance(res, Grant) and res.reserved and not res.busy  # no SLOT: it queues
        assert broker.in_use == {"m:s": 2} and broker.reserved == {"m:s": 1}
        third = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        assert not third.done(), "one reservation per peer at most"
        # The first job is over: the queued one takes its slot, and the next request
        # queues behind it (s's last record shows it full of our jobs, all ours by share).
        broker.release(got.key)
        nxt = await asyncio.wait_for(third, 1)
        assert isinstance(nxt, Grant) and nxt.reserved
        assert broker.in_use == {"m:s": 2} and broker.reserved == {"m:s": 1}
        broker.release(res.key)
        broker.release(nxt.key)
        assert broker.in_use == {} and broker.reserved == {}
        broker.stop()

    asyncio.run(scenario())


def test_no_reservation_where_another_box_is_owed_the_slot() -> None:
    """a holds two slots mesh-wide (s's and one of its own), b none and wants s: s's fair
    division gives b the next turn (a's share drops below what a holds), so a queues
    nothing there ahead of b."""

    async def scenario() -> None:
        net = Net(jobs=1)
        a, b, s = net.books["a"], net.books["b"], net.books["s"]
        broker = LeaseBroker(_Mesh([_verdict("s", 1, BUSY_CAPS)]), load=a, reserve=True)
        a.set_local(running=2)
        first = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        net.settle()
        broker.dispatch()
        assert isinstance(await asyncio.wait_for(first, 1), Grant)
        s.set_local(running=1)
        broker.in_use[LOCAL_KEY] = 1  # a compiles one job of its own too (held_all 2)
        b.set_demand("m:s", 0, 3)
        second = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        net.settle()
        live = a.live("m:s")
        assert live is not None and live.share == 0 and live.running == 1
        broker.dispatch()
        await asyncio.sleep(0)
        assert not second.done() and broker.reserved == {}
        broker.stop()

    asyncio.run(scenario())


def test_a_heartbeat_needs_no_round_back_but_a_new_want_or_promise_does() -> None:
    """``round_due``: the channel answers a record at once only when it changes what this
    book promises (a peer's want or holdings) or owes an acknowledgement (a new share)."""
    net = Net(jobs=4, heartbeat_s=0.5, min_interval_s=0.01)
    a, s = net.books["a"], net.books["s"]
    net.settle()
    for book in net.books.values():
        book.round_due = False
    net.clock.t += 0.6
    net.send_all()  # heartbeats: nothing changed
    net.deliver()
    assert not a.round_due and not s.round_due
    a.set_demand("m:s", 0, 2)  # a's clients want two of s's slots
    net.clock.t += 0.02
    net.send_all()
    net.deliver()
    assert s.round_due  # a new want: s's shares may change, answer now
    s.round_due = False
    net.clock.t += 0.02
    net.send_all()  # s promises a its share
    net.deliver()
    assert a.round_due  # a new promise: a owes s an ack


def test_headroom_lingers_after_a_job_then_goes_and_demand_takes_it() -> None:
    """A serial build: between two jobs its share on s stays (the next lease needs no round
    trip, the job's end no round of records); after ``headroom_linger_s`` idle it goes. A
    client that wants the slots takes them from lingering headroom once it is acked."""
    net = Net(jobs=2, headroom_linger_s=2.0)
    a, b = net.books["a"], net.books["b"]
    a.set_demand("m:s", 0, 1)
    net.settle()
    assert a.live("m:s").share == 2  # type: ignore[union-attr]  # its want and the spare slot
    a.set_demand("m:s", 1, 1)
    net.settle()
    a.set_demand("m:s", 0, 0)  # the job ends
    net.settle()
    assert a.live("m:s").share == 2  # type: ignore[union-attr]
    net.clock.t += 1.0
    net.settle()
    assert a.live("m:s").share == 2  # type: ignore[union-attr]  # still within the linger
    b.set_demand("m:s", 0, 2)  # another box wants both slots: demand before headroom
    net.settle()
    assert (a.live("m:s").share, b.live("m:s").share) == (0, 2)  # type: ignore[union-attr]
    b.set_demand("m:s", 0, 0)
    net.settle()
    assert b.live("m:s").share >= 1  # type: ignore[union-attr]  # lingers, beside a
    net.clock.t += 2.5  # both idle longer than the linger
    net.settle()
    assert (a.live("m:s").share, b.live("m:s").share) == (0, 0)  # type: ignore[union-attr]


def test_a_lease_ended_within_its_share_is_told_after_the_hold() -> None:
    """A serial build's next job takes the slot its last one freed with nothing sent either
    way: while s spreads spare slots to a (its share exceeds what it holds), a drop waits
    ``release_hold_s`` (the slot is committed to a by its share whether a holds it or
    not). Once another box's demand takes that headroom, a drop is told at once, or b
    would wait out the hold for the slot a freed."""
    net = Net(jobs=2, release_hold_s=0.25)
    a, b, s = net.books["a"], net.books["b"], net.books["s"]
    seen_by_s = s._remotes["m:a"]
    a.set_demand("m:s", 0, 1)
    net.settle()
    a.set_demand("m:s", 1, 1)  # granted within its share: s hears a holds one
    net.settle()
    assert seen_by_s.their_held == 1
    for _ in range(3):  # jobs one after another: the end and the next lease send nothing
        a.set_demand("m:s", 0, 0)
        net.clock.t += 0.02
        assert a.outgoing() == []
        a.set_demand("m:s", 1, 1)
        net.clock.t += 0.02
        assert a.outgoing() == []
    a.set_demand("m:s", 0, 0)  # the last job
    net.clock.t += 0.02
    assert a.outgoing() == []
    assert a.next_due() is not None and a.next_due() <= net.clock.t + 0.25  # type: ignore[operator]
    net.clock.t += 0.25  # the hold is over: told
    net.send_all()
    net.deliver()
    assert seen_by_s.their_held == 0
    # Again holding one, but now b wants both slots: s cuts a's headroom, so a's release
    # goes at once and b gets the slot without waiting for the hold.
    a.set_demand("m:s", 1, 1)
    net.settle()
    assert a.live("m:s").share == 2  # type: ignore[union-attr]  # its job and headroom
    b.set_demand("m:s", 0, 2)
    net.settle()
    assert a.live("m:s").share == 1  # type: ignore[union-attr]
    assert b.live("m:s").share == 1  # type: ignore[union-attr]  # a's slot is still held
    a.set_demand("m:s", 0, 0)
    net.clock.t += 0.01
    net.send_all()
    net.deliver()
    assert seen_by_s.their_held == 0  # at once
    net.settle()  # a acks its smaller share, and s promises b the freed slot
    assert b.live("m:s").share == 2  # type: ignore[union-attr]


def test_headroom_stops_one_slot_above_what_a_client_used_lately() -> None:
    """A serial build on a 4-slot server keeps 2 slots as headroom (its job and one more, so
    a lease it ended stays inside its share for the release hold), not all 4. The spare
    slots beyond stay unpromised: a stock distcc job taking one moves no client's share, so
    no record goes for it, and another box asking is promised the rest in the next round,
    with no headroom of a's to cut first. A -j build's headroom follows its peak, and
    after the linger the peak is what it uses now."""
    net = Net(jobs=4, headroom_linger_s=2.0)
    a, b, s = net.books["a"], net.books["b"], net.books["s"]
    a.set_demand("m:s", 0, 1)
    net.settle()
    a.set_demand("m:s", 1, 1)
    net.settle()
    a.set_demand("m:s", 0, 0)  # the job ends: headroom lingers
    net.settle()
    net.clock.t += 0.3  # past the release hold: s hears a holds nothing
    net.settle()
    assert s._remotes["m:a"].their_held == 0
    assert a.live("m:s").share == 1 + HEADROOM_ABOVE_PEAK  # type: ignore[union-attr]

    s.round_due = False  # (the channel clears it after each round)
    assert s.set_figures(running=1, queued=0, speed=0)  # a stock job: capacity 4 -> 3
    assert not s.news(), "no share moved, and free slots remain"
    assert s.set_figures(running=0, queued=0, speed=0)
    assert not s.news()

    b.set_demand("m:s", 0, 2)  # another box asks: the unpromised slots are promised at once
    net.clock.t += 0.02
    net.send_all()
    net.deliver()  # b's want reaches s
    net.clock.t += 0.02
    net.send_all()
    net.deliver()  # s's answer reaches b
    assert b.live("m:s").share == 2  # type: ignore[union-attr]
    # the slots left spare are headroom for both: a keeps one for its next job
    assert a.live("m:s").share >= 1  # type: ignore[union-attr]

    b.set_demand("m:s", 0, 0)
    a.set_demand("m:s", 0, 3)  # a -j build on a: a peak of 3
    net.settle()
    a.set_demand("m:s", 3, 3)
    net.settle()
    a.set_demand("m:s", 1, 1)  # its tail: the peak lingers
    net.settle()
    assert a.live("m:s").share == min(4, 3 + HEADROOM_ABOVE_PEAK)  # type: ignore[union-attr]
    net.clock.t += 2.5  # the peak is older than the linger: headroom follows its use now
    net.settle()
    assert a.live("m:s").share == 1 + HEADROOM_ABOVE_PEAK  # type: ignore[union-attr]
