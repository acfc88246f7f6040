"""zstd and LZ4 frames for the codecs meshcc peers negotiate (``meshcc.wire.codecs``).

Libraries: ``zstandard`` (python-zstandard, the zstd binding most projects use) and
``lz4`` (python-lz4), both loaded on first use through their C extensions only
(``_native``), so a compile that sends nothing compressed imports neither.

Every body is one frame with its decompressed size and a content checksum. Decompressing
walks the frame's headers first (``wire.codecs``): a frame that is truncated, has bytes
after it, needs a dictionary, or states no size or a size over the caller's cap is refused
before any output is allocated; then the library decodes into exactly the stated size
(zstd: one-shot into that buffer; LZ4: at most that many bytes) and verifies the checksum.
"""

from __future__ import annotations

from meshcc.wire import codecs as wire_codecs

from ._native import load_extension

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - `types` costs ~0.4 ms at run time
    from types import ModuleType

ZSTD_LEVEL = 1  # the fastest zstd level; 2-3 gain ~1-4 % on .i text for 2x the time
LZ4_LEVEL = 0  # LZ4's fast mode (levels >= 3 are LZ4-HC, ~10x slower)

_modules: dict[str, ModuleType | None] = {}


class FrameError(Exception):
    """A frame was refused or the library is missing: ``str(e)`` says why."""


def _load(codec: str) -> ModuleType:
    if codec not in _modules:
        package, ext = (
            ("zstandard", "backend_c") if codec == wire_codecs.ZSTD else ("lz4", "frame._frame")
        )
        mod = load_extension(package, ext)
        if mod is None:  # the regular import: slower, always right
            from importlib import import_module

            try:
                mod = import_module(f"{package}.{ext}")
            except ImportError:
                mod = None
        _modules[codec] = mod
    mod = _modules[codec]
    if mod is None:
        package = "zstandard" if codec == wire_codecs.ZSTD else "lz4"
        raise FrameError(f"{codec} needs the {package} package, which is not installed")
    return mod


def available(codec: str) -> bool:
    try:
        _load(codec)
    except FrameError:
        return False
    return True


def _no_prefix(codec: str, prefix: bytes | None) -> None:
    if prefix is not None and codec != wire_codecs.ZSTD:
        raise FrameError(f"{codec} takes no prefix (only zstd does)")


def compress(
    codec: str, data: bytes, level: int | None = None, prefix: bytes | None = None
) -> bytes:
    mod = _load(codec)
    _no_prefix(codec, prefix)
    if codec == wire_codecs.ZSTD:
        # A compressor per call: they are not thread-safe (the daemon compresses replies in
        # worker threads) and one costs a few microseconds. A prefix is loaded as raw
        # content (no dictionary id in the frame): its bytes are history the frame's
        # matches may reach back into, ~0.1-0.2 ms per 100 KB to index here.
        extra = {}
        if prefix:
            extra = {
                "dict_data": mod.ZstdCompressionDict(prefix, dict_type=mod.DICT_TYPE_RAWCONTENT),
                "write_dict_id": False,
            }
        z = mod.ZstdCompressor(
            level=ZSTD_LEVEL if level is None else level,
            write_content_size=True,
            write_checksum=True,
            **extra,
        )
        return bytes(z.compress(data))
    return bytes(
        mod.compress(
            data,
            compression_level=LZ4_LEVEL if level is None else level,
            content_checksum=True,
            store_size=True,
        )
    )


def decompress(codec: str, data: bytes, max_size: int, prefix: bytes | None = None) -> bytes:
    _no_prefix(codec, prefix)
    try:
        info = wire_codecs.frame_info(codec, data)
    except wire_codecs.CodecError as e:
        raise FrameError(str(e)) from None
    if info.content_size > max_size:
        raise FrameError(
            f"{codec} body of {len(data)} bytes states {info.content_size} bytes decompressed,"
            f" over the limit of {max_size}"
        )
    if not info.checksum:
        raise FrameError(f"{codec} frame without a content checksum (meshcc always sends one)")
    mod = _load(codec)
    # zstandard raises its ZstdError, python-lz4 a RuntimeError naming LZ4F's error.
    errors = (mod.ZstdError,) if codec == wire_codecs.ZSTD else (RuntimeError,)
    try:
        if codec == wire_codecs.ZSTD:
            # The walk refused larger windows; the library enforces the same bound.
            # A prefix is history only: the output is still exactly the stated size.
            ref = None
            if prefix:
                ref = mod.ZstdCompressionDict(prefix, dict_type=mod.DICT_TYPE_RAWCONTENT)
            dctx = mod.ZstdDecompressor(dict_data=ref, max_window_size=wire_codecs.ZSTD_MAX_WINDOW)
            out = bytes(dctx.decompress(data))
            whole = True
        else:
            ctx = mod.create_decompression_context()
            out, read, whole = mod.decompress_chunk(ctx, data, max_length=info.content_size)
            whole = whole and read == len(data)
    except errors as e:
        raise FrameError(f"corrupt {codec} body: {e}") from None
    if not whole or len(out) != info.content_size:
        raise FrameError(
            f"corrupt {codec} body: decodes to other than its stated {info.content_size} bytes"
        )
    return bytes(out)
