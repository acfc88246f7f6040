"""Proves the namespace LAN harness (tests/netns.py) before the mesh tests rely on it.

Everything happens inside namespaces the tests create; nothing can route out (no default
route), and the root namespace gains no interface.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

import netns
from netns import Host, Lan, readline, wait_for

# Explicit import so this module also works before conftest.py loads the plugin; harmless after.

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

LanFactory = Callable[..., Lan]

# A one-connection-at-a-time TCP echo server: argv = address port; prints "ready" once listening.
ECHO_SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
"""

ECHO_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(sys.argv[3].encode())
    print(s.recv(4096).decode())
"""

SERVICE_TYPE = "_mcctest._tcp.local."

# Registers one service on the given interface IP, prints "registered", stays until stdin closes.
ZC_REGISTER = """
import asyncio, sys
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

async def main() -> None:
    ip, name, type_ = sys.argv[1], sys.argv[2], sys.argv[3]
    azc = AsyncZeroconf(interfaces=[ip])
    info = ServiceInfo(type_, f"{name}.{type_}", port=3632, parsed_addresses=[ip],
                       server=f"{name}.local.", properties={"harness": "1"})
    # Names are unique by construction, so skip the ~1.2 s of probing.
    await azc.async_register_service(info, cooperating_responders=True)
    print("registered", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await azc.async_unregister_all_services()
    await azc.async_close()

asyncio.run(main())
"""

# Browses with InterfaceChoice.Default (needs the harness's 224.0.0.0/4 route), resolves the wanted
# instance and prints it as JSON; exits 1 if not found within the bound.
ZC_BROWSE = """
import asyncio, json, sys
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

async def main() -> int:
    type_, want, bound = sys.argv[1], sys.argv[2], float(sys.argv[3])
    azc = AsyncZeroconf(interfaces=InterfaceChoice.Default, ip_version=IPVersion.V4Only)
    seen = asyncio.get_running_loop().create_future()

    def on_change(zeroconf, service_type, name, state_change):
        if name == want and state_change is not ServiceStateChange.Removed and not seen.done():
            seen.set_result(name)

    browser = AsyncServiceBrowser(azc.zeroconf, [type_], handlers=[on_change])
    try:
        await asyncio.wait_for(seen, bound)
        info = AsyncServiceInfo(type_, want)
        if not await info.async_request(azc.zeroconf, 3000):
            return 2
        print(json.dumps({"addresses": info.parsed_addresses(), "port": info.port,
                          "props": info.decoded_properties}))
        return 0
    except asyncio.TimeoutError:
        return 1
    finally:
        await browser.async_cancel()
        await azc.async_close()

sys.exit(asyncio.run(main()))
"""


def start_echo(host: Host, port: int = 7007, address: str | None = None) -> subprocess.Popen[str]:
    """Start the echo server on `host` and wait (bounded) for its "ready" line."""
    proc = host.python_popen(
        ECHO_SERVER, address or host.address, str(port), stdout=subprocess.PIPE, text=True
    )
    assert readline(proc).strip() == "ready", "echo server did not start"
    return proc


def echo_in_process(client: Host, address: str, port: int = 7007, payload: bytes = b"hi") -> bytes:
    """Round-trip `payload` through the echo server using a socket made in `client`'s namespace."""
    with client.connect(address, port, timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def test_hosts_talk_over_the_bridge_and_root_namespace_is_untouched(lan: LanFactory) -> None:
    root_links = socket.if_nameindex()
    net = lan()
    a, b = net.add_host("a"), net.add_host("b")
    assert (a.address, b.address) == ("10.77.0.11", "10.77.0.12")
    assert socket.if_nameindex() == root_links  # no veth end, no bridge in the root namespace

    start_echo(a)
    b.wait_tcp(7007, a.address)
    # ...from a process in b's namespace (what daemons will do)...
    out = b.python(ECHO_CLIENT, a.address, "7007", "across-the-bridge", check=True)
    assert out.stdout.strip() == "across-the-bridge"
    # ...and from the test process through a socket living in b's namespace.
    assert echo_in_process(b, a.address, payload=b"in-process") == b"in-process"

    if any(
        os.access(os.path.join(d, "ping"), os.X_OK) for d in os.environ.get("PATH", "").split(":")
    ):
        assert b.run(["ping", "-c1", "-W1", a.address]).returncode == 0


def test_nothing_routes_out_of_the_lan(lan: LanFactory) -> None:
    a = lan().add_host("a")
    routes = a.run(["ip", "route", "show"], check=True).stdout
    assert "default" not in routes
    assert "224.0.0.0/4 dev eth0" in routes
    # connect() to an off-LAN address fails in the routing lookup: nothing is sent anywhere.
    out = a.python(
        "import socket\n"
        "try:\n    socket.create_connection(('10.99.99.99', 9), timeout=2)\n"
        "except OSError as e:\n    print(e.errno)\n",
        check=True,
    )
    assert int(out.stdout) == errno.ENETUNREACH
    assert a.probe("10.99.99.99", 9) == "unreachable"


def test_second_subnet_shares_the_wire_but_not_the_routes(lan: LanFactory) -> None:
    net = lan()
    a = net.add_host("a")
    other = net.add_host("other", "10.78.0.11/24")
    both = net.add_host("both", extra_addresses=["10.78.0.12/24"])
    assert both.addresses == ["10.77.0.12", "10.78.0.12"]
    start_echo(a)
    start_echo(other, address="10.78.0.11")
    assert other.probe(a.address, 7007) == "unreachable"
    assert echo_in_process(both, a.address) == b"hi"
    assert echo_in_process(both, other.address) == b"hi"


def test_ipv6_link_local_works_without_waiting_for_dad(lan: LanFactory) -> None:
    net = lan()
    a, b = net.add_host("a"), net.add_host("b")
    ll = a.ipv6_link_local()
    assert ll.startswith("fe80:") and b.ifindex == 2  # lo is 1 in a fresh namespace
    start_echo(a, address="::")
    scoped = f"{ll}%eth0"  # scope = the *connecting* host's interface
    assert (
        wait_for(lambda: echo_in_process(b, scoped, payload=b"v6"), timeout=10, what="v6 echo")
        == b"v6"
    )


def test_zeroconf_discovery_across_the_bridge(lan: LanFactory) -> None:
    net = lan()
    a, b = net.add_host("a"), net.add_host("b")
    outsider = net.add_host("outsider", "10.78.0.11/24")  # same wire, other subnet
    reg = a.python_popen(
        ZC_REGISTER,
        a.address,
        "node-a",
        SERVICE_TYPE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert readline(reg, timeout=15).strip() == "registered"

    want = f"node-a.{SERVICE_TYPE}"
    browsers = {
        h.name: h.python_popen(
            ZC_BROWSE,
            SERVICE_TYPE,
            want,
            "10",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in (b, outsider)
    }
    for name, proc in browsers.items():
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"browser on {name} failed ({proc.returncode}): {err}"
        found = json.loads(out)
        assert found == {"addresses": [a.address], "port": 3632, "props": {"harness": "1"}}, name

    reg.communicate(input="", timeout=10)  # graceful goodbye
    assert reg.returncode == 0


def test_link_down_and_partitions_cut_the_path_and_heal(lan: LanFactory) -> None:
    net = lan()
    a, b, c = (net.add_host(n) for n in "abc")
    start_echo(a)
    b.wait_tcp(7007, a.address)

    a.link_down()  # pulled cable: the switch-side port goes down
    assert b.probe(a.address, 7007, timeout=0.3) in ("timeout", "unreachable")
    a.link_up()
    b.wait_tcp(7007, a.address)

    a.link_down(side="host")  # eth0 itself down: the kernel drops a's routes
    assert b.probe(a.address, 7007, timeout=0.3) in ("timeout", "unreachable")
    a.link_up(side="host")
    b.wait_tcp(7007, a.address)
    assert "224.0.0.0/4 dev eth0" in a.run(["ip", "route"], check=True).stdout

    net.partition([a], [b])  # c stays on the original segment
    assert b.probe(a.address, 7007, timeout=0.3) in ("timeout", "unreachable")
    assert c.probe(a.address, 7007, timeout=0.3) in ("timeout", "unreachable")
    net.partition([a, c], [b])
    c.wait_tcp(7007, a.address)
    net.heal()
    b.wait_tcp(7007, a.address)
    assert echo_in_process(b, a.address) == b"hi"


def test_kill_all_kills_every_process_in_the_namespace(lan: LanFactory) -> None:
    net = lan()
    a, b = net.add_host("a"), net.add_host("b")
    mine = a.popen(["sleep", "60"])
    # A grandchild that was never ours to reap (double fork).
    a.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 &"], check=True)
    survivor = b.popen(["sleep", "60"])
    wait_for(lambda: len(a.pids()) == 2, timeout=5, what="two sleeps in a")
    a.kill_all()
    assert a.pids() == []
    assert mine.returncode is not None
    assert survivor.poll() is None and b.pids() == [survivor.pid]


def test_teardown_removes_everything_even_when_the_body_raises() -> None:
    with Lan() as net:
        a = net.add_host("a")
        proc = a.popen(["sleep", "60"])
        names = net.namespaces
    assert not set(names) & set(netns.list_namespaces())
    assert proc.returncode is not None

    with pytest.raises(RuntimeError, match="boom"):
        with Lan() as net:
            net.add_host("a")
            net.add_host("b")
            names = net.namespaces
            raise RuntimeError("boom")
    assert not set(names) & set(netns.list_namespaces())
    net.close()  # idempotent


def test_add_host_validates_names_and_addresses(lan: LanFactory) -> None:
    net = lan()
    net.add_host("a")
    for bad in ("a", "A", "-x", "x" * 21, "a_b"):
        with pytest.raises(ValueError):
            net.add_host(bad)
    with pytest.raises(ValueError):
        net.add_host("dup", "10.77.0.11/24")
    with pytest.raises(ValueError):
        net.add_host("public", "8.8.8.8/24")


def test_sweep_removes_only_namespaces_of_dead_owners() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{netns.PREFIX}{dead.pid}x0-zz"
    live = f"{netns.PREFIX}{os.getpid()}x999999"
    try:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        removed = netns.sweep_stale()
        assert stale in removed and not netns.ns_exists(stale)
        assert netns.ns_exists(live)
    finally:
        for ns in (stale, live):
            netns.delete_namespace(ns)
