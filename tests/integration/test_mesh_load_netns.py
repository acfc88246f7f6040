"""The live-load channel between real daemons on a LAN of network namespaces.

* s — the real gcc, ``--jobs 2``: the only host for a client's real gcc.
* a, b — ``--compiler`` a gcc that reports another version: excluded for the real gcc, so
  their clients' leases (``local_ok`` false: never this box) can only go to s.

Proves: a load change on s (leases a's client holds there) is seen by b through
``meshcc hosts --json`` and its status; leases that a and b grant at once on s never
exceed s's --jobs in total (counted by the clients holding them and by s itself), and
both boxes get their turn. Waits are bounds against hangs, not timing assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import netns
from meshcc.wire import control
from meshd import ControlConn, Meshd, mismatched_gcc, private_dir, trusted_dir
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

REQ = control.LeaseRequest("gcc", "/usr/bin/gcc", "x.c", local_ok=False).to_message()


def _load_of(reply: dict[str, Any], address: str) -> dict[str, Any] | None:
    """The live load a hosts reply gives for the peer at ``address``."""
    for v in reply["verdicts"]:
        if address in v["peer"]["addresses"]:
            load = v.get("load")
            return load if isinstance(load, dict) else None
    return None


def test_load_is_seen_mesh_wide_and_leases_never_exceed_jobs(lan: Callable[..., Lan]) -> None:
    net = lan()
    work = private_dir("meshcc-load-")
    odd_gcc = mismatched_gcc(trusted_dir("meshcc-load-odd-"), "12.9.0")
    hs, ha, hb = (net.add_host(n) for n in "sab")
    iface = ("--interface", "eth0")
    s = Meshd(work, hs, *iface, "--jobs", "2", name="s")
    a = Meshd(work, ha, *iface, "--compiler", str(odd_gcc), name="a")
    b = Meshd(work, hb, *iface, "--compiler", str(odd_gcc), name="b")
    daemons = [s, a, b]
    try:
        for m in daemons:
            m.start(wait=False)
        for m in daemons:
            m.wait_ready()

        last: dict[str, object] = {}

        # 1. b sees s's live load: 2 jobs, 2 free; in its status and in `hosts --json`.
        def b_sees_s(free: int) -> bool:
            p = b.cli("hosts", "--json", "--cc", "gcc", inside=True)
            if p.returncode != 0:
                return False
            load = _load_of(json.loads(p.stdout), hs.address)
            status_loads = {i["key"]: i for i in b.status().get("loads", [])}
            last["b"] = (load, status_loads)
            return (
                load is not None
                and load["jobs"] == 2
                and load["free"] == free
                and any(i["free"] == free and i["jobs"] == 2 for i in status_loads.values())
            )

        def wait_b(free: int, what: str, timeout: float = 10) -> None:
            try:
                netns.wait_for(lambda: b_sees_s(free), timeout, what=what)
            except TimeoutError as e:
                raise AssertionError(f"{e}; b saw {last}; s says {s.status()}") from None

        wait_b(2, "b to see s's live load (2 free)", 20)
        for m in (a, b):  # s is up for both (a probe may have found its port not yet open)
            netns.wait_for(
                lambda m=m: hs.address in m.hosts("gcc")["line"], 20, what=f"{m.name} to list s"
            )

        # 2. a's client holds both of s's slots: b sees s full; then free again.
        with ControlConn(a.socket) as c1, ControlConn(a.socket) as c2:
            for c in (c1, c2):
                got = c.ask(REQ)
                assert got.get("ok") is True and got["host"] == hs.address, got
            wait_b(0, "b to see s full")
            st = s.status()
            assert st["leased"] == 2 and st["free"] == 0, st
        wait_b(2, "b to see s free again")

        # 3. a and b each want 4 leases on s at once, held 0.3 s each.
        held = 0
        peak = 0
        served = {"a": 0, "b": 0}
        lock = threading.Lock()
        errors: list[str] = []

        def client(m: Meshd) -> None:
            nonlocal held, peak
            try:
                with ControlConn(m.socket, timeout=60) as c:
                    got = c.ask(REQ)
                    if got.get("ok") is not True or got["host"] != hs.address:
                        errors.append(f"{m.name}: {got}")
                        return
                    with lock:
                        held += 1
                        peak = max(peak, held)
                        served[m.name] += 1
                    time.sleep(0.3)
                    with lock:
                        held -= 1  # before the close: the daemon frees it only after
                    c.send(control.DoneMessage(True).to_message())
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"{m.name}: {e!r}")

        s_peak = 0
        stop = threading.Event()

        def watch_s() -> None:
            nonlocal s_peak
            while not stop.is_set():
                try:
                    s_peak = max(s_peak, s.status()["leased"])
                except OSError:
                    pass
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_s)
        watcher.start()
        threads = [threading.Thread(target=client, args=(m,)) for m in (a, b) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        stop.set()
        watcher.join(10)
        assert not errors, errors
        assert served == {"a": 4, "b": 4}
        assert peak <= 2, f"{peak} leases held on s at once; it has 2 slots"
        assert 1 <= s_peak <= 2, f"s counted {s_peak} leases at once"
    finally:
        for m in daemons:
            m.stop()
        for m in daemons:
            if m.proc is not None and m.proc.returncode not in (0, None):
                print(m.name, m.log_text()[-3000:])
