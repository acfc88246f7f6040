"""A daemon on a box with no compiler (a LiveCD before the stage3's gcc exists) is a
*mesh-only* node: real daemons on a LAN of network namespaces (tests/netns.py).

* live — ``meshcc daemon`` with a PATH holding only python (no gcc, cc, as): it must start,
  serve ``meshcc.pyz`` on its status port, keep ``--write-hosts`` listing the peer, lease
  the peer to a client's own gcc (a real gcc under a scratch root, not on its PATH), and
  announce no compile service: no port 3632, no ``_distcc._tcp`` record.
* b — a daemon with the real gcc: ``meshcc hosts`` never lists live, and ``--explain`` says
  why ("offers no compilers").
* f — no daemon: browses ``_distcc._tcp`` and ``_meshcc._tcp`` as a stock client would.

Waits are bounds against hangs, not timing assertions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from meshcc.wire import control
from meshd import (
    BareMeshd,
    ControlConn,
    Meshd,
    bare_path,
    browse_names,
    private_dir,
    trusted_dir,
)
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

FETCH = r"""
import sys, urllib.request as u
base = f"http://{sys.argv[1]}:3633"
pyz = u.urlopen(base + "/meshcc.pyz", timeout=10).read()
open(sys.argv[2], "wb").write(pyz)
print(u.urlopen(base + "/meshcc.pyz.sha256", timeout=10).read().decode().split()[0])
"""


def _scratch_root_gcc() -> Path:
    """A real gcc (and the as it runs) under a scratch root, as a chroot's /usr/bin holds
    them: in a root-owned 0755 tree, so the daemon's trusted-path rule accepts it."""
    usr_bin = trusted_dir("meshcc-scratchroot-") / "usr" / "bin"
    usr_bin.mkdir(mode=0o755, parents=True)
    for d in (usr_bin, usr_bin.parent):
        d.chmod(0o755)
    for tool in ("gcc", "as"):
        real = shutil.which(tool)
        assert real is not None, f"{tool} is needed"
        shutil.copy2(os.path.realpath(real), usr_bin / tool)
    return usr_bin / "gcc"


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_a_daemon_without_a_compiler_is_a_useful_mesh_only_node(
    lan: Callable[..., Lan], tmp_path: Path
) -> None:
    net = lan()
    work = private_dir("meshcc-nocc-")
    hosts_file = work / "live" / "distcc" / "hosts"
    client_gcc = _scratch_root_gcc()
    hl, hb, hf = (net.add_host(n) for n in ("live", "b", "f"))
    iface = ("--interface", "eth0")
    live = BareMeshd(
        bare_path(work), work, hl, *iface, "--write-hosts", str(hosts_file), name="live"
    )
    b = Meshd(work, hb, *iface, "--jobs", "1", name="b")
    daemons = [live, b]
    try:
        for m in daemons:
            m.start(wait=False)
        for m in daemons:
            m.wait_ready()
        assert "mesh-only node, offering no compiles" in live.log_text()
        assert "--compiler PATH" in live.log_text()

        # No compile service: nothing listens on 3632, and the status says 0 jobs.
        assert hb.probe(hl.address, 3632) == "refused"
        assert live.status()["jobs"] == 0

        # meshcc.pyz from its status port, intact and runnable.
        pyz = tmp_path / "meshcc.pyz"
        p = hf.python(FETCH, hl.address, pyz)
        assert p.returncode == 0, p.stderr
        assert hashlib.sha256(pyz.read_bytes()).hexdigest() == p.stdout.strip()
        p = hf.run([sys.executable, pyz, "--version"])
        assert p.returncode == 0 and p.stdout.startswith("meshcc "), p.stdout + p.stderr

        # --write-hosts follows the mesh (no cc here: no compiler check), peer b listed.
        netns.wait_for(
            lambda: (
                _lines(hosts_file) == [f"{hb.address}:3632/1,lzo localhost/2"]
                or _lines(hosts_file) == [f"{hb.address}:3632/1 localhost/2"]
            ),
            20,
            what="live's hosts file to list b",
        )
        # `meshcc hosts` on live: no cc to check, said on stderr, b listed.
        p = hl.run(
            ["/usr/bin/env", f"PATH={live.bare_path}", sys.executable, "-m", "meshcc", "hosts"],
            env=dict(os.environ, MESHCC_SOCKET=str(live.socket)),
        )
        assert p.returncode == 0, p.stderr
        assert "no `cc` on PATH" in p.stderr and hb.address in p.stdout
        # `meshcc doctor` there names the node for what it is and points at the chroot.
        p = hl.run(
            ["/usr/bin/env", f"PATH={live.bare_path}", sys.executable, "-m", "meshcc", "doctor"],
            env=dict(os.environ, MESHCC_SOCKET=str(live.socket)),
        )
        assert "a mesh-only node" in p.stdout, p.stdout
        assert "--cc /mnt/gentoo/usr/bin/cc" in p.stdout, p.stdout

        # b never lists live; --explain says why.
        def live_seen() -> dict[str, object] | None:
            for v in b.hosts(None)["verdicts"]:
                if hl.address in v["peer"]["addresses"]:
                    return v  # type: ignore[no-any-return]
            return None

        verdict = netns.wait_for(live_seen, 20, what="b to see live's announcement")
        assert not verdict["included"] and "offers no compilers" in str(verdict["reason"])
        for cc in (None, "gcc"):
            assert hl.address not in b.hosts(cc)["line"]
        p = b.cli("hosts", "--explain", inside=True)
        assert "offers no compilers" in p.stdout, p.stdout
        assert hl.address not in p.stdout.split("DISTCC_HOSTS:")[1]
        assert "is not responding" not in b.log_text()  # its closed port is never probed

        # Leases for a client's own gcc (under a scratch root, not on live's PATH): the
        # peer first (b has 1 slot), then this box's share: the client's gcc runs here.
        req = control.LeaseRequest("gcc", str(client_gcc), "x.c").to_message()
        with ControlConn(live.socket) as first, ControlConn(live.socket) as second:
            granted = first.ask(req)
            assert granted.get("ok") is True and granted["host"] == hb.address, granted
            local = second.ask(req)
            assert local.get("local") is True and local.get("hold") is True, local
            assert "this box's share" in str(local["reason"])
            assert live.status()["leases"] == 2

        # Stock distcc's view: no _distcc._tcp record of live (b's is there); live is
        # announced only as a meshcc node.
        live_id, b_id = live.status()["node"], b.status()["node"]
        names = browse_names(hf, "_distcc._tcp.local.", 4)
        assert any(b_id in n for n in names), names
        assert not any(live_id in n for n in names), names
        names = browse_names(hf, "_meshcc._tcp.local.", 3)
        assert any(live_id in n for n in names), names
    finally:
        for m in daemons:
            m.stop()
        for m in daemons:
            if "Traceback" in m.log_text():
                pytest.fail(f"{m.name} logged a traceback:\n{m.log_text()}")
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_an_explicit_compiler_that_fails_stays_fatal(tmp_path: Path) -> None:
    """Only discovery finding nothing makes a mesh-only node: --compiler must work."""
    d = Meshd(private_dir("meshcc-nocc-x-"), None, "--compiler", "/nonexistent/gcc")
    p = subprocess.run(d.argv(), env=d.env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 110, p.stderr
    assert "/nonexistent/gcc" in p.stderr and "Traceback" not in p.stderr
