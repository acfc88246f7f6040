"""Client CPU and wall per job: the C launcher + zygote, the Python launcher, and distcc.

    .venv/bin/python benchmarks/bench_launcher.py                       # builds a prefix
    .venv/bin/python benchmarks/bench_launcher.py --meshcc-prefix /tmp/x/prefix  # install.sh's
    .venv/bin/python benchmarks/bench_launcher.py --runs 30 --json out.json
    .venv/bin/python benchmarks/bench_launcher.py --meshcc-prefix NEW --baseline-prefix OLD \
        --cases dot-i --runs 150    # a before/after of the fast path, in one run

Why: issue 12 asks for client CPU per job <= 1.3 x distcc's. The Python launcher pays an
interpreter start on every compile; the C launcher hands the job to a forked worker of a
warm zygote. One job at a time to a stock distccd on loopback, the three ways alternating
inside each round (in reverse order every other round), medians over the rounds:

- ``dot-i``: a preprocessed ``.i`` (no cpp: only the client's own work);
- ``lua``: lua 5.4's ``lvm.c`` with its preprocessor (Debian's source, as the tests use).

Client CPU of a way: the launcher process's user+system CPU from ``wait4`` (its waited-for
children included: the preprocessor); for the zygote way plus the worker's (the zygote's
per-worker ``wait4``, its ``children_cpu_us`` counter) and the zygote's own CPU spent per job
(accept, fork, reap: its ``self_cpu_us``), both read from its stats request between jobs.
Wall: the launcher's start to its exit.

The zygote is not used by root, so run as root this creates a throwaway user and runs every
client (distcc too) as that user; distccd drops to ``nobody``. Needs gcc, distcc, distccd,
cc and Debian's /usr/bin/python3 (the interpreter users run; ``--meshcc-prefix`` takes an
install.sh prefix made with ``PYTHON=/usr/bin/python3``).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import _harness as h  # also puts tests/ on sys.path

from userprocs import STATS_CODE, remove_user

REPO = Path(__file__).resolve().parents[1]
LUA_FILE = "src/lvm.c"
LUA_CFLAGS = ["-std=gnu99", "-O2", "-Wall", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"]
DOT_I_SOURCE = b"""#include <stdio.h>
#include <string.h>
#include <stdlib.h>
int f(int x) { char b[32]; snprintf(b, sizeof b, "%d", x); return (int)strlen(b) + atoi(b); }
"""


class Runner:
    """Runs clients as ``uid`` (itself when not root), measuring each with wait4."""

    def __init__(self, uid: int, gid: int, env: dict[str, str]) -> None:
        self.uid = uid
        self.gid = gid
        self.env = env
        self.sockdir = Path(f"/tmp/meshcc-{uid}")

    def _ids(self) -> dict[str, object]:
        """Popen's own (C-level) switch to the user: a preexec_fn would run Python code in
        the child, and its CPU would count as the client's."""
        if os.getuid() == self.uid:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def job(self, argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
        """One client run: (CPU ms from wait4, wall ms); raises if it failed."""
        t0 = time.monotonic()
        proc = subprocess.Popen(  # type: ignore[call-overload]
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **self._ids(),
        )
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = (time.monotonic() - t0) * 1000
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise h.HarnessError(f"{argv[0]} failed ({proc.returncode}): {err[-600:]!r}")
        return (ru.ru_utime + ru.ru_stime) * 1000, wall

    def stats(self, python: str) -> dict[str, int] | None:
        """The counters of the zygote that ``python`` (an install prefix's) runs."""
        proc = subprocess.run(  # type: ignore[call-overload]
            [python, "-IS", "-c", STATS_CODE, str(self.sockdir)],
            capture_output=True,
            text=True,
            env={"LANG": "C.UTF-8"},
            check=False,
            **self._ids(),
        )
        for line in proc.stdout.splitlines():
            if line.strip():
                found = json.loads(line)
                try:
                    cmdline = Path(f"/proc/{found['pid']}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.split(b"\0")[0] == python.encode():
                    return found  # type: ignore[no-any-return]
        return None


def build_prefix(work: Path) -> Path:
    """A venv of /usr/bin/python3 with the C launcher over this checkout (as the tests)."""
    prefix = work / "prefix"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(prefix)], check=True)
    site = sysconfig.get_path("purelib")
    subprocess.run(
        [str(REPO / "packaging" / "launcher" / "build.sh"), str(prefix), str(REPO), site],
        check=True,
    )
    return prefix


def make_user() -> pwd.struct_passwd:
    name = f"mcb{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    return pwd.getpwnam(name)


def bench(args: argparse.Namespace, work: Path, runner: Runner, prefix: Path, port: int) -> dict:
    python = str(prefix / "bin" / "python3")
    client = str(prefix / "libexec" / "meshcc" / "client")
    fast = str(prefix / "bin" / "meshcc-gcc")
    # The ways that go through a zygote, and the interpreter (so the zygote) of each.
    zygotes = {"zygote": python}
    if args.baseline_prefix:
        zygotes["baseline"] = str(Path(args.baseline_prefix) / "bin" / "python3")
    env = dict(runner.env)
    env["DISTCC_HOSTS"] = f"127.0.0.1:{port}/4"
    env["DISTCC_FALLBACK"] = "0"
    env["DISTCC_BACKOFF_PERIOD"] = "0"  # one failed warm-up must not bench the host
    cases: dict[str, tuple[Path, list[str]]] = {}
    dot_i = work / "doti"
    dot_i.mkdir()
    (dot_i / "t.c").write_bytes(DOT_I_SOURCE)
    subprocess.run(["gcc", "-E", "t.c", "-o", "t.i"], cwd=dot_i, check=True)
    if "dot-i" in args.cases:
        cases["dot-i"] = (dot_i, ["-c", "t.i", "-o", "t.o"])
    try:
        if "lua" not in args.cases:
            raise h.HarnessError("not asked for (--cases)")
        lua = h.apt_source("lua5.4")
    except h.HarnessError as e:
        print(f"bench_launcher: no lua source ({e}): the cpp case is skipped", file=sys.stderr)
    else:
        tree = work / "lua"
        shutil.copytree(lua / "src", tree / "src")
        # Debian's patch names a header its build generates.
        (tree / "src" / "lua5.4-deb-multiarch.h").write_text(
            '#define DEB_HOST_MULTIARCH "x86_64-linux-gnu"\n'
        )
        cases["lua"] = (tree / "src", [*LUA_CFLAGS, "-c", Path(LUA_FILE).name, "-o", "lvm.o"])
    subprocess.run(["chown", "-R", f"{runner.uid}:{runner.gid}", str(work)], check=True)

    ways = {
        "distcc": lambda a: ["distcc", "gcc", *a],
        "python": lambda a: [python, "-IS", client, fast, *a],
        "zygote": lambda a: [fast, *a],
    }
    if args.baseline_prefix:
        base_fast = str(Path(args.baseline_prefix) / "bin" / "meshcc-gcc")
        ways["baseline"] = lambda a: [base_fast, *a]
    results: dict[str, dict] = {}
    for case, (cwd, job) in cases.items():
        for way in ways.values():  # warm caches, .pyc files, and start the zygotes
            try:
                runner.job(way(job), cwd, env)
            except h.HarnessError as e:
                print(f"bench_launcher: warm-up: {e}", file=sys.stderr)
        stats_cost = {}
        for name, zpython in zygotes.items():
            deadline = time.monotonic() + 30
            while runner.stats(zpython) is None:
                if time.monotonic() > deadline:
                    raise h.HarnessError(f"no zygote answered for {name}")
                runner.job(ways[name](job), cwd, env)
                time.sleep(0.2)
            # What one stats request costs the zygote (it is counted in every job's delta).
            probe = []
            for _ in range(7):
                a, b = runner.stats(zpython), runner.stats(zpython)
                if a and b:
                    probe.append((b["self_cpu_us"] - a["self_cpu_us"]) / 1000)
            stats_cost[name] = statistics.median(probe)
        cpu: dict[str, list[float]] = {w: [] for w in ways}
        wall: dict[str, list[float]] = {w: [] for w in ways}
        launcher_cpu: list[float] = []
        zygote_self: list[float] = []
        fallbacks = 0
        # --counters-at-ends: each zygote's counters once before and once after all rounds
        # (its CPU spread evenly over its jobs), so no counter request sits between jobs.
        at_start = {n: runner.stats(z) for n, z in zygotes.items()} if args.counters_at_ends else {}
        for rnd in range(args.runs):
            order = list(ways.items())
            if rnd % 2:  # neither way always runs right after the other
                order.reverse()
            for name, way in order:
                zpython = None if args.counters_at_ends else zygotes.get(name)
                before = runner.stats(zpython) if zpython else None
                c, w = runner.job(way(job), cwd, env)
                if zpython and before is not None:
                    after = runner.stats(zpython)
                    if after is None or after["jobs"] != before["jobs"] + 1:
                        fallbacks += 1
                        continue
                    worker = (after["children_cpu_us"] - before["children_cpu_us"]) / 1000
                    own = (after["self_cpu_us"] - before["self_cpu_us"]) / 1000
                    own -= stats_cost[name]
                    if name == "zygote":
                        launcher_cpu.append(c)
                        zygote_self.append(own)
                    c += worker + own
                cpu[name].append(c)
                wall[name].append(w)
        for name, start in at_start.items():
            end = runner.stats(zygotes[name])
            if start is None or end is None or end["jobs"] - start["jobs"] != args.runs:
                raise h.HarnessError(f"{name}: the zygote did not take every job")
            spent = end["self_cpu_us"] - start["self_cpu_us"] - stats_cost[name] * 1000
            spent += end["children_cpu_us"] - start["children_cpu_us"]
            per_job = spent / 1000 / args.runs
            if name == "zygote":
                launcher_cpu = list(cpu[name])
            cpu[name] = [c + per_job for c in cpu[name]]
        floor = statistics.median(runner.job(["/bin/true"], cwd, env)[0] for _ in range(9))
        med = {w: statistics.median(v) for w, v in cpu.items() if v}
        results[case] = {
            "runs": args.runs,
            "client_cpu_ms": med,
            "wall_ms": {w: statistics.median(v) for w, v in wall.items() if v},
            "zygote_launcher_cpu_ms": statistics.median(launcher_cpu) if launcher_cpu else None,
            "zygote_self_cpu_ms": statistics.median(zygote_self) if zygote_self else None,
            "zygote_fallbacks": fallbacks,
            "zygote_stats_request_cpu_ms": stats_cost["zygote"],
            # What starting any program costs here (a fork of this benchmark, an exec, the
            # switch to the user): in every way's figure, distcc's included.
            "true_cpu_ms": floor,
            "cpu_ratio_to_distcc": {w: med[w] / med["distcc"] for w in med},
        }
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meshcc-prefix", help="an install.sh prefix with the C launcher")
    p.add_argument("--runs", type=int, default=20, help="rounds (each way once per round)")
    p.add_argument("--json", help="write the figures here too")
    p.add_argument(
        "--baseline-prefix",
        help="a second install.sh prefix, run as a fourth way (its own zygote): a before/after "
        "of the fast path in one run",
    )
    p.add_argument(
        "--counters-at-ends",
        action="store_true",
        help="read each zygote's counters before and after all rounds only (no counter "
        "request between jobs, each of which costs the zygote a spare); its CPU per job is "
        "then the mean",
    )
    p.add_argument(
        "--cases",
        default="dot-i,lua",
        help="comma-separated: dot-i (a preprocessed .i), lua (lvm.c with its cpp)",
    )
    args = p.parse_args()
    for tool in ("gcc", "distcc", "distccd", "cc"):
        if shutil.which(tool) is None:
            print(f"bench_launcher: {tool} is not installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-launcher-", dir="/tmp"))
    work.chmod(0o755)
    user = None
    distccd = None
    runner = None
    try:
        if args.meshcc_prefix:
            prefix = Path(args.meshcc_prefix)
        else:
            prefix = build_prefix(work)
            # .pyc files, as an installed copy has (else every Python start compiles).
            subprocess.run(
                ["/usr/bin/python3", "-m", "compileall", "-q", str(REPO / "meshcc")],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        if os.geteuid() == 0:
            user = make_user()
            uid, gid = user.pw_uid, user.pw_gid
        else:
            uid, gid = os.getuid(), os.getgid()
        state = work / "state"
        env = h.client_env(state)
        env.pop("MESHCC_ZYGOTE", None)
        env["LANG"] = "C.UTF-8"
        env["HOME"] = str(work)
        env["DISTCC_VERBOSE"] = os.environ.get("BENCH_VERBOSE", "0")
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        runner = Runner(uid, gid, env)
        port = h.free_port()
        argv = ["distccd", "--daemon", "--no-detach", "--log-stderr", "--listen", "127.0.0.1"]
        argv += ["--port", str(port), "--allow", "127.0.0.1", "--jobs", "2"]
        if os.geteuid() == 0:
            argv += ["--user", "nobody"]
        distccd = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if h.port_accepts(port):
                break
            time.sleep(0.05)
        load = os.getloadavg()
        results = bench(args, work, runner, prefix, port)
        out = {"load_before": load, "load_after": os.getloadavg(), "cases": results}
        for case, r in results.items():
            print(f"{case} ({r['runs']} rounds, medians):")
            for way, ms in r["client_cpu_ms"].items():
                print(
                    f"  {way:7s} client CPU {ms:6.2f} ms  "
                    f"({r['cpu_ratio_to_distcc'][way]:.2f} x distcc)  "
                    f"wall {r['wall_ms'][way]:6.2f} ms"
                )
            own = r["zygote_self_cpu_ms"]
            print(
                f"  zygote: launcher {r['zygote_launcher_cpu_ms']:.2f} ms, zygote's own "
                + (f"{own:.2f} ms per job" if own is not None else "(not apart)")
                + f", fallbacks {r['zygote_fallbacks']}; "
                f"/bin/true costs {r['true_cpu_ms']:.2f} ms here"
            )
        print(f"load {load[0]:.1f} -> {out['load_after'][0]:.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    except (h.HarnessError, subprocess.CalledProcessError) as e:
        print(f"bench_launcher: {e}", file=sys.stderr)
        return 1
    finally:
        if distccd is not None:
            distccd.terminate()
            distccd.wait(timeout=10)
        if user is not None:
            remove_user(user.pw_uid, user.pw_name)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
