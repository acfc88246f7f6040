"""An IPv6-only LAN: real ``meshcc daemon`` processes find each other by mDNS over IPv6,
verify each other over IPv6 and take compiles over IPv6 (issue 11).

The hosts are network namespaces on one bridge (tests/netns.py ``Lan(ipv6_only=True)``):
eth0 has no IPv4 address and no IPv4 route at all, only a ULA (``fd77::N/64``) next to
its fe80:: address, or the fe80:: address alone (a link-local-only LAN). So anything
that still needed IPv4 (the mDNS sockets, the compile listener, the liveness probes, the
hosts line) fails here instead of passing by accident.

* ULA LAN, three hosts: ``a`` runs with ``-i eth0`` (which used to abort: "no IPv4
  address"), ``b`` and ``c`` choose their interface by default. Each lists the other two as
  ``[fd77::N]:3632/LIMIT,lzo`` (and ``meshcc hosts`` on a fourth box without a daemon
  browses them over IPv6); a compile from ``a`` through ``meshcc-gcc`` (leases) and
  through stock distcc 3.4 (``DISTCC_HOSTS`` from ``meshcc hosts``) runs on a peer
  (DISTCC_FALLBACK=0) and gives the same bytes as a local compile; ``b`` stopped (goodbye)
  and ``c`` killed (no goodbye: the IPv6 probe notices) drop out of ``a``'s line.
* Link-local-only LAN, two hosts: the hosts line names the peer as ``[fe80::…%eth0]``
  (the scope is required to dial it), and meshcc-gcc and stock distcc compile through it.
  A second link straight between the two (``Lan.cable``) carries the same fe80::/64: a
  compile arriving over it is refused, since only the mesh's own link is allowed.

Waits are bounded against hangs only; nothing is timed.
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
struct point { int x, y; };
static int dot(struct point a, struct point b) { return a.x * b.x + a.y * b.y; }
int main(void) {
    struct point p = {3, 4}, q = {5, -2};
    printf("%d\\n", dot(p, q));
    return 0;
}
"""


def _hosts_of(line: str) -> set[str]:
    """``[fd77::c]:3632/4,lzo [fe80::1%eth0]:3632/2 localhost/2`` -> the bracketed hosts."""
    return {tok[1 : tok.index("]")] for tok in line.split() if tok.startswith("[")}


def _ok_jobs(d: Meshd) -> int:
    return sum(1 for j in parse_job_summaries(d.log_text()) if j.result == "COMPILE_OK")


def _client_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    (tmp / "distcc-dir").mkdir(exist_ok=True)
    env.update(
        DISTCC_DIR=str(tmp / "distcc-dir"),
        DISTCC_FALLBACK="0",  # a compile that cannot go remote fails instead of going local
        DISTCC_VERBOSE="1",
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
    )
    return env


def _no_ipv4(host: netns.Host) -> None:
    """The premise: not one IPv4 address or route on the host's eth0."""
    out = host.run(["ip", "-4", "addr", "show", "dev", "eth0"])
    assert out.returncode == 0 and "inet " not in out.stdout, out.stdout
    routes = host.run(["ip", "-4", "route", "show", "dev", "eth0"])
    assert routes.stdout.strip() == "", routes.stdout


def _compile_both_ways(
    client: netns.Host, daemon: Meshd, peers: list[Meshd], want: set[str], tmp: Path
) -> None:
    """meshcc-gcc (leases from ``daemon``) and stock distcc (DISTCC_HOSTS from ``meshcc
    hosts``, localhost removed) each compile ``SOURCE`` on a peer; objects equal a local
    compile's."""
    tmp.mkdir(exist_ok=True)
    src = tmp / "point.c"
    src.write_text(SOURCE)
    env = _client_env(tmp)
    local = client.run(["gcc", "-O2", "-c", str(src), "-o", str(tmp / "local.o")], env=env)
    assert local.returncode == 0, local.stderr
    reference = (tmp / "local.o").read_bytes()

    before = sum(_ok_jobs(p) for p in peers)
    res = client.run(
        ["meshcc-gcc", "-O2", "-c", str(src), "-o", str(tmp / "mesh.o")],
        env=dict(env, MESHCC_SOCKET=str(daemon.socket)),
    )
    assert res.returncode == 0, res.stderr + daemon.log_text()[-4000:]
    leased = [ln for ln in res.stderr.splitlines() if " leased " in ln]
    assert leased and any(f"leased [{a}]:" in leased[-1] for a in want), res.stderr
    assert (tmp / "mesh.o").read_bytes() == reference, "meshcc-gcc object differs"
    netns.wait_for(lambda: sum(_ok_jobs(p) for p in peers) > before, 10, what="peer job log")

    line = daemon.cli("hosts", "--cc", "gcc", inside=True).stdout.strip()
    remote = " ".join(tok for tok in line.split() if not tok.startswith("localhost"))
    assert _hosts_of(remote) == want, line
    before = sum(_ok_jobs(p) for p in peers)
    res = client.run(
        ["distcc", "gcc", "-O2", "-c", str(src), "-o", str(tmp / "distcc.o")],
        env=dict(env, DISTCC_HOSTS=remote),
    )
    assert res.returncode == 0, res.stderr
    assert (tmp / "distcc.o").read_bytes() == reference, "distcc object differs"
    netns.wait_for(lambda: sum(_ok_jobs(p) for p in peers) > before, 10, what="distcc's job")


def _lists(me: Meshd, want: set[str]) -> Callable[[], bool]:
    def check() -> bool:
        return _hosts_of(me.hosts()["line"]) == want

    return check


def test_ipv6_only_ula_lan(lan: Callable[..., Lan], tmp_path: Path) -> None:
    net = lan(ipv6_only=True)
    ha, hb, hc, hd = (net.add_host(n) for n in "abcd")  # d: no daemon
    for h in (ha, hb, hc, hd):
        _no_ipv4(h)
    work = private_dir("meshcc-v6-")
    a = Meshd(work, ha, "-i", "eth0", "--jobs", "2", name="a")
    b = Meshd(work, hb, "--jobs", "3", name="b")
    c = Meshd(work, hc, "--jobs", "2", name="c")
    daemons = [a, b, c]
    addr = {"a": ha.address, "b": hb.address, "c": hc.address}
    try:
        for m in daemons:
            m.start(wait=False)
        for m in daemons:
            m.wait_ready()

        # 1. Discovery is on, over IPv6, announcing the ULA (and the fe80:: address).
        for m, h in ((a, ha), (b, hb), (c, hc)):
            st = m.status()
            assert st["discovery"] is True, st
            assert st["interfaces"] == ["eth0"], st
            assert st["addresses"][0] == h.address and h.ipv6_link_local() in st["addresses"]
            assert "fd77::/64" in st["allowed"] and "fe80::%eth0/64" in st["allowed"], st

        # 2. Each lists the other two, in distcc's grammar, never itself.
        for me in daemons:
            want = {addr[o] for o in "abc" if o != me.name}
            netns.wait_for(_lists(me, want), 30, 0.2, f"{me.name} to list {sorted(want)}")
            js = json.loads(me.cli("hosts", "--cc", "gcc", "--json", inside=True).stdout)
            assert _hosts_of(js["line"]) == want, js
            assert f"[{addr['b']}]:3632/3,lzo" in js["line"] or me is b, js["line"]
        p = a.cli("hosts", "--cc", "gcc", inside=True)
        assert p.returncode == 0 and p.stdout.strip().endswith(" localhost/2"), p
        assert "peer" in a.log_text() and "is up" in a.log_text()  # verified by a probe

        # A box without a daemon: `meshcc hosts` browses over IPv6 by itself.
        env = dict(os.environ, MESHCC_SOCKET=str(work / "nothing.sock"))
        p = hd.run([sys.executable, "-m", "meshcc", "hosts", "--cc", "gcc"], env=env)
        assert p.returncode == 0 and "browsed the network" in p.stderr, p.stderr
        assert _hosts_of(p.stdout) == set(addr.values()), p.stdout

        # 3. Compiles from a, over IPv6, on b or c.
        _compile_both_ways(ha, a, [b, c], {addr["b"], addr["c"]}, tmp_path)

        # 4. b stops (goodbye over IPv6 mDNS): gone from a's and c's lines.
        assert b.stop() == 0
        for me, left in ((a, {addr["c"]}), (c, {addr["a"]})):
            netns.wait_for(_lists(me, left), 15, 0.2, f"{me.name} to drop b")
        # 5. c is killed (no goodbye): a's IPv6 liveness probe notices.
        c.kill9()
        netns.wait_for(_lists(a, set()), 20, 0.2, "a to drop the killed c")
        assert "is not responding" in a.log_text(), a.log_text()[-3000:]
    finally:
        for m in daemons:
            m.stop()
        for m in daemons:
            if "Traceback" in m.log_text():
                pytest.fail(f"{m.name} logged a traceback:\n{m.log_text()}")
        shutil.rmtree(work, ignore_errors=True)


def test_ipv6_link_local_only_lan(lan: Callable[..., Lan], tmp_path: Path) -> None:
    net = lan(ipv6_only=True, ipv6_subnet=None)
    ha, hb = net.add_host("a"), net.add_host("b")
    for h in (ha, hb):
        _no_ipv4(h)
        assert h.address.startswith("fe80:")
    a_eth1, _ = net.cable(ha, hb)  # a second link between a and b, off the LAN
    work = private_dir("meshcc-v6ll-")
    a = Meshd(work, ha, "-i", "eth0", name="a")
    b = Meshd(work, hb, "-i", "eth0", "--jobs", "2", name="b")
    try:
        a.start(wait=False)
        b.start()
        a.wait_ready()
        assert a.status()["allowed"][-1:] == ["fe80::%eth0/64"], a.status()
        scoped = {f"{hb.address}%eth0"}
        netns.wait_for(_lists(a, scoped), 30, 0.2, "a to list b by its scoped fe80:: address")
        assert f"[{hb.address}%eth0]:3632/2,lzo" in a.hosts()["line"]
        _compile_both_ways(ha, a, [b], scoped, tmp_path / "ab")

        # fe80::/64 is on every link: a admits b's compiles over the LAN (eth0), and
        # refuses the same request arriving over another link (a cable a-b, eth1).
        (tmp_path / "ba").mkdir()
        env = _client_env(tmp_path / "ba")
        src = tmp_path / "ab" / "point.c"

        def distcc_to(hosts: str) -> subprocess.CompletedProcess[str]:
            argv = ["distcc", "gcc", "-c", str(src), "-o", str(tmp_path / "ba" / "p.o")]
            return hb.run(argv, env=dict(env, DISTCC_HOSTS=hosts))

        before = _ok_jobs(a)
        res = distcc_to(f"[{ha.address}%eth0]:3632/2,lzo")
        assert res.returncode == 0, res.stderr + a.log_text()[-3000:]
        netns.wait_for(lambda: _ok_jobs(a) > before, 10, what="a's job from b over eth0")
        res = distcc_to(f"[{a_eth1}%eth1]:3632/2,lzo")
        assert res.returncode != 0, res.stderr

        def denied() -> bool:  # b's source address on eth1 is the kernel's choice
            lines = a.log_text().splitlines()
            return any("%eth1]:" in ln and "denied by access list" in ln for ln in lines)

        try:
            netns.wait_for(denied, 10, what="a to deny b's compile from the other link")
        except TimeoutError as e:
            pytest.fail(f"{e}\n{res.stderr}\n{a.log_text()[-3000:]}")
    finally:
        for m in (a, b):
            m.stop()
        for m in (a, b):
            if "Traceback" in m.log_text():
                pytest.fail(f"{m.name} logged a traceback:\n{m.log_text()}")
        shutil.rmtree(work, ignore_errors=True)


def test_daemons_started_during_dad_still_find_each_other(lan: Callable[..., Lan]) -> None:
    """A daemon started while its IPv6 addresses are still tentative (boot, link-up): a
    tentative address cannot be bound, so mDNS opened at once would stay mute for good."""
    net = lan(ipv6_only=True, dad_transmits=3)  # ~3 s of DAD after each add_host
    ha, hb = net.add_host("a"), net.add_host("b")
    work = private_dir("meshcc-v6dad-")
    a = Meshd(work, ha, "-i", "eth0", name="a")
    b = Meshd(work, hb, "-i", "eth0", name="b")
    try:
        for h in (ha, hb):  # the premise: DAD is still running as the daemons start
            out = h.run(["ip", "-6", "addr", "show", "dev", "eth0", "tentative"]).stdout
            assert h.address in out, out
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        netns.wait_for(_lists(a, {hb.address}), 30, 0.2, "a to list b")
        netns.wait_for(_lists(b, {ha.address}), 30, 0.2, "b to list a")
    finally:
        for m in (a, b):
            m.stop()
        for m in (a, b):
            if "Traceback" in m.log_text():
                pytest.fail(f"{m.name} logged a traceback:\n{m.log_text()}")
        shutil.rmtree(work, ignore_errors=True)
