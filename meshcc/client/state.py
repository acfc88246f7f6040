"""distcc's per-process state file, so ``distccmon-text`` and ``distccmon-gnome`` see us.

distcc 3.4 keeps one file per client process, ``$DISTCC_DIR/state/binstate_<pid>``,
holding one ``struct dcc_task_state`` (its layout: :mod:`meshcc.wire.distccstate`, which
``meshcc top`` reads with; repeated below). The monitors skip a file whose size or magic
is wrong, whose pid is dead, and delete one whose mtime is over 60 s old; so every phase
change rewrites the file (re-creating it if a monitor removed it) and the file goes at exit.

One module-level record per process, like distcc's: the wrapper calls :func:`begin`
once the job is known, :func:`note` at each phase, :func:`end` when it exits. Before
:func:`begin` (or if the state directory cannot be used) every call is a no-op: a
monitor is a convenience and never fails a compile.

Unlike distcc, which opens the file for each of a job's five or so phases, the file stays
open between notes (``pwrite`` at offset 0: one system call per phase, not three). The
monitors' 60 s rule is why distcc's way re-creates a file they removed; here a note that
comes :data:`REOPEN_AFTER` seconds or more after the last one opens the path again, so a
file removed during a long silent phase (a slow remote compile) comes back just the same.
"""

from __future__ import annotations

import sys
import time

from meshcc import posixenv as os  # os without its import cost (see there)

# distcc's phases and record layout, as meshcc.wire.distccstate defines them (the format's
# one definition, which `meshcc top` reads with; tests/unit/test_client_state.py keeps
# these equal, byte for byte). Repeated here because the compile client would otherwise
# import two more modules on every compile (meshcc.wire and the codec: ~0.7 M instructions).
STARTUP = 0
BLOCKED = 1
CONNECT = 2
CPP = 3
SEND = 4
COMPILE = 5
RECEIVE = 6
DONE = 7
PREFIX = "binstate_"
_MAGIC = 0x44494800  # DCC_STATE_MAGIC
_NAME_LEN = 128
_WORD = 8 if sys.maxsize > 2**32 else 4
_SIZE = 3 * _WORD + 2 * _NAME_LEN + 4 + 4 + _WORD
_ORDER = sys.byteorder
_NEXT = bytes(_WORD)


def field(text: str) -> bytes:
    """A NUL-terminated ``char[128]`` (truncated as strlcpy does)."""
    raw = os.fsencode(text)[: _NAME_LEN - 1]
    return raw + b"\0" * (_NAME_LEN - len(raw))


def head(pid: int, file: str) -> bytes:
    """struct_size, magic, cpid, file[] (the basename): fixed for one job."""
    return b"".join(
        (
            _SIZE.to_bytes(_WORD, _ORDER),
            _MAGIC.to_bytes(_WORD, _ORDER),
            pid.to_bytes(_WORD, _ORDER),
            field(os.path.basename(file)),
        )
    )


def tail(host_field: bytes, slot: int, phase: int) -> bytes:
    """host[], slot, phase, next (zeroed): what changes with each phase."""
    return b"".join(
        (
            host_field,
            slot.to_bytes(4, _ORDER, signed=True),
            phase.to_bytes(4, _ORDER, signed=True),
            _NEXT,
        )
    )


# The wrapper names the phases as state.X.
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

# distccmon deletes a state file whose mtime is 60 s old; each note refreshes it, so only a
# note after this long a pause can find its open file unlinked: such a note opens it anew.
REOPEN_AFTER = 30.0

_path: str | None = None
_fd = -1  # the open state file (O_CLOEXEC: the compiler we exec never inherits it)
_written = 0.0  # time.monotonic() of the last note
_head = b""  # struct_size, magic, cpid, file[]: fixed once the job is known
_host = field("")
_slot = 0


def begin(top: str, source: str | None) -> None:
    """Start this process's record in ``top``/state (``top`` is $DISTCC_DIR or ~/.distcc)
    for the input ``source`` (None: no input, e.g. a link). The file is written by the
    first :func:`note`."""
    global _path, _head, _fd
    if _fd >= 0:  # a record begun before (in-process callers): this one is a new file
        os.close(_fd)
        _fd = -1
    pid = os.getpid()
    _path = f"{top}/state/{PREFIX}{pid}"
    _head = head(pid, source or "")


def active() -> bool:
    """Whether a record is being kept (so it must be removed when this process ends)."""
    return _path is not None


def note(phase: int, host: str | None = None, slot: int | None = None) -> None:
    """Write ``phase`` (and the host and slot, when they change) to the state file."""
    global _host, _slot, _path, _fd, _written
    path = _path
    if path is None:
        return
    if host is not None:
        _host = field(host)
    if slot is not None:
        _slot = slot
    data = _head + tail(_host, _slot, phase)
    now = time.monotonic()
    if _fd >= 0 and now - _written >= REOPEN_AFTER:  # a monitor may have removed it since
        os.close(_fd)
        _fd = -1
    _written = now
    if _fd < 0:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                _fd = os.open(path, flags, 0o666)
            except FileNotFoundError:  # first job under this DISTCC_DIR: distcc mkdirs it too
                try:
                    os.mkdir(os.path.dirname(path), 0o777)
                except FileExistsError:
                    pass
                _fd = os.open(path, flags, 0o666)
        except OSError:
            _path = None  # unusable state dir: no monitoring, the compile goes on
            return
    try:
        # The size never changes, so overwriting in place (no O_TRUNC) never shows a
        # reader the empty file distcc's open(O_TRUNC)+write briefly does.
        os.pwrite(_fd, data, 0)
    except OSError:
        pass


def end() -> None:
    """Remove the state file (idempotent); later notes are no-ops."""
    global _path, _fd
    path, _path = _path, None
    if _fd >= 0:
        os.close(_fd)
        _fd = -1
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
