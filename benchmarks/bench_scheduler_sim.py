"""A 100-host simulation of job scheduling: meshcc's broker vs distcc's static host order.

    .venv/bin/python benchmarks/bench_scheduler_sim.py                 # 100 hosts, 3 seeds
    .venv/bin/python benchmarks/bench_scheduler_sim.py --builders 25 --jobs 400 -j 64
    .venv/bin/python benchmarks/bench_scheduler_sim.py --json sim.json

Pure code, virtual time, no sockets. Every host both builds and serves (the mesh is one
machine): ``--builders`` of the ``--hosts`` each run ``make -jJ`` over ``--jobs`` compile
jobs drawn from a recorded job-time distribution (benchmarks/data/zlib-job-times.json,
from ``record_job_times.py``: zlib at -O2, one core per job). Hosts differ: slots 2, 4 or
8, speed 0.5x, 1x or 2x (a job of t seconds takes t/speed there); a host runs at most its
slots at once and queues the rest FIFO, whoever sent them.

* **meshcc**: every host runs the real :class:`meshcc.mesh.leases.LeaseBroker` and
  :class:`meshcc.mesh.load.LoadBook` (its own node id, its peers the 99 others); load
  records are the real datagrams (:mod:`meshcc.wire.load`), delivered after ``--latency``
  (default 0.2 ms), sent in rounds as meshcc's channel sends them (on change, at most
  every min_interval_s per peer, heartbeat; a demand change wakes a round only when it
  changes a record, as ``LoadChannel.demand_changed``); the speed figure is the real
  :class:`SpeedMeter` fed with each host's finished jobs. Each make slot awaits the
  broker's ``acquire`` in an asyncio loop driven by the simulation's clock; a grant runs the
  job on that peer, a held local lease runs it on the builder itself.
* **distcc**: each builder's ``DISTCC_HOSTS`` is the same static list (the 100 hosts in
  name order, each ``/slots``, then ``localhost/2``, as ``meshcc hosts`` writes it); a job
  takes the first host where this builder's own lock count is below the limit (distcc's
  per-client lock files: it cannot see other clients' jobs), else waits for one of its own.

Figures: makespan (all builds done) against the lower bound max(total work / total
capacity, any build's work / (J x fastest speed), longest job / fastest speed); the median
build's finish time; how full the slowest hosts were. The lower bound ignores job
granularity and the queueing a FIFO server must do, so 1.0 is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.mesh.leases import LOCAL_KEY, Grant, LeaseBroker
from meshcc.mesh.load import LoadBook, LoadTimings, RemotePeer, SpeedMeter
from meshcc.mesh.matching import Verdict
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo

DATA = Path(__file__).parent / "data" / "zlib-job-times.json"
FP = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40")
TC = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc",))


@dataclass(slots=True)
class Job:
    seconds: float
    size: int
    build: int


@dataclass
class Host:
    idx: int
    slots: int
    speed: float
    running: int = 0
    queue: list[tuple[Job, Callable[[], None]]] = field(default_factory=list)
    busy_time: float = 0.0
    done_bytes: int = 0
    done_seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"h{self.idx:03d}"

    @property
    def address(self) -> str:
        return f"10.0.{self.idx // 250}.{self.idx % 250 + 1}"

    @property
    def node(self) -> str:
        return f"{self.idx + 1:012x}"


class Sim:
    """Virtual clock and event heap; hosts execute jobs (slots, FIFO queue)."""

    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._n = itertools.count()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._n), fn))

    def submit(self, host: Host, job: Job, done: Callable[[], None]) -> None:
        if host.running < host.slots:
            self._start(host, job, done)
        else:
            host.queue.append((job, done))

    def _start(self, host: Host, job: Job, done: Callable[[], None]) -> None:
        host.running += 1
        dt = job.seconds / host.speed

        def finish() -> None:
            host.running -= 1
            host.busy_time += dt
            host.done_bytes += job.size
            host.done_seconds += dt
            if host.queue:
                nxt, cb = host.queue.pop(0)
                self._start(host, nxt, cb)
            done()

        self.at(self.now + dt, finish)

    def step(self) -> bool:
        if not self._events:
            return False
        t, _, fn = heapq.heappop(self._events)
        self.now = max(self.now, t)
        fn()
        return True


def make_hosts(n: int, rng: random.Random) -> list[Host]:
    return [Host(i, rng.choice([2, 4, 8]), rng.choice([0.5, 1.0, 1.0, 2.0])) for i in range(n)]


def make_builds(
    builders: int, jobs: int, dist: list[dict[str, Any]], rng: random.Random
) -> list[list[Job]]:
    return [
        [Job(d["seconds"], d["bytes"], b) for d in rng.choices(dist, k=jobs)]
        for b in range(builders)
    ]


def lower_bound(hosts: list[Host], builds: list[list[Job]], j: int) -> float:
    work = sum(job.seconds for b in builds for job in b)
    capacity = sum(h.slots * h.speed for h in hosts)
    fastest = max(h.speed for h in hosts)
    per_build = max(sum(job.seconds for job in b) / (j * fastest) for b in builds)
    longest = max(job.seconds for b in builds for job in b) / fastest
    return max(work / capacity, per_build, longest)


# ---------------------------------------------------------------- distcc


def run_distcc(hosts: list[Host], builds: list[list[Job]], j: int) -> dict[str, float]:
    sim = Sim(hosts)
    order = sorted(hosts, key=lambda h: h.name)  # the same static list for everybody
    finish: dict[int, float] = {}
    for b, jobs in enumerate(builds):
        me = hosts[b]
        locks: dict[int, int] = {}
        todo = list(jobs)
        left = [len(jobs)]
        free_slots = [j]

        def pump(
            b: int = b,
            me: Host = me,
            locks: dict[int, int] = locks,
            todo: list[Job] = todo,
            left: list[int] = left,
            free_slots: list[int] = free_slots,
        ) -> None:
            while todo and free_slots[0] > 0:
                target = None
                for h in order:
                    if h is me:
                        continue
                    if locks.get(h.idx, 0) < h.slots:
                        target = h
                        break
                if target is None and locks.get(-1, 0) < 2:
                    target, key = me, -1
                elif target is None:
                    return  # every host at this client's own limit: wait for one of ours
                else:
                    key = target.idx
                job = todo.pop(0)
                free_slots[0] -= 1
                locks[key] = locks.get(key, 0) + 1

                def done(key: int = key) -> None:
                    locks[key] -= 1
                    free_slots[0] += 1
                    left[0] -= 1
                    if left[0] == 0:
                        finish[b] = sim.now
                    pump()

                sim.submit(target, job, done)

        sim.at(0.0, pump)
    while sim.step():
        pass
    return _figures(sim, finish)


def _figures(sim: Sim, finish: dict[int, float]) -> dict[str, float]:
    slow = [h for h in sim.hosts if h.speed < 1]
    span = max(finish.values())
    return {
        "makespan": span,
        "median_build": statistics.median(finish.values()),
        "slow_busy": sum(h.busy_time for h in slow) / max(1e-9, sum(h.slots for h in slow) * span),
    }


# ---------------------------------------------------------------- meshcc


class _Status:
    off_reason: str | None = None


class _View:
    """A host's view of the mesh: every other host, matching and up."""

    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.status = _Status()

    def explain(self, fp: ClientCompiler | None) -> list[Verdict]:
        return self.verdicts


def _verdict(h: Host) -> Verdict:
    rec = PeerRecord(
        f"m:{h.node}",
        PeerKind.MESHCC,
        f"{h.name}._meshcc._tcp.local.",
        h.name,
        (h.address,),
        3632,
        h.slots,
        h.slots,
        (TC,),
        node_id=h.node,
        protocols=(1, 2),
        caps=frozenset({"lzo", "load"}),
    )
    st = PeerState(rec, Liveness.UP, 0.0, 0.0, None, None, 0.0002, 0, 0, 0, None)
    return Verdict(st, True, "ok", h.address, "gcc")


async def _run_meshcc(
    hosts: list[Host],
    builds: list[list[Job]],
    j: int,
    latency: float,
    seed: int,
    warm: float | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    sim = Sim(hosts)
    timings = LoadTimings()
    verdicts = {h.idx: _verdict(h) for h in hosts}
    by_key = {f"m:{h.node}": h for h in hosts}
    by_addr = {h.address: h for h in hosts}
    books: dict[int, LoadBook] = {}
    brokers: dict[int, LeaseBroker] = {}
    meters = {h.idx: SpeedMeter() for h in hosts}
    if warm is not None:
        # A mesh that has been up for a while: each server measured its speed on earlier
        # jobs (``warm`` bytes per second of a 1x host); its first records carry it.
        for h in hosts:
            h.done_bytes, h.done_seconds = int(warm * h.speed * 5.0), 5.0
    round_due: dict[int, bool] = {}
    stats = {"datagrams": 0, "rounds": 0}

    def poke(h: Host) -> None:
        if not round_due.get(h.idx):
            round_due[h.idx] = True
            sim.at(sim.now + timings.min_interval_s, lambda: send_round(h))

    def send_round(h: Host) -> None:
        round_due[h.idx] = False
        book, broker = books[h.idx], brokers[h.idx]
        speed = meters[h.idx].update(h.done_bytes, h.done_seconds)
        book.set_local(running=h.running, queued=len(h.queue) + len(broker.waiters), speed=speed)
        stats["rounds"] += 1
        for addr, _, data in book.outgoing():
            stats["datagrams"] += 1
            dst = by_addr[addr]
            sim.at(
                sim.now + latency, lambda dst=dst, data=data, src=h.address: deliver(dst, data, src)
            )

    asked_at: dict[int, float] = {}

    def demand_changed(h: Host) -> None:
        """As LoadChannel.demand_changed: a round only when a record changes (a burst, or
        a round already coming, just pokes); else the next round that time brings (a
        lease end held back for release_hold_s) is planned."""
        if round_due.get(h.idx):
            return
        if sim.now - asked_at.get(h.idx, -math.inf) < timings.min_interval_s:
            poke(h)
            return
        asked_at[h.idx] = sim.now
        book = books[h.idx]
        if book.news():
            poke(h)
            return
        due = book.next_due()
        if due is not None and due < sim.now + timings.heartbeat_s:
            sim.at(due, lambda: poke(h))

    def deliver(dst: Host, data: bytes, src: str) -> None:
        if books[dst.idx].receive(data, src) is not None:
            brokers[dst.idx].dispatch()
            poke(dst)

    def heartbeat(h: Host) -> None:
        poke(h)
        sim.at(sim.now + timings.heartbeat_s, lambda: heartbeat(h))

    for h in hosts:
        book = LoadBook(h.node, h.slots, timings, clock=lambda: sim.now, rng=random.Random(h.idx))
        book.set_peers(
            RemotePeer(f"m:{o.node}", o.node, o.address, 3632, o.slots, frozenset({o.address}))
            for o in hosts
            if o is not h
        )
        if warm is not None:
            book.set_local(speed=meters[h.idx].update(h.done_bytes, h.done_seconds))
        books[h.idx] = book
        brokers[h.idx] = LeaseBroker(
            _View([verdicts[o.idx] for o in hosts if o is not h]),
            load=book,
            on_demand=lambda h=h: demand_changed(h),
            rng=random.Random(seed * 1000 + h.idx),
        )
        sim.at(random.Random(h.idx).uniform(0, timings.heartbeat_s), lambda h=h: heartbeat(h))

    finish: dict[int, float] = {}
    left = {b: len(jobs) for b, jobs in enumerate(builds)}
    queues = {b: list(jobs) for b, jobs in enumerate(builds)}
    activity = [0]

    async def make_slot(b: int) -> None:
        me, broker = hosts[b], brokers[b]
        while queues[b]:
            job = queues[b].pop(0)
            got = await broker.acquire(FP)
            activity[0] += 1
            target = by_key[got.key] if isinstance(got, Grant) else me
            key = got.key if isinstance(got, Grant) else LOCAL_KEY
            done = asyncio.get_running_loop().create_future()
            sim.submit(target, job, lambda done=done: done.set_result(None))
            await done
            activity[0] += 1
            broker.release(key)
            left[b] -= 1
            if left[b] == 0:
                finish[b] = sim.now

    tasks = [asyncio.ensure_future(make_slot(b)) for b in range(len(builds)) for _ in range(j)]

    async def settle() -> None:
        while True:
            before = activity[0]
            for _ in range(4):
                await asyncio.sleep(0)
            if activity[0] == before:
                return

    await settle()
    while len(finish) < len(builds):
        if not sim.step():
            raise RuntimeError("simulation stalled: jobs left but nothing scheduled")
        await settle()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for broker in brokers.values():
        broker.stop()
    return _figures(sim, finish), {k: float(v) for k, v in stats.items()}


def run_meshcc(
    hosts: list[Host],
    builds: list[list[Job]],
    j: int,
    latency: float,
    seed: int,
    warm: float | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    return asyncio.run(_run_meshcc(hosts, builds, j, latency, seed, warm))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--builders", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=300, help="compile jobs per build")
    ap.add_argument("-j", type=int, default=48, help="make -j of each build")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.0002, help="datagram delay, s")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--cold", action="store_true", help="no host has measured its speed yet (a new mesh)"
    )
    args = ap.parse_args()
    dist = json.loads(args.data.read_text())["jobs"]
    rate = sum(d["bytes"] for d in dist) / sum(d["seconds"] for d in dist)
    warm = None if args.cold else rate
    rows = []
    for seed in range(args.seeds):
        rng = random.Random(seed)
        hosts = make_hosts(args.hosts, rng)
        builds = make_builds(args.builders, args.jobs, dist, rng)
        lb = lower_bound(hosts, builds, args.j)
        d = run_distcc(make_hosts(args.hosts, random.Random(seed)), builds, args.j)
        t0 = time.perf_counter()
        m, stats = run_meshcc(
            make_hosts(args.hosts, random.Random(seed)), builds, args.j, args.latency, seed, warm
        )
        took = time.perf_counter() - t0
        rows.append({"seed": seed, "lower_bound": lb, "distcc": d, "meshcc": m, "stats": stats})
        print(
            f"seed {seed}: lower bound {lb:6.2f} s | distcc makespan {d['makespan']:6.2f} s "
            f"({d['makespan'] / lb:4.2f}x LB, median build {d['median_build']:6.2f} s) | "
            f"meshcc {m['makespan']:6.2f} s ({m['makespan'] / lb:4.2f}x LB, median build "
            f"{m['median_build']:6.2f} s) | {stats['datagrams'] / m['makespan'] / args.hosts:.0f}"
            f" datagrams/s/host; simulated in {took:.1f} s",
            flush=True,
        )
    med = {
        w: statistics.median(r[w]["makespan"] / r["lower_bound"] for r in rows)
        for w in ("distcc", "meshcc")
    }
    print(
        f"\n{args.hosts} hosts, {args.builders} builds x {args.jobs} jobs at -j{args.j}, "
        f"{len(dist)} recorded job times ({args.data.name}): median makespan / lower bound: "
        f"distcc {med['distcc']:.2f}x, meshcc {med['meshcc']:.2f}x "
        f"(meshcc / distcc = {med['meshcc'] / med['distcc']:.2f})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"data": str(args.data), "json": str(args.json)},
                    "runs": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
