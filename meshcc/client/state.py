"""distcc's per-process state file, so ``distccmon-text`` and ``distccmon-gnome`` see us.

distcc 3.4 keeps one file per client process, ``$DISTCC_DIR/state/binstate_<pid>``,
holding a raw native ``struct dcc_task_state`` (src/state.h): ``size_t struct_size``,
``unsigned long magic`` (``DIH\\0``), ``unsigned long cpid``, ``char file[128]`` (the
input's basename), ``char host[128]``, ``int slot``, ``enum dcc_phase curr_phase`` and a
``next`` pointer the readers ignore. The monitors skip a file whose size or magic is
wrong, whose pid is dead, and delete one whose mtime is over 60 s old; so every phase
change rewrites the file (re-creating it if a monitor removed it) and the file goes at
exit.

The layout is built with ``int.to_bytes`` rather than ``struct`` (whose import costs
~0.3 ms on every compile): on every Linux ABI ``size_t``, ``unsigned long`` and pointers
share one width (8 on LP64, 4 on ILP32) and the fields need no padding, which a unit
test checks against ``struct.calcsize("@NLL128s128siiP")``.

One module-level record per process, like distcc's: the wrapper calls :func:`begin`
once the job is known, :func:`note` at each phase, :func:`end` when it exits. Before
:func:`begin` (or if the state directory cannot be used) every call is a no-op: a
monitor is a convenience and never fails a compile.
"""

from __future__ import annotations

import os
import sys

# enum dcc_phase, in distcc's order (the numbers are the file format).
STARTUP = 0
BLOCKED = 1
CONNECT = 2
CPP = 3  # shown as "Preprocess"
SEND = 4
COMPILE = 5
RECEIVE = 6
DONE = 7

MAGIC = 0x44494800  # DCC_STATE_MAGIC, "DIH\0"
PREFIX = "binstate_"
NAME_LEN = 128  # file[] and host[]

_W = 8 if sys.maxsize > 2**32 else 4  # sizeof(size_t) == sizeof(long) == sizeof(void *)
SIZE = 3 * _W + 2 * NAME_LEN + 4 + 4 + _W  # 296 on x86_64
_ORDER = sys.byteorder

_path: str | None = None
_head = b""  # struct_size, magic, cpid, file[]: fixed once the job is known
_host = b"\0" * NAME_LEN
_slot = 0


def _field(text: str) -> bytes:
    """A NUL-terminated ``char[128]`` (truncated as strlcpy does)."""
    raw = os.fsencode(text)[: NAME_LEN - 1]
    return raw + b"\0" * (NAME_LEN - len(raw))


def record(pid: int, file: str, host: str, slot: int, phase: int) -> bytes:
    """One ``struct dcc_task_state`` as distcc writes it (``next`` zeroed)."""
    return b"".join(
        (
            SIZE.to_bytes(_W, _ORDER),
            MAGIC.to_bytes(_W, _ORDER),
            pid.to_bytes(_W, _ORDER),
            _field(os.path.basename(file)),
            _field(host),
            slot.to_bytes(4, _ORDER, signed=True),
            phase.to_bytes(4, _ORDER, signed=True),
            bytes(_W),
        )
    )


def begin(top: str, source: str | None) -> None:
    """Start this process's record in ``top``/state (``top`` is $DISTCC_DIR or ~/.distcc)
    for the input ``source`` (None: no input, e.g. a link). The file is written by the
    first :func:`note`."""
    global _path, _head
    pid = os.getpid()
    _path = f"{top}/state/{PREFIX}{pid}"
    _head = record(pid, source or "", "", 0, 0)[: 3 * _W + NAME_LEN]


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
        _host = _field(host)
    if slot is not None:
        _slot = slot
    data = b"".join(
        (
            _head,
            _host,
            _slot.to_bytes(4, _ORDER, signed=True),
            phase.to_bytes(4, _ORDER),
            bytes(_W),
        )
    )
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
