"""Direct mode's hash cache: an include file is hashed once per build, not once per job.

Recording a direct-mode manifest (:meth:`meshcc.client.direct.Direct.record`) needs the
SHA-256 of every file the preprocessor read. The jobs of one build read mostly the same
headers (every zlib job reads the same ~70 files, ~0.5 MB), so without a cache each
job hashes them all again: measured 2-4 ms of CPU per job, plus reading them and
searching them for ``__DATE__``/``__TIME__``/``__TIMESTAMP__``.

**What an entry says**: "the file with this (device, inode, size, mtime_ns, ctime_ns)
holds bytes with this SHA-256 and none of the clock macros". The lookup side already
trusts exactly that stat for a hit (a manifest's file is accepted when its size, mtime
and ctime are unchanged, without hashing it), so a cache entry adds no trust the
manifest does not already give. ``touch -d`` can restore an mtime but not a ctime
(the kernel sets it on every change, and only a clock change can set it back); a file
deleted and created again with the same inode gets a new ctime. An entry is written
only for a file whose mtime and ctime were older than the too-new margin when it was
hashed, and whose stat was the same before and after the read (the caller's rules), so a
change in the same clock tick as the hash cannot hide behind an equal ctime.

**Where it lives, and who may write it**: ``$DISTCC_DIR/direct-<euid>/hashes``, one per
user. The daemon cannot hold it (it may run as another user and cannot read the user's
files to check a hash). A planted entry would let a manifest claim a hash the file never
had, so the cache is used only if the directory is a real directory (not a symlink)
owned by this process's effective uid and not writable by group or others, and the file
a regular file with the same owner and modes; anything else is ignored (each file is
then hashed, as without a cache). Both are opened relative to descriptors, so a rename
between the check and the use changes nothing.

**Layout, bounds, concurrency**: a fixed table of :data:`SETS` sets of two 96-byte
slots (at most 3 MiB; a sparse file that grows only where entries are written). A
file's set is chosen by its (device, inode); a lookup is one ``pread`` of the set. A
slot is the 40-byte stat key, the 32-byte SHA-256, and a 24-byte check (SHA-256 of the
two): parallel jobs write slots with one ``pwrite`` each, without locks, and a torn or
interleaved slot fails its check and is ignored (a mixed slot must never pair one file's
key with another file's hash). A full set loses its older-looking entry; an evicted file
is hashed again. Nothing here is needed for correctness: every failure means "hash it".
"""

from __future__ import annotations

import posix

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

__all__ = ["SETS", "SLOT", "HashCache", "open_cache", "stat_key"]

SLOT = 96  # bytes: key 40, digest 32, check 24
WAYS = 2  # slots per set
SETS = 16384  # sets: 2 x 16384 x 96 bytes = 3 MiB at most
_KEY = 40
_DIGEST = 32
_CHECK_AT = _KEY + _DIGEST
_MAGIC = b"meshcc-hashcache 1\0"
_SPREAD = 0x9E3779B97F4A7C15  # spreads device numbers over the sets (Fibonacci hashing)
_O_DIR = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC
_O_FILE = posix.O_RDWR | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_CLOEXEC
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000


def stat_key(st: posix.stat_result) -> bytes:
    """The 40 bytes an entry is found by: device, inode, size, mtime_ns, ctime_ns."""
    return b"".join(
        n.to_bytes(8, "big", signed=True)
        for n in (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    )


def _private(st: posix.stat_result, kind: int, euid: int) -> bool:
    return st.st_mode & _S_IFMT == kind and st.st_uid == euid and not st.st_mode & 0o022


class HashCache:
    """An open hash cache file (see the module docstring). ``sha256``: the constructor of
    the SHA-256 the caller uses (the slot check uses the same one: no second import)."""

    def __init__(self, fd: int, sha256: Callable[[bytes], object]) -> None:
        self.fd = fd
        self._sha256 = sha256
        self._sets: dict[int, bytes] = {}  # set number -> its bytes as last read

    def _check(self, key: bytes, digest: bytes) -> bytes:
        h = self._sha256(_MAGIC + key + digest)
        return h.digest()[: SLOT - _CHECK_AT]  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def _set_of(st: posix.stat_result) -> int:
        return ((st.st_ino ^ (st.st_dev * _SPREAD)) & 0xFFFFFFFFFFFFFFFF) % SETS

    def _read_set(self, n: int) -> bytes:
        try:
            data = posix.pread(self.fd, SLOT * WAYS, n * SLOT * WAYS)
        except OSError:
            data = b""
        data = data.ljust(SLOT * WAYS, b"\0")
        self._sets[n] = data
        return data

    def get(self, st: posix.stat_result) -> bytes | None:
        """The SHA-256 of the file with stat ``st``, if an intact entry has it."""
        key = stat_key(st)
        data = self._read_set(self._set_of(st))
        for at in range(0, SLOT * WAYS, SLOT):
            if data[at : at + _KEY] == key:
                digest = data[at + _KEY : at + _CHECK_AT]
                if data[at + _CHECK_AT : at + SLOT] == self._check(key, digest):
                    return digest
        return None

    def put(self, st: posix.stat_result, digest: bytes) -> None:
        """Remember ``digest`` for the file with stat ``st`` (best effort). The caller
        vouches for the rules of the module docstring (old enough, unchanged while read,
        no clock macros)."""
        if len(digest) != _DIGEST:
            raise ValueError("a SHA-256 digest is 32 bytes")
        n = self._set_of(st)
        data = self._sets.get(n)
        if data is None:
            data = self._read_set(n)
        key = stat_key(st)
        way = self._victim(data, key)
        slot = key + digest + self._check(key, digest)
        try:
            posix.pwrite(self.fd, slot, (n * WAYS + way) * SLOT)
        except OSError:
            return
        self._sets[n] = data[: way * SLOT] + slot + data[(way + 1) * SLOT :]

    def _victim(self, data: bytes, key: bytes) -> int:
        """The slot of the set to write: the same file's (an older version of it), else an
        empty or broken one, else the one whose file changed longer ago (by ctime)."""
        intact = []
        for way in range(WAYS):
            slot = data[way * SLOT : (way + 1) * SLOT]
            if slot[:16] == key[:16]:
                return way
            ok = slot[_CHECK_AT:] == self._check(slot[:_KEY], slot[_KEY:_CHECK_AT])
            if not ok or not any(slot):
                return way
            intact.append((int.from_bytes(slot[32:40], "big", signed=True), way))
        return min(intact)[1]

    def close(self) -> None:
        try:
            posix.close(self.fd)
        except OSError:
            pass


def open_cache(top: str, sha256: Callable[[bytes], object]) -> HashCache | None:
    """This user's hash cache in distcc's top directory ``top`` (created if missing), or
    None when it cannot be opened or is not private to this user (then nothing is
    cached: every file is hashed)."""
    euid = posix.geteuid()
    name = f"{top}/direct-{euid}"
    try:
        posix.mkdir(name, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        dfd = posix.open(name, _O_DIR)
    except OSError:
        return None  # a symlink (ELOOP), not a directory, or unreadable
    try:
        if not _private(posix.fstat(dfd), _S_IFDIR, euid):
            return None
        fd = posix.open("hashes", _O_FILE, 0o600, dir_fd=dfd)
    except OSError:
        return None
    finally:
        posix.close(dfd)
    try:
        if _private(posix.fstat(fd), _S_IFREG, euid):
            return HashCache(fd, sha256)
    except OSError:
        pass
    posix.close(fd)
    return None
