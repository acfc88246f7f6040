"""Layer 2: body compression for the wire (none, or LZO1X as distcc sends it).

- ``Codec.LZO``: one raw LZO1X block per body, as distcc protocols 2 and 3 send
  (no header, no uncompressed size). When the system's liblzo2 is installed (Debian:
  liblzo2-2) both ways go through it (``_liblzo``): ``lzo1x_1_compress``, the algorithm
  of distcc's miniLZO, ~0.3 ms per 100 KB of ``.i``, and ``lzo1x_decompress_safe``.
  liblzo2 is an accelerator, used only where lzallright is installed (lzallright is
  what gives meshcc LZO; meshcc.pyz leaves it out). Without liblzo2, ``lzallright``
  (LZO1X-999-style, ~8-13x slower to compress; liblzo2 and miniLZO read its output).
  Either way, a body that could expand past the caller's cap is
  first measured by the ``_lzoscan`` length scanner, so no output is allocated for it.
- ``Codec.ZSTD`` and ``Codec.LZ4``: what meshcc peers negotiate (``meshcc.wire.codecs``),
  one frame per body with its size and a checksum (``_frames``); :func:`spoken` lists
  those this install can run (what the daemon announces), ``choose`` picks one per job.
- Empty bodies are ``b""`` both ways for every codec, as distcc sends an empty
  file as a zero-length token rather than LZO's 3-byte empty stream.

Both libraries are loaded on first use only: the compile wrapper imports this package
on every compile and protocol 1 jobs never need them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from typing import Literal

    from lzallright import LZOCompressor

    from ._liblzo import LibLzo2

__all__ = [
    "Codec",
    "CompressionError",
    "announced",
    "available",
    "codec_for_protocol",
    "compress",
    "decompress",
    "lzo_backend",
    "spoken",
]


class Codec:
    """Body codecs, as plain string constants: ``enum`` would cost the compile wrapper
    ~6 ms of imports on every distributed job."""

    NONE = "none"
    LZO = "lzo"
    ZSTD = "zstd"  # negotiated between meshcc peers only (wire.codecs)
    LZ4 = "lz4"  # negotiated between meshcc peers only (wire.codecs)
    NEGOTIATED = (ZSTD, LZ4)
    ALL = (NONE, LZO, ZSTD, LZ4)


class CompressionError(Exception):
    """Invalid compressed data, or output that would exceed ``max_size``."""


# _lzoscan.MAX_RATIO, repeated so that small bodies need not import the scanner (a test
# checks the two agree): every LZO1X input byte yields at most 255 output bytes.
_MAX_RATIO = 256
_lzo_compressor: LZOCompressor | None = None
_liblzo2: LibLzo2 | Literal[False] | None = None  # None: not tried yet; False: absent


def _lzo() -> LZOCompressor:
    """lzallright's compressor, importing lzallright on first use (CompressionError if absent)."""
    global _lzo_compressor
    if _lzo_compressor is None:
        try:
            import lzallright
        except ImportError as e:
            raise CompressionError(
                f"LZO1X support needs liblzo2 (liblzo2-2) or the lzallright package: {e}"
            ) from None
        _lzo_compressor = lzallright.LZOCompressor()
    return _lzo_compressor


def _lib() -> LibLzo2 | None:
    """The system liblzo2, loaded on first use (None when absent or unusable).

    Only where lzallright is installed: lzallright is what gives meshcc LZO support (a
    dependency of every install; meshcc.pyz leaves it out and speaks protocol 1 only, and
    says so), liblzo2 only makes it faster. So a pyz daemon on a box that has liblzo2
    still behaves as documented.
    """
    global _liblzo2
    if _liblzo2 is None:
        if _lzallright_installed():
            from . import _liblzo

            _liblzo2 = _liblzo.load() or False
        else:
            _liblzo2 = False
    return _liblzo2 or None


def _lzallright_installed() -> bool:
    """Whether ``import lzallright`` would find it, without importing it (~0.7 ms)."""
    import sys

    if sys.modules.get("lzallright") is not None:
        return True
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and find_spec("lzallright", None) is not None:
            return True
    return False


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
    if codec in Codec.NEGOTIATED:
        from . import _frames

        return _frames.available(codec)
    if codec != Codec.LZO:
        return False
    if _lib() is not None:
        return True
    try:
        _lzo()
    except CompressionError:
        return False
    return True


def lzo_backend() -> str | None:
    """What runs LZO here: ``"liblzo2"`` (the system library: distcc's algorithm and speed),
    ``"lzallright"`` (~8-13x slower to compress) or None (no LZO: protocol 1 only)."""
    if _lib() is not None:
        return "liblzo2"
    return "lzallright" if _lzallright_installed() else None


def spoken() -> tuple[str, ...]:
    """The negotiable codecs (zstd, lz4) this install can run: what a daemon announces."""
    return tuple(c for c in Codec.NEGOTIATED if available(c))


def announced() -> tuple[str, ...]:
    """What a daemon announces in its caps: :func:`spoken`, plus ``zref`` (it keeps zstd
    bodies as prefixes of later frames, ``compression.prefixes``) when it speaks zstd."""
    codecs = spoken()
    return (*codecs, "zref") if Codec.ZSTD in codecs else codecs


def compress(
    codec: str, data: bytes, level: int | None = None, prefix: bytes | None = None
) -> bytes:
    """Compress one body; ``b""`` stays ``b""``. ``level``: zstd/lz4 only (None: fastest).
    ``prefix``: zstd only, a raw-content prefix (an earlier body the peer keeps, ``zref``)."""
    if not data:
        return b""
    if codec == Codec.NONE:
        return bytes(data)
    if codec == Codec.LZO:
        return _lzo_compress(data)
    if codec in Codec.NEGOTIATED:
        from . import _frames

        try:
            return _frames.compress(codec, data, level, prefix)
        except _frames.FrameError as e:
            raise CompressionError(str(e)) from None
    raise ValueError(f"not a Codec: {codec!r}")


def _lzo_compress(data: bytes) -> bytes:
    lib = _lib()
    if lib is None:
        return _lzo().compress(data)
    from ._liblzo import LzoError

    try:
        return lib.compress(data)
    except LzoError as e:  # liblzo2 documents no failure of lzo1x_1_compress
        raise CompressionError(f"liblzo2 could not compress: LZO error {e.args[0]}") from None


def decompress(codec: str, data: bytes, max_size: int, prefix: bytes | None = None) -> bytes:
    """Decompress one body, refusing invalid data and output over ``max_size`` bytes.

    The size is known before any output is allocated: an LZO1X stream that could
    exceed ``max_size`` is scanned first. ``prefix``: zstd only, the raw-content prefix
    the frame was compressed against (the frame's checks are the same with or without).
    """
    if not data:
        return b""
    if codec == Codec.NONE:
        if len(data) > max_size:
            raise CompressionError(f"body of {len(data)} bytes exceeds the limit of {max_size}")
        return bytes(data)
    if codec == Codec.LZO:
        return _decompress_lzo(data, max_size)
    if codec in Codec.NEGOTIATED:
        from . import _frames

        try:
            return _frames.decompress(codec, data, max_size, prefix)
        except _frames.FrameError as e:
            raise CompressionError(str(e)) from None
    raise ValueError(f"not a Codec: {codec!r}")


def _decompress_lzo(data: bytes, max_size: int) -> bytes:
    lib = _lib()
    if lib is None:
        _lzo()  # CompressionError when lzallright is missing too
    hint = None
    if len(data) * _MAX_RATIO > max_size:
        from . import _lzoscan as scan  # only bodies that could pass the cap pay for it

        try:
            hint = scan.decompressed_size(data, max_size)
        except scan.LzoTooLarge as e:
            raise CompressionError(
                f"LZO1X body of {len(data)} bytes expands to more than {max_size} bytes"
                f" (at least {e.args[0]})"
            ) from None
        except scan.LzoScanError as e:
            raise CompressionError(f"invalid LZO1X data: {e}") from None
    if lib is not None:
        out = _decompress_liblzo2(lib, data, max_size if hint is None else hint)
    else:
        out = _decompress_lzallright(data, hint)
    if len(out) > max_size or (hint is not None and len(out) != hint):
        raise CompressionError(
            f"LZO1X body decompressed to {len(out)} bytes (limit {max_size}, scanned {hint})"
        )
    return out


def _decompress_liblzo2(lib: LibLzo2, data: bytes, max_size: int) -> bytes:
    from ._liblzo import LZO_E_INPUT_NOT_CONSUMED, LZO_E_OUTPUT_OVERRUN, LzoError

    try:
        return lib.decompress(data, max_size)
    except LzoError as e:
        rc = e.args[0]
        if rc == LZO_E_OUTPUT_OVERRUN:
            raise CompressionError(
                f"LZO1X body of {len(data)} bytes expands to more than {max_size} bytes"
            ) from None
        if rc == LZO_E_INPUT_NOT_CONSUMED:
            raise CompressionError("invalid LZO1X data: bytes after the end marker") from None
        raise CompressionError(f"invalid LZO1X data: liblzo2 error {rc}") from None


def _decompress_lzallright(data: bytes, hint: int | None) -> bytes:
    import lzallright

    try:
        return lzallright.LZOCompressor.decompress(data, hint)
    except lzallright.InputNotConsumed:
        raise CompressionError("invalid LZO1X data: bytes after the end marker") from None
    except lzallright.LZOError as e:
        reason = e.args[0] if e.args else e
        raise CompressionError(f"invalid LZO1X data: {reason}") from None
