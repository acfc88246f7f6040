"""LZO1X through the system's liblzo2 (Debian's liblzo2-2), when it is installed.

Why: lzallright only offers LZO1X-999-style compression, ~2.5-4 ms per 100 KB of ``.i`` on
the compile client's hot path; liblzo2's ``lzo1x_1_compress`` (the algorithm distcc's
bundled miniLZO runs) takes ~0.3 ms, and its output is what distccd expects.
``lzo1x_decompress_safe`` is liblzo2's decoder for untrusted input (it checks every read
and write against both buffers), so with it the client never imports lzallright at all.

Why ``_ctypes`` and not ``ctypes``: ``import ctypes`` costs ~2.5-5 ms (its module defines
every C type and imports ``struct``), as much as the compression it saves; the C module
under it costs ~0.5-0.9 ms. This module defines the three C types it needs itself. Every
step is checked when the library is loaded (``lzo_init`` compares our idea of the ABI's
type sizes with the library's); anything unexpected there, including a future Python
whose ``_ctypes`` differs, makes ``load()`` return None and meshcc uses lzallright.

The library is opened by soname (no ``ctypes.util.find_library``, which spawns processes),
and only when first needed.
"""

from __future__ import annotations

import _ctypes as _c

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - typeshed makes _SimpleCData generic; _ctypes does not
    _SimpleInt = _c._SimpleCData[int]
    _SimpleBytes = _c._SimpleCData[bytes]
else:
    _SimpleInt = _SimpleBytes = _c._SimpleCData

_SONAMES = ("liblzo2.so.2", "liblzo2.so")
_RTLD_NOW = 2  # <dlfcn.h> on Linux; RTLD_LOCAL is 0
LZO_E_OK = 0
LZO_E_INPUT_OVERRUN = -4
LZO_E_OUTPUT_OVERRUN = -5
LZO_E_LOOKBEHIND_OVERRUN = -6
LZO_E_INPUT_NOT_CONSUMED = -8


class _Int(_SimpleInt):
    _type_ = "i"


class _SizeT(_SimpleInt):
    """lzo_uint is size_t, which Linux ABIs (LP64 and ILP32) make unsigned long."""

    _type_ = "L"


class _Char(_SimpleBytes):
    _type_ = "c"


class _IntFn(_c.CFuncPtr):
    """A C function returning int; ctypes releases the GIL around the call."""

    _flags_ = _c.FUNCFLAG_CDECL
    _restype_ = _Int


# A pointer is as wide as a long on every Linux ABI (LP64, ILP32); lzo_init checks it.
# (Each ctypes type defined here costs ~0.25 M instructions per compile, hence so few:
# lzo_version's unsigned result and lzo_init's unsigned argument travel as int.)
_PTR = _c.sizeof(_SizeT)
# LZO1X_1_MEM_COMPRESS: 16384 dictionary entries of one pointer each (lzo_sizeof_dict_t).
_WRKMEM = 16384 * _PTR
# Decompression output buffers up to this size are kept for reuse, at most this many (one
# per worker thread that decompresses at once is enough); bigger ones are freed at once.
_POOLED_MAX = 16 * 1024 * 1024
_POOLED_COUNT = 4


def _ptr(buf: bytearray) -> object:
    """A pointer to the start of ``buf``, for liblzo2 to write into: a bytearray rather
    than a ctypes array, because every distinct array length creates a C type that
    ``_ctypes`` caches for the life of the process (a leak in a long-running daemon)."""
    return _c.byref(_Char.from_buffer(buf))


class LzoError(Exception):
    """liblzo2 refused the data; args[0] is its LZO_E_* code."""


class LibLzo2:
    """lzo1x_1_compress and lzo1x_decompress_safe of one loaded liblzo2."""

    __slots__ = ("_compress", "_decompress", "_outbufs", "_wrkmem")

    def __init__(self, handle: int) -> None:
        self._compress = _IntFn(_c.dlsym(handle, "lzo1x_1_compress"))
        self._decompress = _IntFn(_c.dlsym(handle, "lzo1x_decompress_safe"))
        # Work memory, one per concurrent caller: the daemon compresses in worker
        # threads, and two compressions sharing one dictionary would corrupt each other.
        # list.pop/append are atomic under the GIL, so no lock (and no threading import).
        self._wrkmem: list[bytearray] = []
        # Decompression output buffers kept for the next call (same reasoning, bounded).
        self._outbufs: list[bytearray] = []

    def compress(self, data: bytes) -> bytes:
        """One raw LZO1X-1 block of ``data`` (no header), as distcc sends bodies."""
        n = len(data)
        # liblzo2's bound for incompressible input: n + n/16 + 64 + 3
        dst = bytearray(n + n // 16 + 64 + 3)
        dst_len = _SizeT(len(dst))
        try:
            wrk = self._wrkmem.pop()
        except IndexError:
            wrk = bytearray(_WRKMEM)
        try:
            rc = self._compress(bytes(data), _SizeT(n), _ptr(dst), _c.byref(dst_len), _ptr(wrk))
        finally:
            self._wrkmem.append(wrk)
        if rc != LZO_E_OK:
            raise LzoError(rc)
        return bytes(memoryview(dst)[: dst_len.value])

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """The output of the LZO1X stream ``data``, at most ``max_size`` bytes.

        The size is not sent, so the output buffer starts at 8x the input (objects and
        sources compress 3-5x) and doubles while liblzo2 reports it too small, up to
        ``max_size``: the last try fails with LZO_E_OUTPUT_OVERRUN when it would pass it.

        Runs for every job the daemon serves, so it copies as little as it can: ``bytes``
        input goes to liblzo2 as it is, and the output buffer comes from a small pool
        (a new bytearray is zeroed, and one of 8x a 100 KB source is a fresh mmap whose
        pages all fault in); the result is one copy of the bytes written.
        """
        src = data if type(data) is bytes else bytes(data)
        want = min(max_size, max(len(src) * 8, 4096))
        pool = self._outbufs
        try:
            dst = pool.pop()
        except IndexError:
            dst = bytearray(max(want, 1))  # from_buffer refuses an empty buffer
        try:
            while True:
                if len(dst) < want:
                    dst = bytearray(want)
                cap = min(len(dst), max_size)  # a larger pooled buffer may take more
                dst_len = _SizeT(cap)
                rc = self._decompress(src, _SizeT(len(src)), _ptr(dst), _c.byref(dst_len), None)
                if rc == LZO_E_OK:
                    return bytes(memoryview(dst)[: dst_len.value])
                if rc != LZO_E_OUTPUT_OVERRUN or cap >= max_size:
                    raise LzoError(rc)
                want = min(max_size, cap * 2)
        finally:
            if len(dst) <= _POOLED_MAX and len(pool) < _POOLED_COUNT:
                pool.append(dst)


def _abi_ok(handle: int) -> bool:
    """lzo_init(): the library checks our idea of its ABI (type sizes) against its own."""
    version = _IntFn(_c.dlsym(handle, "lzo_version"))()
    init = _IntFn(_c.dlsym(handle, "__lzo_init_v2"))
    sizes = (
        2,  # short
        _c.sizeof(_Int),
        _c.sizeof(_SizeT),  # long
        4,  # lzo_uint32_t
        _c.sizeof(_SizeT),  # lzo_uint
        _PTR,  # lzo_sizeof_dict_t
        _PTR,  # char *
        _PTR,  # lzo_voidp
        6 * _PTR,  # lzo_callback_t: six pointers
    )
    return bool(init(_Int(version), *(_Int(s) for s in sizes)) == LZO_E_OK)


def load() -> LibLzo2 | None:
    """The system liblzo2, or None when it is absent or unusable."""
    for name in _SONAMES:
        try:
            handle = _c.dlopen(name, _RTLD_NOW)
            if _abi_ok(handle):
                return LibLzo2(handle)
        except (OSError, AttributeError, TypeError):
            continue
    return None
