"""Sample what compile servers hold while clients build (meshcc issue 11: no invisible queue).

A :class:`SlotSampler` thread polls each server daemon every few milliseconds for:

* ``running``, ``slots_held``, ``slot_waiting`` from its control socket's status reply (the
  server's own counts: compilers running, job slots taken, complete requests queued for one);
* ``connections``: ESTABLISHED TCP connections on its compile port, from
  ``/proc/PID/net/tcp`` and ``tcp6``, which show the network namespace of that process, so
  the kernel's view of a daemon inside a test namespace needs no ``ip netns exec``.

Used by tests/integration/test_busy_netns.py and benchmarks/bench_two_clients.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshcc.wire import control
from meshd import request

_ESTABLISHED = "01"


def established(pid: int, port: int) -> int:
    """Server-side ESTABLISHED TCP connections on ``port`` in ``pid``'s network namespace."""
    n = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _ESTABLISHED:
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    n += 1
    return n


@dataclass
class Peak:
    """The largest value of each count seen on one server, and how many samples."""

    running: int = 0
    slots_held: int = 0
    slot_waiting: int = 0
    connections: int = 0
    samples: int = 0
    running_sum: int = 0  # sum of running over samples: mean = running_sum / samples
    over: list[str] = field(default_factory=list)  # samples above the limit, described

    def as_dict(self) -> dict[str, int]:
        return {
            "running": self.running,
            "slots_held": self.slots_held,
            "slot_waiting": self.slot_waiting,
            "connections": self.connections,
            "samples": self.samples,
            "mean_running": round(self.running_sum / self.samples, 3) if self.samples else 0,
        }


class SlotSampler:
    """Poll servers (name -> (control socket, daemon pid, compile port, --jobs)) in a thread."""

    def __init__(
        self, servers: dict[str, tuple[Path, int, int, int]], interval: float = 0.005
    ) -> None:
        self.servers = servers
        self.interval = interval
        self.peaks = {name: Peak() for name in servers}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slot-sampler", daemon=True)

    def __enter__(self) -> SlotSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, (sock, pid, port, jobs) in self.servers.items():
                conns = established(pid, port)
                try:
                    st = control.StatusReply.from_message(
                        request(sock, control.StatusRequest().to_message())
                    )
                except OSError as e:
                    self.errors.append(f"{name}: {e}")
                    continue
                p = self.peaks[name]
                p.samples += 1
                p.running_sum += st.running
                p.running = max(p.running, st.running)
                p.slots_held = max(p.slots_held, st.slots_held)
                p.slot_waiting = max(p.slot_waiting, st.slot_waiting)
                p.connections = max(p.connections, conns)
                if st.running > jobs or st.slots_held > jobs or st.slot_waiting:
                    p.over.append(
                        f"t={time.monotonic():.3f} running={st.running} held={st.slots_held} "
                        f"waiting={st.slot_waiting} connections={conns} (jobs {jobs})"
                    )
            self._stop.wait(self.interval)
