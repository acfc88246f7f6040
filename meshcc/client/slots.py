"""distcc-compatible slot locks and backoff files (``$DISTCC_DIR/lock/``).

Why distcc's exact layout: meshcc clients and stock distcc clients running on one box
must share the same job slots and avoid the same failed hosts, so we use the same file
names (``cpu_<lock_name>_<slot>``, ``backoff_<lock_name>_0``) and the same primitive:
a non-blocking ``fcntl(F_SETLK, F_WRLCK)`` on the whole zero-byte file. The kernel drops
the lock when the process dies, so a crashed client never leaves a stale slot.

POSIX record locks belong to the *process*: a second lock on the same file from the same
process always succeeds, and closing *any* descriptor of the file drops the lock. So this
module remembers the slots this process holds and never opens a held lock file again.

Kept import-light (posix through :mod:`meshcc.posixenv`, time): the compile wrapper imports
it on every compile. The lock is taken with ``posix.lockf(fd, F_TLOCK, 0)`` rather than
``fcntl.lockf``: the same ``fcntl(F_SETLK, F_WRLCK)`` from the file's current offset (0, the
file is never read or written) to its end and beyond, i.e. the whole file as distcc locks
it, without loading the ``fcntl`` extension module on every compile.
"""

from __future__ import annotations

import time
from posix import F_TLOCK as _F_TLOCK
from posix import lockf as _lockf

from meshcc import posixenv as os  # os without its import cost (see there)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Protocol, TypeVar

    class HostLike(Protocol):
        """What slot selection needs from a ``hostspec.Host``."""

        @property
        def lock_name(self) -> str: ...
        @property
        def limit(self) -> int: ...
        @property
        def down(self) -> bool: ...

    HostT = TypeVar("HostT", bound=HostLike)


DEFAULT_BACKOFF_PERIOD = 60  # seconds (distcc's dcc_backoff_period)
DEFAULT_PAUSE_MSEC = 1000  # distcc's DISTCC_PAUSE_TIME_MSEC default
LOCALHOST = "localhost"


class DistccDirError(Exception):
    """$DISTCC_DIR (or its lock/ directory) is unusable; str(e) is the user-facing message."""


# Lock files this process holds, path -> fd (see the module docstring).
_held: dict[str, int] = {}


class Slot:
    """One held slot lock. ``release()`` closes the fd, which drops the lock."""

    __slots__ = ("fd", "index", "lock_name", "path")

    def __init__(self, path: str, fd: int, lock_name: str, index: int) -> None:
        self.path = path
        self.fd = fd
        self.lock_name = lock_name
        self.index = index

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self.fd >= 0:
            _held.pop(self.path, None)
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def keep_across_exec(self) -> None:
        """Let the lock survive ``execvp``: the exec'd compiler then holds the slot for its life.

        A record lock survives exec (same process) but close-on-exec would close the fd and
        so drop the lock; clearing the flag keeps it.
        """
        if self.fd >= 0:
            os.set_inheritable(self.fd, True)

    def __repr__(self) -> str:
        return f"Slot({self.lock_name!r}, {self.index})"


def env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """An integer setting; a missing or unparsable value gives the default (as distcc's atoi)."""
    value = environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        return int(value.strip())
    except ValueError:
        return default


def distcc_dir(environ: Mapping[str, str]) -> str:
    """distcc's top directory: $DISTCC_DIR (must exist) or ~/.distcc (created if missing)."""
    top = environ.get("DISTCC_DIR")
    if top:
        if not os.path.isdir(top):
            raise DistccDirError(f"DISTCC_DIR {top} is not a directory (create it or unset it)")
        return top
    home = environ.get("HOME") or os.path.expanduser("~")
    return _mkdir(os.path.join(home, ".distcc"), "")


def lock_dir(top: str) -> str:
    """``TOP/lock``, created on demand like distcc does."""
    return _mkdir(os.path.join(top, "lock"), "lock directory ")


def _mkdir(path: str, what: str) -> str:
    """``path``, created if missing; DistccDirError saying why it cannot be."""
    try:
        os.mkdir(path, 0o777)
    except FileExistsError:
        pass
    except OSError as e:
        raise DistccDirError(f"cannot create {what}{path}: {e.strerror}") from None
    return path


def try_lock(lockdir: str, lock_name: str, index: int) -> Slot | None:
    """Take slot ``index`` of ``lock_name`` without waiting; None if someone holds it."""
    path = f"{lockdir}/cpu_{lock_name}_{index}"
    if path in _held:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    except OSError as e:
        raise DistccDirError(f"cannot open lock file {path}: {e.strerror}") from None
    try:
        _lockf(fd, _F_TLOCK, 0)  # fcntl(F_SETLK, F_WRLCK) from offset 0: the whole file
    except OSError:
        os.close(fd)
        return None
    _held[path] = fd
    return Slot(path, fd, lock_name, index)


def lock_first_free(
    lockdir: str,
    hosts: Sequence[HostT],
    pause_msec: int = DEFAULT_PAUSE_MSEC,
    log: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[HostT, Slot]:
    """Lock a slot breadth-first (slot 0 of every host, then slot 1, ...), waiting while all
    are busy. List order is preference, as in distcc. ``hosts`` must not be empty.
    """
    top = max(h.limit for h in hosts)
    while True:
        for index in range(top):
            for host in hosts:
                if host.limit > index:
                    slot = try_lock(lockdir, host.lock_name, index)
                    if slot is not None:
                        return host, slot
        if log is not None:
            log(f"all {sum(h.limit for h in hosts)} slots busy, sleeping {pause_msec} ms")
        sleep(max(pause_msec, 1) / 1000.0)


def lock_local(
    lockdir: str,
    nslots: int,
    pause_msec: int = DEFAULT_PAUSE_MSEC,
    log: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Slot:
    """Wait for one of ``nslots`` ``cpu_localhost_N`` slots (local compiles, local cpp)."""
    host = _LocalPool(max(nslots, 1))
    return lock_first_free(lockdir, (host,), pause_msec, log, sleep)[1]


class _LocalPool:
    __slots__ = ("limit",)
    lock_name = LOCALHOST
    down = False

    def __init__(self, limit: int) -> None:
        self.limit = limit


# ------------------------------------------------------------------ backoff


def backoff_path(lockdir: str, lock_name: str) -> str:
    return f"{lockdir}/backoff_{lock_name}_0"


def is_backed_off(lockdir: str, lock_name: str, period: float, now: float | None = None) -> bool:
    """True if the host failed less than ``period`` seconds ago (its backoff file's mtime)."""
    if period <= 0:
        return False
    try:
        mtime = os.stat(backoff_path(lockdir, lock_name)).st_mtime
    except OSError:
        return False
    if now is None:
        now = time.time()
    return now - mtime < period


def mark_backoff(lockdir: str, lock_name: str) -> None:
    """Record a failure now (one byte, as distcc writes; only the mtime matters)."""
    try:
        fd = os.open(backoff_path(lockdir, lock_name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError:
        return
    try:
        os.write(fd, b"x")
    except OSError:
        pass
    finally:
        os.close(fd)


def clear_backoff(lockdir: str, lock_name: str) -> None:
    """A success forgives the host."""
    try:
        os.unlink(backoff_path(lockdir, lock_name))
    except OSError:
        pass


def usable_hosts(
    lockdir: str,
    hosts: Iterable[HostT],
    period: float,
    exclude: Iterable[str] = (),
    now: float | None = None,
) -> list[HostT]:
    """Hosts that may be tried now: not ``,down``, not excluded, not backed off."""
    skip = set(exclude)
    if now is None:
        now = time.time()
    return [
        h
        for h in hosts
        if not h.down
        and h.limit > 0
        and h.lock_name not in skip
        and not is_backed_off(lockdir, h.lock_name, period, now)
    ]
