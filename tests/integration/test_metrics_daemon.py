"""A loopback daemon's view of the box: real compiles through meshcc-gcc, then
``meshcc stats``, ``/metrics`` (parsed by prometheus_client) and ``/status.json``.

Every outcome is produced for real: a remote compile on the daemon, local ones by choice
(``-E``, a link), a refusal (a compiler the server never probed), a fallback (the server's
port closed), the daemon's own "no peers" answer, a preprocessor error. The outcome
socket's bounds are probed with oversized and garbage datagrams. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from conftest import Daemon, free_port
from meshcc.daemon import outcomes
from meshcc.wire import outcome as wire
from meshd import Meshd, private_dir
from test_wrapper import env_with, meshcc, run


@pytest.fixture
def daemon() -> Iterator[tuple[Meshd, int]]:
    """A loopback daemon with a status port, its sockets where any local user may look."""
    status_port = free_port()
    workdir = private_dir("meshcc-metrics-")
    d = Meshd(workdir, None, "--status-port", str(status_port), port=free_port())
    try:
        d.start()
        yield d, status_port
    finally:
        if d.proc is not None:
            d.proc.terminate()
            try:
                d.proc.wait(20)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _get(port: int, path: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def _samples(text: str, om: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parse = parse_openmetrics if om else parse_prometheus
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in parse(text)
        for s in fam.samples
    }


def _stats(d: Meshd, *args: str) -> subprocess.CompletedProcess[str]:
    return d.cli("stats", *args)


def test_outcomes_stats_metrics_and_status_json(
    daemon: tuple[Meshd, int], client_env: dict[str, str], proj: Path, tmp_path: Path
) -> None:
    d, status_port = daemon
    base = env_with(client_env, MESHCC_SOCKET=str(d.socket))
    here = f"127.0.0.1:{d.port}"
    dead = f"127.0.0.1:{free_port()}"
    gcc = meshcc()

    def cc(*args: str, hosts: str | None = here, **env: str) -> subprocess.CompletedProcess[str]:
        e = env_with(base, **env)
        if hosts is not None:
            e["DISTCC_HOSTS"] = hosts
        return run([gcc, *args], e, proj)

    # remote ok, twice
    for out in ("a.o", "b.o"):
        r = cc("-c", "src/foo.c", "-o", out)
        assert r.returncode == 0, r.stderr
    # local by choice: -E, and a link
    assert cc("-E", "src/foo.c").returncode == 0
    assert cc("a.o", "-o", "prog").returncode == 0
    # refused by the server: a compiler path it never probed (a symlink to the real gcc)
    other = tmp_path / "bin" / "gcc"
    other.parent.mkdir()
    other.symlink_to("/usr/bin/gcc")
    r = run(
        [meshcc("meshcc"), str(other), "-c", "src/foo.c", "-o", "c.o"],
        env_with(base, DISTCC_HOSTS=here, DISTCC_BACKOFF_PERIOD="0"),
        proj,
    )
    assert r.returncode == 0 and "refused" in r.stderr, r.stderr
    # fallback: nothing listens on the host's port (a killed server)
    r = cc("-c", "src/foo.c", "-o", "d.o", hosts=dead)
    assert r.returncode == 0 and "Connection refused" in r.stderr, r.stderr
    # fallback: no DISTCC_HOSTS, so the daemon is asked for a lease: no peers on loopback
    assert cc("-c", "src/foo.c", "-o", "e.o", hosts=None).returncode == 0
    # the preprocessor fails: reported as such, not as a fallback
    (proj / "src" / "nohdr.c").write_text('#include "missing.h"\n')
    assert cc("-c", "src/nohdr.c", "-o", "f.o").returncode != 0
    # opting out sends nothing
    assert cc("-E", "src/foo.c", MESHCC_STATS="0").returncode == 0

    # ---- meshcc stats --json
    p = _stats(d, "--json")
    assert p.returncode == 0, p.stderr
    snap = json.loads(p.stdout)
    assert snap["schema"] == 1
    assert snap["totals"] == {
        "remote": 2,
        "share": 0,
        "local": 2,
        "fallback": 2,
        "refused": 1,
        "busy": 0,
        "failed": 0,
        "cpp_error": 1,
    }, snap
    rows = {(e["outcome"], e["host"], e["reason"]): e["count"] for e in snap["entries"]}
    assert rows[("remote", here, "")] == 2
    assert rows[("local", "", "-E only preprocesses")] == 1
    assert rows[("local", "", "FILE is a link input")] == 1, rows
    (refusal,) = [(h, r) for (o, h, r) in rows if o == "refused"]
    assert refusal[0] == here and "is not a compiler this server probed" in refusal[1]
    assert any(o == "fallback" and h == dead and "Connection refused" in r for o, h, r in rows)
    assert any(o == "fallback" and r.startswith("meshcc daemon: no peers") for o, _, r in rows)
    assert all("foo.c" not in r for (_, _, r) in rows), "reasons must group across files"

    # ---- meshcc stats (text): each outcome with its reason
    p = _stats(d)
    assert p.returncode == 0, p.stderr
    text = p.stdout
    assert "2  remote" in text and f"2    {here}" in text
    assert "-E only preprocesses" in text
    assert "is not a compiler this server probed" in text
    assert f"{dead}: connect failed" in text
    assert "distributed 2 of 5 distributable compiles" in text, text

    failed = {(a["host"], a["kind"]): a["count"] for a in snap["failed_attempts"]}
    assert failed == {(here, "refused"): 3, (dead, "error"): 1}, failed

    # ---- /metrics, both formats
    ctype, body = _get(status_port, "/metrics")
    assert ctype.startswith("text/plain; version=0.0.4")
    prom = _samples(body, om=False)
    ctype, body = _get(status_port, "/metrics", "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    om = _samples(body, om=True)
    for s in (prom, om):
        assert s[("meshcc_jobs_total", (("outcome", "compile_ok"),))] == 2
        # DISTCC_BACKOFF_PERIOD=0: the client tried the refusing host 3 times (distcc
        # master's cap), the server refused 3 requests; the client counts 1 compile.
        assert s[("meshcc_jobs_total", (("outcome", "refused"),))] == 3
        assert s[("meshcc_compile_seconds_count", ())] == 2
        assert s[("meshcc_received_bytes_total", ())] > 0
        assert s[("meshcc_sent_bytes_total", ())] > 0
        assert s[("meshcc_jobs_running", ())] == 0
        assert s[("meshcc_client_jobs_total", (("host", here), ("outcome", "remote")))] == 2
        assert s[("meshcc_client_jobs_total", (("host", dead), ("outcome", "fallback")))] == 1
        assert s[("meshcc_client_jobs_total", (("host", here), ("outcome", "refused")))] == 1
        assert (
            s[("meshcc_client_failed_attempts_total", (("host", here), ("kind", "refused")))] == 3
        )
        assert s[("meshcc_client_failed_attempts_total", (("host", dead), ("kind", "error")))] == 1

    # ---- the plain-text page sums it up
    _, page = _get(status_port, "/")
    assert "served jobs: 2 compile_ok, 3 refused" in page, page
    assert "this box's compiles: 2 remote, 2 local, 2 fallback, 1 refused, 1 cpp_error" in page

    # ---- /status.json
    ctype, body = _get(status_port, "/status.json")
    assert ctype == "application/json"
    doc = json.loads(body)
    status = d.status()
    for key in ("version", "node", "jobs", "port", "socket", "discovery", "allowed"):
        assert doc[key] == status[key], key
    assert doc["schema"] == 1 and doc["running"] == 0 and doc["waiting"] == 0
    assert {t["path"] for t in doc["toolchains"]} >= {"/usr/bin/gcc"} or any(
        "gcc" in t["names"] for t in doc["toolchains"]
    )
    assert doc["served"]["jobs"]["compile_ok"] == 2
    assert doc["clients"]["totals"]["remote"] == 2
    assert doc["ccache"] is None and doc["peers"] == [] and doc["peer_count"] == 0


def _send(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, path)


def test_outcome_socket_bounds(daemon: tuple[Meshd, int], user_pythonpath: str) -> None:
    d, status_port = daemon
    path = wire.report_socket_path(str(d.socket))
    assert os.stat(path).st_mode & 0o777 == 0o666
    _send(path, b"O1\tremote\th\t" + b"x" * 5000)  # oversized: truncated by the kernel
    _send(path, b"\xff\xfe garbage")
    _send(path, b"O1\tteleported\th\tr")
    _send(path, b"Q1")  # a query from an unbound socket cannot be answered: ignored
    _send(path, wire.encode("busy", "", "every matching peer is busy"))
    p = _stats(d, "--json")
    assert p.returncode == 0, p.stderr
    snap = json.loads(p.stdout)
    assert snap["dropped"] == {"malformed": 1, "oversized": 1, "unknown-outcome": 1}
    assert snap["totals"]["busy"] == 1
    assert d.proc is not None and d.proc.poll() is None
    _, body = _get(status_port, "/metrics")
    s = _samples(body, om=False)
    assert s[("meshcc_client_reports_dropped_total", (("reason", "oversized"),))] == 1

    # one user's flood: every record arrives (blocking sends), no more than the bucket
    # allows is counted, the rest is dropped and counted as such
    records = int(outcomes.BURST) + 10000
    data = wire.encode("remote", "flood:1", "")
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for _ in range(records):
            s.sendto(data, path)
    elapsed = time.monotonic() - started
    snap = json.loads(_stats(d, "--json").stdout)
    me = snap["uids"][str(os.geteuid())]
    flood = next(e["count"] for e in snap["entries"] if e["host"] == "flood:1")
    assert flood + snap["dropped"].get("rate", 0) == records
    assert flood <= outcomes.BURST + outcomes.RATE * (elapsed + 1.0), (flood, elapsed)
    assert me["dropped"] == snap["dropped"].get("rate", 0)

    # only root or the daemon's user resets; anyone else is told why
    p = subprocess.run(
        [
            "setpriv",
            "--reuid=12345",
            "--regid=12345",
            "--clear-groups",
            os.path.realpath(sys.executable),  # the venv's base interpreter: the checkout
            "-m",  # (and the venv in it) may be a 0700 directory of root's
            "meshcc",
            "stats",
            "--reset",
            "--socket",
            str(d.socket),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": user_pythonpath},
    )
    assert p.returncode == 1 and "only root or the daemon's user may reset" in p.stderr, p.stderr
    assert json.loads(_stats(d, "--json").stdout)["totals"]["busy"] == 1
    p = _stats(d, "--reset")
    assert p.returncode == 0, p.stderr
    snap = json.loads(_stats(d, "--json").stdout)
    assert sum(snap["totals"].values()) == 0 and snap["dropped"] == {}


def test_stats_without_a_daemon_says_so(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "meshcc", "stats", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "no meshcc daemon answered" in p.stderr and "Traceback" not in p.stderr


def test_ccache_results_in_metrics_and_json(
    meshcc_daemon: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    """Two identical jobs on a --ccache daemon: one miss, one hit, in both views."""
    parent = Path(tempfile.mkdtemp(prefix="meshcc-metrics-ccache-"))
    try:
        os.chmod(parent, 0o755)  # the dropped user must traverse it
        status_port = free_port()
        d = meshcc_daemon(
            "--ccache", "--ccache-dir", str(parent / "c"), "--status-port", str(status_port)
        )
        env = env_with(client_env, DISTCC_HOSTS=d.host_spec(), DISTCC_FALLBACK="0")
        for out in ("a.o", "b.o"):
            # stock distcc: meshcc-gcc's -fdirectives-only C jobs bypass ccache (ccache 4.7
            # would compile the .i without that option)
            r = run(["distcc", "gcc", "-c", "src/foo.c", "-o", out], env, proj)
            assert r.returncode == 0, r.stderr
        for om, accept in ((False, None), (True, "application/openmetrics-text")):
            s = _samples(_get(status_port, "/metrics", accept)[1], om)
            assert s[("meshcc_ccache_jobs_total", (("result", "miss"),))] == 1
            assert s[("meshcc_ccache_jobs_total", (("result", "hit"),))] == 1
            assert s[("meshcc_ccache_jobs_total", (("result", "uncached"),))] == 0
        doc = json.loads(_get(status_port, "/status.json")[1])
        assert doc["ccache"] == {"hit": 1, "miss": 1, "uncached": 0}
        assert doc["clients"] is None, "no control socket: no outcome socket either"
    finally:
        shutil.rmtree(parent, ignore_errors=True)
