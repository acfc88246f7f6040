"""A daemon whose status port is not its compile port + 1 is still a result-cache home.

Peers push compile results to, and look them up on, a home's status port. They used to
assume it was the compile port + 1 (distccd's 3632/3633 pairing), so a daemon started with
``--status-port`` elsewhere kept its cache to itself. It now announces the port (``sport``
in its ``_meshcc._tcp`` TXT). Two "machines" (network namespaces on one bridge), both with
``--status-port 9633``: box a's jobs are leased to s (never to a's own daemon), s compiles
and stores them and pushes each key to its home; with two candidate homes (s and a), some
of 16 keys land on a, which must receive them on 9633. With the old rule a would not even
offer itself as a home, and nothing would be pushed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN
from meshd import Meshd, private_dir
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

STATUS_PORT = 9633
JOBS = 16  # keys; the chance that none is homed on a is 2**-16

_COUNTERS = """
import json, sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/status.json", timeout=5) as r:
    print(json.dumps(json.load(r)["result_cache"]))
"""


def _counters(host: netns.Host, address: str) -> dict[str, int]:
    p = host.python(_COUNTERS, address, str(STATUS_PORT))
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def test_home_on_an_announced_status_port(lan: Callable[..., Lan], tmp_path: Path) -> None:
    net = lan()
    hosts = {n: net.add_host(n) for n in ("a", "s")}
    work = private_dir("meshcc-sport-")
    daemons: dict[str, Meshd] = {}
    try:
        for n, host in hosts.items():
            daemons[n] = Meshd(
                work,
                host,
                "--interface",
                "eth0",
                "--status-port",
                str(STATUS_PORT),
                "--cache-dir",
                str(work / n / "cache"),
                "--cache-lookup-timeout",
                "10",
                name=n,
            ).start()
        a = daemons["a"]

        def a_lists_s() -> bool:
            res = a.cli("hosts", "--cc", "gcc", inside=True)
            return hosts["s"].address in {t.split(":")[0] for t in res.stdout.split()}

        netns.wait_for(a_lists_s, 60, 0.25, "a to list s")

        src = tmp_path / "src"
        src.mkdir()
        (tmp_path / "distcc-dir").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        env.update(
            DISTCC_DIR=str(tmp_path / "distcc-dir"),
            PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
            DISTCC_FALLBACK="0",
            MESHCC_DIRECT="0",
            MESHCC_SOCKET=str(a.socket),
        )
        for i in range(JOBS):
            (src / f"f{i}.c").write_text(f"int f{i}(int x) {{ return x * {i + 3}; }}\n")
            p = hosts["a"].run(
                ["meshcc-gcc", "-O2", "-c", f"f{i}.c", "-o", f"f{i}.o"], cwd=src, env=env
            )
            assert p.returncode == 0, p.stderr

        def pushed_all() -> bool:
            served = _counters(hosts["a"], hosts["s"].address)
            received = _counters(hosts["s"], hosts["a"].address)["received"]
            return served["stored"] == JOBS and served["pushed"] == received > 0

        netns.wait_for(pushed_all, 30, 0.25, "s's pushes to reach a")
        served = _counters(hosts["a"], hosts["s"].address)
        assert served["push_failed"] == 0, served
        assert _counters(hosts["s"], hosts["a"].address)["received"] == served["pushed"] > 0
    finally:
        for d in daemons.values():
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
