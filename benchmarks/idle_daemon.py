"""What an idle ``meshcc daemon`` costs: CPU per second of one daemon in a mesh nobody uses.

    .venv/bin/python benchmarks/idle_daemon.py                     # 2 daemons, 5 x 10 s
    .venv/bin/python benchmarks/idle_daemon.py --daemons 4 --windows 7 --json idle.json

Every box of a mesh runs a daemon all day, so what it spends doing nothing is paid on
every box, and grows with the number of peers. ``--daemons`` real daemons (this tree's
meshcc, discovery on) run on a LAN of network namespaces (tests/netns.py; needs root;
nothing leaves the namespaces). Once the first lists every other one as a host, it is
left alone for a settling pause, then its CPU is read from ``/proc/PID/task/*/schedstat``
(on-CPU nanoseconds of every thread) over ``--windows`` windows of ``--seconds`` each; the
median ms of CPU per second is reported, with the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cpusample import threads_cpu_ns

import netns
from meshd import Meshd, private_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemons", type=int, default=2, help="daemons on the LAN (2-8)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one window")
    ap.add_argument("--settle", type=float, default=5.0, help="pause before measuring")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not 2 <= args.daemons <= 8:
        ap.error("--daemons: 2 to 8")
    why = netns.unavailable_reason()
    if why is not None:
        print(f"needs network namespaces: {why}", file=sys.stderr)
        return 2
    work = private_dir("meshcc-idle-")
    rates: list[float] = []
    with netns.Lan() as lan:
        hosts = [lan.add_host(f"h{i}") for i in range(args.daemons)]
        daemons = [Meshd(work, h, "--interface", "eth0", name=h.name) for h in hosts]
        try:
            for d in daemons:
                d.start(wait=False)
            for d in daemons:
                d.wait_ready()
            first = daemons[0]
            others = [h.address for h in hosts[1:]]
            netns.wait_for(
                lambda: all(a in first.hosts("gcc")["line"] for a in others),
                30,
                what="the first daemon to list every other one",
            )
            time.sleep(args.settle)
            assert first.proc is not None
            pid = first.proc.pid  # `ip netns exec` execs the daemon: the same process
            for _ in range(args.windows):
                t0, c0 = time.monotonic(), threads_cpu_ns(pid)
                time.sleep(args.seconds)
                t1, c1 = time.monotonic(), threads_cpu_ns(pid)
                rates.append((c1 - c0) / 1e6 / (t1 - t0))
        finally:
            for d in daemons:
                d.stop()
    median = statistics.median(rates)
    print(
        f"idle daemon with {args.daemons - 1} peer(s): {median:.2f} ms of CPU per second "
        f"(median of {len(rates)} windows of {args.seconds:g} s; "
        f"min {min(rates):.2f}, max {max(rates):.2f})"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"daemons": args.daemons, "ms_per_s": rates, "median": median}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
