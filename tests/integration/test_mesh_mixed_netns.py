"""A mixed LAN: dual-stack, IPv4-only and IPv6-only boxes on one wire (issue 11).

The hosts are network namespaces on one bridge (tests/netns.py ``add_host(stack=...)``):

* ``dual``: ``10.77.0.11/24`` and ``fd77::b/64`` (and its fe80::);
* ``v4``: ``10.77.0.12/24`` with IPv6 turned off on eth0 (not even a fe80:: address);
* ``v6``: ``fd77::d/64`` (and its fe80::), no IPv4 address or route at all;
* ``ll``: ``10.77.0.14/24`` and the kernel's fe80:: alone: the usual "IPv4 LAN" box.

mDNS has no relay, so each box finds exactly the boxes it shares a family with: ``dual``
finds all three, ``v4`` finds ``dual`` and ``ll`` (over IPv4), ``v6`` finds ``dual`` (at
``fd77::b``) and ``ll`` (by its link-local address, scoped: the only IPv6 it has), and
``ll`` finds ``v6`` likewise. Each lists its peers by an address it can dial: never an
IPv4 address from ``v6``, never a ULA from ``ll`` (which has no route to fd77::/64), and
fe80:: only for a peer with nothing else. ``nod``, IPv6-only without a daemon, browses
by itself (``meshcc hosts``) and lists what ``v6`` lists plus ``v6`` itself.

Then compiles cross the families: from ``dual`` to ``v6`` over IPv6 (meshcc-gcc through
the daemon's lease, with the other peers stopped so the lease cannot go elsewhere, and
stock distcc 3.4 with the ``[fd77::d]`` entry of ``meshcc hosts``), from ``v6`` to
``dual`` over IPv6, and from ``ll`` to ``v6`` over link-local. Objects equal a local
compile's. Waits are bounded against hangs only; nothing is timed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN, parse_job_summaries
from meshd import Meshd, private_dir
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

SOURCE = """\
#include <stdio.h>
static int tri(int n) { return n * (n + 1) / 2; }
int main(void) { printf("%d\\n", tri(42)); return 0; }
"""


def _hosts_of(line: str) -> set[str]:
    """``10.77.0.11:3632/2,lzo [fd77::b]:3632/2,lzo localhost/2`` -> the remote hosts."""
    out = set()
    for tok in line.split():
        if tok.startswith("["):
            out.add(tok[1 : tok.index("]")])
        elif not tok.startswith("localhost"):
            out.add(tok.split(":", 1)[0])
    return out


def _lists(me: Meshd, want: set[str]) -> Callable[[], bool]:
    return lambda: _hosts_of(me.hosts()["line"]) == want


def _ok_jobs(d: Meshd) -> int:
    return sum(1 for j in parse_job_summaries(d.log_text()) if j.result == "COMPILE_OK")


def _client_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    (tmp / "distcc-dir").mkdir(parents=True, exist_ok=True)
    env.update(
        DISTCC_DIR=str(tmp / "distcc-dir"),
        DISTCC_FALLBACK="0",  # a compile that cannot go remote fails instead of going local
        DISTCC_VERBOSE="1",
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
    )
    return env


def _compile(
    client: netns.Host, daemon: Meshd, server: Meshd, want: str, tmp: Path, *, distcc: bool
) -> None:
    """meshcc-gcc with ``daemon``'s lease (and stock distcc with ``want`` from ``meshcc
    hosts``, if asked) compiles ``SOURCE`` on ``server`` at address ``want``; the
    objects equal a local compile's."""
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "tri.c"
    src.write_text(SOURCE)
    env = _client_env(tmp)
    local = client.run(["gcc", "-O2", "-c", str(src), "-o", str(tmp / "local.o")], env=env)
    assert local.returncode == 0, local.stderr
    reference = (tmp / "local.o").read_bytes()
    bracketed = f"[{want}]" if ":" in want else want

    before = _ok_jobs(server)
    res = client.run(
        ["meshcc-gcc", "-O2", "-c", str(src), "-o", str(tmp / "mesh.o")],
        env=dict(env, MESHCC_SOCKET=str(daemon.socket)),
    )
    assert res.returncode == 0, res.stderr + daemon.log_text()[-4000:]
    leased = [ln for ln in res.stderr.splitlines() if " leased " in ln]
    assert leased and f"leased {bracketed}:" in leased[-1], res.stderr
    assert (tmp / "mesh.o").read_bytes() == reference, "meshcc-gcc object differs"
    netns.wait_for(lambda: _ok_jobs(server) > before, 10, what=f"{server.name}'s job log")
    if not distcc:
        return

    line = daemon.cli("hosts", "--cc", "gcc", inside=True).stdout.split()
    entry = [tok for tok in line if tok.startswith(f"{bracketed}:")]
    assert entry, line
    before = _ok_jobs(server)
    res = client.run(
        ["distcc", "gcc", "-O2", "-c", str(src), "-o", str(tmp / "distcc.o")],
        env=dict(env, DISTCC_HOSTS=entry[0]),
    )
    assert res.returncode == 0, res.stderr
    assert (tmp / "distcc.o").read_bytes() == reference, "distcc object differs"
    netns.wait_for(lambda: _ok_jobs(server) > before, 10, what="distcc's job")


def test_mixed_lan_discovers_by_family_and_compiles_across(
    lan: Callable[..., Lan], tmp_path: Path
) -> None:
    net = lan()
    hdual = net.add_host("dual", stack="dual")
    hv4 = net.add_host("v4", stack="ipv4")
    hv6 = net.add_host("v6", stack="ipv6")
    hll = net.add_host("ll")
    hnod = net.add_host("nod", stack="ipv6")  # IPv6-only, no daemon: `meshcc hosts` browses
    # The premises: what each box has on eth0.
    assert hdual.addresses == ["10.77.0.11", "fd77::b"]
    assert hv4.addresses == ["10.77.0.12"]
    assert "inet6" not in hv4.run(["ip", "addr", "show", "dev", "eth0"]).stdout
    assert hv6.addresses == ["fd77::d"]
    assert "inet " not in hv6.run(["ip", "addr", "show", "dev", "eth0"]).stdout
    assert hll.addresses == ["10.77.0.14"]
    v6_ll, ll_ll = hv6.ipv6_link_local(), hll.ipv6_link_local()

    work = private_dir("meshcc-mixed-")
    dual = Meshd(work, hdual, "--jobs", "2", name="dual")
    v4 = Meshd(work, hv4, "--jobs", "2", name="v4")
    v6 = Meshd(work, hv6, "--jobs", "2", name="v6")
    ll = Meshd(work, hll, "--jobs", "2", name="ll")
    daemons = [dual, v4, v6, ll]
    try:
        for m in daemons:
            m.start(wait=False)
        for m in daemons:
            m.wait_ready()

        # 1. What each announces: IPv4 first, then IPv6 (routable, then link-local).
        st = dual.status()
        assert st["discovery"] is True, st
        assert st["addresses"][:2] == ["10.77.0.11", "fd77::b"], st
        assert hdual.ipv6_link_local() in st["addresses"], st
        assert "over IPv4+IPv6 on eth0" in dual.log_text(), dual.log_text()[-2000:]
        assert v4.status()["addresses"] == ["10.77.0.12"]
        assert "over IPv4 on eth0" in v4.log_text()
        assert v6.status()["addresses"] == ["fd77::d", v6_ll]
        assert "over IPv6 on eth0" in v6.log_text()
        assert ll.status()["addresses"] == ["10.77.0.14", ll_ll]

        # 2. Each lists the peers it shares a family with, by an address it can dial.
        expected = {
            dual: {"10.77.0.12", "fd77::d", "10.77.0.14"},
            v4: {"10.77.0.11", "10.77.0.14"},
            v6: {"fd77::b", f"{ll_ll}%eth0"},
            ll: {"10.77.0.11", "10.77.0.12", f"{v6_ll}%eth0"},
        }
        for me, want in expected.items():
            netns.wait_for(_lists(me, want), 30, 0.2, f"{me.name} to list {sorted(want)}")
        # The IPv6-only box sees no IPv4 address of its dual-stack peer at all (it could
        # not dial it), the IPv4-LAN box no ULA (no route to fd77::/64 there).
        seen = {tuple(v["peer"]["addresses"]) for v in v6.hosts()["verdicts"]}
        assert not any("." in a for addrs in seen for a in addrs), seen
        seen = {tuple(v["peer"]["addresses"]) for v in ll.hosts()["verdicts"]}
        assert not any(a.startswith("fd77:") for addrs in seen for a in addrs), seen
        js = json.loads(dual.cli("hosts", "--cc", "gcc", "--json", inside=True).stdout)
        assert "[fd77::d]:3632/2,lzo" in js["line"], js["line"]
        # An IPv6-only box without a daemon browses by itself (over IPv6) and finds the
        # same: dual at its ULA, v6, and ll by link-local; never v4.
        env = dict(os.environ, MESHCC_SOCKET=str(work / "nothing.sock"))
        p = hnod.run([sys.executable, "-m", "meshcc", "hosts", "--cc", "gcc"], env=env)
        assert p.returncode == 0 and "browsed the network" in p.stderr, p.stderr
        assert _hosts_of(p.stdout) == {"fd77::b", "fd77::d", f"{ll_ll}%eth0"}, p.stdout

        # The live-load channel reaches each peer over the family picked for it.
        def has_loads(me: Meshd, n: int) -> bool:
            return len(me.status().get("loads", [])) >= n

        netns.wait_for(lambda: has_loads(dual, 3), 20, 0.2, "dual to get 3 peers' live load")
        netns.wait_for(lambda: has_loads(v6, 2), 20, 0.2, "v6 to get 2 peers' live load")

        # 3. Compiles across the families.
        # With v4 and ll gone (goodbye), a lease from v6 can only be dual's and one from
        # dual only v6's (the broker would otherwise be free to pick ll for v6).
        assert v4.stop() == 0 and ll.stop() == 0
        netns.wait_for(_lists(dual, {"fd77::d"}), 15, 0.2, "dual to drop v4 and ll")
        netns.wait_for(_lists(v6, {"fd77::b"}), 15, 0.2, "v6 to drop ll")
        _compile(hv6, v6, dual, "fd77::b", tmp_path / "v6-dual", distcc=False)
        _compile(hdual, dual, v6, "fd77::d", tmp_path / "dual-v6", distcc=True)
        # ll -> v6 over link-local: restart ll alone beside v6 and dual.
        ll2 = Meshd(work, hll, "--jobs", "2", name="ll2")
        daemons.append(ll2)
        ll2.start()
        netns.wait_for(
            _lists(ll2, {"10.77.0.11", f"{v6_ll}%eth0"}), 30, 0.2, "ll2 to list dual and v6"
        )
        dual.stop()
        netns.wait_for(_lists(ll2, {f"{v6_ll}%eth0"}), 15, 0.2, "ll2 to drop dual")
        _compile(hll, ll2, v6, f"{v6_ll}%eth0", tmp_path / "ll-v6", distcc=False)
    finally:
        for m in daemons:
            m.stop()
        for m in daemons:
            if "Traceback" in m.log_text():
                pytest.fail(f"{m.name} logged a traceback:\n{m.log_text()}")
        shutil.rmtree(work, ignore_errors=True)


def test_dual_stack_falls_back_to_ipv4_mdns_when_ipv6_cannot_open(lan: Callable[..., Lan]) -> None:
    """python-zeroconf refuses the IPv6 entry (an interface index that does not exist):
    discovery still runs, over IPv4, and says why, instead of going off altogether."""
    net = lan()
    a, b = net.add_host("a"), net.add_host("b", stack="ipv4")
    code = """
import asyncio, json, sys
from meshcc.mesh.discovery import Discovery, ServiceSeen
from meshcc.mesh.records import ServiceSpec

async def main():
    seen = asyncio.Event()
    def on(e):
        if isinstance(e, ServiceSeen) and e.name.startswith("b."):
            seen.set()
    d = Discovery(["10.77.0.11"], on, interfaces=["10.77.0.11", 9999],
                  browse_types=["_mcctest._tcp.local."])
    await d.start([])
    await asyncio.wait_for(seen.wait(), 20)
    print(json.dumps({"interfaces": d.interfaces, "warnings": d.warnings}))
    await d.stop()

asyncio.run(main())
"""
    peer = """
import asyncio
from meshcc.mesh.discovery import Discovery
from meshcc.mesh.records import ServiceSpec

async def main():
    d = Discovery(["10.77.0.12"], lambda e: None, browse_types=[])
    spec = ServiceSpec("_mcctest._tcp.local.", "b._mcctest._tcp.local.", "b-x.local.", 3632, {})
    await d.start([spec])
    print("up", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""
    p = b.python_popen(peer, stdout=subprocess.PIPE, text=True)
    assert netns.readline(p, 20).strip() == "up"
    out = a.python(code, timeout=40)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["interfaces"] == ["10.77.0.11"], got
    assert len(got["warnings"]) == 1 and "mDNS over IPv6 failed" in got["warnings"][0], got
    p.kill()
    p.wait()
