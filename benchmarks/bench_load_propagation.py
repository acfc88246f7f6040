"""Time from a peer's load change to another daemon seeing it (the live-load channel).

    .venv/bin/python benchmarks/bench_load_propagation.py              # 30 changes each way
    .venv/bin/python benchmarks/bench_load_propagation.py --changes 100 --json prop.json

Three real ``meshcc daemon`` processes on a LAN of network namespaces (tests/netns.py;
needs root; nothing leaves the namespaces): s (the real gcc, ``--jobs 2``; see
``--server-jobs``), a and z (a gcc
that reports another version, so only s serves the real gcc). A client on a takes a
lease (granted on s) and later drops it; the timer runs from the moment the client has
its grant (or closes the connection) until z's status, polled over its control socket
every ``--poll-ms``, shows s's free slots changed. That is the full path: a's broker ->
a's record to s -> s's free figure -> s's record to z. For comparison, the mDNS hint
(``free`` in the TXT record) is republished at most every 30 s and only on changes of
max(2, jobs/4) slots: a change of one slot is never republished.

Since 2026-11-30 a record goes at once only when s's free slots run out or come back (what
a broker acts on: it takes its share, not a count); the exact count rides with the next
record or heartbeat. ``--server-jobs 1`` times that path (a's lease takes s's only slot);
the default, 2, times the count riding along.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import netns
from meshcc.wire import control
from meshd import ControlConn, Meshd, mismatched_gcc, private_dir, trusted_dir

REQ = control.LeaseRequest("gcc", "/usr/bin/gcc", "x.c", local_ok=False).to_message()


def s_free(z: Meshd, key: str) -> int | None:
    """s's free slots in z's status (its live load of peer ``key``), None if none fresh."""
    for info in z.status().get("loads", []):
        if info["key"] == key:
            return int(info["free"])
    return None


def wait_free(z: Meshd, key: str, want: int, poll_s: float, timeout: float = 10.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if s_free(z, key) == want:
            return time.perf_counter()
        time.sleep(poll_s)
    raise RuntimeError(f"z never saw {key} with {want} free")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--poll-ms", type=float, default=1.0)
    ap.add_argument(
        "--server-jobs",
        type=int,
        default=2,
        help="s's --jobs: 2, a lease moves s's free count (1 -> 2), which rides with s's next "
        "record; 1, it takes s's only slot (free slots run out, and come back), which goes at once",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    jobs = args.server_jobs
    why = netns.unavailable_reason()
    if why is not None:
        print(f"needs network namespaces: {why}", file=sys.stderr)
        return 2
    poll = args.poll_ms / 1000
    work = private_dir("meshcc-prop-")
    odd = mismatched_gcc(trusted_dir("meshcc-prop-odd-"), "12.9.0")
    with netns.Lan() as lan:
        hs, ha, hz = (lan.add_host(n) for n in "saz")
        iface = ("--interface", "eth0")
        s = Meshd(work, hs, *iface, "--jobs", str(jobs), name="s")
        a = Meshd(work, ha, *iface, "--compiler", str(odd), name="a")
        z = Meshd(work, hz, *iface, "--compiler", str(odd), name="z")
        daemons = [s, a, z]
        try:
            for m in daemons:
                m.start(wait=False)
            for m in daemons:
                m.wait_ready()
            key = f"m:{s.status()['node']}"  # s's key in its peers' tables
            netns.wait_for(lambda: s_free(z, key) == jobs, 20, what="z to see s's load")
            netns.wait_for(lambda: hs.address in a.hosts("gcc")["line"], 20, what="a lists s")
            taken: list[float] = []
            freed: list[float] = []
            for _ in range(args.changes):
                with ControlConn(a.socket) as c:
                    got = c.ask(REQ)
                    assert got.get("ok") is True, got
                    t0 = time.perf_counter()
                    taken.append(wait_free(z, key, jobs - 1, poll) - t0)
                t0 = time.perf_counter()
                freed.append(wait_free(z, key, jobs, poll) - t0)
                time.sleep(0.05)
        finally:
            for m in daemons:
                m.stop()
    rows: dict[str, Any] = {}
    for what, xs in (("lease taken", taken), ("lease freed", freed)):
        ms = [x * 1000 for x in xs]
        rows[what] = {"median_ms": statistics.median(ms), "p90_ms": pct(ms, 0.9), "n": len(ms)}
        print(
            f"{what}: a's client -> z sees s's free slots change: median "
            f"{statistics.median(ms):.1f} ms, p90 {pct(ms, 0.9):.1f} ms, max {max(ms):.1f} ms "
            f"({len(ms)} changes, z polled every {args.poll_ms:g} ms)"
        )
    print("mDNS hint for comparison: >= 30 s, and never for a change of one slot")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
