"""The control socket: codec (meshcc.wire.control) and lease broker (a real daemon's control
socket: integration/test_control_daemon.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from meshcc.compiler import toolchain
from meshcc.compiler.fingerprints import ClientCompiler, FingerprintCache, FingerprintError
from meshcc.mesh.leases import LeaseBroker, Local
from meshcc.mesh.matching import Verdict
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo
from meshcc.wire import control

GCC = "/usr/bin/gcc"

# ---------------------------------------------------------------- codec


def test_roundtrip_split_and_back_to_back() -> None:
    data = control.encode(control.LeaseRequest("gcc-12", GCC, "a.c").to_message())
    data += control.encode(control.StatusRequest().to_message())
    r = control.MessageReader()
    for i in range(len(data)):  # one byte at a time
        r.feed(data[i : i + 1])
    msgs = list(r)
    assert [control.decode_request(m) for m in msgs] == [
        control.LeaseRequest("gcc-12", GCC, "a.c"),
        control.StatusRequest(),
    ]
    assert r.next_message() is None


def test_pipelined_messages_may_together_pass_the_limit() -> None:
    """A client sends its messages back to back (direct_put's parts): one read may end
    inside the next message, so the buffer holds more than one message's limit."""
    limit = 64 * 1024
    part = control.encode({"op": "status", "pad": b"p" * (limit - 100)})
    stream = part * 3
    r = control.MessageReader(max_message=limit)
    got = []
    for at in range(0, len(stream), limit):  # the daemon's reads: 64 KiB at a time
        r.feed(stream[at : at + limit])
        got += list(r)
    assert len(got) == 3
    too_big = control.encode({"op": "status", "pad": b"p" * limit})
    r = control.MessageReader(max_message=limit)
    with pytest.raises(control.ControlError, match="larger than"):
        for at in range(0, len(too_big), 4096):
            r.feed(too_big[at : at + 4096])
            list(r)


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
    assert control.decode_request(control.HostsRequest().to_message()) == control.HostsRequest(
        None, None
    )
    assert control.decode_request({"op": "status", "extra": [1]}) == control.StatusRequest()
    assert control.decode_request(control.DoneMessage(False, True, "refused").to_message()) == (
        control.DoneMessage(False, True, "refused")
    )
    grant = control.LeaseGranted("10.0.0.2", 3632, 2, "gcc-12", "m:abc").to_message()
    assert control.decode_lease_reply(grant) == control.LeaseGranted(
        "10.0.0.2", 3632, 2, "gcc-12", "m:abc"
    )
    assert control.decode_lease_reply(
        control.LeaseLocal("no peers").to_message()
    ) == control.LeaseLocal("no peers", False)
    assert control.decode_lease_reply(control.ErrorReply("bad").to_message()) == (
        control.ErrorReply("bad")
    )
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
        cache = FingerprintCache(max_entries=2, probe=probe, check_trust=False)  # type: ignore[arg-type]
        fps = await asyncio.gather(*(cache.get("gcc-12", GCC) for _ in range(5)))
        assert len(calls) == 1 and fps[0] == ClientCompiler(
            "gcc-12", "12.2.0", "x86_64-linux-gnu", "2.40", "gcc"
        )
        with pytest.raises(FingerprintError, match="not a regular file"):
            await cache.get("cc", str(tmp_path))
        with pytest.raises(FingerprintError, match="No such file"):
            await cache.get("cc", str(tmp_path / "nope"))

    asyncio.run(scenario())


def test_fingerprint_probe_survives_a_cancelled_first_caller() -> None:
    """The client that triggered a probe hangs up; the others still get its result."""
    release = threading.Event()

    def probe(path: str) -> toolchain.Probe:
        release.wait(10)
        return toolchain.Probe("12.2.0", "x86_64-linux-gnu", "2.40", None)

    async def scenario() -> None:
        cache = FingerprintCache(probe=probe)
        first = asyncio.ensure_future(cache.get("gcc", GCC))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(cache.get("gcc", GCC))
        await asyncio.sleep(0.05)
        first.cancel()
        release.set()
        fp = await asyncio.wait_for(second, 10)
        assert fp.version == "12.2.0" and first.cancelled()
        assert (await cache.get("gcc", GCC)) == fp  # cached: no second probe needed

    asyncio.run(scenario())


def test_a_status_without_the_live_load_channel_carries_no_load_figures() -> None:
    """Discovery off: no channel, so no free/speed/leased/loads (not a misleading free 0);
    with the channel, free 0 is a real figure and survives the round trip."""
    off = control.StatusReply(jobs=4, running=1).to_message()
    assert not {"free", "speed", "leased", "loads"} & off.keys()
    assert control.StatusReply.from_message(off).free is None
    on = control.StatusReply(jobs=4, running=4, free=0).to_message()
    assert on["free"] == 0 and on["loads"] == []
    assert control.StatusReply.from_message(on).free == 0
