"""distcc's per-process state record (``struct dcc_task_state``), both ways: sans-IO.

distcc 3.4 keeps one file per client process, ``$DISTCC_DIR/state/binstate_<pid>``,
holding a raw, native-endian ``struct dcc_task_state`` (its src/state.h)::

    size_t struct_size;        /* sizeof the struct: 296 on LP64 */
    unsigned long magic;       /* 0x44494800, "DIH\\0" */
    unsigned long cpid;        /* the client's pid */
    char file[128];            /* the input's basename, NUL-terminated */
    char host[128];            /* where it goes: "localhost", "10.0.0.2", ... */
    int slot;                  /* which of that host's slots */
    enum dcc_phase curr_phase; /* Startup .. Done, below */
    struct dcc_task_state *next;  /* meaningless in the file */

``meshcc-gcc`` writes it (so distccmon-text and distccmon-gnome see meshcc jobs) and
``meshcc top`` reads it (so it lists stock distcc jobs too): this module is the one
description of the layout for both. It uses ``int.to_bytes``/``from_bytes`` rather than
``struct``, whose import costs ~0.3 ms on every compile: on every Linux ABI ``size_t``,
``unsigned long`` and pointers share one width (8 on LP64, 4 on ILP32) and the fields
need no padding, which a unit test checks against ``struct.calcsize("@NLL128s128siiP")``.
"""

from __future__ import annotations

import sys

from meshcc import posixenv as os  # os without its import cost (the compile client's path)

# enum dcc_phase, in distcc's order (the numbers are the file format).
STARTUP = 0
BLOCKED = 1
CONNECT = 2
CPP = 3  # shown as "Preprocess"
SEND = 4
COMPILE = 5
RECEIVE = 6
DONE = 7
PHASES = ("Startup", "Blocked", "Connect", "Preprocess", "Send", "Compile", "Receive", "Done")

MAGIC = 0x44494800  # DCC_STATE_MAGIC, "DIH\0"
PREFIX = "binstate_"  # the file name: PREFIX + the client's pid
NAME_LEN = 128  # file[] and host[]

WORD = 8 if sys.maxsize > 2**32 else 4  # sizeof(size_t) == sizeof(long) == sizeof(void *)
SIZE = 3 * WORD + 2 * NAME_LEN + 4 + 4 + WORD  # 296 on x86_64
HEAD_SIZE = 3 * WORD + NAME_LEN  # struct_size, magic, cpid, file[]: fixed for one job
_ORDER = sys.byteorder


def field(text: str) -> bytes:
    """A NUL-terminated ``char[128]`` (truncated as strlcpy does)."""
    raw = os.fsencode(text)[: NAME_LEN - 1]
    return raw + b"\0" * (NAME_LEN - len(raw))


def head(pid: int, file: str) -> bytes:
    """The part of a record that stays the same for one job (``file``: its basename)."""
    return b"".join(
        (
            SIZE.to_bytes(WORD, _ORDER),
            MAGIC.to_bytes(WORD, _ORDER),
            pid.to_bytes(WORD, _ORDER),
            field(os.path.basename(file)),
        )
    )


def tail(host_field: bytes, slot: int, phase: int) -> bytes:
    """The part that changes with each phase (``host_field``: from :func:`field`)."""
    return b"".join(
        (
            host_field,
            slot.to_bytes(4, _ORDER, signed=True),
            phase.to_bytes(4, _ORDER, signed=True),
            bytes(WORD),  # next: zeroed
        )
    )


def record(pid: int, file: str, host: str, slot: int, phase: int) -> bytes:
    """One whole ``struct dcc_task_state`` as distcc writes it."""
    return head(pid, file) + tail(field(host), slot, phase)


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse(data: bytes) -> tuple[int, str, str, int, int] | None:
    """(pid, file, host, slot, phase) of one record; None when distccmon would skip it
    (wrong length, size field or magic). A phase past Done reads as Compile, as distccmon
    shows it. Names are returned as written: a viewer must sanitise them."""
    if len(data) != SIZE:
        return None

    def word(i: int) -> int:
        return int.from_bytes(data[i * WORD : (i + 1) * WORD], _ORDER)

    if word(0) != SIZE or word(1) != MAGIC:
        return None
    at = HEAD_SIZE + NAME_LEN
    slot = int.from_bytes(data[at : at + 4], _ORDER, signed=True)
    phase = int.from_bytes(data[at + 4 : at + 8], _ORDER, signed=True)
    if not 0 <= phase <= DONE:
        phase = COMPILE
    file = _cstring(data[3 * WORD : HEAD_SIZE])
    return word(2), file, _cstring(data[HEAD_SIZE:at]), slot, phase
