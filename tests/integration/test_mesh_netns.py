"""Mesh discovery between "machines": network namespaces on a bridge (tests/netns.py).

Each host runs MESH_NODE (below) inside its namespace: a Mesh on ``--interface eth0`` with
the default liveness timings, plus a TCP listener standing in for the compile server. The
script prints one JSON line whenever its view changes. All traffic stays on the test LAN.

Time limits here are generous bounds against hangs, not performance assertions; the
measured times (issue targets: appear ≤ 2 s, kill -9 -> gone ≤ 10 s, restart -> back ≤ 5 s)
are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import netns
from netns import Host, Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

LanFactory = Callable[..., Lan]
PORT = 3632

# argv: port jobs [allowed CIDR ...]
MESH_NODE = r"""
import asyncio, ipaddress, json, signal, sys, time
from meshcc.mesh.records import DistccId, ToolchainInfo
from meshcc.mesh.service import Mesh, MeshConfig

def emit(**kw):
    print(json.dumps(kw), flush=True)

async def main():
    port, jobs = int(sys.argv[1]), int(sys.argv[2])
    allow = tuple(ipaddress.ip_network(a) for a in sys.argv[3:])
    server = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", port, reuse_address=True)
    gcc = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc", "cc"))
    mesh = Mesh(MeshConfig(interfaces=("eth0",), allow=allow), [gcc], port, jobs, cpus=2,
                caps=frozenset({"lzo", "errm"}), distcc_id=DistccId("x86_64-linux-gnu", "12"))
    await mesh.start()
    emit(status=mesh.status.to_dict())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    last = None
    while not stop.is_set():
        view = [(v.peer.record.host, v.address, v.included, v.reason) for v in mesh.explain(None)]
        line = mesh.hosts_line(None)
        if (line, [v[:3] for v in view]) != last:
            last = (line, [v[:3] for v in view])
            emit(hosts=line, explain=view)
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except TimeoutError:
            pass
    await mesh.stop()
    server.close()
    emit(stopped=True)

asyncio.run(main())
"""


class Node:
    """One MESH_NODE process; its JSON lines are collected by a thread with receive times."""

    def __init__(self, host: Host, *args: str) -> None:
        self.host = host
        self.started = time.monotonic()
        self.proc: subprocess.Popen[str] = host.python_popen(
            MESH_NODE, str(PORT), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.latest: dict[str, Any] = {}
        self.status: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.put((time.monotonic(), json.loads(raw)))
            except ValueError:
                pass

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> float:
        """Wait for a view satisfying pred; returns the monotonic time it was printed."""
        if self.latest and pred(self.latest):
            return time.monotonic()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                err = (
                    self.proc.stderr.read()
                    if self.proc.poll() is not None and self.proc.stderr
                    else ""
                )
                pytest.fail(
                    f"{self.host.name}: no {what} within {timeout}s; last view {self.latest}\n{err}"
                )
            try:
                at, msg = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if "status" in msg:
                self.status = msg["status"]
            if "hosts" in msg:
                self.latest = msg
                if pred(msg):
                    return at

    def sees(self, addr: str) -> Callable[[dict[str, Any]], bool]:
        return lambda v: f"{addr}:{PORT}/" in v["hosts"]

    def lacks(self, addr: str) -> Callable[[dict[str, Any]], bool]:
        return lambda v: f"{addr}:{PORT}/" not in v["hosts"]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def test_two_hosts_discover_kill9_restart_goodbye(lan: LanFactory) -> None:
    net = lan()
    ha, hb = net.add_host("a"), net.add_host("b")
    a = Node(ha, "6")
    a.wait(lambda v: True, 10, "first view")
    assert a.status["discovery"] and a.status["interfaces"] == ["eth0"]
    assert a.status["allowed"][0] == "10.77.0.0/24"

    b = Node(hb, "3")
    seen_at = a.wait(a.sees(hb.address), 20, "b in a's hosts")
    b.wait(b.sees(ha.address), 20, "a in b's hosts")
    print(f"b appeared on a {seen_at - b.started:.2f}s after b's process started")
    assert a.latest["hosts"] == f"{hb.address}:{PORT}/3,lzo"
    assert b.latest["hosts"] == f"{ha.address}:{PORT}/6,lzo"
    # Cloned boxes: every namespace has this machine's host name and machine-id.
    assert a.status["node_id"] != b.status["node_id"]

    b.kill9()  # no goodbye: mDNS keeps b for ~19 min; only our probes can tell
    killed = time.monotonic()
    gone_at = a.wait(a.lacks(hb.address), 30, "b dropped after kill -9")
    [why] = [e for e in a.latest["explain"] if e[1] == hb.address]
    assert why[3].startswith("not responding since"), why
    print(f"kill -9 -> b dropped by a after {gone_at - killed:.2f}s")

    b2 = Node(hb, "3")  # same namespace, MAC and port: same node id and names -> no mDNS event
    back_at = a.wait(a.sees(hb.address), 30, "b back after restart")
    b2.wait(lambda v: True, 10, "first view")
    assert b2.status["node_id"] == b.status["node_id"]
    print(f"restarted b listed again by a {back_at - b2.started:.2f}s after its process started")

    a.terminate()  # goodbye
    left = time.monotonic()
    gone = b2.wait(b2.lacks(ha.address), 10, "a removed after its goodbye")
    assert not [e for e in b2.latest["explain"] if e[1] == ha.address]
    print(f"goodbye -> a removed by b after {gone - left:.2f}s")
    b2.terminate()


def test_announcements_from_outside_allowed_subnets_are_ignored(lan: LanFactory) -> None:
    net = lan()
    ha = net.add_host("a")
    hc = net.add_host("c", "10.78.0.11/24")  # same wire, other subnet
    hd = net.add_host("d")
    a = Node(ha, "4")  # default: allowed = the subnets of eth0 (10.77.0.0/24 + link-local)
    c = Node(hc, "4")
    d = Node(hd, "4", "10.77.0.11/32")  # --allow replaces the default: only a
    a.wait(
        lambda v: (
            any(e[0] and e[1] is None for e in v["explain"])
            and f"{hd.address}:{PORT}/" in v["hosts"]
        ),
        20,
        "c listed as outside, d in",
    )
    [outside] = [e for e in a.latest["explain"] if e[1] is None]
    assert not outside[2]
    assert outside[3].startswith(f"announced from {hc.address}, outside allowed 10.77.0.0/24")
    assert a.latest["hosts"] == f"{hd.address}:{PORT}/4,lzo"
    d.wait(
        lambda v: v["hosts"] == f"{ha.address}:{PORT}/4,lzo" and len(v["explain"]) == 2,
        20,
        "d to list only a",
    )
    assert d.status["allowed"] == ["10.77.0.11/32"] and d.status["allowed_source"] == "--allow"
    for n in (a, c, d):
        n.terminate()
