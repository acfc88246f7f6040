"""The compile client's kept bodies: the prefix of its next zstd frame to the same peer (``zref``).

meshcc-gcc is one process per job, so what the next job needs from this one is on disk:
after a job's reply came back (the server then holds the body under the id this job gave
it, ``ZNEW``), the body is kept in ``$DISTCC_DIR/zref/<host_port>/``, and the next job to
that peer compresses against the most recent one and names it (``ZREF``), so the headers
two ``.i`` files share cost almost nothing on the wire (``meshcc.wire.codecs``).

The directory is private and nothing in it is trusted:

- ``zref/`` and each peer's directory are made 0700 and used only when they are ours, not
  a symlink, and not open to others (checked on the open descriptor, then every access is
  relative to it: a symlink planted in between is not followed);
- files are opened with ``O_NOFOLLOW`` and read only when they are regular, ours and of a
  sane size; each is written under a temporary name (``O_EXCL``, 0600) and renamed into
  place, so a reader never sees half a body;
- at most :data:`KEEP_COUNT` bodies and :data:`KEEP_BYTES` bytes per peer, oldest out.

Ids are 128 bits from ``os.urandom`` (hex): one names a body on the server, which keeps
bodies per client address, and only this user can read it here. Anything unexpected
(another owner, a full disk, a race with a concurrent job) means no prefix or no keeping,
never a failed compile.
"""

from __future__ import annotations

import os

from meshcc.wire.codecs import BODY_ID_LEN, encode_prefix_tokens, is_unknown_prefix

from . import compress

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

KEEP_COUNT = 4
"""Bodies kept per peer: concurrent jobs of a -j build each find a recent one."""
KEEP_BYTES = 16 * 1024 * 1024
"""Bytes kept per peer (a few large C++ bodies)."""
MAX_BODY = 8 * 1024 * 1024
"""The largest body kept: beyond zstd's window (at the levels used) a prefix cannot help."""
PREFIX_LEVEL = 3
"""The least zstd level with a prefix: level 3's longer searches find the prefix's matches
(zlib's bodies: 0.46 x level 1's bytes with a prefix at level 3, 0.63 x at level 1, for
~0.15 ms more per 100 KB)."""

_NAME_LEN = 16 + 1 + BODY_ID_LEN  # 16 hex digits of time_ns, "-", the id
_HEX = frozenset("0123456789abcdef")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def new_id() -> str:
    """A fresh body id: 128 random bits, hex."""
    return os.urandom(BODY_ID_LEN // 2).hex()


def _is_name(name: str) -> bool:
    return len(name) == _NAME_LEN and name[16] == "-" and _HEX.issuperset(name.replace("-", ""))


def peer_dirname(where: str) -> str:
    """``127.0.0.1_3632``, ``___1__3632`` for ``[::1]:3632``: one directory per peer."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in where)[:200]


def _private_dir(name: str, dir_fd: int | None) -> int:
    """An open descriptor of directory ``name`` (made 0700 if missing), which must be ours,
    not a symlink, and closed to others (OSError otherwise)."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{name} is not a private directory of this user")
    return fd


class Plan:
    """One job's use of body prefixes with one peer: the id the server is to keep this
    body as (``keep``), and the kept body this frame is compressed against (``prefix``,
    under ``prefix_id``; none for a first job)."""

    __slots__ = ("dir_fd", "keep", "level", "prefix", "prefix_id", "sent")

    def __init__(self, dir_fd: int, prefix_id: str, prefix: bytes) -> None:
        self.dir_fd = dir_fd
        self.keep = new_id()
        self.prefix_id = prefix_id
        self.prefix = prefix
        self.sent = 0  # bytes of the frame, once compressed
        self.level: int | None = None  # the zstd level it was compressed at

    def tokens(self) -> bytes:
        """``[ZREF] ZNEW``, sent after ``CODC zstd``."""
        return encode_prefix_tokens(self.keep, self.prefix_id)

    def compress(self, data: bytes, level: int | None) -> bytes:
        """The zstd frame of ``data``, against the prefix if there is one."""
        self.level = max(level or 1, PREFIX_LEVEL) if self.prefix else level
        frame = compress("zstd", data, self.level, self.prefix or None)
        self.sent = len(frame)
        return frame

    def refused(self, message: str) -> bool:
        """Whether a refusal means the peer no longer holds the prefix: then this plan drops
        it (the server keeps nothing of a refused job) and the job goes again without."""
        if not self.prefix_id or not is_unknown_prefix(message):
            return False
        self.prefix_id, self.prefix = "", b""
        return True

    def note(self) -> str:
        """For the verbose log: what was sent and against what."""
        against = (
            f"prefix {self.prefix_id[:8]} ({len(self.prefix)} bytes)"
            if self.prefix_id
            else "no prefix"
        )
        at = "" if self.level is None else f", level {self.level}"
        return f", {self.sent} bytes on the wire (zref: {against}{at})"

    def keep_body(self, data: bytes) -> None:
        """The reply came back: the server holds ``data`` as :attr:`keep`; keep it here too,
        then drop the oldest beyond the bounds. Failures only mean no prefix next time.
        Closes the directory (a plan not kept is closed by the process's exit)."""
        try:
            if len(data) <= MAX_BODY:
                _write(self.dir_fd, f"{os.urandom(8).hex()}.tmp", self._name(), data)
            _prune(self.dir_fd)
        except OSError:
            pass
        finally:
            self.close()

    def _name(self) -> str:
        import time

        return f"{time.time_ns():016x}-{self.keep}"

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def plan(environ: Mapping[str, str], where: str, source: str = "") -> Plan | None:
    """The plan for one zstd job to peer ``where``, with the most recent body kept for it;
    None when the kept-body directory cannot be used safely (the job then goes as plain
    zstd, still naming no prefix).

    ``source``: this end's address of the connection. The server keeps bodies by client
    address, so bodies are kept here per (source, peer) too: a ``$DISTCC_DIR`` shared by
    several boxes (an NFS home) then never offers one box's body to a peer that only holds
    it for another, which would cost a refusal and a resend."""
    top = environ.get("DISTCC_DIR") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".distcc"
    )
    try:  # $DISTCC_DIR itself may be a symlink the user made, as distcc allows
        top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        zref_fd = _private_dir("zref", top_fd)
        try:
            fd = _private_dir(peer_dirname(f"{source}-to-{where}" if source else where), zref_fd)
        finally:
            os.close(zref_fd)
    except OSError:
        return None
    finally:
        os.close(top_fd)
    prefix_id, prefix = _latest(fd)
    return Plan(fd, prefix_id, prefix)


def _latest(dir_fd: int) -> tuple[str, bytes]:
    """(id, body) of the newest readable kept body, or ("", b"")."""
    try:
        names = sorted((n for n in os.listdir(dir_fd) if _is_name(n)), reverse=True)
    except OSError:
        return "", b""
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue  # pruned by a concurrent job, or a planted symlink (ELOOP)
        try:
            st = os.fstat(fd)
            if (
                st.st_uid != os.geteuid()
                or (st.st_mode & 0o170000) != 0o100000  # a regular file
                or not 0 < st.st_size <= MAX_BODY
            ):
                continue
            body = os.read(fd, st.st_size + 1)
        except OSError:
            continue
        finally:
            os.close(fd)
        if len(body) == st.st_size:
            return name[17:], body
    return "", b""


def _write(dir_fd: int, tmp: str, name: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        with memoryview(data) as view:
            at = 0
            while at < len(view):
                at += os.write(fd, view[at:])
    except OSError:
        os.close(fd)
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _prune(dir_fd: int) -> None:
    """Keep the newest :data:`KEEP_COUNT` bodies within :data:`KEEP_BYTES`; remove the
    rest, and anything else in the directory (leftover temporary files, strangers)."""
    total = count = 0
    for name in sorted(os.listdir(dir_fd), reverse=True):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        regular = (st.st_mode & 0o170000) == 0o100000
        fresh_tmp = name.endswith(".tmp") and regular and _young(st.st_mtime)
        if fresh_tmp:
            continue  # a concurrent job is writing it
        if _is_name(name) and regular and count < KEEP_COUNT and total + st.st_size <= KEEP_BYTES:
            count += 1
            total += st.st_size
            continue
        try:
            if (st.st_mode & 0o170000) == 0o040000:
                continue  # a directory is none of ours to remove
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass


def _young(mtime: float) -> bool:
    import time

    return time.time() - mtime < 60
