"""Sans-IO part of the body codec negotiation between meshcc peers (zstd, lz4).

distcc fixes the body codec by the protocol version: 1 none, 2 and 3 LZO1X. Between meshcc
peers the client picks one per job, from the link and the body's size
(``meshcc.compression.choose``), at no round trip's cost, because the server said first
what it speaks:

- A daemon lists each codec it can run in the ``caps`` of its ``_meshcc._tcp`` record
  (``zstd``, ``lz4``, next to ``lzo``); the lease grant passes them to the client.
- A client leasing such a peer sends a protocol 1 request (``DIST00000001``) and, once its
  preprocessor is done and the body's size is known, either a plain ``DOTI`` (no
  compression: the fastest on a fast link) or ``CODC`` + the codec's name (a string token,
  as ``CDIR``) followed by ``DOTI`` holding one frame of that codec. After ``CODC`` the
  server compresses every reply body (``SERR``, ``SOUT``, ``DOTO``) with the same codec,
  in a protocol 1 reply. Empty bodies stay empty (zero-length tokens), as in distcc.
- ``CODC`` in a protocol 2 or 3 request is a protocol error, and a codec the server does
  not speak is refused by name: either way an ``ERRM`` with the reason, and the client
  retries elsewhere or locally as for any refusal. Only peers announcing a codec are sent
  ``CODC``; no distcc client sends it, and a stock distccd is never sent it.

With ``SLOT`` (the ``busy`` capability) the order is ``SLOT``, its answer, ``DIST`` ...
``ARGV``, ``CODC``, ``DOTI``.

**Body prefixes** (``zref``): most of a ``.i`` is the same headers as the previous job's,
so a zstd body compressed with the previous body of the build as a raw-content prefix is
2-5 x smaller again. A daemon that keeps bodies announces ``zref`` next to ``zstd``. To such
a peer every zstd body carries ``ZNEW`` + a new id (32 lowercase hex digits, 128 random
bits made by the client), under which the server keeps the decompressed body once it has
passed every check, and may carry ``ZREF`` + the id of a body the same client sent before:
the frame was then compressed with that body as its prefix. Order: ``CODC zstd``,
[``ZREF``], ``ZNEW``, ``DOTI``. The server keeps bodies per client address, so an id is a
capability: another box cannot name one, and an id is unguessable, so another user of the
same box cannot either (a frame can copy its whole prefix into the output, and the compile
would show it). A ``ZREF`` the server does not hold (it restarted, or evicted the body) is
refused with an ``ERRM`` starting with :data:`UNKNOWN_PREFIX`; the client then sends the
same job once more without ``ZREF``. The frame's checks are the same as ever: its stated
size is checked against the limit before anything is allocated, and a frame asking for a
dictionary *id* is still refused (a raw-content prefix has none).

Every body is one self-describing frame that carries its decompressed size, so the
receiver checks the size against its limit *before* allocating the output, and the whole
frame is walked here (headers only, no decompression) so that truncated frames, trailing
bytes, dictionaries and frames without a size are refused with a reason. The frame
formats are RFC 8878 (zstd) and the LZ4 Frame Format 1.6; both frames carry a content
checksum, which the decompressor verifies.
"""

from __future__ import annotations

from .protocol import BODY_ID_LEN, KEEP_TOKEN, PREFIX_TOKEN, is_body_id, string_token

__all__ = [
    "BODY_ID_LEN",
    "CODEC_TOKEN",
    "KEEP_TOKEN",
    "KNOWN",
    "LZ4",
    "MAX_NAME",
    "PREFIX_TOKEN",
    "UNKNOWN_PREFIX",
    "ZREF",
    "ZSTD",
    "ZSTD_MAX_WINDOW",
    "CodecError",
    "FrameInfo",
    "encode_codec_request",
    "encode_prefix_tokens",
    "frame_info",
    "is_body_id",
    "is_codec_request",
    "is_unknown_prefix",
    "lz4_frame",
    "unknown_prefix_reason",
    "zstd_frame",
]

CODEC_TOKEN = b"CODC"
ZSTD = "zstd"
LZ4 = "lz4"
KNOWN = (ZSTD, LZ4)
"""Codec names the negotiation knows, in order of preference when the link is slow."""
MAX_NAME = 16  # a CODC body longer than this is a protocol error (checked by RequestReader)

ZREF = "zref"
"""The capability word of a daemon that keeps zstd bodies as prefixes (announced in caps
next to the codecs; never a ``CODC`` name)."""
UNKNOWN_PREFIX = "unknown body prefix"
"""How the refusal of a ``ZREF`` the server does not hold begins (the client matches it)."""


def encode_prefix_tokens(keep: str, prefix: str = "") -> bytes:
    """``[ZREF prefix] ZNEW keep``, sent after ``CODC zstd`` (ValueError for a bad id)."""
    out = b""
    for tok, ident in ((PREFIX_TOKEN, prefix), (KEEP_TOKEN, keep)):
        if tok is PREFIX_TOKEN and not ident:
            continue
        raw = ident.encode("ascii", "replace")
        if not is_body_id(raw):
            raise ValueError(f"not a body id: {ident!r}")
        out += string_token(tok, raw)
    return out


def unknown_prefix_reason(ident: str) -> str:
    """The ERRM text for a ``ZREF`` naming a body this server does not hold."""
    return (
        f"{UNKNOWN_PREFIX} {ident[:8]}...: this server does not hold it (restarted, or "
        "evicted); send the body again without it"
    )


def is_unknown_prefix(message: str) -> bool:
    """Whether a refusal is :func:`unknown_prefix_reason`'s (resend without ``ZREF``)."""
    return message.startswith(UNKNOWN_PREFIX)


class CodecError(ValueError):
    """A frame that is not acceptable as a body: ``str(e)`` says why (for the refusal)."""


class FrameInfo:
    """What the headers of one frame say: decompressed size, frame size, checksum present."""

    __slots__ = ("checksum", "content_size", "frame_size")

    def __init__(self, content_size: int, frame_size: int, checksum: bool) -> None:
        self.content_size = content_size
        self.frame_size = frame_size
        self.checksum = checksum

    def __repr__(self) -> str:
        return (
            f"FrameInfo(content_size={self.content_size}, frame_size={self.frame_size}, "
            f"checksum={self.checksum})"
        )


def encode_codec_request(name: str) -> bytes:
    """The ``CODC`` token a client sends before ``DIST`` (ValueError for an unknown name)."""
    if name not in KNOWN:
        raise ValueError(f"no negotiable body codec {name!r} (known: {', '.join(KNOWN)})")
    return string_token(CODEC_TOKEN, name.encode("ascii"))


def is_codec_request(first: bytes) -> bool:
    """Whether a request starts with ``CODC`` (the first 4 bytes are enough)."""
    return first[:4] == CODEC_TOKEN


def _le(data: bytes, at: int, n: int) -> int:
    return int.from_bytes(data[at : at + n], "little")


# ---------------------------------------------------------------- zstd (RFC 8878)

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_BLOCK_MAX = 128 * 1024
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
"""The largest history window a zstd body may ask its decoder to keep (unless the frame is
single-segment: then the output buffer, whose size is checked against the cap, is the
window). Every frame meshcc makes fits: one-shot compression with a known size shrinks the
window to the body, and for larger bodies levels 1-9 use 0.5-4 MiB (levels come from
``compression.choose.zstd_level``). Without this a frame could ask for zstd's default
limit of 128 MiB of decoder memory per body."""


def zstd_frame(data: bytes) -> FrameInfo:
    """Walk one zstd frame that must fill ``data`` exactly; CodecError if it does not.

    Refused: skippable frames, a second frame, a dictionary, a frame without its content
    size, a window over :data:`ZSTD_MAX_WINDOW`, reserved bits set, a block larger than
    zstd's 128 KiB block maximum, truncation.
    """
    n = len(data)
    if n < 6 or data[:4] != _ZSTD_MAGIC:
        raise CodecError("not a zstd frame (bad magic number)")
    fhd = data[4]
    fcs_flag, single, checksum, did_flag = fhd >> 6, fhd >> 5 & 1, fhd >> 2 & 1, fhd & 3
    if fhd & 0x08:
        raise CodecError("zstd frame header has its reserved bit set")
    if did_flag:
        raise CodecError("zstd frame needs a dictionary (meshcc sends none)")
    if fcs_flag == 0 and not single:
        raise CodecError("zstd frame does not state its decompressed size")
    if not single:  # its window descriptor: 2^(10 + exponent) * (1 + mantissa / 8)
        exponent, mantissa = data[5] >> 3, data[5] & 7
        window = (1 << (10 + exponent)) * (8 + mantissa) // 8
        if window > ZSTD_MAX_WINDOW:
            raise CodecError(
                f"zstd frame asks for a {window}-byte window (at most {ZSTD_MAX_WINDOW})"
            )
    at = 5 + (0 if single else 1)
    fcs_len = (1, 2, 4, 8)[fcs_flag]
    if n < at + fcs_len:
        raise CodecError("zstd frame truncated in its header")
    size = _le(data, at, fcs_len) + (256 if fcs_len == 2 else 0)
    at += fcs_len
    while True:
        if n < at + 3:
            raise CodecError("zstd frame truncated (block header)")
        header = _le(data, at, 3)
        at += 3
        last, kind, length = header & 1, header >> 1 & 3, header >> 3
        if kind == 3:
            raise CodecError("zstd frame has a block of the reserved type")
        if length > _ZSTD_BLOCK_MAX:
            raise CodecError(f"zstd block of {length} bytes exceeds the 128 KiB maximum")
        at += 1 if kind == 1 else length  # an RLE block stores one byte
        if at > n:
            raise CodecError("zstd frame truncated (block body)")
        if last:
            break
    at += 4 * checksum
    if at > n:
        raise CodecError("zstd frame truncated (checksum)")
    if at != n:
        raise CodecError(f"{n - at} byte(s) after the end of the zstd frame")
    return FrameInfo(size, at, bool(checksum))


# ---------------------------------------------------------------- LZ4 frame format 1.6

_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_LZ4_BLOCK_MAX = {4: 64 * 1024, 5: 256 * 1024, 6: 1024 * 1024, 7: 4 * 1024 * 1024}


def lz4_frame(data: bytes) -> FrameInfo:
    """Walk one LZ4 frame that must fill ``data`` exactly; CodecError if it does not.

    Refused: another version, a dictionary, a frame without its content size, reserved
    bits set, a block larger than the frame's block maximum, truncation, trailing bytes.
    """
    n = len(data)
    if n < 7 or data[:4] != _LZ4_MAGIC:
        raise CodecError("not an LZ4 frame (bad magic number)")
    flg, bd = data[4], data[5]
    if flg >> 6 != 1:
        raise CodecError(f"LZ4 frame version {flg >> 6} (only 1 exists)")
    if flg & 0x02 or bd & 0x8F:
        raise CodecError("LZ4 frame header has reserved bits set")
    if flg & 0x01:
        raise CodecError("LZ4 frame needs a dictionary (meshcc sends none)")
    if not flg & 0x08:
        raise CodecError("LZ4 frame does not state its decompressed size")
    block_max = _LZ4_BLOCK_MAX.get(bd >> 4 & 7)
    if block_max is None:
        raise CodecError(f"LZ4 frame block size code {bd >> 4 & 7} is invalid")
    block_checksum, checksum = flg >> 4 & 1, flg >> 2 & 1
    if n < 6 + 8 + 1:
        raise CodecError("LZ4 frame truncated in its header")
    size = _le(data, 6, 8)
    at = 6 + 8 + 1  # content size, then the header checksum byte
    while True:
        if n < at + 4:
            raise CodecError("LZ4 frame truncated (block header)")
        word = _le(data, at, 4)
        at += 4
        if word == 0:  # EndMark
            break
        length = word & 0x7FFFFFFF
        if length > block_max:
            raise CodecError(f"LZ4 block of {length} bytes exceeds the frame's {block_max}")
        at += length + 4 * block_checksum
        if at > n:
            raise CodecError("LZ4 frame truncated (block body)")
    at += 4 * checksum
    if at > n:
        raise CodecError("LZ4 frame truncated (checksum)")
    if at != n:
        raise CodecError(f"{n - at} byte(s) after the end of the LZ4 frame")
    return FrameInfo(size, at, bool(checksum))


def frame_info(name: str, data: bytes) -> FrameInfo:
    """Walk one body of codec ``name`` (``zstd`` or ``lz4``)."""
    if name == ZSTD:
        return zstd_frame(data)
    if name == LZ4:
        return lz4_frame(data)
    raise ValueError(f"no negotiable body codec {name!r}")
