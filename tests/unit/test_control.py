"""The control socket: codec (meshcc.wire.control), lease broker, and a real daemon.

Daemons here either listen on loopback only (discovery off: no multicast at all) or run
inside a LAN of network namespaces (``lan`` fixture). Waits are bounded; nothing asserts
on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import netns
from meshcc.compiler.fingerprints import ClientCompiler, FingerprintCache, FingerprintError
from meshcc.mesh.leases import LeaseBroker, Local
from meshcc.mesh.matching import Verdict
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo
from meshcc.wire import control
from meshd import ControlConn, Meshd, private_dir, request
from netns import Lan

GCC = "/usr/bin/gcc"

# ---------------------------------------------------------------- codec


def test_roundtrip_split_and_back_to_back() -> None:
    data = control.encode(control.lease_request("gcc-12", GCC, "a.c"))
    data += control.encode(control.status_request())
    r = control.MessageReader()
    for i in range(len(data)):  # one byte at a time
        r.feed(data[i : i + 1])
    msgs = list(r)
    assert [control.decode_request(m) for m in msgs] == [
        control.LeaseRequest("gcc-12", GCC, "a.c"),
        control.StatusRequest(),
    ]
    assert r.next_message() is None


def test_oversized_message_fails_before_it_is_buffered() -> None:
    r = control.MessageReader()
    head = b"\xdb" + (2 * control.MAX_MESSAGE).to_bytes(4, "big")  # str32 of 2 MiB
    with pytest.raises(control.ControlError, match="larger than"):
        r.feed(head)
        for _ in range(40):
            r.feed(b"x" * 65536)
    with pytest.raises(control.ControlError):  # stays failed
        r.feed(b"\x80")
    with pytest.raises(control.ControlError, match="exceeds"):
        control.encode({"op": "x", "blob": b"y" * (control.MAX_MESSAGE + 1)})


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"\xc1", "malformed"), (b"\x05", "expected a map"), (b"\x81\x01\x02", "malformed")],
)
def test_garbage_is_an_error(data: bytes, match: str) -> None:
    r = control.MessageReader()
    r.feed(data)
    with pytest.raises(control.ControlError, match=match):
        r.next_message()


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        ({}, "no 'op'"),
        ({"op": "reboot"}, "unknown op"),
        ({"op": "lease", "cc": "gcc", "cc_path": "gcc", "source": "a.c"}, "absolute"),
        ({"op": "lease", "cc": 1, "cc_path": GCC}, "'cc' must be a string"),
        ({"op": "lease", "cc": "", "cc_path": GCC}, "empty"),
        ({"op": "lease", "cc": "gcc", "cc_path": "/x" * 9000}, "longer"),
        ({"op": "hosts", "cc": "gcc\0", "cc_path": None}, "NUL"),
        ({"op": "done", "ok": "yes"}, "true or false"),
        ({"op": "status", "v": 0}, "version"),
    ],
)
def test_invalid_requests(msg: dict[str, object], match: str) -> None:
    with pytest.raises(control.ControlError, match=match):
        control.decode_request(msg)


def test_requests_and_replies_decode() -> None:
    assert control.decode_request(control.hosts_request()) == control.HostsRequest(None, None)
    assert control.decode_request({"op": "status", "extra": [1]}) == control.StatusRequest()
    assert control.decode_request(control.done_message(False, True, "refused")) == (
        control.DoneMessage(False, True, "refused")
    )
    grant = control.lease_granted("10.0.0.2", 3632, 2, "gcc-12", "m:abc")
    assert control.decode_lease_reply(grant) == control.LeaseGranted(
        "10.0.0.2", 3632, 2, "gcc-12", "m:abc"
    )
    assert control.decode_lease_reply(control.lease_local("no peers")) == control.LeaseLocal(
        "no peers", False
    )
    assert control.decode_lease_reply(control.error_reply("bad")) == control.LeaseLocal("bad", True)
    with pytest.raises(control.ControlError):
        control.decode_lease_reply({"ok": True, "host": "x", "port": 0})


def test_socket_paths() -> None:
    assert control.daemon_socket_path("/x.sock", uid=0, env={}) == "/x.sock"
    assert control.daemon_socket_path(uid=0, env={"MESHCC_SOCKET": "/e"}) == "/e"
    assert control.daemon_socket_path(uid=0, env={}) == "/run/meshcc/control.sock"
    assert control.daemon_socket_path(uid=7, env={"XDG_RUNTIME_DIR": "/run/user/7"}) == (
        "/run/user/7/meshcc/control.sock"
    )
    assert control.daemon_socket_path(uid=7, env={}) == "/tmp/meshcc-7/control.sock"
    assert control.client_socket_paths(uid=7, env={"MESHCC_SOCKET": "/e"}) == ["/e"]
    assert control.client_socket_paths(uid=7, env={}) == [
        "/run/meshcc/control.sock",
        "/tmp/meshcc-7/control.sock",
    ]


# ---------------------------------------------------------------- broker (no I/O)

FP = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40")


def _verdict(host: str, jobs: int, included: bool = True, failures: int = 0) -> Verdict:
    tc = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc",))
    rec = PeerRecord(
        f"m:{host}",
        PeerKind.MESHCC,
        f"{host}._meshcc._tcp.local.",
        host,
        (f"10.0.0.{len(host)}",),
        3632,
        2,
        jobs,
        (tc,),
        protocols=(1, 2),
        caps=frozenset({"lzo"}),
    )
    st = PeerState(rec, Liveness.UP, 0.0, 0.0, None, None, 0.001, 0, failures, 0, None)
    return Verdict(st, included, "ok" if included else "gcc 12.2.0 ≠ 13", rec.addresses[0], "gcc")


class FakeStatus:
    off_reason: str | None = None


class FakeMesh:
    """The broker's view of the mesh (meshcc.mesh.leases.PeerView) with fixed verdicts."""

    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.status = FakeStatus()

    def explain(self, fp: ClientCompiler | None) -> list[Verdict]:
        return list(self.verdicts)


def test_broker_spreads_queues_fifo_and_serves_on_release() -> None:
    async def scenario() -> None:
        broker = LeaseBroker(FakeMesh([_verdict("a", 1), _verdict("bb", 2)]))
        grants = [await broker.acquire(FP) for _ in range(3)]
        assert [g.key for g in grants] == ["m:bb", "m:a", "m:bb"]  # freest first
        assert grants[0].protocol == 2 and grants[0].compiler == "gcc"
        # local_ok=False (DISTCC_FALLBACK=0): peers only, so these wait in line
        w1 = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        w2 = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        w3 = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        assert len(broker.waiters) == 3 and not w1.done()
        w2.cancel()  # a client that gives up leaves the line
        await asyncio.sleep(0)
        broker.release("m:a")
        assert (await w1).key == "m:a"
        broker.release("m:bb")
        assert (await w3).key == "m:bb" and not broker.waiters
        assert broker.held == 3
        broker.stop()

    asyncio.run(scenario())


def test_broker_hands_out_this_box_share_when_peers_are_busy() -> None:
    async def scenario() -> None:
        broker = LeaseBroker(FakeMesh([_verdict("a", 1)]), local_slots=2)
        assert (await broker.acquire(FP)).key == "m:a"
        own = [await broker.acquire(FP) for _ in range(2)]  # the peer is busy: our share
        assert all(isinstance(g, Local) and g.held and "busy" in g.reason for g in own)
        queued = asyncio.ensure_future(broker.acquire(FP))  # share used up too: wait
        await asyncio.sleep(0)
        assert not queued.done() and broker.held == 3
        broker.release("localhost")  # a local compile ended
        got = await queued
        assert isinstance(got, Local) and got.held
        broker.release("m:a")
        assert (await broker.acquire(FP)).key == "m:a"  # peers first again
        broker.stop()

    asyncio.run(scenario())


def test_broker_local_when_nothing_matches_and_prefers_fewer_failures() -> None:
    async def scenario() -> None:
        broker = LeaseBroker(FakeMesh([_verdict("a", 4, included=False)]))
        got = await broker.acquire(FP)
        assert isinstance(got, Local) and "1 seen, all excluded" in got.reason
        broker = LeaseBroker(FakeMesh([_verdict("a", 8, failures=2), _verdict("bb", 1)]))
        assert (await broker.acquire(FP)).key == "m:bb"

    asyncio.run(scenario())


def test_fingerprint_cache_probes_once_and_rejects_non_files(tmp_path: Path) -> None:
    calls: list[str] = []

    def probe(path: str) -> object:
        calls.append(path)
        from meshcc.compiler.toolchain import Probe

        return Probe("12.2.0", "x86_64-linux-gnu", "2.40", "/usr/bin/as")

    async def scenario() -> None:
        cache = FingerprintCache(max_entries=2, probe=probe)  # type: ignore[arg-type]
        fps = await asyncio.gather(*(cache.get("gcc-12", GCC) for _ in range(5)))
        assert len(calls) == 1 and fps[0] == ClientCompiler(
            "gcc-12", "12.2.0", "x86_64-linux-gnu", "2.40", "gcc"
        )
        with pytest.raises(FingerprintError, match="not a regular file"):
            await cache.get("cc", str(tmp_path))
        with pytest.raises(FingerprintError, match="No such file"):
            await cache.get("cc", str(tmp_path / "nope"))

    asyncio.run(scenario())


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

    reply = request(loop_daemon.socket, control.lease_request("gcc", GCC, "a.c"))
    assert reply["ok"] is False and reply["local"] is True and "discovery is off" in reply["reason"]
    reply = request(loop_daemon.socket, control.lease_request("true", "/bin/true", "a.c"))
    assert reply["local"] is True and "not a usable gcc" in reply["reason"]
    reply = request(loop_daemon.socket, control.lease_request("gcc", "/nonexistent/gcc", "a.c"))
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
        assert "without a lease" in c.ask(control.done_message(True))["error"]
    # Still serving, several requests on one connection.
    with ControlConn(loop_daemon.socket) as c:
        assert c.ask(control.status_request())["ok"] is True
        assert c.ask(control.hosts_request())["ok"] is True
    netns.wait_for(lambda: "larger than" in loop_daemon.log_text(), 10, what="oversize logged")
    log = loop_daemon.log_text()
    assert "closing connection from pid" in log and "malformed" in log


# ---------------------------------------------------------------- leases on a netns LAN

LEASE_HOLDER = r"""
import socket, sys, time
from meshcc.wire import control
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(control.encode(control.lease_request("gcc", "/usr/bin/gcc", "held.c")))
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
                waiting.send(control.lease_request("gcc", GCC, "queued.c", local_ok=False))
                netns.wait_for(lambda: a.status()["queued"] == 1, 10, what="request queued")
                assert a.status()["leases"] == 1
                holder.send_signal(signal.SIGKILL)  # the kernel closes its socket
                holder.wait(10)
                grant = waiting.recv()  # bounded by the socket timeout
                assert grant is not None and grant["ok"] is True, grant
                assert grant["host"] == hb.address and grant["port"] == 3632
                assert grant["protocol"] == 2 and grant["compiler"] == "gcc"
                assert grant["peer"] == peer
                waiting.send(control.done_message(True))
                assert waiting.recv() is None  # one lease per connection
            netns.wait_for(lambda: a.status()["leases"] == 0, 10, what="lease released")
        finally:
            if holder.poll() is None:
                holder.kill()
    finally:
        a.stop(), b.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
