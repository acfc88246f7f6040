"""Read distcc's per-compile state files, as ``distccmon-text`` does, for ``meshcc top``.

Every distcc 3.4 client process (and ``meshcc-gcc``, which writes the same files so the
stock monitors see it) keeps ``$DISTCC_DIR/state/binstate_<pid>``: one raw, native-endian
``struct dcc_task_state``, whose layout is :mod:`meshcc.wire.distccstate`.

Reading follows distcc's own monitor (src/mon.c) so meshcc top lists exactly the jobs
``distccmon-text`` lists: only ``binstate_*`` names; a file whose size, ``struct_size`` or
magic is wrong is skipped (a half-written file, or another ABI); a phase past Done counts
as Compile; a finished (Done) job is not shown; a job whose pid no longer exists is
dropped (``kill(pid, 0)``: ESRCH; EPERM means another user's live process).

Two deliberate differences, because this is a viewer:

- distccmon *deletes* files older than 60 s. We never write or delete: the directory may
  be another user's (Portage's), and a compile can sit in one phase for minutes.
- In exchange we guard against what the deletion guarded against: a file left by a
  client killed with SIGKILL whose pid was later reused. Such a file was last written
  before its pid's current process started (``/proc/PID/stat``), so it is skipped.

File and host names come from files anyone may write: every character that is not
printable is replaced, so a crafted name cannot send escape sequences to the terminal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from meshcc.wire.distccstate import DONE, PHASES, PREFIX, SIZE
from meshcc.wire.distccstate import parse as parse_record

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping

MAX_PID = 1 << 22  # the kernel's pid_max ceiling (PID_MAX_LIMIT on 64-bit)
CLOCK_SLACK_S = 2.0  # /proc's boot time has whole seconds; a process's start is fuzzy
MAX_FILES = 4096  # a state dir with more entries than any build runs at once is junk


@dataclass(frozen=True, slots=True)
class Compile:
    """One running compile, from one state file."""

    pid: int
    file: str  # the input's basename (printable)
    host: str  # where it runs (printable): distcc's host text, "localhost" for local
    slot: int
    phase: int  # 0..7, see PHASES
    mtime: float  # when it entered this phase (the file's last write)
    path: str

    @property
    def phase_name(self) -> str:
        return PHASES[self.phase]


def printable(text: str) -> str:
    """``text`` with every non-printable character (escapes, newlines) shown as ``?``."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def parse(data: bytes) -> tuple[int, str, str, int, int] | None:
    """(pid, file, host, slot, phase) of one state file's bytes, names made printable;
    None when distccmon would skip it (short, wrong size field or magic)."""
    rec = parse_record(data)
    if rec is None:
        return None
    pid, file, host, slot, phase = rec
    return pid, printable(file), printable(host), slot, phase


def pid_alive(pid: int) -> bool:
    """Does a process ``pid`` exist (ours or another user's)?"""
    if not 0 < pid < MAX_PID:  # kill(0 or -1, 0) would ask about a whole group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, not ours (distccmon: "assume it's still a real distcc")
    except OSError:
        return False
    return True


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_start(pid: int, boot: float | None) -> float | None:
    """Wall-clock start time of ``pid`` from /proc (None when unknown)."""
    if boot is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # comm (field 2) may hold spaces and parentheses: fields resume after the last ")"
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(fields[19])  # field 22, starttime, in clock ticks since boot
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def read_dir(
    top: str,
    *,
    alive: Callable[[int], bool] = pid_alive,
    started: Callable[[int], float | None] | None = None,
) -> list[Compile]:
    """The live compiles recorded under ``top``/state (``top`` is a DISTCC_DIR), sorted by
    host, then slot, as distccmon sorts them. OSError when the directory cannot be listed
    (FileNotFoundError: nothing ran there yet)."""
    state = os.path.join(top, "state")
    if started is None:
        boot = _boot_time()

        def started(pid: int) -> float | None:
            return process_start(pid, boot)

    found = []
    with os.scandir(state) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_FILES:
                break
            if not entry.name.startswith(PREFIX):
                continue
            job = _read_one(entry.path, alive, started)
            if job is not None:
                found.append(job)
    found.sort(key=lambda c: (c.host, c.slot, c.pid))
    return found


def _read_one(
    path: str, alive: Callable[[int], bool], started: Callable[[int], float | None]
) -> Compile | None:
    try:
        # O_NONBLOCK: a FIFO planted under the name must not hang the viewer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # gone already (the compile ended), or not ours to read
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000:  # a regular file only
            return None
        data = os.read(fd, SIZE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    parsed = parse(data)
    if parsed is None:
        return None
    pid, file, host, slot, phase = parsed
    if phase == DONE or not alive(pid):
        return None
    start = started(pid)
    if start is not None and start > st.st_mtime + CLOCK_SLACK_S:
        return None  # written before this process existed: a dead client's, pid reused
    return Compile(pid, file, host, slot, phase, st.st_mtime, path)


def default_dirs(env: Mapping[str, str]) -> list[str]:
    """The DISTCC_DIRs ``meshcc top`` reads by default: the user's (``$DISTCC_DIR``, else
    ``~/.distcc``), then Portage's (``${PORTAGE_TMPDIR:-/var/tmp}/portage/.distcc``, where
    emerge's compiles keep their state files; readable by root and the portage group)."""
    home = env.get("HOME") or os.path.expanduser("~")
    user = env.get("DISTCC_DIR") or os.path.join(home, ".distcc")
    portage = os.path.join(env.get("PORTAGE_TMPDIR") or "/var/tmp", "portage", ".distcc")
    dirs = [user]
    if os.path.normpath(portage) != os.path.normpath(user):
        dirs.append(portage)
    return dirs
