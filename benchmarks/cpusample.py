"""CPU seconds by role of the processes a benchmark started (Linux /proc; no root needed).

A :class:`CpuSampler` thread reads ``/proc/*/stat`` every ``interval`` seconds. Roles:

* the daemons (``daemons``: pid -> role name): their own CPU over the run;
* ``remote compilers``: the CPU of the compile servers' children (the compilers they ran
  and reaped: ``cutime + cstime`` of each server daemon over the run);
* ``compile clients``: the own CPU of every ``meshcc-gcc`` / ``distcc`` process under a client
  build, and ``client preprocessors``: what those processes' children used (the local
  preprocessor they ran and reaped before sending the job).

Why: on a box where clients and servers share the cores, the makespan is bounded by the CPU
the build needs, not only by the servers' slots; this shows how much is the real work
(compilers, preprocessors) and how much each way's own machinery costs. A compile client is
seen by its last sample before it exits: each lives for its remote compile, much longer
than ``interval``, and has reaped its preprocessor by then.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
CLIENTS = {"meshcc-gcc", "distcc"}


def threads_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds so far of every live thread of ``pid`` (schedstat: ns, not clock
    ticks, so a daemon's few ms a second are measured exactly)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


def _procs() -> Iterator[tuple[int, str, int, float, float]]:
    """(pid, comm, ppid, own cpu s, reaped children's cpu s) of every process now."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        head, _, rest = raw.rpartition(b")")
        comm = head.split(b"(", 1)[1].decode("utf-8", "replace")
        f = rest.split()  # f[0] is field 3 (state): ppid 4, utime 14 .. cstime 17
        own = (int(f[11]) + int(f[12])) / _TICK
        children = (int(f[13]) + int(f[14])) / _TICK
        yield int(entry.name), comm, int(f[1]), own, children


class CpuSampler:
    """Sample the CPU of this process's descendants by role (see the module docstring).

    ``daemons``: daemon pid -> role name; ``servers``: the pids of the compile servers'
    daemons (their reaped children are the remote compilers)."""

    def __init__(self, daemons: dict[int, str], servers: set[int], interval: float = 0.1) -> None:
        self.daemons = daemons
        self.servers = servers
        self.interval = interval
        self.me = os.getpid()
        self._clients: set[int] = set()  # compile clients under this process
        self._not: set[int] = set()  # looked at: not a compile client
        self._cpu: dict[int, tuple[float, float]] = {}
        self._start: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._start = {pid: self._cpu.get(pid, (0.0, 0.0)) for pid in self.daemons}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _mine(self, pid: int, parents: dict[int, int]) -> bool:
        cur = parents.get(pid, 0)
        for _ in range(64):
            if cur == self.me:
                return True
            if cur <= 1 or cur in self.daemons:
                return False
            cur = parents.get(cur, 0)
        return False

    def _sample(self) -> None:
        procs = list(_procs())
        parents = {pid: ppid for pid, _, ppid, _, _ in procs}
        for pid, comm, _, own, children in procs:
            if pid not in self.daemons and pid not in self._clients:
                if pid in self._not:
                    continue
                if comm in CLIENTS and self._mine(pid, parents):
                    self._clients.add(pid)
                else:
                    self._not.add(pid)
                    continue
            old = self._cpu.get(pid, (0.0, 0.0))
            self._cpu[pid] = (max(old[0], own), max(old[1], children))

    def by_role(self) -> dict[str, float]:
        """CPU seconds per role since sampling began."""
        out: dict[str, float] = {}

        def add(role: str, seconds: float) -> None:
            out[role] = out.get(role, 0.0) + max(0.0, seconds)

        for pid, role in self.daemons.items():
            (own, children), (own0, children0) = self._cpu.get(pid, (0, 0)), self._start[pid]
            add(role, own - own0)
            if pid in self.servers:
                add("remote compilers", children - children0)
        for pid in self._clients:
            own, children = self._cpu[pid]
            add("compile clients", own)
            add("client preprocessors", children)
        return {k: round(v, 2) for k, v in sorted(out.items())}
