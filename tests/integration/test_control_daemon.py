"""The control socket of a real daemon (the codec and the lease broker: unit/test_control.py).

Daemons here either listen on loopback only (discovery off: no multicast at all) or run
inside a LAN of network namespaces (``lan`` fixture). Waits are bounded; nothing asserts
on elapsed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

import netns
from meshcc.wire import control
from meshd import ControlConn, Meshd, private_dir, request
from netns import Lan

GCC = "/usr/bin/gcc"


# ---------------------------------------------------------------- a daemon on loopback


@pytest.fixture
def loop_daemon() -> Iterator[Meshd]:
    work = private_dir("meshcc-ctl-")
    d = Meshd(work, None, port=_free_port())
    try:
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_hosts_and_local_lease_with_discovery_off(loop_daemon: Meshd) -> None:
    st = loop_daemon.status()
    assert st["ok"] is True and st["discovery"] is False
    assert "loopback" in st["off_reason"]
    for key in ("version", "node", "interfaces", "allowed", "peers", "jobs", "running"):
        assert key in st
    assert st["peers"] == 0 and st["running"] == 0
    assert os.stat(loop_daemon.socket).st_mode & 0o777 == 0o666  # any local user
    assert os.stat(loop_daemon.socket.parent).st_mode & 0o777 == 0o755

    hosts = loop_daemon.hosts("gcc")
    assert hosts["ok"] is True and hosts["line"] == "" and hosts["verdicts"] == []
    assert hosts["status"]["discovery"] is False

    reply = request(loop_daemon.socket, control.LeaseRequest("gcc", GCC, "a.c").to_message())
    assert reply["ok"] is False and reply["local"] is True and "discovery is off" in reply["reason"]
    reply = request(
        loop_daemon.socket, control.LeaseRequest("true", "/bin/true", "a.c").to_message()
    )
    assert reply["local"] is True and "not a usable gcc" in reply["reason"]
    reply = request(
        loop_daemon.socket, control.LeaseRequest("gcc", "/nonexistent/gcc", "a.c").to_message()
    )
    assert reply["local"] is True and "No such file" in reply["reason"]

    cli = loop_daemon.cli("hosts", "--cc", "gcc")
    assert cli.returncode == 1 and cli.stdout.strip() == ""
    assert "no peers: discovery is off" in cli.stderr
    cli = loop_daemon.cli("hosts", "--json")
    assert cli.returncode == 1 and json.loads(cli.stdout)["status"]["discovery"] is False
    cli = loop_daemon.cli("hosts", "--explain")
    assert "discovery: off" in cli.stdout and "(no peers seen)" in cli.stdout


def test_bad_messages_close_only_that_connection(loop_daemon: Meshd) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:  # garbage
        s.settimeout(10)
        s.connect(str(loop_daemon.socket))
        s.sendall(b"\xc1\xc1\xc1")
        r = control.MessageReader()
        r.feed(s.recv(65536))
        assert "malformed" in r.next_message()["error"]  # type: ignore[index]
        assert s.recv(65536) == b""
    with socket.socket(socket.AF_UNIX) as s:  # oversized: 2 MiB string announced
        s.settimeout(10)
        s.connect(str(loop_daemon.socket))
        try:
            s.sendall(b"\x81\xa2op\xdb" + (2 << 20).to_bytes(4, "big") + b"x" * (1 << 20) * 2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        assert b"larger than" in data or data == b""
    with ControlConn(loop_daemon.socket) as c:  # a known op with bad fields
        assert "unknown op" in c.ask({"op": "reboot"})["error"]
        assert c.recv() is None
    with ControlConn(loop_daemon.socket) as c:
        assert "without a lease" in c.ask(control.DoneMessage(True).to_message())["error"]
    # Still serving, several requests on one connection.
    with ControlConn(loop_daemon.socket) as c:
        assert c.ask(control.StatusRequest().to_message())["ok"] is True
        assert c.ask(control.HostsRequest().to_message())["ok"] is True
    netns.wait_for(lambda: "larger than" in loop_daemon.log_text(), 10, what="oversize logged")
    log = loop_daemon.log_text()
    assert "closing connection from pid" in log and "malformed" in log


# ---------------------------------------------------------------- leases on a netns LAN

LEASE_HOLDER = r"""
import socket, sys, time
from meshcc.wire import control
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
# local_ok=False: a counts its own cores as a candidate, and this lease must be b's slot
req = control.LeaseRequest("gcc", "/usr/bin/gcc", "held.c", local_ok=False)
s.sendall(control.encode(req.to_message()))
r = control.MessageReader()
while (m := r.next_message()) is None:
    r.feed(s.recv(65536))
print(m["peer"], flush=True)
time.sleep(600)
"""


@pytest.mark.netns
def test_leases_queue_fifo_and_a_killed_client_frees_its_slot(
    lan: Callable[..., Lan],
) -> None:
    net = lan()
    ha, hb = net.add_host("a"), net.add_host("b")
    work = private_dir("meshcc-lease-")
    a = Meshd(work, ha, "--interface", "eth0", name="a")
    b = Meshd(work, hb, "--interface", "eth0", "--jobs", "1", name="b")
    try:
        a.start(), b.start()
        netns.wait_for(
            lambda: f"{hb.address}:3632/1" in a.hosts()["line"],
            20,
            what="b (1 job) in a's hosts line",
        )

        holder = subprocess.Popen(
            [sys.executable, "-c", LEASE_HOLDER, str(a.socket)], stdout=subprocess.PIPE, text=True
        )
        try:
            peer = netns.readline(holder, 20).strip()
            assert peer.startswith("m:")
            with ControlConn(a.socket, timeout=30) as waiting:
                # local_ok=False: no share of a's own, so the request must queue for b
                waiting.send(
                    control.LeaseRequest("gcc", GCC, "queued.c", local_ok=False).to_message()
                )
                netns.wait_for(lambda: a.status()["queued"] == 1, 10, what="request queued")
                assert a.status()["leases"] == 1
                holder.send_signal(signal.SIGKILL)  # the kernel closes its socket
                holder.wait(10)
                grant = waiting.recv()  # bounded by the socket timeout
                assert grant is not None and grant["ok"] is True, grant
                assert grant["host"] == hb.address and grant["port"] == 3632
                assert grant["protocol"] == 2 and grant["compiler"] == "gcc"
                assert grant["peer"] == peer
                waiting.send(control.DoneMessage(True).to_message())
                assert waiting.recv() is None  # one lease per connection
            netns.wait_for(lambda: a.status()["leases"] == 0, 10, what="lease released")
        finally:
            if holder.poll() is None:
                holder.kill()
    finally:
        a.stop(), b.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_a_bad_message_inside_a_direct_put_is_answered_with_its_reason() -> None:
    """A direct_put whose parts are followed by another request: the client hears why the
    daemon closes (an ErrorReply), and the daemon logs a warning, not an internal error."""
    import socket

    from meshcc.wire import control

    work = private_dir("meshcc-ctl-direct-")
    cache = work / "d" / "cache"
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    d = Meshd(work, None, "--cache-dir", str(cache), port=_free_port())
    try:
        d.start()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(d.socket))
            put = control.DirectRequest("direct_put", "d" * 64, "x.c", b"x", True)
            s.sendall(control.encode(put.to_message()))
            s.sendall(control.encode({"op": "status"}))
            reader = control.MessageReader()
            while chunk := s.recv(65536):
                reader.feed(chunk)
            replies = list(reader)
        assert len(replies) == 1, replies
        assert "only direct_put parts may follow" in str(replies[0].get("error")), replies
        log = d.log_text()
        assert "internal error" not in log, log
        assert "only direct_put parts may follow" in log, log
    finally:
        d.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
