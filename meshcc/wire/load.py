"""Sans-IO codec of the load record daemons exchange over UDP (the live-load channel).

One datagram, one record, fixed layout (network byte order), 46 bytes in version 1::

    magic    4s  b"MSHL"
    version  B   1 (a reader refuses a higher major: LoadError "version")
    flags    B   0 (reserved; ignored)
    node     6s  sender's node id (the 12 hex digits of its mDNS record, as bytes)
    boot     I   random per daemon start: a restart resets the sequence
    seq      I   sender's datagram counter (per boot), for ordering and acks
    ack      I   highest seq of the *recipient's* records the sender has applied
    ackboot  I   the recipient's boot that ``ack`` refers to (an ack from before the
                 recipient restarted acknowledges nothing)
    jobs     H   the sender's job slots (its --jobs; never trusted beyond its announcement)
    running  H   job slots taken on the sender now (the server's exact count: reserved by a
                 SLOT, or compiling)
    queued   H   complete requests waiting inside the sender's server for a slot (stock
                 distcc clients: the server's exact count), plus lease requests waiting in
                 its broker
    free     H   the sender's idle slots (no lease holds them, from any box; mesh-wide)
    speed    I   the sender's measured speed: bytes of preprocessed source compiled per
                 second of compiler wall time, per job (EWMA); 0 = not measured yet
    held     H   leases the sender's clients hold on the recipient now
    want     H   held plus the sender's lease requests waiting that the recipient could
                 serve (its demand), capped at the recipient's jobs
    share    H   slots the recipient's clients may hold on the sender (its allotment)

Appended fields (a reader of the 46 bytes alone ignores them; a record without them reads
as the default given):

    held_all H   leases the sender's clients hold on the whole mesh now (every peer, and
                 its own share of its own slots); default ``held``. The recipient shares a
                 contended slot max-min fairly over what each client holds mesh-wide, so a
                 box holding both servers yields one to a box holding none.

Everything after the fields this version knows is ignored (a later minor version may
append more); a datagram over :data:`MAX_DATAGRAM` bytes is refused. This module does no
I/O.
"""

from __future__ import annotations

import struct

from .records import Frozen

__all__ = ["MAGIC", "MAX_DATAGRAM", "VERSION", "LoadError", "LoadRecord", "decode", "encode"]

MAGIC = b"MSHL"
VERSION = 1
MAX_DATAGRAM = 512
_LAYOUT = struct.Struct(">4sBB6sIIIIHHHHIHHH")
SIZE = _LAYOUT.size  # the fields every version 1 record has
_EXTRA = struct.Struct(">H")  # held_all
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


class LoadError(ValueError):
    """A datagram that is not a load record we can read; ``reason`` is a short code
    (``size``, ``magic``, ``version``, ``field``) and str(e) says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class LoadRecord(Frozen):
    """One load record (see the module docstring for each field)."""

    __slots__ = (
        "ack",
        "ack_boot",
        "boot",
        "free",
        "held",
        "held_all",
        "jobs",
        "node",
        "queued",
        "running",
        "seq",
        "share",
        "speed",
        "want",
    )
    __match_args__ = (
        "node",
        "boot",
        "seq",
        "ack",
        "ack_boot",
        "jobs",
        "running",
        "queued",
        "free",
        "speed",
        "held",
        "want",
        "share",
        "held_all",
    )
    node: str
    boot: int
    seq: int
    ack: int
    ack_boot: int
    jobs: int
    running: int
    queued: int
    free: int
    speed: int
    held: int
    want: int
    share: int
    held_all: int

    def __init__(
        self,
        node: str,
        boot: int,
        seq: int,
        *,
        ack: int = 0,
        ack_boot: int = 0,
        jobs: int = 0,
        running: int = 0,
        queued: int = 0,
        free: int = 0,
        speed: int = 0,
        held: int = 0,
        want: int = 0,
        share: int = 0,
        held_all: int | None = None,
    ) -> None:
        self._init(
            node,
            boot,
            seq,
            ack,
            ack_boot,
            jobs,
            running,
            queued,
            free,
            speed,
            held,
            want,
            share,
            held if held_all is None else held_all,
        )


def _node_bytes(node: str) -> bytes:
    try:
        raw = bytes.fromhex(node)
    except ValueError:
        raise LoadError("field", f"node id {node!r} is not hex") from None
    if len(raw) != 6:
        raise LoadError("field", f"node id {node!r} is not 12 hex digits")
    return raw


def encode(rec: LoadRecord) -> bytes:
    """The datagram; counts beyond a field's range saturate (a figure, not an identity)."""

    def u16(n: int) -> int:
        return min(max(0, n), _U16)

    def u32(n: int) -> int:
        return min(max(0, n), _U32)

    return _LAYOUT.pack(
        MAGIC,
        VERSION,
        0,
        _node_bytes(rec.node),
        u32(rec.boot),
        u32(rec.seq),
        u32(rec.ack),
        u32(rec.ack_boot),
        u16(rec.jobs),
        u16(rec.running),
        u16(rec.queued),
        u16(rec.free),
        u32(rec.speed),
        u16(rec.held),
        u16(rec.want),
        u16(rec.share),
    ) + _EXTRA.pack(u16(rec.held_all))


def decode(data: bytes) -> LoadRecord:
    """The record in one datagram; LoadError when it is not one we read."""
    if len(data) > MAX_DATAGRAM:
        raise LoadError("size", f"{len(data)} bytes, more than {MAX_DATAGRAM}")
    if len(data) < 6:
        raise LoadError("size", f"{len(data)} bytes, a record has {SIZE}")
    if data[:4] != MAGIC:
        raise LoadError("magic", f"starts {bytes(data[:4])!r}, not {MAGIC!r}")
    if data[4] != VERSION:
        raise LoadError("version", f"version {data[4]}, this daemon reads {VERSION}")
    if len(data) < SIZE:
        raise LoadError("size", f"{len(data)} bytes, a version {VERSION} record has {SIZE}")
    (
        _,
        _,
        _,
        node,
        boot,
        seq,
        ack,
        ack_boot,
        jobs,
        running,
        queued,
        free,
        speed,
        held,
        want,
        share,
    ) = _LAYOUT.unpack_from(data)
    if free > jobs or share > jobs:
        # Figures the sender's own jobs bound; over them is a broken or hostile sender.
        raise LoadError("field", f"free {free} / share {share} beyond jobs {jobs}")
    held_all = None
    if len(data) >= SIZE + _EXTRA.size:
        (held_all,) = _EXTRA.unpack_from(data, SIZE)
    return LoadRecord(
        node.hex(),
        boot,
        seq,
        ack=ack,
        ack_boot=ack_boot,
        jobs=jobs,
        running=running,
        queued=queued,
        free=free,
        speed=speed,
        held=held,
        want=want,
        share=share,
        held_all=held_all,
    )
