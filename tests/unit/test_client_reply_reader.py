"""meshcc.transport.client's lean reply reader (the compile client's) against the full codec,
meshcc.wire.protocol: the same replies, whole, cut short, fed in pieces and corrupted byte
by byte, must give the same result or the same error text."""

from __future__ import annotations

import pytest

from meshcc.transport import client as lean
from meshcc.wire import protocol as wire

Outcome = tuple[str, object]


def _full(data: bytes, eof: bool, version: int, slot: bool, limits: wire.Limits) -> Outcome:
    """What protocol's readers make of ``data`` (all of it fed at once)."""
    reader = (wire.SlotReplyReader if slot else wire.ReplyReader)(version, limits)
    reader.feed(data)
    if eof:
        reader.feed_eof()
    status, bodies = 0, []
    try:
        while True:
            event = reader.next_event()
            if event is wire.NEED_DATA:
                return ("need", None)
            if isinstance(event, wire.ReplyRefused):
                return ("refused", event.message)
            if isinstance(event, wire.SlotBusy):
                return ("busy", event.running)
            if isinstance(event, wire.ReplyStatus):
                status = event.wait_status
            if isinstance(event, wire.ReplyStderr | wire.ReplyStdout | wire.ReplyObject):
                bodies.append(event.data)
            if isinstance(event, wire.ReplyEnd):
                return ("reply", (status, *bodies))
    except wire.ProtocolError as e:
        return ("error", str(e))


def _lean(data: bytes, eof: bool, version: int, slot: bool, limits: wire.Limits) -> Outcome:
    try:
        got = lean.read_reply(
            bytearray(data), eof, version, slot, limits.max_body, limits.max_message
        )
    except lean.ProtocolError as e:
        return ("error", str(e))
    if got is None:
        return ("need", None)
    kind, value, err, out, obj = got
    if kind == lean.REPLY_REFUSED:
        return ("refused", value)
    if kind == lean.REPLY_BUSY:
        return ("busy", value)
    assert kind == lean.REPLY_DONE
    return ("reply", (value, err, out, obj))


REPLIES = [
    wire.encode_reply(1, 0, b"warning: x\n", b"", b"\x7fELF object"),
    wire.encode_reply(2, 0, b"", b"out", b"lzo-ish bytes"),
    wire.encode_reply(2, 1 << 8, b"error: y\n", b"", None),
    wire.encode_reply(1, 0, b"", b"", b""),
    wire.encode_refusal("no such compiler: ccx"),
    wire.encode_refusal(""),
]
SLOT_ONLY = [wire.encode_busy(3), wire.encode_busy(0), wire.encode_refusal("not allowed")]


def _cases() -> list[tuple[bytes, int, bool]]:
    cases = []
    for data in REPLIES:
        version = 2 if data[:12] == wire.token(b"DONE", 2) else 1
        cases.append((data, version, False))
        cases.append((wire.SLOT_GRANTED + data, version, True))
        cases.append((data, 3 - version, False))  # a version mismatch
    cases += [(data, 2, True) for data in SLOT_ONLY]
    return cases


@pytest.mark.parametrize(("data", "version", "slot"), _cases())
def test_same_outcome_as_protocol_readers(data: bytes, version: int, slot: bool) -> None:
    limits = wire.Limits()
    for cut in range(len(data) + 1):  # every prefix, with and without the end of stream
        for eof in (False, True):
            part = data[:cut]
            assert _lean(part, eof, version, slot, limits) == _full(
                part, eof, version, slot, limits
            ), (cut, eof)
    whole = _lean(data + b"trailing", True, version, slot, limits)
    assert whole[0] != "need"


@pytest.mark.parametrize(("data", "version", "slot"), _cases())
def test_same_errors_on_corrupt_bytes(data: bytes, version: int, slot: bool) -> None:
    limits = wire.Limits()
    for at in range(len(data)):
        for bad in (b"Z", b"_", b"0", b"f", b" "):
            broken = data[:at] + bad + data[at + 1 :]
            for eof in (False, True):
                assert _lean(broken, eof, version, slot, limits) == _full(
                    broken, eof, version, slot, limits
                ), (at, bad, eof)


def test_lengths_over_the_limits_fail_before_the_body_arrives() -> None:
    small = wire.Limits(max_body=4, max_message=3)
    for data, slot in (
        (wire.encode_reply(1, 0, b"12345", b"", b""), False),
        (wire.SLOT_GRANTED + wire.encode_reply(1, 0, b"", b"", b"12345"), True),
        (wire.encode_refusal("four"), False),
    ):
        head = data[: data.index(b"12345") if b"12345" in data else len(data) - 4]
        got = _lean(head, False, 1, slot, small)
        assert got[0] == "error" and "exceeds limit" in str(got[1])
        assert got == _full(head, False, 1, slot, small)


def test_values_equal_the_full_codecs() -> None:
    limits = wire.Limits()
    assert lean.MAX_BODY == limits.max_body
    assert lean.MAX_MESSAGE == limits.max_message
    assert lean.HEADER_LEN == wire.HEADER_LEN
    assert lean.SLOT_REQUEST == wire.SLOT_REQUEST
    assert lean.SLOT_GRANTED == wire.SLOT_GRANTED
    for version in (1, 2):
        for argv in ([b"gcc"], [b"gcc", b"-c", b"x.c", b"-o", b"x.o", b""]):
            assert lean.encode_request_head(version, argv) == wire.encode_request_head(
                version, argv
            )
    assert lean.token(b"DOTI", 26) == wire.token(b"DOTI", 26)
    for name, value in ((b"DOT", 1), (b"DOTI", -1), (b"DOTI", 1 << 32)):
        with pytest.raises(ValueError):
            lean.token(name, value)
    with pytest.raises(ValueError):
        lean.encode_request_head(3, [b"gcc"])
