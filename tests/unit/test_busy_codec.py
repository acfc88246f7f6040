"""BUSY (meshcc issue 11): the SLOT/FREE/BUSY codec, the client's decision on a BUSY answer,
the control messages that carry it, the lease broker's reaction and the job summary's queue
field. Pure: no sockets, processes or root (the real server and clients:
integration/test_busy.py, integration/test_busy_netns.py)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcc.client import decisions as d
from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.mesh import leases
from meshcc.mesh.leases import LeaseBroker, Local
from meshcc.mesh.matching import Verdict
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo
from meshcc.transport.server import JobResult, JobSummary
from meshcc.wire import control
from meshcc.wire import protocol as wire

# ---------------------------------------------------------------- the wire tokens


def test_slot_tokens_are_headers_that_stock_distcc_never_sends_or_accepts() -> None:
    assert wire.SLOT_REQUEST == wire.token(b"SLOT", 1)
    assert wire.SLOT_GRANTED == wire.token(b"FREE", 1)
    assert wire.encode_busy(4) == b"BUSY00000004"
    assert wire.encode_busy(-1) == b"BUSY00000000"
    assert wire.is_slot_request(wire.SLOT_REQUEST) and wire.is_slot_request(
        wire.SLOT_REQUEST + wire.encode_request_head(2, [b"gcc"])
    )
    for other in (b"", wire.SLOT_REQUEST[:11], wire.PROBE_REQUEST, wire.token(b"SLOT", 2)):
        assert not wire.is_slot_request(other)
    assert not wire.is_slot_request(wire.encode_request_head(1, [b"gcc", b"-c", b"x.c"]))
    # A distcc server reading SLOT sees a derailed request (why it is sent only to hosts
    # announcing `busy`), and a distcc client reading BUSY or FREE sees a bad reply.
    rr = wire.RequestReader()
    rr.feed(wire.SLOT_REQUEST)
    with pytest.raises(wire.ProtocolError, match="expected DIST token, got SLOT"):
        rr.next_event()
    for answer in (wire.encode_busy(2), wire.SLOT_GRANTED):
        reply = wire.ReplyReader(2)
        reply.feed(answer)
        with pytest.raises(wire.ProtocolError, match="expected DONE or ERRM"):
            reply.next_event()


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (wire.SLOT_GRANTED, wire.SlotGranted()),
        (wire.encode_busy(3), wire.SlotBusy(3)),
        (b"busy0000000a", None),  # names are case-sensitive, as every distcc token
        (wire.encode_refusal("client address 10.1.2.3 is not allowed"), None),
    ],
)
def test_read_slot_answer_byte_at_a_time(data: bytes, want: object) -> None:
    for i in range(len(data)):
        try:
            early = wire.read_slot_answer(data[:i], False)
        except wire.ProtocolError:
            assert data.startswith(b"busy") and i >= 12
            return
        if i < 12 or data.startswith(b"ERRM"):
            assert early is wire.NEED_DATA, (i, early)
    if data.startswith(b"busy"):
        with pytest.raises(wire.ProtocolError, match="expected FREE, BUSY or ERRM"):
            wire.read_slot_answer(data, False)
    elif data.startswith(b"ERRM"):
        got = wire.read_slot_answer(data, True)
        assert got == wire.ReplyRefused("client address 10.1.2.3 is not allowed")
    else:
        assert wire.read_slot_answer(data, False) == want
        assert wire.read_slot_answer(data, True) == want  # the close that follows BUSY


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "closed after nothing"),
        (b"BUS", "closed after 3 byte"),
        (b"ERRM00000010abc", "truncated"),
        (b"FREE00000002", "expected FREE, BUSY or ERRM"),  # another version: not granted
        (b"DONE00000002", "got DONE"),
        (b"BUSY0000zz01", "not 8 hex digits"),
    ],
)
def test_read_slot_answer_refuses_what_is_not_an_answer(data: bytes, match: str) -> None:
    with pytest.raises(wire.ProtocolError, match=match):
        wire.read_slot_answer(data, True)


def test_read_slot_answer_checks_the_errm_length_before_waiting_for_it() -> None:
    small = wire.Limits(max_message=8)
    with pytest.raises(wire.ProtocolError, match="max_message=8"):
        wire.read_slot_answer(wire.token(b"ERRM", 9), False, small)


@given(st.binary(max_size=40), st.booleans())
def test_read_slot_answer_never_fails_otherwise(data: bytes, eof: bool) -> None:
    try:
        got = wire.read_slot_answer(data, eof)
    except wire.ProtocolError:
        return
    assert got is wire.NEED_DATA or isinstance(
        got, (wire.SlotGranted, wire.SlotBusy, wire.ReplyRefused)
    )
    assert not (eof and got is wire.NEED_DATA)


# ---------------------------------------------------------------- the pipelined answer


def _events(reader: wire.ReplyReader, data: bytes, step: int, eof: bool = True) -> list[object]:
    """Feed ``data`` ``step`` bytes at a time (then EOF); every event until NEED_DATA."""
    out: list[object] = []
    for at in range(0, len(data) + 1, step):
        reader.feed(data[at : at + step])
        if eof and at + step >= len(data):
            reader.feed_eof()
        while (event := reader.next_event()) is not wire.NEED_DATA:
            out.append(event)
    return out


@pytest.mark.parametrize("step", [1, 5, 12, 1000])
@pytest.mark.parametrize("version", [1, 2])
def test_slot_reply_reader_reads_free_then_the_reply(step: int, version: int) -> None:
    reply = wire.encode_reply(version, 0, b"warn", b"", b"\x7fELF-object")
    got = _events(wire.SlotReplyReader(version), wire.SLOT_GRANTED + reply, step)
    plain = _events(wire.ReplyReader(version), reply, step)
    assert got == [wire.SlotGranted(), *plain]
    assert plain[-1] == wire.ReplyEnd()


@pytest.mark.parametrize("step", [1, 12, 100])
def test_slot_reply_reader_busy_and_refusal_are_terminal(step: int) -> None:
    assert _events(wire.SlotReplyReader(2), wire.encode_busy(3), step) == [wire.SlotBusy(3)]
    refusal = wire.encode_refusal("client address 10.1.2.3 is not allowed")
    assert _events(wire.SlotReplyReader(2), refusal, step) == [
        wire.ReplyRefused("client address 10.1.2.3 is not allowed")
    ]
    # Nothing may follow BUSY (the server half-closes after it).
    reader = wire.SlotReplyReader(2)
    reader.feed(wire.encode_busy(1) + b"DONE00000002")
    assert reader.next_event() == wire.SlotBusy(1)
    with pytest.raises(wire.ProtocolError, match="unexpected byte"):
        reader.next_event()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (wire.SLOT_GRANTED, "truncated"),  # FREE, then the server went away
        (b"FREE00000002", "only 1 is defined"),
        (wire.encode_reply(2, 0, b"", b"", b"o"), "got DONE"),  # a reply without the answer
        (wire.SLOT_GRANTED + wire.encode_reply(1, 0, b"", b"", b"o"), "does not match"),
    ],
)
def test_slot_reply_reader_refuses_what_is_not_an_answer(data: bytes, match: str) -> None:
    with pytest.raises(wire.ProtocolError, match=match):
        _events(wire.SlotReplyReader(2), data, 1000)


@given(st.binary(max_size=80), st.integers(1, 40))
def test_slot_reply_reader_never_fails_otherwise(data: bytes, step: int) -> None:
    try:
        events = _events(wire.SlotReplyReader(1), data, step)
    except wire.ProtocolError:
        return
    assert events, "a complete stream with no event"
    assert isinstance(events[0], (wire.SlotGranted, wire.SlotBusy, wire.ReplyRefused))


# ---------------------------------------------------------------- the client's decision


def test_busy_is_not_a_failure_until_the_mesh_stays_full() -> None:
    plan = d.Plan(d.Settings(), "a.c")
    for _ in range(d.MAX_BUSY_ANSWERS - 1):
        act = plan.busy("10.0.0.2:3632", 4)
        assert isinstance(act, d.TryElsewhere) and "busy (4 jobs running)" in act.why
    last = plan.busy("10.0.0.2:3632", 4)
    assert isinstance(last, d.CompileLocally) and not last.warn
    assert "compiling locally" in last.message and last.verdict is d.NO_OPINION
    # DISTCC_FALLBACK=0: never compile here for it; keep asking (the daemon paces us).
    strict = d.Plan(d.Settings(fallback=False), "a.c")
    for _ in range(3 * d.MAX_BUSY_ANSWERS):
        assert isinstance(strict.busy("h", 1), d.TryElsewhere)


# ---------------------------------------------------------------- control messages


def test_grant_and_done_carry_busy_only_when_set() -> None:
    plain = control.LeaseGranted("10.0.0.2", 3632, 2, "gcc", "m:a")
    assert "busy" not in plain.to_message()  # what an older client has always read
    assert control.decode_lease_reply(plain.to_message()).busy is False  # type: ignore[union-attr]
    busy = control.LeaseGranted("10.0.0.2", 3632, 2, "gcc", "m:a", busy=True)
    assert busy.to_message()["busy"] is True
    assert control.decode_lease_reply(busy.to_message()) == busy
    done = control.DoneMessage(True, busy=True)
    assert control.decode_request(done.to_message()) == done
    assert "busy" not in control.DoneMessage(False, True, "x").to_message()
    assert control.decode_request(control.DoneMessage(True).to_message()) == control.DoneMessage(
        True, False, "", False
    )
    with pytest.raises(control.ControlError, match="'busy' must be true or false"):
        control.decode_request({"op": "done", "ok": True, "busy": 1})


def test_status_reply_counts_the_slots_held_and_the_queue() -> None:
    st_ = control.StatusReply(jobs=2, running=2, slots_held=2, slot_waiting=3)
    back = control.decode_status_reply(st_.to_message())
    assert isinstance(back, control.StatusReply)
    assert (back.slots_held, back.slot_waiting) == (2, 3)
    old = control.decode_status_reply({"ok": True, "jobs": 2})  # an older daemon
    assert isinstance(old, control.StatusReply) and old.slot_waiting == 0


# ---------------------------------------------------------------- the lease broker

FP = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40")


def _verdict(host: str, jobs: int, caps: frozenset[str]) -> Verdict:
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
        caps=caps,
    )
    st_ = PeerState(rec, Liveness.UP, 0.0, 0.0, None, None, 0.001, 0, 0, 0, None)
    return Verdict(st_, True, "ok", rec.addresses[0], "gcc")


class _Status:
    off_reason: str | None = None


class _Mesh:
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.status = _Status()

    def explain(self, fp: ClientCompiler | None) -> list[Verdict]:
        return list(self.verdicts)


def test_broker_grant_says_whether_the_peer_speaks_busy() -> None:
    async def scenario() -> None:
        broker = LeaseBroker(
            _Mesh(
                [
                    _verdict("new", 1, frozenset({"busy", "lzo"})),
                    _verdict("old", 1, frozenset({"lzo"})),
                ]
            )
        )
        got = {g.key: g.busy for g in [await broker.acquire(FP), await broker.acquire(FP)]}
        assert got == {"m:new": True, "m:old": False}

    asyncio.run(scenario())


def test_broker_skips_a_busy_peer_for_a_moment_then_tries_it_again() -> None:
    now = [100.0]

    async def scenario() -> None:
        mesh = _Mesh(
            [_verdict("a", 4, frozenset({"busy"})), _verdict("bb", 1, frozenset({"busy"}))]
        )
        broker = LeaseBroker(mesh, clock=lambda: now[0], local_slots=1)
        first = await broker.acquire(FP)
        assert first.key == "m:a"  # type: ignore[union-attr]  # freest
        broker.release("m:a", busy=True)  # other boxes fill it: BUSY
        assert broker.held == 0  # the lease is over, no failure recorded anywhere
        second = await broker.acquire(FP)
        assert second.key == "m:bb"  # type: ignore[union-attr]  # not the busy peer, though freer
        third = await broker.acquire(FP)
        assert isinstance(third, Local) and third.held  # then this box's own share
        waiting = asyncio.ensure_future(broker.acquire(FP))  # then a visible wait
        for _ in range(3):  # the waiter queues, the broker's tick starts
            await asyncio.sleep(0)
        assert not waiting.done() and len(broker.waiters) == 1
        now[0] += leases.BUSY_HOLD_S  # the hold ends: the waiter gets the peer again
        await asyncio.sleep(leases.BUSY_HOLD_S + 0.1)  # woken by the hold's end, not the tick
        for _ in range(3):  # a loaded box may run both timers in one turn: let the task end
            await asyncio.sleep(0)
        assert leases.BUSY_HOLD_S + 0.1 < leases.DISPATCH_TICK_S
        assert waiting.done() and waiting.result().key == "m:a"  # type: ignore[union-attr]
        broker.release("m:a", busy=True)  # BUSY again
        assert broker.busy_until["m:a"] == now[0] + leases.BUSY_HOLD_S
        broker.in_use["m:a"] = 1  # the grant is not what is tested here: count it by hand
        broker.release("m:a")  # one of our own leases on it ended: a slot is free again
        assert "m:a" not in broker.busy_until
        broker.stop()

    asyncio.run(scenario())


# ---------------------------------------------------------------- the job summary


def test_summary_keeps_the_slot_wait_out_of_time_and_appends_it() -> None:
    s = JobSummary("127.0.0.1:4000", JobResult.COMPILE_OK, time_ms=30, compiler="gcc", source="a.c")
    plain = "client: 127.0.0.1:4000 COMPILE_OK exit:0 sig:0 core:0 ret:0 time:30ms gcc a.c"
    assert s.line() == plain  # a job that found a free slot: distccd's layout unchanged
    s.queue_ms = 1200
    assert s.line() == plain + " queue:1200ms"
    s.cache = "hit"
    assert s.line() == plain + " queue:1200ms cache:hit"  # cache: stays last
