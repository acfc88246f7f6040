"""LZO1X helpers: an output-length scanner that allocates nothing.

distcc sends each bulk body as one raw LZO1X block with no uncompressed size,
and ``lzallright``'s decompressor grows its output without a cap, so a tiny
hostile body could expand ~255x. Before decompressing a body that could exceed
the caller's cap, ``decompressed_size`` walks the instruction stream, summing
literal and match lengths, and stops as soon as the total passes the limit.

Instruction set (LZO1X, as liblzo2's ``lzo1x_decompress_safe`` reads it). The
parser has a "state": 0 after a match with no trailing literals (and at the
start), 1-3 after a match followed by that many literals, 4 after a literal run.

- first byte > 17: ``b - 17`` literals follow; state 4 if >= 4, else that count.
- 0-15 in state 0: literal run of ``b + 3`` (``b == 0``: extended length).
- 0-15 in state 1-3: M1, 2-byte match (1 more byte: distance).
- 0-15 in state 4: M1, 3-byte match (1 more byte: distance).
- 64-255: M2, length ``(b >> 5) + 1`` (1 more byte: distance).
- 32-63: M3, length ``(b & 31) + 2`` (0: extended), then a 2-byte distance.
- 16-31: M4, length ``(b & 7) + 2`` (0: extended), then a 2-byte distance;
  a distance of 0 is the end-of-stream marker.
- Extended lengths: each zero byte adds 255, then a non-zero byte adds its
  value plus the field's base (15 for literal runs, 31 for M3, 7 for M4).
- After every match, the low 2 bits of the byte two positions back (the
  instruction for M1/M2, the first distance byte for M3/M4) give the number of
  literals (0-3) that follow directly, and the next state.
"""

from __future__ import annotations

# Every input byte yields at most 255 output bytes (the extended-length zero
# byte is the best case), so bodies with len * MAX_RATIO <= cap need no scan.
MAX_RATIO = 256


class LzoScanError(Exception):
    """The stream is malformed (truncated or trailing bytes)."""


class LzoTooLarge(Exception):
    """The stream would expand beyond the limit; args[0] is the size reached."""


_nonzero = None


def _skip_zeros(data: bytes, ip: int) -> int:
    """Index of the first non-zero byte at or after ``ip`` (len(data) if none)."""
    global _nonzero
    if _nonzero is None:
        import re  # only scanned (large) bodies pay for it

        _nonzero = re.compile(rb"[^\x00]")
    m = _nonzero.search(data, ip)
    return m.start() if m else len(data)


def decompressed_size(data: bytes, limit: int) -> int:
    """Exact output length of the LZO1X stream ``data``.

    Raises LzoTooLarge as soon as the output would pass ``limit``, and
    LzoScanError if the stream is truncated or has bytes after its end marker.
    Back-reference distances are not checked here (the decoder does that).
    """
    n = len(data)
    ip = 0
    out = 0
    state = 0
    try:
        if data[0] > 17:
            t = data[0] - 17
            ip = 1 + t
            out = t
            state = 4 if t >= 4 else t
        while True:
            if ip >= n:
                raise IndexError
            inst = data[ip]
            ip += 1
            if inst >= 64:  # M2
                out += (inst >> 5) + 1
                ip += 1
                st = inst & 3
            elif inst >= 32:  # M3
                length = inst & 31
                if length == 0:
                    if data[ip] == 0:
                        z = _skip_zeros(data, ip)
                        length = 255 * (z - ip)
                        ip = z
                    length += 31 + data[ip]
                    ip += 1
                out += length + 2
                st = data[ip] & 3
                ip += 2
            elif inst >= 16:  # M4 or end of stream
                length = inst & 7
                if length == 0:
                    if data[ip] == 0:
                        z = _skip_zeros(data, ip)
                        length = 255 * (z - ip)
                        ip = z
                    length += 7 + data[ip]
                    ip += 1
                lo = data[ip]
                hi = data[ip + 1]
                ip += 2
                if not (inst & 8) and lo < 4 and hi == 0:  # distance 0: the end marker
                    break
                out += length + 2
                st = lo & 3
            elif state == 0:  # literal run
                length = inst
                if length == 0:
                    if data[ip] == 0:
                        z = _skip_zeros(data, ip)
                        length = 255 * (z - ip)
                        ip = z
                    length += 15 + data[ip]
                    ip += 1
                out += length + 3
                ip += length + 3
                state = 4
                if out > limit:
                    raise LzoTooLarge(out)
                continue
            else:  # M1: 3 bytes right after a literal run, else 2
                out += 3 if state == 4 else 2
                ip += 1
                st = inst & 3
            # trailing literals after a match
            out += st
            ip += st
            state = st
            if out > limit:
                raise LzoTooLarge(out)
    except IndexError:
        raise LzoScanError("truncated LZO1X stream (no end marker)") from None
    if ip > n:
        raise LzoScanError("truncated LZO1X stream (no end marker)")
    if ip < n:
        raise LzoScanError(f"{n - ip} byte(s) after the end marker")
    if out > limit:
        raise LzoTooLarge(out)
    return out
