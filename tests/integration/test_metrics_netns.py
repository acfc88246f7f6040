"""Per-peer metrics and leased outcomes on a LAN of network namespaces.

``a`` and ``b`` run ``meshcc daemon`` (discovery on, status port 3633). Compiles on ``a``
without DISTCC_HOSTS lease ``b`` from ``a``'s daemon: ``meshcc stats`` on ``a`` counts them
as remote on ``b``. ``a``'s ``/metrics`` shows ``b`` up with probe round trips; after
``b`` is SIGKILLed it shows ``b``'s failed probes and ``/status.json`` its liveness.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

import netns
from conftest import VENV_BIN
from meshd import BareMeshd, Meshd, bare_path, private_dir
from netns import Host, Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]


def _get(host: Host, path: str) -> str:
    p = host.run(["curl", "-sf", f"http://{host.address}:3633{path}"])
    assert p.returncode == 0, p.stderr
    return str(p.stdout)


def _peer_samples(host: Host, peer_host: str) -> dict[tuple[str, str], float]:
    """(metric name, result/kind label) -> value, for the series of ``peer_host``."""
    out: dict[tuple[str, str], float] = {}
    for fam in parse_prometheus(_get(host, "/metrics")):
        for s in fam.samples:
            if s.labels.get("host") == peer_host:
                out[
                    (s.name, s.labels.get("result", s.labels.get("kind", s.labels.get("le", ""))))
                ] = s.value
    return out


def _peer_json(host: Host, peer_host: str) -> dict[str, Any] | None:
    doc = json.loads(_get(host, "/status.json"))
    assert doc["schema"] == 1
    return next((p for p in doc["peers"] if p["host"] == peer_host), None)


def test_peer_metrics_and_leased_outcomes(lan: Callable[..., Lan]) -> None:
    net = lan()
    work = private_dir("meshcc-metrics-lan-")
    ha, hb = net.add_host("a"), net.add_host("b")
    # a is a mesh-only node (no compiler on its PATH): its broker hands out peers first, so
    # every lease goes to b. A daemon with a compiler counts its own box as a candidate and
    # may keep a job in its own share (outcome "share").
    a = BareMeshd(bare_path(work), work, ha, "--interface", "eth0", name="a")
    b = Meshd(work, hb, "--interface", "eth0", name="b")
    try:
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        netns.wait_for(lambda: f"{hb.address}:" in a.hosts()["line"], 20, what="a to list b")
        b_name = str(
            next(
                v["peer"]["host"]
                for v in a.hosts()["verdicts"]
                if hb.address in v["peer"]["addresses"]
            )
        )

        src = work / "x.c"
        src.write_text("int x(int v) { return v * 3; }\n")
        (work / "dd").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        env.update(MESHCC_SOCKET=str(a.socket), DISTCC_DIR=str(work / "dd"))
        for i in range(3):
            r = ha.run([VENV_BIN / "meshcc-gcc", "-c", src, "-o", work / f"x{i}.o"], env=env)
            assert r.returncode == 0, r.stderr
        p = ha.run([VENV_BIN / "meshcc", "stats", "--json"], env=env)
        assert p.returncode == 0, p.stderr
        snap = json.loads(p.stdout)
        remote = [e for e in snap["entries"] if e["outcome"] == "remote"]
        assert remote == [
            {"outcome": "remote", "host": f"{hb.address}:3632", "reason": "", "count": 3}
        ], snap
        assert b.log_text().count("COMPILE_OK") == 3

        # b is up, probed, with round trips
        def probed() -> dict[tuple[str, str], float] | None:
            s = _peer_samples(ha, b_name)
            return s if s.get(("meshcc_peer_probe_seconds_count", "")) else None

        s = netns.wait_for(probed, 20, what="a's probes of b in /metrics")
        assert s[("meshcc_peer_up", "")] == 1
        assert s[("meshcc_peer_probes_total", "ok")] >= 1
        assert s[("meshcc_peer_rtt_seconds", "")] > 0
        assert (
            s[("meshcc_peer_probe_seconds_bucket", "+Inf")]
            == s[("meshcc_peer_probe_seconds_count", "")]
        )
        peer = _peer_json(ha, b_name)
        assert peer is not None and peer["liveness"] == "up" and peer["probes"]["ok"] >= 1

        # b dies without a goodbye: a's probes of it fail, and say so
        b.kill9()

        # A failed probe is counted at once; the peer is marked down after the liveness
        # rule's failures (not on the first), so wait for both.
        def failed() -> dict[tuple[str, str], float] | None:
            s = _peer_samples(ha, b_name)
            down = s.get(("meshcc_peer_up", "")) == 0
            return s if down and s.get(("meshcc_peer_probes_total", "failed")) else None

        s = netns.wait_for(failed, 20, what="a's failed probes of b, and b down, in /metrics")
        peer = _peer_json(ha, b_name)
        assert peer is not None and peer["liveness"] == "down" and peer["probes"]["failed"] >= 1
    finally:
        for m in (a, b):
            m.stop()
        for m in (a, b):
            if "Traceback" in m.log_text():
                pytest.fail(f"{m.name} logged a traceback:\n{m.log_text()}")
        subprocess.run(["rm", "-rf", str(work)], check=False)
