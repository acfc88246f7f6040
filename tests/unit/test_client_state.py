"""meshcc.client.state and meshcc.wire.distccstate: distcc's binstate_<pid> record, byte for
byte, written and read back.

The layout is checked against the C struct as the platform lays it out (``struct`` in
native mode mirrors the C compiler's sizes and alignment): struct dcc_task_state is
``size_t, unsigned long, unsigned long, char[128], char[128], int, enum, pointer``.
distccmon-text reading these files is tested in integration/test_distccmon.py.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcc.client import state
from meshcc.wire import distccstate as fmt

C_LAYOUT = struct.Struct("@NLL128s128siiP")


@pytest.fixture(autouse=True)
def _no_record() -> Iterator[None]:
    state.end()
    yield
    state.end()


def test_size_is_the_c_struct_size() -> None:
    assert fmt.SIZE == C_LAYOUT.size
    if struct.calcsize("P") == 8:
        assert fmt.SIZE == 296  # x86_64, as distcc 3.4 writes it


def test_record_matches_the_c_layout() -> None:
    data = fmt.record(4242, "src/dir/foo.c", "10.0.0.7", 3, state.SEND)
    size, magic, pid, file, host, slot, phase, nxt = C_LAYOUT.unpack(data)
    assert (size, magic, pid, slot, phase, nxt) == (fmt.SIZE, 0x44494800, 4242, 3, 4, 0)
    assert file == b"foo.c".ljust(128, b"\0")  # the basename, as dcc_note_state keeps
    assert host == b"10.0.0.7".ljust(128, b"\0")


def test_phase_numbers_are_distccs_enum() -> None:
    names = ["STARTUP", "BLOCKED", "CONNECT", "CPP", "SEND", "COMPILE", "RECEIVE", "DONE"]
    assert [getattr(state, n) for n in names] == list(range(8))


def test_long_names_are_truncated_and_nul_terminated() -> None:
    data = fmt.record(1, "x" * 300 + ".c", "h" * 200, 0, 0)
    _, _, _, file, host, *_ = C_LAYOUT.unpack(data)
    assert file[-1:] == b"\0" and file[:127] == b"x" * 127
    assert host[-1:] == b"\0" and host[:127] == b"h" * 127


def test_notes_rewrite_one_file_which_end_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state.begin(str(tmp_path), "a/b/job.c")
    path = tmp_path / "state" / f"binstate_{os.getpid()}"
    assert not path.exists()  # nothing is written before the first phase
    state.note(state.STARTUP)
    assert (tmp_path / "state").is_dir()  # made on demand, as distcc does
    state.note(state.CONNECT, "127.0.0.1", 2)
    state.note(state.COMPILE)  # host and slot carry over
    rec = C_LAYOUT.unpack(path.read_bytes())
    assert rec[2] == os.getpid() and rec[3].rstrip(b"\0") == b"job.c"
    assert (rec[4].rstrip(b"\0"), rec[5], rec[6]) == (b"127.0.0.1", 2, state.COMPILE)
    # A monitor deletes a file it thinks stale (mtime 60 s old, so after a silent phase at
    # least that long): the next note brings it back.
    path.unlink()
    monkeypatch.setattr(state, "_written", state._written - state.REOPEN_AFTER)
    state.note(state.RECEIVE)
    assert C_LAYOUT.unpack(path.read_bytes())[6] == state.RECEIVE
    state.end()
    assert not path.exists() and not state.active()
    state.note(state.DONE)  # after end: nothing
    assert not path.exists()


def test_one_open_per_job_and_reopened_before_a_monitor_could_remove_it(tmp_path: Path) -> None:
    """The file stays open from note to note (one pwrite per phase, where distcc opens it
    each time), and is opened anew after a pause well inside distccmon's 60 s rule."""
    assert 0 < state.REOPEN_AFTER <= 30
    state.begin(str(tmp_path), "job.c")
    path = tmp_path / "state" / f"binstate_{os.getpid()}"
    try:
        state.note(state.STARTUP)
        fd = state._fd
        assert fd >= 0
        state.note(state.CONNECT, "h", 1)
        state.note(state.SEND)
        assert state._fd == fd  # the same open file: no open/close per phase
        assert C_LAYOUT.unpack(path.read_bytes())[6] == state.SEND
    finally:
        state.end()
    assert state._fd == -1 and not path.exists()  # end closes it as well


def test_unusable_state_dir_turns_monitoring_off(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    state.begin(str(tmp_path), "x.c")
    state.note(state.STARTUP)  # no exception: a monitor never fails a compile
    assert not state.active()


def test_what_is_written_reads_back() -> None:
    data = fmt.record(4242, "src/foo.c", "10.0.0.7", 3, fmt.RECEIVE)
    assert fmt.parse(data) == (4242, "foo.c", "10.0.0.7", 3, fmt.RECEIVE)
    assert fmt.parse(data[:-1]) is None  # short: skipped
    assert fmt.parse(b"\0" * fmt.SIZE) is None  # wrong size field and magic
    late = fmt.record(1, "x.c", "h", 0, 99)
    assert fmt.parse(late) == (1, "x.c", "h", 0, fmt.COMPILE)  # past Done: as distccmon


@pytest.mark.parametrize(
    ("source", "host", "slot", "phase"),
    [
        ("src/dir/foo.c", "10.0.0.7", 3, 4),
        ("x" * 300 + ".c", "h" * 200, 0, 0),
        ("é/ü.c", "[::1]:3632", -1, 7),
        ("", "", 1023, 5),
    ],
)
def test_the_client_writes_the_codecs_record(
    tmp_path: Path, source: str, host: str, slot: int, phase: int
) -> None:
    """client.state repeats the layout (so the client need not import the codec): the file
    it writes is the codec's record, byte for byte, and the constants are the codec's."""
    names = ["PREFIX", "STARTUP", "BLOCKED", "CONNECT", "CPP", "SEND", "COMPILE", "RECEIVE", "DONE"]
    assert [getattr(state, n) for n in names] == [getattr(fmt, n) for n in names]
    state.begin(str(tmp_path), source)
    state.note(phase, host, slot)
    path = tmp_path / "state" / f"{fmt.PREFIX}{os.getpid()}"
    assert path.read_bytes() == fmt.record(os.getpid(), source, host, slot, phase)
