"""Layer 2: body compression for the wire (none, LZO1X for distcc, LZ4 for meshcc peers).

- ``Codec.LZO``: one raw LZO1X block per body, as distcc protocols 2 and 3 send
  (no header, no uncompressed size). Compressed with ``lzallright`` (whose output
  liblzo2 and distcc's miniLZO decompress), or for large bodies with the system
  liblzo2's ``lzo1x_1`` when it is installed: lzallright's only level costs ~21 us/KB
  while loading liblzo2 through ctypes costs ~6 ms once, so liblzo2 pays off from
  ~256 KiB (typical C++ translation units). Always decompressed with ``lzallright``,
  bounded by the ``_lzoscan`` length scanner.
- ``Codec.LZ4``: meshcc-to-meshcc only. A 4-byte little-endian uncompressed size,
  then one LZ4 block (the ``lz4.block`` ``store_size`` layout), so the size is
  checked against ``max_size`` before anything is allocated.
- Empty bodies are ``b""`` both ways for every codec, as distcc sends an empty
  file as a zero-length token rather than LZO's 3-byte empty stream.

``lzallright`` and ``lz4`` are imported on first use only: the compile wrapper
imports this package on every compile and most compiles never need LZ4.
"""

from __future__ import annotations

__all__ = ["Codec", "CompressionError", "available", "codec_for_protocol", "compress", "decompress"]


class Codec:
    """Body codecs, as plain string constants: ``enum`` would cost the compile wrapper
    ~6 ms of imports on every distributed job."""

    NONE = "none"
    LZO = "lzo"
    LZ4 = "lz4"
    ALL = (NONE, LZO, LZ4)


class CompressionError(Exception):
    """Invalid compressed data, or output that would exceed ``max_size``."""


_LZ4_HEADER = 4
_LZ4_MAX = 0x7E000000  # LZ4_MAX_INPUT_SIZE: larger inputs cannot be one block

_lzo_compressor = None
_lzallright = None
_liblzo2: object = None  # None: not tried yet; False: absent
LIBLZO2_MIN_BYTES = 256 * 1024  # below this lzallright is cheaper than loading liblzo2
_lz4_block = None


def _lzo():  # -> module lzallright
    global _lzallright, _lzo_compressor
    if _lzallright is None:
        try:
            import lzallright
        except ImportError as e:
            raise CompressionError(f"LZO1X support needs the lzallright package: {e}") from None
        _lzo_compressor = lzallright.LZOCompressor()
        _lzallright = lzallright
    return _lzallright


def _lz4():  # -> module lz4.block
    global _lz4_block
    if _lz4_block is None:
        try:
            import lz4.block
        except ImportError as e:
            raise CompressionError(f"LZ4 support needs the lz4 package: {e}") from None
        _lz4_block = lz4.block
    return _lz4_block


def codec_for_protocol(version: int) -> str:
    """The body codec distcc uses for a protocol version (1: none, 2 and 3: LZO1X)."""
    if version == 1:
        return Codec.NONE
    if version in (2, 3):
        return Codec.LZO
    raise ValueError(f"no distcc protocol version {version!r} (expected 1, 2 or 3)")


def available(codec: str) -> bool:
    """Whether ``codec`` can be used here (its module imports)."""
    if codec == Codec.NONE:
        return True
    try:
        (_lzo if codec == Codec.LZO else _lz4)()
    except CompressionError:
        return False
    return True


def compress(codec: str, data: bytes) -> bytes:
    """Compress one body; ``b""`` stays ``b""``."""
    if not data:
        return b""
    if codec == Codec.NONE:
        return bytes(data)
    if codec == Codec.LZO:
        return _lzo_compress(data)
    if codec == Codec.LZ4:
        if len(data) > _LZ4_MAX:
            raise CompressionError(f"{len(data)} bytes is too large for one LZ4 block")
        return _lz4().compress(data, store_size=True)
    raise ValueError(f"not a Codec: {codec!r}")


def _lzo_compress(data: bytes) -> bytes:
    global _liblzo2
    if len(data) >= LIBLZO2_MIN_BYTES and _liblzo2 is None:
        from . import _liblzo

        _liblzo2 = _liblzo.load() or False
    if len(data) >= LIBLZO2_MIN_BYTES and _liblzo2:
        return _liblzo2.compress(data)  # type: ignore[attr-defined]
    _lzo()
    return _lzo_compressor.compress(data)  # type: ignore[union-attr]


def decompress(codec: str, data: bytes, max_size: int) -> bytes:
    """Decompress one body, refusing invalid data and output over ``max_size`` bytes.

    The size is known before any output is allocated: LZ4 stores it, and an
    LZO1X stream that could exceed ``max_size`` is scanned first.
    """
    if not data:
        return b""
    if codec == Codec.NONE:
        if len(data) > max_size:
            raise CompressionError(f"body of {len(data)} bytes exceeds the limit of {max_size}")
        return bytes(data)
    if codec == Codec.LZO:
        return _decompress_lzo(data, max_size)
    if codec == Codec.LZ4:
        return _decompress_lz4(data, max_size)
    raise ValueError(f"not a Codec: {codec!r}")


def _decompress_lzo(data: bytes, max_size: int) -> bytes:
    lzallright = _lzo()
    from . import _lzoscan as scan

    hint = None
    if len(data) * scan.MAX_RATIO > max_size:
        try:
            hint = scan.decompressed_size(data, max_size)
        except scan.LzoTooLarge as e:
            raise CompressionError(
                f"LZO1X body of {len(data)} bytes expands to more than {max_size} bytes"
                f" (at least {e.args[0]})"
            ) from None
        except scan.LzoScanError as e:
            raise CompressionError(f"invalid LZO1X data: {e}") from None
    try:
        out = lzallright.LZOCompressor.decompress(data, hint)
    except lzallright.InputNotConsumed:
        raise CompressionError("invalid LZO1X data: bytes after the end marker") from None
    except lzallright.LZOError as e:
        reason = e.args[0] if e.args else e
        raise CompressionError(f"invalid LZO1X data: {reason}") from None
    if len(out) > max_size or (hint is not None and len(out) != hint):
        raise CompressionError(
            f"LZO1X body decompressed to {len(out)} bytes (limit {max_size}, scanned {hint})"
        )
    return out


def _decompress_lz4(data: bytes, max_size: int) -> bytes:
    block = _lz4()
    if len(data) <= _LZ4_HEADER:
        raise CompressionError(f"LZ4 body of {len(data)} bytes is too short")
    size = int.from_bytes(data[:_LZ4_HEADER], "little")
    if size > max_size:
        raise CompressionError(f"LZ4 body declares {size} bytes, over the limit of {max_size}")
    if size == 0:
        raise CompressionError("LZ4 body declares 0 bytes (empty bodies are sent empty)")
    try:
        with memoryview(data) as view:
            out = block.decompress(view[_LZ4_HEADER:], uncompressed_size=size)
    except block.LZ4BlockError as e:
        raise CompressionError(f"invalid LZ4 data: {e}") from None
    if len(out) != size:
        raise CompressionError(f"LZ4 body decompressed to {len(out)} bytes, declared {size}")
    return out
