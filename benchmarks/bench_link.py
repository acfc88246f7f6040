#!/usr/bin/env python3
"""A real build across a shaped link: meshcc's negotiated codec vs distcc's LZO (issue 12).

    .venv/bin/python benchmarks/bench_link.py [--project xz-utils|zlib] [--reps 3] [-j 4]
        [--rates unshaped,100mbit,10mbit] [--json out.json]

Builds its own LAN (tests/netns.py: a bridge in a switch namespace, one namespace per box;
nothing touches this machine's real interfaces): box ``s`` runs a ``meshcc daemon`` and a
stock ``distccd`` (both ``--jobs J``), box ``c`` runs a ``meshcc daemon`` whose only
compiler reports another gcc version, so every ``meshcc-gcc`` job is leased to ``s``. The
project is configured once, then built on ``c`` with ``make -jJ`` five ways, alternating
within each repetition (``make clean`` untimed before each build, ``DISTCC_FALLBACK=0``
so a job that did not go remote fails the build):

| way | ``CC`` | bodies |
| --- | --- | --- |
| meshcc | ``meshcc-gcc`` (leases) | chosen per job (compression.choose) |
| meshcc nozref | ``meshcc-gcc``, ``MESHCC_ZREF=0`` | chosen per job, no zstd prefixes |
| meshcc none | ``meshcc-gcc``, ``MESHCC_CODEC=none`` | uncompressed |
| distcc lzo | ``distcc gcc``, ``DISTCC_HOSTS=s:PORT/J,lzo`` | LZO (protocol 2) |
| distcc none | ``distcc gcc``, ``DISTCC_HOSTS=s:PORT/J`` | uncompressed (protocol 1) |

for each link rate in turn: ``tc qdisc replace dev eth0 root tbf rate R`` on both boxes
(both directions shaped), or no qdisc (``unshaped``: a veth, as fast as the CPUs). The
rates run in the order given; ``c``'s daemon keeps its link estimate across them, as a real
one would (it follows a changed link within a few jobs).

Reported per rate: the median wall of each way, its ratio to distcc lzo and to distcc none
from the same run, the bytes that crossed ``c``'s eth0 per build and per compile (both
directions, from its counters), how busy the shaped link was (those bytes against rate x
wall: a build far below 100 % is not bound by the link, and no codec can make it much
faster), the CPU seconds of the client side (``make`` and everything under it: the
wrappers, their preprocessors; from wait4, which load elsewhere does not move), the tbf
drops, and for meshcc the codecs (zstd with its level) its jobs went in (from
``MESHCC_VERBOSE`` of a last, untimed build). Targets: at 10 Mbit/s meshcc <= 0.5x distcc
lzo; unshaped, meshcc no slower than meshcc without compression. The 10 Mbit/s verdict
says when distcc lzo's build kept the link busy less than half its wall: such a build is
bound by CPU (compiles and clients share this box's cores), not by the link, and fewer
bytes cannot halve it; the bytes per compile are then the figure that load does not move.
The first meshcc build is compared object by object with a local build.

The meshcc packages' bytecode is written first: with ``PYTHONDONTWRITEBYTECODE`` set (as on
the development box) and a source tree without ``.pyc`` files, every ``meshcc-gcc`` would
compile its modules again on every job (~80 ms of CPU, measured: the cost earlier runs of
this benchmark blamed on meshcc's per-job Python work). An installed meshcc has them.

Root is needed (namespaces, tc). The LAN is torn down at the end, also on failure.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _harness as h  # noqa: E402

import netns  # noqa: E402
from meshd import Meshd, mismatched_gcc, private_dir, trusted_dir  # noqa: E402

DISTCCD_PORT = 3640  # not 3633: the meshcc daemon serves its status there (distcc stats port)
WAYS = ("meshcc", "meshcc-nozref", "meshcc-none", "distcc-lzo", "distcc-none")
TARGET_SLOW = 0.5  # meshcc / distcc lzo at 10 Mbit/s
PROJECTS = {
    # 106 compiles through libtool; -O2 without -g: objects byte-identical across boxes.
    "xz-utils": (
        ["./configure", "CFLAGS=-O2", "--disable-nls", "--disable-shared", "--disable-doc"],
        [],
    ),
    "zlib": (["./configure"], ["static", "all64"]),  # 19 compiles, plain Makefile
}
# A small bucket, so the rate holds for short transfers too: with 64 KB at 100 Mbit/s the
# first 64 KB of each job's body crossed at veth speed (a link no one has), and the
# kernel's delivery rate of most jobs read several times the shaped rate.
BURST = {"10mbit": "4kb", "100mbit": "8kb"}
SENT = re.compile(r"bytes as (\w+) \(link [^)]*\)(?:, level (\d+))?(?:.*\(zref: (prefix|no))?")


def _tc(hosts: list[netns.Host], rate: str) -> None:
    for host in hosts:
        host.run(["tc", "qdisc", "del", "dev", "eth0", "root"], check=False, capture_output=True)
        if rate != "unshaped":
            burst = BURST.get(rate, "8kb")
            host.run(
                ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
                 "burst", burst, "latency", "200ms"],
                check=True,
            )  # fmt: skip


def _drops(host: netns.Host) -> int:
    """Packets the root qdisc on eth0 dropped so far (0 unshaped)."""
    res = host.run(["tc", "-s", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True)
    found = re.search(r"dropped (\d+)", res.stdout)
    return int(found.group(1)) if found else 0


def _rate_bps(rate: str) -> float | None:
    """``10mbit`` -> bytes per second (None: unshaped)."""
    found = re.fullmatch(r"(\d+)mbit", rate)
    return int(found.group(1)) * 1e6 / 8 if found else None


def _compile_bytecode() -> None:
    """Write the .pyc files of the code the wrappers run (see the module's docstring)."""
    for pkg in ("meshcc",):
        if not compileall.compile_dir(str(ROOT / pkg), quiet=1):
            raise h.HarnessError(f"cannot compile the Python files under {ROOT / pkg}")


def _eth0_bytes(host: netns.Host) -> int:
    res = host.run(
        ["cat", *(f"/sys/class/net/eth0/statistics/{d}_bytes" for d in ("rx", "tx"))],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    return sum(int(x) for x in res.stdout.split())


def _objects(tree: Path) -> dict[str, str]:
    return {
        str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tree.rglob("*.o"))
    }


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, lan: netns.Lan) -> None:
        self.args = args
        self.work = work
        self.c = lan.add_host("c")
        self.s = lan.add_host("s")
        self.tree = work / "tree"
        self.jobs = args.jobs
        self.daemons: list[Meshd] = []
        self.distccd: object = None
        self.cpu = 0.0  # client-side CPU seconds of the last make (wait4)

    # ---------------------------------------------------------------- setup

    def prepare(self) -> int:
        configure, _ = PROJECTS[self.args.project]
        shutil.copytree(h.apt_source(self.args.project), self.tree, symlinks=True)
        self._quiet(configure, dict(h.clean_env(), CC="gcc"))
        self.make("gcc", h.clean_env(), timed=False)
        self.reference = _objects(self.tree)
        self.compiles = len(self.reference)
        odd = mismatched_gcc(trusted_dir("bench-link-odd-"), "12.9.9")
        j = str(self.jobs)
        self.sd = Meshd(self.work, self.s, "--interface", "eth0", "--jobs", j, name="s").start()
        self.cd = Meshd(
            self.work, self.c, "--interface", "eth0", "--jobs", "1", "--compiler", str(odd),
            name="c",
        ).start()  # fmt: skip
        self.daemons = [self.sd, self.cd]
        allow = str(ipaddress.ip_interface(self.s.cidr).network)
        with open(self.work / "distccd.log", "wb") as log:  # as root it drops to distccd
            self.distccd = self.s.popen(
                ["distccd", "--daemon", "--no-detach", "--log-stderr", "--log-level", "warning",
                 "--port", str(DISTCCD_PORT), "--allow", allow, "--jobs", j],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        self.s.wait_tcp(DISTCCD_PORT)

        def listed() -> bool:
            res = self.cd.cli("hosts", "--cc", "gcc", inside=True)
            return self.s.address in res.stdout

        netns.wait_for(listed, 60, 0.25, "s in c's hosts line")
        return self.compiles

    def _quiet(self, cmd: list[str], env: dict[str, str]) -> None:
        res = subprocess.run(
            cmd, cwd=self.tree, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if res.returncode:
            raise h.HarnessError(
                f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
            )

    def env(self, way: str) -> dict[str, str]:
        state = self.work / f"state-{way}"
        shutil.rmtree(state, ignore_errors=True)
        env = h.client_env(state)
        if way.startswith("meshcc"):
            env["MESHCC_SOCKET"] = str(self.cd.socket)
            if way == "meshcc-none":
                env["MESHCC_CODEC"] = "none"
            if way == "meshcc-nozref":  # zstd without body prefixes (compression.kept)
                env["MESHCC_ZREF"] = "0"
        else:
            lzo = ",lzo" if way == "distcc-lzo" else ""
            env["DISTCC_HOSTS"] = f"{self.s.address}:{DISTCCD_PORT}/{self.jobs}{lzo}"
        return env

    def cc(self, way: str) -> str:
        return "meshcc-gcc" if way.startswith("meshcc") else "distcc gcc"

    def make(
        self, cc: str, env: dict[str, str], timed: bool = True, host: netns.Host | None = None
    ) -> float:
        _, targets = PROJECTS[self.args.project]
        self._quiet(["make", "clean"], h.clean_env())
        argv = ["make", f"-j{self.jobs}", f"CC={cc}", *targets]
        if self.args.cflags is not None:
            argv.append(f"CFLAGS={self.args.cflags}")
        log = self.work / "make.log"
        with open(log, "wb") as out:
            t0 = time.perf_counter()
            if host is None:
                proc = subprocess.Popen(argv, cwd=self.tree, env=env, stdout=out, stderr=out)
            else:
                proc = host.popen(argv, cwd=self.tree, env=env, stdout=out, stderr=out)
            # wait4 reaps make and gives the CPU of everything under it (all reaped by then).
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            self.cpu = usage.ru_utime + usage.ru_stime
        if code:
            raise h.HarnessError(
                f"{cc} build failed ({code}):\n" + log.read_text(errors="replace")[-3000:]
            )
        return wall

    # ---------------------------------------------------------------- runs

    def run(self) -> dict[str, object]:
        results: dict[str, object] = {
            "project": self.args.project,
            "jobs": self.jobs,
            "cflags": self.args.cflags,
        }
        _compile_bytecode()
        results["compiles"] = self.prepare()
        identical: bool | None = None
        for rate in self.args.rates.split(","):
            _tc([self.c, self.s], rate)
            walls: dict[str, list[float]] = {w: [] for w in WAYS}
            wire: dict[str, list[int]] = {w: [] for w in WAYS}
            cpu: dict[str, list[float]] = {w: [] for w in WAYS}
            drops: dict[str, int] = dict.fromkeys(WAYS, 0)
            for rep in range(self.args.reps):
                order = WAYS if rep % 2 == 0 else tuple(reversed(WAYS))
                for way in order:
                    before, dropped = _eth0_bytes(self.c), _drops(self.c) + _drops(self.s)
                    walls[way].append(self.make(self.cc(way), self.env(way), host=self.c))
                    wire[way].append(_eth0_bytes(self.c) - before)
                    cpu[way].append(self.cpu)
                    drops[way] += _drops(self.c) + _drops(self.s) - dropped
                    if way == "meshcc" and identical is None:
                        built = _objects(self.tree)
                        identical = built == self.reference
                        differ = sorted(
                            n
                            for n in set(built) | set(self.reference)
                            if built.get(n) != self.reference.get(n)
                        )
                        if differ:
                            print(f"  objects differing from the local build: {differ}")
                    print(f"  {rate} rep {rep + 1} {way}: {walls[way][-1]:.2f} s", flush=True)
            codecs = self.codec_mix()
            results[rate] = {
                "walls": walls,
                "wire_bytes": wire,
                "client_cpu": cpu,
                "tbf_drops": drops,
                "median": {w: statistics.median(v) for w, v in walls.items()},
                "meshcc_codecs": codecs,
            }
        _tc([self.c, self.s], "unshaped")
        results["objects_identical"] = identical
        return results

    def codec_mix(self) -> dict[str, int]:
        """What meshcc's jobs went in, from one more (untimed) build with MESHCC_VERBOSE."""
        env = self.env("meshcc") | {"MESHCC_VERBOSE": "1"}
        self.make("meshcc-gcc", env, timed=False, host=self.c)
        text = (self.work / "make.log").read_text(errors="replace")
        mix: dict[str, int] = {}
        for codec, level, zref in SENT.findall(text):
            name = f"{codec}-{level}" if level else codec
            if zref == "prefix":  # compressed at compression.kept.PREFIX_LEVEL or above
                name = f"{codec} + prefix"
            mix[name] = mix.get(name, 0) + 1
        return mix

    def close(self) -> None:
        for d in self.daemons:
            d.stop()


def report(r: dict) -> str:  # type: ignore[type-arg]
    lines = [
        f"bench_link: {r['project']}, {r['compiles']} compiles, make -j{r['jobs']}"
        f"{', CFLAGS=' + repr(r['cflags']) if r.get('cflags') else ''}, "
        f"objects identical to a local build: {r.get('objects_identical')}",
        "",
        "| link | way | wall s (median) | x distcc lzo | x distcc none | MB on the wire "
        "| KB per compile | link busy | client CPU s | tbf drops | codecs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for rate, data in r.items():
        if not isinstance(data, dict) or "median" not in data:
            continue
        med = data["median"]
        for way in WAYS:
            wire = statistics.median(data["wire_bytes"][way])
            mb = wire / 1e6
            per_job = wire / r["compiles"] / 1e3
            bps = _rate_bps(rate)
            busy = f"{wire / (bps * med[way]):.0%}" if bps else "-"
            cpu = statistics.median(data["client_cpu"][way]) if "client_cpu" in data else 0.0
            drops = data.get("tbf_drops", {}).get(way, 0)
            mix = ""
            if way == "meshcc":
                mix = ", ".join(f"{k} {v}" for k, v in sorted(data["meshcc_codecs"].items()))
            lines.append(
                f"| {rate} | {way} | {med[way]:.2f} | {med[way] / med['distcc-lzo']:.2f} | "
                f"{med[way] / med['distcc-none']:.2f} | {mb:.2f} | {per_job:.1f} | {busy} | "
                f"{cpu:.2f} | {drops} | {mix} |"
            )
        if rate == "10mbit":
            ratio = med["meshcc"] / med["distcc-lzo"]
            ok = ratio <= TARGET_SLOW
            verdicts.append(f"10 Mbit/s: meshcc {ratio:.2f}x distcc lzo (target <= 0.5): "
                            f"{'met' if ok else 'NOT met'}")  # fmt: skip
            lzo_wire = statistics.median(data["wire_bytes"]["distcc-lzo"])
            busy = lzo_wire / (_rate_bps(rate) or 1) / med["distcc-lzo"]
            mesh_wire = statistics.median(data["wire_bytes"]["meshcc"])
            verdicts.append(
                f"  bytes on the wire: meshcc {mesh_wire / lzo_wire:.2f}x distcc lzo; distcc "
                f"lzo kept the link busy {busy:.0%} of its build"
                + (" (bound by CPU, not by the link)" if busy < 0.5 else "")
            )
        if rate == "unshaped":
            ratio = med["meshcc"] / med["meshcc-none"]
            verdicts.append(
                f"unshaped: meshcc {ratio:.2f}x meshcc without compression (target <= 1.0, "
                f"noise ~3 %): {'met' if ratio <= 1.03 else 'NOT met'}"
            )
    return "\n".join([*lines, "", *verdicts])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="xz-utils")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-j", "--jobs", type=int, default=4)
    p.add_argument("--rates", default="unshaped,100mbit,10mbit")
    p.add_argument(
        "--cflags",
        help="CFLAGS for make (every build, the reference too): e.g. zlib's own flags with "
        "-O0 make the compiles cheap, so the link's share of a job is what a fast server "
        "would leave",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if os.geteuid() != 0 or netns.unavailable_reason():
        print(f"bench_link needs root and netns: {netns.unavailable_reason()}", file=sys.stderr)
        return 2
    # SIGTERM (a stopped run) unwinds like Ctrl-C: the LAN and its processes go with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = private_dir("bench-link-")
    try:
        with netns.Lan() as lan:
            bench = Bench(args, work, lan)
            try:
                results = bench.run()
            finally:
                bench.close()
    except h.HarnessError as e:
        print(f"bench_link: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
