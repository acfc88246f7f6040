"""A hostile LAN and a locked-down install, with real daemons in network namespaces.

* Rogue announcements: a real python-zeroconf announcer on the LAN publishes `_meshcc._tcp`
  records with absurd fields (jobs=10**20, cpus=10**30, negative values, a terminal escape
  in the host name). The daemon ignores each with one log line, `meshcc hosts` keeps
  working, and the real peer is listed with its real limit.
* A 0700 install: the daemon runs from a copy of the code in a root-only directory (as a
  checkout or meshcc.pyz under /root), drops to nobody, and still keeps --write-hosts and
  its peer log lines current: nothing is imported after the privilege drop.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from meshd import Meshd, private_dir
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

ROGUE_ANNOUNCER = r"""
import asyncio, sys
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

GCC = "gcc;12.2.0;x86_64-linux-gnu;2.40;gcc"
ROGUES = {
    "huge-jobs": {"jobs": "99999999999999999999"},
    "huge-cpus": {"cpus": str(10**30)},
    "negative": {"jobs": "-5", "cpus": "-1"},
    "escape": {"host": "evil\x1b[2Jbox"},
    "bad-proto": {"proto": "1,2,77"},
}

async def main() -> None:
    ip = sys.argv[1]
    azc = AsyncZeroconf(interfaces=[ip])
    for i, (label, fields) in enumerate(ROGUES.items()):
        props = {"v": "1", "id": f"bad{i:09x}", "cpus": "2", "jobs": "4", "t0": GCC}
        props.update(fields)
        info = ServiceInfo(
            "_meshcc._tcp.local.", f"meshcc@{label}._meshcc._tcp.local.", port=3632,
            parsed_addresses=[ip], server=f"{label}.local.", properties=props,
        )
        await azc.async_register_service(info, cooperating_responders=True)
    print("registered", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await azc.async_unregister_all_services()
    await azc.async_close()

asyncio.run(main())
"""


def test_rogue_announcements_are_ignored_and_hosts_keeps_working(
    lan: Callable[..., Lan],
) -> None:
    net = lan()
    work = private_dir("meshcc-rogue-")
    ha, hb, hr = (net.add_host(n) for n in "abr")
    iface = ("--interface", "eth0")
    a = Meshd(work, ha, *iface, name="a")
    b = Meshd(work, hb, *iface, "--jobs", "3", name="b")
    rogue = hr.popen(
        [sys.executable, "-c", ROGUE_ANNOUNCER, hr.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rogue.stdout is not None and rogue.stdout.readline().strip() == "registered"
        for m in (a, b):
            m.start(wait=False)
        for m in (a, b):
            m.wait_ready()

        def b_listed() -> bool:
            return f"{hb.address}:3632/3" in a.hosts()["line"]

        netns.wait_for(b_listed, 20, what="a to list b")
        netns.wait_for(
            lambda: a.log_text().count("ignoring meshcc@") >= 5, 20, what="the five rogues"
        )
        log = a.log_text()
        for label, why in (
            ("huge-jobs", "not a number"),
            ("huge-cpus", "not a number"),
            ("negative", "outside"),
            ("escape", "characters it may not have"),
            ("bad-proto", "proto"),
        ):
            lines = [ln for ln in log.splitlines() if f"ignoring meshcc@{label}" in ln]
            assert len(lines) == 1 and why in lines[0], (label, lines)
        assert "Traceback" not in log
        p = a.cli("hosts", "--explain", inside=True)
        assert p.returncode == 0, p.stderr
        assert "\x1b" not in p.stdout
        verdicts = a.hosts()["verdicts"]
        assert [v["peer"]["addresses"] for v in verdicts] == [[hb.address]], verdicts
    finally:
        if rogue.stdin is not None:
            rogue.stdin.close()
        try:
            rogue.wait(10)
        except subprocess.TimeoutExpired:
            rogue.kill()
        for m in (a, b):
            m.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_daemon_from_a_root_only_copy_keeps_serving_after_dropping_root(
    lan: Callable[..., Lan],
) -> None:
    """The code under a 0700 directory: after the drop to nobody nothing more can be
    imported from it, so everything must have been imported before."""
    root_only = Path(tempfile.mkdtemp(prefix="meshcc-0700-", dir="/tmp"))
    root_only.chmod(0o700)
    shutil.copytree(
        Path(__file__).resolve().parents[2] / "meshcc",
        root_only / "meshcc",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    net = lan()
    work = private_dir("meshcc-0700-run-")
    ha, hb = net.add_host("a"), net.add_host("b")
    hosts_file = work / "a" / "distcc-hosts"
    iface = ("--interface", "eth0")

    class RootOnly(Meshd):
        def env(self) -> dict[str, str]:
            return dict(
                super().env(),
                PYTHONPATH=str(root_only),
                PYTHONSAFEPATH="1",  # not the checkout in the current directory
                PYTHONDONTWRITEBYTECODE="1",
            )

    a = RootOnly(work, ha, *iface, "--write-hosts", str(hosts_file), name="a")
    b = Meshd(work, hb, *iface, name="b")
    try:
        for m in (a, b):
            m.start(wait=False)
        for m in (a, b):
            m.wait_ready()
        assert "running as user nobody" in a.log_text()

        def written() -> bool:
            try:
                return hb.address in hosts_file.read_text()
            except OSError:
                return False

        netns.wait_for(written, 20, what="--write-hosts to list b")
        netns.wait_for(lambda: "is in for" in a.log_text(), 10, what="a's peer log line")
        log = a.log_text()
        assert "Traceback" not in log and "background task" not in log, log
        code = "import meshcc, sys; sys.exit(0 if meshcc.__file__.startswith(sys.argv[1]) else 1)"
        check = ha.run([sys.executable, "-c", code, str(root_only)], env=a.env())
        assert check.returncode == 0, "the daemon did not run from the 0700 copy"
    finally:
        for m in (a, b):
            m.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root_only, ignore_errors=True)
