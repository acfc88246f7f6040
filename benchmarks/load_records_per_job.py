"""Live-load records and channel rounds per job of a serial build, for given load timings.

    .venv/bin/python benchmarks/load_records_per_job.py [--jobs 60] [--json F]

Two real :class:`meshcc.mesh.loadnet.LoadChannel` s (a client box c and a server s, their
real :class:`~meshcc.mesh.load.LoadBook` s) talk over UDP on 127.0.0.1, in one process,
and replay the load changes of a serial build's jobs as the daemons make them: c's
broker grants a slot on s at once if s's share allows (held), else wants one and grants it
once the share allows, s's compile server
takes a slot once the client's preprocessor is done (20 ms later), frees it when the
compile ends (150 ms), and c's lease ends 1 ms after that; 30 ms pass to the next job.
For each set of timings (without the headroom linger, as before 2026-11-30; with it; and
with the release hold as well, the default since) it counts, per job, the rounds each
channel ran (wake-ups that computed records) and the records it sent, and the process's
CPU per job (both channels). Counts are the point: they do not depend on how fast the
box is. Heartbeats (every 0.5 s) are included, as a daemon pays them too. (The "no hold"
rows' server rounds count the 2026-11-30 change too: a leased job's slot taken or freed
no longer sends a record, 4 rounds a job before it.) The last row reports c's demand as
the daemon does since 2026-11-30 (``LoadChannel.demand_changed``: a round only when a
record changes); the others poke c's channel on every change, as it did before.
``--stock`` adds two rows where a stock distcc job (no lease) runs on s after each of c's
jobs, once c's release hold is over: with every spare slot c's headroom (as before
``HEADROOM_ABOVE_PEAK``) and with headroom one slot above c's peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meshcc.mesh import load
from meshcc.mesh.load import LoadBook, LoadTimings, RemotePeer
from meshcc.mesh.loadnet import LoadChannel

NODES = {"c": "0000000000cc", "s": "0000000000ee"}


class _Book(LoadBook):
    """A real book that counts the rounds its channel runs."""

    rounds = 0

    def outgoing(self) -> list[tuple[str, int, bytes]]:
        self.rounds += 1
        return super().outgoing()


@dataclass
class Result:
    name: str
    rounds_c: float
    rounds_s: float
    records_c: float
    records_s: float
    cpu_ms: float


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _replay(
    timings: LoadTimings, jobs: int, ask: bool, stock: bool
) -> tuple[_Book, _Book, LoadChannel, LoadChannel]:
    books = {n: _Book(node, 4 if n == "s" else 1, timings) for n, node in NODES.items()}
    socks = {n: _socket() for n in NODES}
    ports = {n: s.getsockname()[1] for n, s in socks.items()}

    def peer(of: str) -> list[RemotePeer]:
        other = "s" if of == "c" else "c"
        jobs = books[other].jobs
        return [
            RemotePeer(
                f"m:{other}",
                NODES[other],
                "127.0.0.1",
                ports[other],
                jobs,
                frozenset({"127.0.0.1"}),
            )
        ]

    peers = {n: peer(n) for n in NODES}
    running = [0]
    s_figures = lambda: (running[0], 0, 0)  # noqa: E731
    channels = {
        "c": LoadChannel(books["c"], lambda: peers["c"]),
        "s": LoadChannel(books["s"], lambda: peers["s"], s_figures),
    }
    for n, ch in channels.items():
        await ch.start(socks[n])
    c, s = books["c"], books["s"]
    demand = [(0, 0)]  # c's broker: (held, want) on s
    c.demand_source = lambda: ({"m:s": demand[0]}, 0, 0)

    def c_demand(held: int, want: int) -> None:
        """c's broker's demand moved: as the daemon reports it (ask: demand_changed, a round
        only if a record changes), or as it did before (a poke, a round each time)."""
        demand[0] = (held, want)
        if ask:
            channels["c"].demand_changed()
        else:
            channels["c"].poke()

    try:
        await asyncio.sleep(1.0)  # they hear of each other
        c.rounds = s.rounds = 0
        sent0 = {n: ch.sent for n, ch in channels.items()}
        for _ in range(jobs):
            live = c.live("m:s")
            if live is None or live.share < 1:  # the request waits for a share (a want)
                c_demand(0, 1)
                deadline = time.monotonic() + 5.0
                while True:  # the broker grants once the share allows
                    live = c.live("m:s")
                    if live is not None and live.share >= 1:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("s promised c no share within 5 s")
                    await asyncio.sleep(0.0005)
            c_demand(1, 1)
            await asyncio.sleep(0.020)  # the client's preprocessor
            running[0] = 1
            channels["s"].slots_changed()  # as the daemon's compile server reports it
            await asyncio.sleep(0.150)  # the compile
            running[0] = 0
            channels["s"].slots_changed()
            await asyncio.sleep(0.001)
            c_demand(0, 0)
            await asyncio.sleep(0.030)
            if stock:  # past the release hold, a stock distcc job on s (no lease)
                await asyncio.sleep(timings.release_hold_s + 0.05)
                running[0] = 1
                channels["s"].slots_changed()
                await asyncio.sleep(0.100)
                running[0] = 0
                channels["s"].slots_changed()
                await asyncio.sleep(0.030)
        channels["c"].sent -= sent0["c"]
        channels["s"].sent -= sent0["s"]
        return c, s, channels["c"], channels["s"]
    finally:
        for ch in channels.values():
            await ch.stop()


def measure(
    name: str, timings: LoadTimings, jobs: int, ask: bool = False, stock: bool = False
) -> Result:
    t0 = time.process_time()
    c, s, cc, cs = asyncio.run(_replay(timings, jobs, ask, stock))
    cpu = (time.process_time() - t0) * 1000 / jobs
    return Result(name, c.rounds / jobs, s.rounds / jobs, cc.sent / jobs, cs.sent / jobs, cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument(
        "--stock", action="store_true", help="also: a stock distcc job on s after each job"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ways = [
        ("no linger, no hold", LoadTimings(headroom_linger_s=0.0, release_hold_s=0.0), False),
        ("linger 2 s, no hold", LoadTimings(release_hold_s=0.0), False),
        ("linger 2 s, hold 0.25 s", LoadTimings(), False),
        ("linger, hold, ask first", LoadTimings(), True),
    ]
    rows = [measure(name, t, args.jobs, ask) for name, t, ask in ways]
    if args.stock:
        # Each job followed by a stock distcc job on s (after c's release hold), with every
        # spare slot c's headroom as before (HEADROOM_ABOVE_PEAK beyond any capacity), and
        # with headroom one slot above c's peak (now).
        was = load.HEADROOM_ABOVE_PEAK
        try:
            load.HEADROOM_ABOVE_PEAK = 1 << 20
            rows.append(measure("+ stock, all spare", LoadTimings(), args.jobs, True, True))
        finally:
            load.HEADROOM_ABOVE_PEAK = was
        rows.append(measure("+ stock, peak + 1", LoadTimings(), args.jobs, True, True))
    print(f"per serial job ({args.jobs} jobs; c: the client box, s: the server)")
    head = ("rounds c", "rounds s", "records c", "records s", "CPU ms")
    print(f"{'timings':24s} " + " ".join(f"{h:>9s}" for h in head))
    for r in rows:
        print(
            f"{r.name:24s} {r.rounds_c:9.2f} {r.rounds_s:9.2f} {r.records_c:9.2f} "
            f"{r.records_s:9.2f} {r.cpu_ms:9.2f}"
        )
    if args.json:
        out: dict[str, Any] = {r.name: r.__dict__ for r in rows}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
