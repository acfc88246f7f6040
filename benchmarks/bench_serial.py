#!/usr/bin/env python3
"""One compile at a time: meshcc-gcc -> meshcc daemon vs distcc -> distccd, per job.

Why: a parallel build hides per-job costs behind other jobs. Issue 12 asks where each job's
time goes on both sides, so this replays a real project's compile commands one by one
through each pair and measures, for every job:

- **wall**: from spawning the client to reaping it (the latency a serial build sees);
- **client CPU**: user+sys of the client and everything it waited for (its local
  preprocessor included), from os.wait4;
- **server CPU**: CPU time the daemon's own processes and threads spent on the job, *not*
  counting the compiler it ran. Read as the sum of ``/proc/PID/task/TID/schedstat``'s
  on-CPU nanoseconds over every live task of the daemon's process group, sampled just
  before each job (after a short settle, so each job's clean-up after its reply is counted
  with it). The compiler processes are gone by then, so they are excluded by construction;
  what is left is the daemon's reading, decompressing, writing the job's files, spawning
  and reaping the compiler (the parent's side), compressing and sending the reply, logging.
  distccd: its parent and its pre-forked children; a job during which a distccd child was
  replaced (its counters vanish) is dropped from the server figure and counted. meshcc: the
  daemon process with all its threads (compression runs in worker threads); a job during
  which a thread ended is dropped likewise. The daemons' idle CPU is measured first and
  reported alongside (it is included in the per-job figures, as it would be in a build).

Ways alternate job by job (ABAB, then BABA for the next job), or with ``--by-build`` build
by build (the whole list, as a serial build runs it; see :func:`schedule`), and each way
replays the whole list ``--reps`` times; medians per way are reported, with ratios to
distcc. Commands are recorded once from a real local build (CC set to a recording shell
script), so both ways replay the same argv in the same directory. DISTCC_FALLBACK=0: a job
that fails remotely fails the run rather than compiling locally. Everything talks to
127.0.0.1 only.

    .venv/bin/python benchmarks/bench_serial.py                     # zlib, protocol 2 (,lzo)
    .venv/bin/python benchmarks/bench_serial.py --project xz-utils --reps 3
    .venv/bin/python benchmarks/bench_serial.py --meshcc-prefix /opt/meshcc   # an install
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # also puts tests/ on sys.path
import _icecream

import netns  # tests/netns.py: the --veth namespaces

T = TypeVar("T")

TARGET_CLIENT_CPU = 1.3  # meshcc-gcc client CPU per job vs distcc's
TARGET_SERVER_CPU = 1.2  # meshcc daemon CPU per job vs distccd's
TARGET_WALL = 1.0  # one job at a time, meshcc pair vs distcc pair


@dataclass(frozen=True)
class Project:
    """A real project to replay: its Debian source package, how to configure and build it."""

    package: str  # `apt-get source` name (tests/harness.py caches the tree)
    configure: list[str]
    targets: list[str]  # make targets
    cc_flags: str = ""  # what the project's own CC carries after the compiler name


# Debian's lua5.4 builds with libtool, and twice (C and C++); upstream's Makefile (the
# 34 plain `gcc -std=gnu99 -O2 -c` compiles issue 12 measured) comes back by reversing the
# build-system patches (0002/0003 make luaconf.h include a header debian/rules generates).
# The CVE fixes (0004, 0005) stay.
LUA_UPSTREAM_BUILD = (
    "for p in 0003-extern_C 0002-lua-modules-paths 0001-build-system; do "
    'patch -R -p1 -s -i "debian/patches/$p.patch" || exit 1; done'
)
PROJECTS: dict[str, Project] = {
    # configure argv, make targets; as in bench_build.py
    "zlib": Project("zlib", ["./configure"], ["static"]),
    "xz-utils": Project(
        "xz-utils",
        ["./configure", "CFLAGS=-O2", "--disable-nls", "--disable-shared", "--disable-doc"],
        [],
    ),
    "lua": Project("lua5.4", ["sh", "-c", LUA_UPSTREAM_BUILD], ["linux"], "-std=gnu99"),
}
# The daemon under cProfile, timed by its main thread's CPU clock (not wall time: a vfork
# or a blocking syscall would otherwise look like the daemon's cost). argv[1]: the output.
CPU_PROFILER = """
import cProfile, runpy, sys, time
out = sys.argv[1]
sys.argv = ["meshcc", *sys.argv[2:]]
prof = cProfile.Profile(time.thread_time)
try:
    prof.runcall(runpy.run_module, "meshcc", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    prof.dump_stats(out)
"""
SETTLE_S = 0.03  # after a job, before the next snapshot: the server's post-reply clean-up
RECORDER = """#!/bin/sh
# Records one compiler command (cwd, then argv, NUL-separated) and runs gcc.
{ printf '%s\\0' "$PWD" "$#" "$@"; } >> "$MESHCC_BENCH_LOG"
exec gcc "$@"
"""


@dataclass
class Job:
    cwd: str
    argv: list[str]  # after the compiler name


@dataclass
class Way:
    """One client -> server pair of the replay."""

    client: list[str]  # the compile command before the job's argv
    env: dict[str, str]
    server_pgid: int | None  # the server daemon's process group (its CPU per job), if known
    local_pgid: int | None = None  # a daemon on the client box whose CPU is the client's


@dataclass
class WayStats:
    name: str
    walls: list[float] = field(default_factory=list)  # ms
    client_cpu: list[float] = field(default_factory=list)  # ms
    server_cpu: list[float] = field(default_factory=list)  # ms
    server_dropped: int = 0
    local_daemon_cpu: list[float] = field(default_factory=list)  # ms, in client_cpu too
    local_dropped: int = 0  # jobs during which a task of the local daemon ended
    zygote_cpu: list[float] = field(default_factory=list)  # ms: worker + zygote, in client_cpu
    zygote_fallbacks: int = 0  # jobs the zygote did not take (not counted)
    idle_cpu_ms_per_s: float = 0.0

    def med(self, xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None


def record_jobs(tree: Path, project: str, work: Path) -> list[Job]:
    """Configure and build once with a recording CC; keep the `-c` compiles of C files."""
    proj = PROJECTS[project]
    configure, targets = proj.configure, proj.targets
    recorder = work / "record-cc"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    log = work / "commands.log"
    env = h.clean_env()
    env["CC"] = "gcc"
    out = work / "build.log"
    with open(out, "wb") as o:
        subprocess.run(configure, cwd=tree, env=env, stdout=o, stderr=o, check=True)
        env["MESHCC_BENCH_LOG"] = str(log)
        subprocess.run(
            ["make", "-j2", f"CC={recorder} {proj.cc_flags}".rstrip(), *targets],
            cwd=tree,
            env=env,
            stdout=o,
            stderr=o,
            check=True,
        )
    fields = log.read_bytes().split(b"\0")
    jobs: list[Job] = []
    i = 0
    while i + 1 < len(fields):
        cwd = fields[i].decode()
        n = int(fields[i + 1])
        argv = [f.decode() for f in fields[i + 2 : i + 2 + n]]
        i += 2 + n
        if "-c" in argv and any(a.endswith(".c") for a in argv) and "-E" not in argv:
            jobs.append(Job(cwd, argv))
    if not jobs:
        raise h.HarnessError(f"no compile commands recorded (see {out})")
    return jobs


def group_tasks(pgid: int) -> dict[int, int]:
    """{tid: on-CPU ns} for every thread of every live process in process group PGID."""
    tasks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            if int(stat[stat.rindex(b")") + 2 :].split()[2]) != pgid:
                continue
            for tid in os.listdir(f"/proc/{entry}/task"):
                with open(f"/proc/{entry}/task/{tid}/schedstat", "rb") as f:
                    tasks[int(tid)] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return tasks


def server_delta(before: dict[int, int], after: dict[int, int]) -> float | None:
    """ms the tasks present in both snapshots ran; None if a task of `before` is gone
    (its CPU since the snapshot is unknown). New tasks count from zero: a compiler
    would be one, but it has exited by the time of `after`."""
    if not before.keys() <= after.keys():
        return None
    return sum(after[t] - before.get(t, 0) for t in after) / 1e6


def run_client(
    argv: list[str], cwd: str, env: dict[str, str], user: Any = None
) -> tuple[float, float, str]:
    """(wall ms, user+sys ms of the client tree, its stderr); raises on failure. ``user``
    (a pwd entry): run as that user, switched by Popen in C (no Python in the child)."""
    ids: dict[str, Any] = {}
    if user is not None:
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, **ids
    )
    assert proc.stderr is not None
    err = proc.stderr.read()  # before reaping: a verbose client writes more than a pipe holds
    _, status, ru = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1e3
    proc.stderr.close()
    proc.returncode = status  # reaped by wait4: keep Popen from waiting again
    if status != 0:
        raise h.HarnessError(f"{' '.join(argv)} in {cwd} failed:\n{err.decode(errors='replace')}")
    return wall, (ru.ru_utime + ru.ru_stime) * 1e3, err.decode(errors="replace")


_SPAN_RE = re.compile(r"(?P<phase>[a-z]+) (?P<a>[\d.]+)-(?P<b>[\d.]+)")


def timeline_spans(stderr: str) -> dict[str, float]:
    """Durations (ms) of the phases of a client's MESHCC_VERBOSE=1 timeline line, plus
    ``python`` (interpreter start-up CPU before meshcc ran), ``start`` (from the wrapper's
    start to the first phase) and ``end`` (the last phase to the line)."""
    for line in stderr.splitlines():
        if " timeline " not in line:
            continue
        out: dict[str, float] = {}
        m = re.search(r": python ([\d.]+) ", line)
        if m:
            out["python"] = float(m[1])
        first = last = None
        for s in _SPAN_RE.finditer(line):
            a, b = float(s["a"]), float(s["b"])
            out[s["phase"]] = b - a
            first = a if first is None else min(first, a)
            last = b if last is None else max(last, b)
        m = re.search(r" end ([\d.]+) ", line)
        if m and first is not None and last is not None:
            out["start"] = first
            out["end"] = float(m[1]) - last
        return out
    return {}


def idle_rate(pgid: int, seconds: float = 2.0) -> float:
    a = group_tasks(pgid)
    time.sleep(seconds)
    d = server_delta(a, group_tasks(pgid))
    return (d or 0.0) / seconds


def write_launchers(bindir: Path) -> Path:
    """This venv's meshcc-gcc as install.sh writes it (``python3 -IS``, the venv's paths
    added by hand, ``launch()``): pip's editable-install launchers run ``site`` and every
    ``.pth`` file first (~2.6 ms per compile), which no installed copy pays."""
    import importlib.util
    import sysconfig

    spec = importlib.util.find_spec("meshcc")
    if spec is None or not spec.submodule_search_locations:
        raise h.HarnessError("meshcc is not importable from this interpreter")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    site_dirs = dict.fromkeys(sysconfig.get_path(p) for p in ("purelib", "platlib"))
    paths = [str(root), *site_dirs]
    bindir.mkdir(parents=True, exist_ok=True)
    for cmd in ("meshcc-gcc", "meshcc-g++", "meshcc-cc", "meshcc-c++"):
        lines = [f"#!{sys.executable} -IS", "import sys"]
        lines += [f"sys.path.append({p!r})" for p in paths]
        if "def launch(" in (root / "meshcc" / "client" / "wrapper.py").read_text():
            lines += ["from meshcc.client.wrapper import launch", "sys.exit(launch())"]
        else:  # a tree from before launch(), for before/after figures
            lines += ["from meshcc.client.wrapper import main", "sys.exit(main(sys.argv))"]
        path = bindir / cmd
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
    return bindir


@dataclass
class Site:
    """Where the daemons listen and the clients run: loopback, or two namespaces."""

    address: str  # the daemons' listen address, as clients name it
    allow: str  # the daemons' --allow
    server: Any = None  # tests/netns.py Host of the daemons (veth mode)
    client: Any = None  # ... and of the clients
    lan: Any = None

    def popen_argv(self, argv: list[str]) -> list[str]:
        return self.server.exec_argv(argv) if self.server is not None else argv

    def accepts(self, port: int) -> bool:
        if self.client is None:
            return h.port_accepts(port)
        return bool(self.client.can_connect(self.address, port))

    def run_as_client(self, fn: Callable[[], T]) -> T:
        if self.client is None:
            return fn()
        return netns.in_netns(self.client.ns, fn)

    def close(self) -> None:
        if self.lan is not None:
            self.lan.close()


def make_site(veth: bool, icecream: bool = False) -> Site:
    """Loopback in the root namespace, or two namespaces joined by a veth bridge. With
    icecream on loopback, every daemon and client runs on 127.0.0.1 of one namespace
    instead: icecream's scheduler broadcasts on every interface it sees, and the root
    namespace's are real ones."""
    if not veth and not icecream:
        return Site(h.LOOPBACK, h.LOOPBACK)
    reason = netns.unavailable_reason()
    if reason:
        raise h.HarnessError(reason)
    lan = netns.Lan()
    if not veth:
        try:
            box = lan.add_host("box")
        except BaseException:
            lan.close()
            raise
        return Site(h.LOOPBACK, h.LOOPBACK, box, box, lan)
    try:
        server = lan.add_host("server")
        client = lan.add_host("client")
    except BaseException:
        lan.close()
        raise
    return Site(server.address, str(lan.subnet), server, client, lan)


def spawn_daemon(
    site: Site,
    kind: str,
    argv: list[str],
    workdir: Path,
    port: int,
    log: Path,
    out: Path,
    *,
    on_client_box: bool = False,
    ready: Callable[[], bool] | None = None,
    timeout: float = 15.0,
) -> h.Daemon:
    """Start a daemon where ``site`` says (or in the clients' namespace); wait until
    ``ready`` (by default: clients can connect to its port)."""
    env = h.clean_env()
    env.pop("TMPDIR", None)  # like distccd: job dirs in /tmp, writable by the dropped user
    with open(out, "ab") as o:
        proc = subprocess.Popen(
            site.client.exec_argv(argv) if on_client_box else site.popen_argv(argv),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = h.Daemon(kind, proc, port, log, argv)
    if ready is None:
        ready = lambda: site.accepts(port)  # noqa: E731
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise h.HarnessError(
                f"{kind} exited ({proc.returncode}) before it was ready: {' '.join(argv)}\n"
                f"{out.read_text(errors='replace')[-4000:]}\n{daemon.log_text()[-4000:]}"
            )
        if ready():
            return daemon
        time.sleep(0.05)
    daemon.stop()
    raise h.HarnessError(f"{kind} was not ready within {timeout:g} s\n{daemon.log_text()[-3000:]}")


def _profiled(profile: str) -> list[str]:
    """The command that runs meshcc under cProfile, which writes its stats when the daemon's
    main returns (SIGTERM ends it cleanly) as the user the daemon dropped to: into a fresh
    file in a directory it may write."""
    out = Path(profile).resolve()
    out.unlink(missing_ok=True)
    out.parent.chmod(out.parent.stat().st_mode | 0o333)
    return [sys.executable, "-c", CPU_PROFILER, str(out)]


def start_meshcc(
    site: Site,
    meshcc: list[str],
    workdir: Path,
    jobs: int,
    level: str = "info",
    profile: str | None = None,
    discovery: bool = False,
) -> h.Daemon:
    """The server box's meshcc daemon; ``discovery``: announced on the server namespace's
    eth0 (the lease way's client daemon finds it there), else --no-discovery."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = h.free_port()
    log = workdir / "meshccd.log"
    argv = [
        *meshcc,
        "daemon",
        "--listen",
        site.address,
        *(["--interface", "eth0"] if discovery else ["--no-discovery"]),
        "--port",
        str(port),
        "--allow",
        site.allow,
        "--jobs",
        str(jobs),
        "--log-file",
        str(log),
        "--log-level",
        level,
    ]
    # The result cache (issue 13) would serve every replayed job from the second pass on:
    # this benchmark measures compiles. A daemon from before the cache has no such flag.
    helptext = subprocess.run([*meshcc, "daemon", "--help"], capture_output=True, text=True)
    if "--no-cache" in helptext.stdout:
        argv.append("--no-cache")
    if profile:
        argv[: len(meshcc)] = _profiled(profile)
    return spawn_daemon(site, "meshcc", argv, workdir, port, log, workdir / "meshccd.out")


def start_distccd(site: Site, workdir: Path, jobs: int) -> h.Daemon:
    if shutil.which("distccd") is None:
        raise h.HarnessError("distccd is not installed (Debian package `distcc`)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = h.free_port()
    log = workdir / "distccd.log"
    argv = [
        "distccd",
        "--daemon",
        "--no-detach",
        "--log-stderr",
        "--log-level",
        "info",
        "--listen",
        site.address,
        "--port",
        str(port),
        "--allow",
        site.allow,
        "--jobs",
        str(jobs),
    ]
    return spawn_daemon(site, "distccd", argv, workdir, port, log, log)


def start_lease_daemon(
    site: Site, meshcc: list[str], workdir: Path, profile: str | None = None
) -> tuple[h.Daemon, Path]:
    """--lease-way: a meshcc daemon on the client box that leases every job to the server
    box's daemon (its own compiler reports another gcc version, so this box never matches
    its own jobs), found by mDNS on the namespaces' bridge; returns it and its control
    socket, once the server is in its hosts line."""
    from meshd import mismatched_gcc, trusted_dir

    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # the clients' throwaway user reaches the socket through it
    odd = mismatched_gcc(trusted_dir("bench-serial-odd-"), "12.9.9")
    sock = workdir / "run" / "control.sock"
    log = workdir / "meshccd.log"
    argv = [*meshcc, "daemon", "--interface", "eth0", "--jobs", "1", "--compiler", str(odd)]
    argv += ["--socket", str(sock), "--log-file", str(log), "--log-level", "info", "--no-cache"]
    if profile:
        argv[: len(meshcc)] = _profiled(profile)
    hosts = [*meshcc, "hosts", "--cc", "gcc"]
    env = {**h.clean_env(), "MESHCC_SOCKET": str(sock)}

    def lists_the_server() -> bool:
        res = subprocess.run(
            site.client.exec_argv(hosts), env=env, capture_output=True, text=True, timeout=30
        )
        return site.address in res.stdout

    daemon = spawn_daemon(
        site,
        "meshcc-lease-client",
        argv,
        workdir,
        0,
        log,
        workdir / "meshccd.out",
        on_client_box=True,
        ready=lists_the_server,
        timeout=60,
    )
    return daemon, sock


# --zygote: every way's clients run as a throwaway user (the zygote is never root's), and
# the meshcc way's client CPU adds its worker's and the zygote's own CPU per job, read from
# the zygote's counters before and after each job (bench_launcher.py measures the same way).


def schedule(ways: list[str], jobs: list[T], reps: int, by_build: bool) -> list[tuple[str, T]]:
    """The order the ways run the jobs in, each way ``reps`` times over the list.

    Job by job (the default), the ways take turns at every job, in an order that rotates
    (AB, BA with two ways; ABC, BCA, CAB with three): each way runs first equally often,
    and a drift of the box's speed falls on every way alike. ``by_build``: each way
    replays the whole list in turn, the way order rotating each rep, as one serial build
    runs: a client's next job follows its last one, not the other ways' jobs, so what a
    daemon keeps between a build's jobs (a lease's release hold, a client's headroom on a
    server) is what a build sees, not what three clients taking turns provoke."""
    out: list[tuple[str, T]] = []
    n = 0
    for rep in range(reps):
        if by_build:
            shift = rep % len(ways)
            out += [(key, job) for key in ways[shift:] + ways[:shift] for job in jobs]
            continue
        for job in jobs:
            shift = n % len(ways)
            out += [(key, job) for key in ways[shift:] + ways[:shift]]
            n += 1
    return out


def zygote_user(work: Path, tree: Path) -> Any:
    """A throwaway user owning the tree and the clients' state dirs (objects are written)."""
    from bench_launcher import make_user

    user = make_user()
    for path in (tree, *work.glob("client-*")):
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)
    return user


def zygote_stats(user: Any) -> dict[str, int] | None:
    """The user's zygote's counters (in this namespace: run inside the replay)."""
    from userprocs import STATS_CODE

    proc = subprocess.run(
        ["/usr/bin/python3", "-IS", "-c", STATS_CODE, f"/tmp/meshcc-{user.pw_uid}"],
        capture_output=True,
        text=True,
        env={"LANG": "C.UTF-8"},
        check=False,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
    )
    found = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return found[0] if len(found) == 1 else None


def zygote_stats_cost(user: Any) -> float:
    """What one counters request costs the zygote (ms): it is in every job's delta."""
    probe = []
    for _ in range(7):
        a, b = zygote_stats(user), zygote_stats(user)
        if a and b:
            probe.append((b["self_cpu_us"] - a["self_cpu_us"]) / 1e3)
    if not probe:
        raise h.HarnessError("--zygote: no zygote answered (is meshcc-gcc the C launcher?)")
    return statistics.median(probe)


def end_user(user: Any) -> None:
    from userprocs import remove_user

    remove_user(user.pw_uid, user.pw_name)


def bench(args: argparse.Namespace, work: Path) -> dict:
    src = h.apt_source(PROJECTS[args.project].package)
    tree = work / "tree"
    shutil.copytree(src, tree, symlinks=True)
    jobs = record_jobs(tree, args.project, work)
    print(f"{args.project}: {len(jobs)} compile jobs recorded", file=sys.stderr)

    if args.meshcc_prefix:
        prefix_bin = Path(args.meshcc_prefix) / "bin"
        meshcc_cmd = [str(prefix_bin / "meshcc")]  # the installed daemon, by its launcher
    else:
        prefix_bin = h.VENV_BIN if args.venv_launchers else write_launchers(work / "bin")
        meshcc_cmd = [sys.executable, "-m", "meshcc"]
    meshcc_gcc = str(prefix_bin / "meshcc-gcc")
    lzo = args.protocol == 2
    site = make_site(args.veth, args.icecream)
    daemons: dict[str, h.Daemon] = {}
    ice: _icecream.Icecream | None = None
    lease_daemon: h.Daemon | None = None
    user = None
    try:
        daemons["meshcc"] = start_meshcc(
            site,
            meshcc_cmd,
            work / "meshccd",
            args.server_jobs,
            args.daemon_log_level,
            args.profile_daemon,
            discovery=args.lease_way or args.idle_peer,
        )
        daemons["distcc"] = start_distccd(site, work / "distccd", args.server_jobs)
        ways: dict[str, Way] = {}
        for key, client in (("meshcc", [meshcc_gcc]), ("distcc", ["distcc", "gcc"])):
            daemon = daemons[key]
            spec = f"{site.address}:{daemon.port}/4" + (",lzo" if lzo else "")
            env = h.client_env(work / f"client-{key}", spec)
            env["PATH"] = os.pathsep.join(
                [str(prefix_bin)] + [p for p in env["PATH"].split(os.pathsep) if p]
            )
            if key == "meshcc" and args.timeline:
                env["MESHCC_VERBOSE"] = "1"
            ways[key] = Way(client, env, os.getpgid(daemon.proc.pid))
        if args.directives_only_way:
            # a third way through the same daemon: optimizing jobs preprocessed with
            # -fdirectives-only (MESHCC_DIRECTIVES_ONLY=1), the meshcc way pinned to full
            # preprocessing (=0), whichever of the two is the default
            m = ways["meshcc"]
            ways["meshcc"].env["MESHCC_DIRECTIVES_ONLY"] = "0"
            ways["meshcc-dirs"] = Way(
                m.client, {**m.env, "MESHCC_DIRECTIVES_ONLY": "1"}, m.server_pgid
            )
        if args.idle_peer:
            # a meshcc peer on the client box that leases nothing: the server's daemon
            # keeps it informed of its load, as a Portage box's daemon is while its
            # stock distcc jobs come in (no way of its own)
            lease_daemon, _ = start_lease_daemon(site, meshcc_cmd, work / "lease-d")
        if args.lease_way:
            # a third way through the same server daemon: meshcc-gcc as users run it, no
            # DISTCC_HOSTS, each job leased by the client box's daemon (whose CPU per job
            # counts as the client's, as issue 12 counts a local helper daemon)
            lease_daemon, lease_sock = start_lease_daemon(
                site, meshcc_cmd, work / "lease-d", args.profile_lease_daemon
            )
            env = h.client_env(work / "client-lease")
            env["MESHCC_SOCKET"] = str(lease_sock)
            env["PATH"] = ways["meshcc"].env["PATH"]
            if args.timeline:
                env["MESHCC_VERBOSE"] = "1"
            ways["meshcc-lease"] = Way(
                [meshcc_gcc],
                env,
                ways["meshcc"].server_pgid,
                os.getpgid(lease_daemon.proc.pid),
            )
        if args.icecream:
            ice = _icecream.start(site, work / "icecream", args.server_jobs, not args.veth)
            env = ice.client_env(h.client_env(work / "client-icecream"))
            ways["icecream"] = Way(["icecc", "gcc"], env, None, ice.client_daemon_pgid())
        stats = {k: WayStats(k) for k in ways}
        spans: dict[str, dict[str, list[float]]] = {}  # way -> phase -> ms
        if args.zygote:
            user = zygote_user(work, tree)

        def replay() -> None:
            for k, w in ways.items():
                if w.server_pgid is not None:
                    stats[k].idle_cpu_ms_per_s = idle_rate(w.server_pgid)
            # one untimed pass per way: page cache, .pyc files, distccd's children all warm
            # (and icecream's environment tarball built and installed on the server)
            for job in jobs:
                for w in ways.values():
                    run_client([*w.client, *job.argv], job.cwd, w.env, user)
            zygote_cost = zygote_stats_cost(user) if user is not None else 0.0
            for key, job in schedule(list(ways), jobs, args.reps, args.by_build):
                w = ways[key]
                st = stats[key]
                time.sleep(SETTLE_S)
                before = group_tasks(w.server_pgid) if w.server_pgid else {}
                local_before = group_tasks(w.local_pgid) if w.local_pgid else {}
                meshcc_way = key.startswith("meshcc")
                zyg = zygote_stats(user) if user is not None and meshcc_way else None
                wall, cpu, err = run_client([*w.client, *job.argv], job.cwd, w.env, user)
                if zyg is not None:
                    after = zygote_stats(user)
                    if after is None or after["jobs"] != zyg["jobs"] + 1:
                        st.zygote_fallbacks += 1
                        continue
                    # the worker (the zygote's wait4 of it) and the zygote's own
                    # part (accept, fork, reap), less what asking for the figures
                    # costs it
                    z = (after["children_cpu_us"] - zyg["children_cpu_us"]) / 1e3
                    z += (after["self_cpu_us"] - zyg["self_cpu_us"]) / 1e3 - zygote_cost
                    st.zygote_cpu.append(z)
                    cpu += z
                time.sleep(SETTLE_S)
                if w.local_pgid is not None:
                    local = server_delta(local_before, group_tasks(w.local_pgid))
                    if local is None:
                        st.local_dropped += 1
                    else:
                        st.local_daemon_cpu.append(local)
                        cpu += local
                if w.server_pgid is not None:
                    delta = server_delta(before, group_tasks(w.server_pgid))
                    if delta is None:
                        st.server_dropped += 1
                    else:
                        st.server_cpu.append(delta)
                st.walls.append(wall)
                st.client_cpu.append(cpu)
                if key in ("meshcc", "meshcc-lease"):
                    for phase, ms in timeline_spans(err).items():
                        spans.setdefault(key, {}).setdefault(phase, []).append(ms)

        site.run_as_client(replay)
        expected = (args.reps + 1) * len(jobs)
        remote = {k: d.count_jobs() for k, d in daemons.items()}
        for k, d in daemons.items():
            # the meshcc daemon serves every meshcc way (directives-only, leased)
            served = sum(1 for w in ways if w.split("-")[0] == k) * expected
            if remote[k] < served:
                raise h.HarnessError(
                    f"{k}: only {remote[k]} of {served} jobs logged COMPILE_OK\n"
                    + d.log_text()[-3000:]
                )
        if ice is not None:
            remote["icecream"] = ice.remote_jobs()
            if remote["icecream"] < expected:
                raise h.HarnessError(
                    f"icecream: the scheduler logged only {remote['icecream']} of {expected} "
                    f"jobs done on {_icecream.SERVER_NODE}\n{ice.logs()}"
                )
    finally:
        if ice is not None:
            ice.stop()
        if lease_daemon is not None:
            lease_daemon.stop()
        for d in daemons.values():
            d.stop()
        site.close()
        if user is not None:
            end_user(user)
    return {
        "project": args.project,
        "link": "veth" if args.veth else "loopback",
        "protocol": args.protocol,
        "jobs": len(jobs),
        "reps": args.reps,
        "by_build": args.by_build,
        "meshcc_gcc": meshcc_gcc,
        "launchers": "prefix" if args.meshcc_prefix else "venv" if args.venv_launchers else "-IS",
        "timeline_ms": {k: statistics.median(v) for k, v in spans.get("meshcc", {}).items()},
        "timeline_lease_ms": {
            k: statistics.median(v) for k, v in spans.get("meshcc-lease", {}).items()
        },
        "zygote": bool(args.zygote),
        "remote_jobs": remote,
        "ways": {
            k: {
                "wall_ms": s.med(s.walls),
                "client_cpu_ms": s.med(s.client_cpu),
                "server_cpu_ms": s.med(s.server_cpu),
                "server_cpu_mean_ms": statistics.fmean(s.server_cpu) if s.server_cpu else None,
                "server_samples_dropped": s.server_dropped,
                "idle_cpu_ms_per_s": s.idle_cpu_ms_per_s,
                "local_daemon_cpu_ms": s.med(s.local_daemon_cpu),
                "local_samples_dropped": s.local_dropped,
                "zygote_cpu_ms": s.med(s.zygote_cpu),
                "zygote_fallbacks": s.zygote_fallbacks,
                "n": len(s.walls),
            }
            for k, s in stats.items()
        },
    }


def report(r: dict) -> str:
    m, d = r["ways"]["meshcc"], r["ways"]["distcc"]
    i = r["ways"].get("icecream")

    def num(x: float | None) -> str:
        return f"{x:9.2f}" if x is not None else f"{'n/a':>9s}"

    def ratio(a: dict, b: dict, key: str) -> str:
        if a[key] is None or not b[key]:
            return "   n/a"
        return f"{a[key] / b[key]:5.2f}x"

    lines = [
        f"{r['project']} over {r['link']}: {r['jobs']} jobs x {r['reps']} reps, one at a time, "
        f"protocol {r['protocol']}{' (,lzo)' if r['protocol'] == 2 else ''}; client "
        f"{r['meshcc_gcc']} ({r['launchers']} launchers)",
        f"{'median per job':18s} {'meshcc':>9s} {'distcc':>9s}"
        + (f" {'icecream':>9s}" if i else "")
        + f" {'m/distcc':>8s}"
        + (f" {'m/icecc':>8s} {'icecc/d':>8s}" if i else "")
        + "  target",
    ]
    for key, label, target in (
        ("wall_ms", "wall ms", TARGET_WALL),
        ("client_cpu_ms", "client CPU ms", TARGET_CLIENT_CPU),
        ("server_cpu_ms", "server CPU ms", TARGET_SERVER_CPU),
        ("server_cpu_mean_ms", "server CPU (mean)", None),
    ):
        t = f"<= {target:.1f}x" if target else ""
        row = f"{label:18s} {num(m[key])} {num(d[key])}"
        if i:
            row += f" {num(i[key])}"
        row += f" {ratio(m, d, key):>8s}"
        if i:
            row += f" {ratio(m, i, key):>8s} {ratio(i, d, key):>8s}"
        lines.append(f"{row}  {t}")
    lines.append(
        f"idle server CPU: meshcc {m['idle_cpu_ms_per_s']:.2f} ms/s, distccd "
        f"{d['idle_cpu_ms_per_s']:.2f} ms/s; server samples dropped (a task ended): "
        f"meshcc {m['server_samples_dropped']}, distccd {d['server_samples_dropped']}"
    )
    if r.get("zygote"):
        lines.append(
            f"zygote: meshcc's client CPU includes its worker and the zygote's own part, "
            f"median {num(m['zygote_cpu_ms']).strip()} ms per job; jobs it did not take "
            f"(not counted): {m['zygote_fallbacks']}"
        )
    if i:
        lines.append(
            f"icecream: client CPU includes the client box's iceccd, median "
            f"{num(i['local_daemon_cpu_ms']).strip()} ms per job ({i['local_samples_dropped']} "
            f"jobs dropped: a task of it ended); server CPU not measured (iceccd forks a "
            f"process per job); jobs the scheduler saw done on the server: "
            f"{r['remote_jobs'].get('icecream')}"
        )
    for way, short, note, rows in (
        (
            "meshcc-dirs",
            "m-dirs",
            "MESHCC_DIRECTIVES_ONLY=1; the meshcc column above: =0",
            (("server_cpu_mean_ms", "server CPU (mean)"),),
        ),
        (
            "meshcc-lease",
            "m-lease",
            "no DISTCC_HOSTS: leased by the client box's daemon, codec negotiated",
            (("local_daemon_cpu_ms", " of it the daemon"),),
        ),
    ):
        x = r["ways"].get(way)
        if not x:
            continue
        lines.append(f"{way:18s} {short:>9s} {short + '/d':>9s} {short + '/m':>9s}  ({note})")
        for key, label in (
            ("wall_ms", "wall ms"),
            ("client_cpu_ms", "client CPU ms"),
            ("server_cpu_ms", "server CPU ms"),
            *rows,
        ):
            lines.append(f"{label:18s} {num(x[key])} {ratio(x, d, key):>9s} {ratio(x, m, key):>9s}")
        if way == "meshcc-lease":
            lines.append(
                f"client box daemon: {x['local_samples_dropped']} jobs dropped (a task of it ended)"
            )
    for label, key in (("meshcc-gcc", "timeline_ms"), ("leased", "timeline_lease_ms")):
        if r.get(key):
            lines.append(
                f"{label} timeline, median ms: "
                + ", ".join(f"{k} {v:.2f}" for k, v in r[key].items())
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", choices=sorted(PROJECTS), default="zlib")
    p.add_argument("--reps", type=int, default=3, help="replays of the job list per way")
    p.add_argument(
        "--by-build",
        action="store_true",
        help="each way replays the whole job list in turn (the order rotating each rep), as "
        "one serial build runs, instead of the ways taking turns at every job",
    )
    p.add_argument("--protocol", type=int, choices=(1, 2), default=2)
    p.add_argument("--server-jobs", type=int, default=2, help="daemons' --jobs")
    p.add_argument(
        "--meshcc-prefix",
        help="an install.sh prefix: its meshcc-gcc and meshcc daemon (default: this venv)",
    )
    p.add_argument(
        "--veth",
        action="store_true",
        help="daemons and clients in two network namespaces joined through a veth bridge "
        "(tests/netns.py) instead of loopback",
    )
    p.add_argument(
        "--venv-launchers",
        action="store_true",
        help="this venv's pip launchers (site and .pth files on every compile) instead of "
        "install.sh-style -IS ones",
    )
    p.add_argument(
        "--timeline",
        action="store_true",
        help="MESHCC_VERBOSE=1 for meshcc-gcc (and the lease way): its per-phase medians "
        "(costs a little)",
    )
    p.add_argument(
        "--icecream",
        action="store_true",
        help="add icecream (Debian's icecc) as a third way: scheduler and server iceccd with "
        "the daemons, a client iceccd (-m 0 --no-remote) with the clients; on loopback every "
        "way then runs inside one network namespace (benchmarks/_icecream.py)",
    )
    p.add_argument(
        "--daemon-log-level",
        default="info",
        help="the meshcc daemon's --log-level (info, as distccd's here; debug adds its "
        "per-job timeline to the kept log)",
    )
    p.add_argument(
        "--profile-daemon",
        metavar="PATH",
        help="run the meshcc daemon under cProfile and write its stats to PATH when it "
        "stops (its CPU figures then include the profiler's cost)",
    )
    p.add_argument(
        "--profile-lease-daemon",
        metavar="PATH",
        help="with --lease-way: run the client box's meshcc daemon under cProfile and write "
        "its stats to PATH when it stops",
    )
    p.add_argument(
        "--directives-only-way",
        action="store_true",
        help="add meshcc-gcc with MESHCC_DIRECTIVES_ONLY=1 as a third way (same daemon); the "
        "meshcc way then runs with MESHCC_DIRECTIVES_ONLY=0",
    )
    p.add_argument(
        "--lease-way",
        action="store_true",
        help="with --veth: add meshcc-gcc without DISTCC_HOSTS as a third way, each job "
        "leased by a meshcc daemon on the client box (mDNS on the namespaces' bridge) to the "
        "server's daemon; its client CPU adds that daemon's CPU per job",
    )
    p.add_argument(
        "--idle-peer",
        action="store_true",
        help="with --veth, without --lease-way: the client box's meshcc daemon runs (found "
        "by mDNS, the server's live-load peer) but no way leases through it: every job is "
        "one no lease accounts for, as in a mesh that Portage's stock distcc uses",
    )
    p.add_argument(
        "--zygote",
        action="store_true",
        help="run every client as a throwaway user, so that --meshcc-prefix's C launcher "
        "hands meshcc's jobs to its zygote; meshcc's client CPU then adds the worker's and "
        "the zygote's own CPU per job (from its counters)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    if args.lease_way and not args.veth:
        p.error("--lease-way needs --veth (discovery runs only inside the namespaces)")
    if args.idle_peer and (args.lease_way or not args.veth):
        p.error("--idle-peer needs --veth and no --lease-way")
    if args.profile_lease_daemon and not args.lease_way:
        p.error("--profile-lease-daemon needs --lease-way (it profiles that way's daemon)")
    if os.geteuid() != 0:
        print("bench_serial: run as root (distccd and the daemon drop privileges)", file=sys.stderr)
        return 2
    if not args.meshcc_prefix:
        from bench_build import precompile_meshcc

        precompile_meshcc()
    work = Path(tempfile.mkdtemp(prefix="meshcc-bench-serial-"))
    work.chmod(0o755)  # the daemons' dropped users read the job dirs they make under /tmp
    try:
        r = bench(args, work)
    except (h.HarnessError, subprocess.CalledProcessError) as e:
        print(f"bench_serial: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
