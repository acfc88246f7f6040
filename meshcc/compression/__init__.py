"""Layer 2: body compression for the wire (none, or LZO1X as distcc sends it).

- ``Codec.LZO``: one raw LZO1X block per body, as distcc protocols 2 and 3 send
  (no header, no uncompressed size). Compressed with ``lzallright`` (whose output
  liblzo2 and distcc's miniLZO decompress), or for large bodies with the system
  liblzo2's ``lzo1x_1`` when it is installed: lzallright's only level costs ~21 us/KB
  while loading liblzo2 through ctypes costs ~6 ms once, so liblzo2 pays off from
  ~256 KiB (typical C++ translation units). Always decompressed with ``lzallright``,
  bounded by the ``_lzoscan`` length scanner.
- Empty bodies are ``b""`` both ways for every codec, as distcc sends an empty
  file as a zero-length token rather than LZO's 3-byte empty stream.

``lzallright`` is imported on first use only: the compile wrapper imports this package
on every compile and protocol 1 jobs never need it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from typing import Literal

    from lzallright import LZOCompressor

    from ._liblzo import LibLzo2

__all__ = ["Codec", "CompressionError", "available", "codec_for_protocol", "compress", "decompress"]


class Codec:
    """Body codecs, as plain string constants: ``enum`` would cost the compile wrapper
    ~6 ms of imports on every distributed job."""

    NONE = "none"
    LZO = "lzo"
    ALL = (NONE, LZO)


class CompressionError(Exception):
    """Invalid compressed data, or output that would exceed ``max_size``."""


_lzo_compressor: LZOCompressor | None = None
_liblzo2: LibLzo2 | Literal[False] | None = None  # None: not tried yet; False: absent
LIBLZO2_MIN_BYTES = 256 * 1024  # below this lzallright is cheaper than loading liblzo2


def _lzo() -> LZOCompressor:
    """lzallright's compressor, importing lzallright on first use (CompressionError if absent)."""
    global _lzo_compressor
    if _lzo_compressor is None:
        try:
            import lzallright
        except ImportError as e:
            raise CompressionError(f"LZO1X support needs the lzallright package: {e}") from None
        _lzo_compressor = lzallright.LZOCompressor()
    return _lzo_compressor


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
    if codec != Codec.LZO:
        return False
    try:
        _lzo()
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
    raise ValueError(f"not a Codec: {codec!r}")


def _lzo_compress(data: bytes) -> bytes:
    global _liblzo2
    if len(data) >= LIBLZO2_MIN_BYTES and _liblzo2 is None:
        from . import _liblzo

        _liblzo2 = _liblzo.load() or False
    if len(data) >= LIBLZO2_MIN_BYTES and _liblzo2:
        return _liblzo2.compress(data)
    return _lzo().compress(data)


def decompress(codec: str, data: bytes, max_size: int) -> bytes:
    """Decompress one body, refusing invalid data and output over ``max_size`` bytes.

    The size is known before any output is allocated: an LZO1X stream that could
    exceed ``max_size`` is scanned first.
    """
    if not data:
        return b""
    if codec == Codec.NONE:
        if len(data) > max_size:
            raise CompressionError(f"body of {len(data)} bytes exceeds the limit of {max_size}")
        return bytes(data)
    if codec == Codec.LZO:
        return _decompress_lzo(data, max_size)
    raise ValueError(f"not a Codec: {codec!r}")


def _decompress_lzo(data: bytes, max_size: int) -> bytes:
    _lzo()  # CompressionError when lzallright is missing
    import lzallright

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
