"""Which body codec to send a peer, from the link and the body's size (pure, no I/O).

The compile client calls :func:`choose` once its preprocessor is done, with the codecs the
peer announced (the lease grant), the body's size, and what this box's daemon measured of
the link to that peer: its round trip (liveness probes) and its throughput (the kernel's
delivery-rate estimate of earlier jobs' sockets, reported back with each lease's ``done``).

The model is the job's latency, client start to object written, for each candidate:

- compressing here (plus loading the codec's C extension, which this process pays once),
  decompressing on the peer, and the same two steps for the reply (the object, ~a fifth of
  the ``.i``'s size, compressing less well);
- moving the bytes: ``bytes / throughput``, plus the round trips TCP's slow start costs a
  fresh connection (its first window is 10 segments and doubles each round trip), so on a
  long round trip fewer bytes also means fewer round trips.

The codec with the lowest estimate wins; ``none`` when nothing beats sending the bytes as
they are (a fast LAN, or a small body). For zstd, :func:`zstd_level` then picks the level
the same way: on a slow link a higher level's extra CPU buys fewer bytes (zlib's bodies at
10 Mbit/s: level 6, ~15 % fewer bytes than level 1 for ~1 ms more per 100 KB), on a fast
one level 1 stays. The level needs no negotiation: any zstd decoder reads every level, and
the frame's stated size (checked before decoding) still bounds the output.

With no throughput measured yet the link is taken to be :data:`UNKNOWN_RATE`, so the first
jobs to a new peer compress, and the first measurement corrects it. The figures below were
measured on preprocessed C (zlib, xz, stdio-heavy units) with the libraries meshcc uses;
they only have to rank the choices.
"""

from __future__ import annotations

from math import ceil, log2

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

NONE = "none"

# codec: (compress bytes/s, decompress bytes/s, .i size ratio, .o size ratio, load seconds)
# Load: meshcc's modules plus the C extension's dlopen, in a fresh `python -S` (the
# wrapper's start): ~1.5 ms for zstd (its extension is the largest), ~1.2 ms for lz4.
PROFILES: dict[str, tuple[float, float, float, float, float]] = {
    "zstd": (300e6, 600e6, 0.15, 0.45, 0.0015),  # level 1
    "lz4": (280e6, 900e6, 0.21, 0.55, 0.0012),
    "lzo": (230e6, 500e6, 0.21, 0.55, 0.0010),  # liblzo2's lzo1x_1 (lzallright is slower)
}
# zstd level: (compress speed, .i size ratio), each relative to level 1's PROFILES entry.
# Measured on zlib 1.2.13's 17 bodies, fully preprocessed at -O3 (1.79 MB) and
# -fdirectives-only at -O0 (7.35 MB), python-zstandard 0.25, one core of this box:
#   level          1      3      6      9     19
#   ratio (-O3)  0.194  0.187  0.164  0.160  0.148   (liblzo2's lzo1x_1: 0.277)
#   ratio (dO)   0.241  0.222  0.203  0.200  0.185   (lzo1x_1: 0.372)
#   MB/s (-O3)   250    220     65     32     1.6
#   MB/s (dO)    200    144     47     27     2.3
# Long-distance matching changed nothing (a body fits zstd's window at every level), and
# levels 12-19 cost 5-40x level 9's time for 1-8 % fewer bytes: not offered.
ZSTD_LEVELS: dict[int, tuple[float, float]] = {
    1: (1.0, 1.0),
    3: (0.8, 0.94),
    6: (0.24, 0.845),
    9: (0.125, 0.83),
}
PREFERENCE = ("zstd", "lz4", "lzo")  # on a tie (every estimate equal), the better ratio
REPLY_SHARE = 0.2  # object bytes per .i byte, typical of -O2 builds
UNKNOWN_RATE = 12.5e6  # bytes/s assumed before any measurement: 100 Mbit/s
INITIAL_WINDOW = 10 * 1448  # bytes in a fresh TCP connection's first round trip


def slow_start_rounds(size: float) -> int:
    """Extra round trips a fresh connection needs to move ``size`` bytes (0 for one window)."""
    if size <= INITIAL_WINDOW:
        return 0
    return ceil(log2(size / INITIAL_WINDOW + 1)) - 1


def transfer_s(size: float, rate: float, rtt_s: float) -> float:
    """Seconds to move ``size`` bytes over a fresh connection: bandwidth and slow start."""
    return size / rate + slow_start_rounds(size) * rtt_s


def estimate_s(codec: str, size: int, rate: float, rtt_s: float, loaded: bool = False) -> float:
    """Estimated seconds the job spends on its bodies with ``codec`` (``none`` included)."""
    reply = size * REPLY_SHARE
    if codec == NONE:
        return transfer_s(size, rate, rtt_s) + transfer_s(reply, rate, rtt_s)
    comp, decomp, ratio, obj_ratio, load = PROFILES[codec]
    cpu = (size + reply) / comp + (size * ratio + reply * obj_ratio) / decomp
    wire = transfer_s(size * ratio, rate, rtt_s) + transfer_s(reply * obj_ratio, rate, rtt_s)
    return cpu + wire + (0.0 if loaded else load)


def choose(
    offered: Iterable[str],
    size: int,
    rate: float | None,
    rtt_s: float | None,
    loaded: Iterable[str] = (),
) -> str:
    """The codec for a body of ``size`` bytes, among ``offered`` (the peer's and ours), or
    ``none``. ``rate``: measured bytes/s (None: not yet); ``rtt_s``: round trip (None: 0);
    ``loaded``: codecs this process has already loaded (no load cost)."""
    if size <= 0:
        return NONE
    link = rate if rate is not None and rate > 0 else UNKNOWN_RATE
    rtt = rtt_s if rtt_s is not None and rtt_s > 0 else 0.0
    done = frozenset(loaded)
    best, best_s = NONE, estimate_s(NONE, size, link, rtt)
    for codec in PREFERENCE:
        if codec in offered:
            t = estimate_s(codec, size, link, rtt, codec in done)
            if t < best_s:
                best, best_s = codec, t
    return best


def zstd_level(size: int, rate: float | None, rtt_s: float | None) -> int:
    """The zstd level for a body of ``size`` bytes on this link (see :data:`ZSTD_LEVELS`):
    the one whose compress time plus transfer time is lowest; level 1 on a tie, so a fast
    link or an unmeasured one keeps the cheapest."""
    link = rate if rate is not None and rate > 0 else UNKNOWN_RATE
    rtt = rtt_s if rtt_s is not None and rtt_s > 0 else 0.0
    comp, _, ratio, _, _ = PROFILES["zstd"]
    best, best_s = 1, 0.0
    for level, (speed, shrink) in ZSTD_LEVELS.items():
        t = size / (comp * speed) + transfer_s(size * ratio * shrink, link, rtt)
        if level == 1 or t < best_s:
            best, best_s = level, t
    return best
