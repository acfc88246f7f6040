"""distcc's per-process state file, so ``distccmon-text`` and ``distccmon-gnome`` see us.

distcc 3.4 keeps one file per client process, ``$DISTCC_DIR/state/binstate_<pid>``,
holding one ``struct dcc_task_state`` (its layout: :mod:`meshcc.wire.distccstate`, which
``meshcc top`` reads with). The monitors skip a file whose size or magic is wrong, whose
pid is dead, and delete one whose mtime is over 60 s old; so every phase change rewrites
the file (re-creating it if a monitor removed it) and the file goes at exit.

One module-level record per process, like distcc's: the wrapper calls :func:`begin`
once the job is known, :func:`note` at each phase, :func:`end` when it exits. Before
:func:`begin` (or if the state directory cannot be used) every call is a no-op: a
monitor is a convenience and never fails a compile.
"""

from __future__ import annotations

from meshcc import posixenv as os  # os without its import cost (see there)
from meshcc.wire import distccstate as fmt
from meshcc.wire.distccstate import (
    BLOCKED,
    COMPILE,
    CONNECT,
    CPP,
    DONE,
    RECEIVE,
    SEND,
    STARTUP,
)

# The wrapper names the phases as state.X: re-exported from the one definition.
__all__ = [
    "BLOCKED",
    "COMPILE",
    "CONNECT",
    "CPP",
    "DONE",
    "RECEIVE",
    "SEND",
    "STARTUP",
    "active",
    "begin",
    "end",
    "note",
]

_path: str | None = None
_head = b""  # struct_size, magic, cpid, file[]: fixed once the job is known
_host = fmt.field("")
_slot = 0


def begin(top: str, source: str | None) -> None:
    """Start this process's record in ``top``/state (``top`` is $DISTCC_DIR or ~/.distcc)
    for the input ``source`` (None: no input, e.g. a link). The file is written by the
    first :func:`note`."""
    global _path, _head
    pid = os.getpid()
    _path = f"{top}/state/{fmt.PREFIX}{pid}"
    _head = fmt.head(pid, source or "")


def active() -> bool:
    """Whether a record is being kept (so it must be removed when this process ends)."""
    return _path is not None


def note(phase: int, host: str | None = None, slot: int | None = None) -> None:
    """Write ``phase`` (and the host and slot, when they change) to the state file."""
    global _host, _slot, _path
    path = _path
    if path is None:
        return
    if host is not None:
        _host = fmt.field(host)
    if slot is not None:
        _slot = slot
    data = _head + fmt.tail(_host, _slot, phase)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:  # first job under this DISTCC_DIR: distcc mkdirs it too
            try:
                os.mkdir(os.path.dirname(path), 0o777)
            except FileExistsError:
                pass
            fd = os.open(path, flags, 0o666)
    except OSError:
        _path = None  # unusable state dir: no monitoring, the compile goes on
        return
    try:
        # The size never changes, so overwriting in place (no O_TRUNC) never shows a
        # reader the empty file distcc's open(O_TRUNC)+write briefly does.
        os.pwrite(fd, data, 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def end() -> None:
    """Remove the state file (idempotent); later notes are no-ops."""
    global _path
    path, _path = _path, None
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
