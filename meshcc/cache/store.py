"""Results on disk: one file per key, checked by hash when read, bounded by an LRU.

Layout: ``DIR/v1/ab/<64 hex key>`` (``ab`` = the key's first two digits, so no directory
grows past a few thousand names). An entry file is::

    MAGIC (8 bytes) | SHA-256 of everything after it (32) | key (32, binary)
    | wait status, len(stderr), len(stdout), len(object) (4 x uint32, big-endian)
    | stderr | stdout | object

exactly the bytes the compiler gave. The same bytes travel between peers (the home
peer's GET and PUT), so a receiver checks them the same way.

Why no fsync: an entry is written to a temp file in its directory and renamed into
place, so a reader never sees a half-written name; after a power cut the renamed file
may still be short or zeroed, and the hash check on read turns that into a miss and a
removal (one log line), which is what a corrupt entry gets anyway. Temp files left by a
crash are removed at start.

Why LRU by mtime: a hit sets the entry's mtime (one ``utime``), so the order survives a
restart: at start the directory is scanned once and ordered by mtime. The index (key ->
size) lives in memory: about 215 bytes per entry (measured: benchmarks/bench_cache.py),
21 MB for 100 000 objects.

Thread-safe (one lock): the server calls it from worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass

from meshcc.cache.key import is_key

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_ENTRY",
    "CorruptEntry",
    "DiskStore",
    "Entry",
    "default_dir",
    "parse_size",
]

log = logging.getLogger("meshcc.cache")

DEFAULT_LIMIT = 2 * 1024**3  # 2 GiB: a desktop's share; ~10-20 builds of a large project
MAX_ENTRY = 64 * 1024 * 1024  # larger results are compiled again rather than stored
_MAGIC = b"MCCRES1\n"
_HEAD = struct.Struct(">IIII")
_PREFIX = len(_MAGIC) + 32  # magic + digest
_VERSION_DIR = "v1"
_TMP_PREFIX = ".tmp-"


class CorruptEntry(Exception):
    """An entry's bytes do not check out (bad magic, hash, key or lengths)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One compile's result as the compiler gave it (only successful ones are stored)."""

    wait_status: int
    stderr: bytes
    stdout: bytes
    obj: bytes

    @property
    def size(self) -> int:
        return _PREFIX + 32 + _HEAD.size + len(self.stderr) + len(self.stdout) + len(self.obj)

    def encode(self, key: str) -> bytes:
        body = (
            bytes.fromhex(key)
            + _HEAD.pack(self.wait_status, len(self.stderr), len(self.stdout), len(self.obj))
            + self.stderr
            + self.stdout
            + self.obj
        )
        return _MAGIC + hashlib.sha256(body).digest() + body

    @classmethod
    def decode(cls, key: str, blob: bytes) -> Entry:
        """The entry in ``blob``, checked against ``key``; raises CorruptEntry."""
        if len(blob) < _PREFIX + 32 + _HEAD.size or not blob.startswith(_MAGIC):
            raise CorruptEntry("not an entry (bad magic or too short)")
        digest = blob[len(_MAGIC) : _PREFIX]
        body = memoryview(blob)[_PREFIX:]
        if hashlib.sha256(body).digest() != digest:
            raise CorruptEntry("hash mismatch")
        if bytes(body[:32]) != bytes.fromhex(key):
            raise CorruptEntry("entry is for another key")
        status, n_err, n_out, n_obj = _HEAD.unpack_from(body, 32)
        at = 32 + _HEAD.size
        if at + n_err + n_out + n_obj != len(body):
            raise CorruptEntry("lengths do not add up")
        err = bytes(body[at : at + n_err])
        out = bytes(body[at + n_err : at + n_err + n_out])
        obj = bytes(body[at + n_err + n_out :])
        return cls(status, err, out, obj)


def default_dir(euid: int | None = None) -> str:
    """systemd's CacheDirectory= ($CACHE_DIRECTORY), /var/cache/meshcc as root, else the
    user's XDG cache dir; ``results`` below it (``ccache`` beside it is --ccache's)."""
    systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd and os.path.isabs(systemd):
        return os.path.join(systemd, "results")
    if (os.geteuid() if euid is None else euid) == 0:
        return "/var/cache/meshcc/results"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "meshcc", "results")


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``2G``, ``500M``, ``1.5g``, ``123456`` (bytes), ``2GiB``; raises ValueError."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    number = t[: len(t) - len(unit)] if unit else t
    value = float(number)  # ValueError for junk
    if not 0 <= value < float("inf"):  # also NaN
        raise ValueError(f"not a size: {text!r}")
    return int(value * _UNITS[unit])


class DiskStore:
    """The entries under one directory, at most ``limit`` bytes of them."""

    def __init__(self, root: str, limit: int = DEFAULT_LIMIT) -> None:
        self.root = root
        self.dir = os.path.join(root, _VERSION_DIR)
        self.limit = limit
        self.max_entry = min(MAX_ENTRY, max(limit // 2, 1))  # one entry never flushes all
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> size, oldest first
        self.total = 0
        self.evicted = 0
        self.corrupt = 0

    # -- start

    def open(self) -> None:
        """Create the directory (0700) and index what is there. Blocking; raises OSError."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        found: list[tuple[int, str, int]] = []
        with os.scandir(self.dir) as top:
            for sub in top:
                if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
                    continue
                with os.scandir(sub.path) as entries:
                    for e in entries:
                        if e.name.startswith(_TMP_PREFIX):  # a crash mid-write
                            with contextlib.suppress(OSError):
                                os.unlink(e.path)
                            continue
                        if not is_key(e.name) or not e.is_file(follow_symlinks=False):
                            continue
                        st = e.stat(follow_symlinks=False)
                        found.append((st.st_mtime_ns, e.name, st.st_size))
        found.sort()
        with self._lock:
            self._index.clear()
            self.total = 0
            for _, key, size in found:
                self._index[key] = size
                self.total += size
            victims = self._evict_locked()
        self._unlink(victims)

    # -- entries

    def path(self, key: str) -> str:
        return os.path.join(self.dir, key[:2], key)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def get_blob(self, key: str) -> bytes | None:
        """The checked entry bytes for ``key`` (for a peer's GET), or None. Blocking."""
        if not is_key(key):
            return None
        with self._lock:
            if key not in self._index:
                return None
            self._index.move_to_end(key)
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                blob = f.read(MAX_ENTRY + 1)
            Entry.decode(key, blob)
        except OSError:
            self._forget(key)  # removed behind our back (meshcc cache clear)
            return None
        except CorruptEntry as e:
            self.corrupt += 1
            log.warning("result cache: discarding corrupt entry %s: %s", key, e)
            self._forget(key)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the LRU order, kept across restarts
        return blob

    def get(self, key: str) -> Entry | None:
        """The checked entry for ``key``, or None (a corrupt one is discarded). Blocking."""
        blob = self.get_blob(key)
        return None if blob is None else Entry.decode(key, blob)

    def put(self, key: str, entry: Entry) -> bool:
        """Store an entry (atomically); False if it is too large. Blocking."""
        return self.put_blob(key, entry.encode(key))

    def put_blob(self, key: str, blob: bytes) -> bool:
        """Store checked entry bytes (a peer's PUT); raises CorruptEntry if they do not
        check out; False if too large or not writable. Blocking."""
        if not is_key(key):
            raise CorruptEntry("not a key")
        if len(blob) > self.max_entry:
            return False
        Entry.decode(key, blob)
        sub = os.path.join(self.dir, key[:2])
        try:
            os.makedirs(sub, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=sub)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, os.path.join(sub, key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            log.warning("result cache: cannot store %s: %s", key, e.strerror or e)
            return False
        with self._lock:
            old = self._index.pop(key, 0)
            self._index[key] = len(blob)
            self.total += len(blob) - old
            victims = self._evict_locked()
        self._unlink(victims)
        return True

    def clear(self) -> int:
        """Remove every entry; returns how many there were. Blocking."""
        with self._lock:
            n = len(self._index)
            self._index.clear()
            self.total = 0
        # Files only: the directories stay, owned by whoever made them (the daemon's user:
        # `meshcc cache clear` run as root must not leave it directories it cannot write).
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dir) as top:
            for sub in top:
                if not sub.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(sub.path) as entries:
                    for e in entries:
                        if is_key(e.name) or e.name.startswith(_TMP_PREFIX):
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(e.path)
        return n

    # -- internals

    def _forget(self, key: str) -> None:
        with self._lock:
            size = self._index.pop(key, None)
            if size is not None:
                self.total -= size

    def _evict_locked(self) -> list[str]:
        victims = []
        while self.total > self.limit and self._index:
            key, size = self._index.popitem(last=False)
            self.total -= size
            self.evicted += 1
            victims.append(key)
        return victims

    def _unlink(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(OSError):
                os.unlink(self.path(key))
