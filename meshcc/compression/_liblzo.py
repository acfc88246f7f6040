"""LZO1X-1 compression through the system's liblzo2, when it is installed.

lzallright only offers LZO1X-999-style compression, which costs ~8 ms for a 114 KB
``.i`` on the compile client's hot path; liblzo2's ``lzo1x_1_compress`` takes ~0.1 ms
and is byte-identical to what distcc's miniLZO sends. The library is opened by soname
(no ``ctypes.util.find_library``, which would spawn processes), and only when first
needed. Decompression stays with lzallright plus the bounding scanner: that path must
be safe against hostile input, and it is not the hot one.
"""

from __future__ import annotations

import ctypes

_SONAMES = ("liblzo2.so.2", "liblzo2.so")


class LibLzo2:
    __slots__ = ("_fn", "_wrkmem")

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = lib.lzo1x_1_compress
        self._fn.restype = ctypes.c_int
        # Work memory: LZO1X_1_MEM_COMPRESS is 16384 dictionary entries of at most a
        # pointer each; one buffer per process (the wrapper compresses one body).
        self._wrkmem = ctypes.create_string_buffer(16384 * ctypes.sizeof(ctypes.c_void_p))

    def compress(self, data: bytes) -> bytes:
        # distcc's bound for incompressible input: in + in/64 + 16 + 3
        dst = ctypes.create_string_buffer(len(data) + len(data) // 64 + 16 + 3)
        dst_len = ctypes.c_size_t(len(dst))
        rc = self._fn(data, ctypes.c_size_t(len(data)), dst, ctypes.byref(dst_len), self._wrkmem)
        if rc != 0:
            raise OSError(f"lzo1x_1_compress failed with LZO error {rc}")
        return dst.raw[: dst_len.value]


def _abi_ok(lib: ctypes.CDLL) -> bool:
    """lzo_init(): the library checks our idea of its ABI (type sizes) against its own."""
    lib.lzo_version.restype = ctypes.c_uint
    p = ctypes.sizeof(ctypes.c_void_p)
    sizes = (
        ctypes.sizeof(ctypes.c_short),
        ctypes.sizeof(ctypes.c_int),
        ctypes.sizeof(ctypes.c_long),
        4,
        ctypes.sizeof(ctypes.c_size_t),
        p,
        p,
        p,
        6 * p,
    )
    rc: int = lib.__lzo_init_v2(ctypes.c_uint(lib.lzo_version()), *sizes)  # restype c_int
    return rc == 0


def load() -> LibLzo2 | None:
    """The system liblzo2 compressor, or None when it is absent or unusable."""
    for name in _SONAMES:
        try:
            lib = ctypes.CDLL(name)
            if _abi_ok(lib):
                return LibLzo2(lib)
        except (OSError, AttributeError):
            continue
    return None
