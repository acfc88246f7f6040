"""Slot locks and backoff files, checked against other processes (and against stock distcc in
integration/test_slots_distcc.py).

POSIX record locks never conflict inside one process, so every "someone else holds it"
check runs the other holder in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshcc.client import slots

HOLDER = r"""
import sys, time
from meshcc.client import slots
lockdir, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
held = [slots.try_lock(lockdir, name, i) for i in range(n)]
print(" ".join("1" if h else "0" for h in held), flush=True)
sys.stdin.read()  # hold until the parent closes our stdin
"""


class Holder:
    """A child process holding slots 0..n-1 of ``name`` (as a second compile client would)."""

    def __init__(self, lockdir: str, name: str, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, lockdir, name, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.got = self.proc.stdout.readline().split()

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def lockdir(tmp_path: Path) -> str:
    return slots.lock_dir(str(tmp_path))


class H:
    def __init__(self, lock_name: str, limit: int, down: bool = False) -> None:
        self.lock_name = lock_name
        self.limit = limit
        self.down = down


def test_lock_file_names_and_layout(lockdir: str) -> None:
    slot = slots.try_lock(lockdir, "tcp_10.0.0.1_3632", 2)
    assert slot is not None
    path = Path(lockdir) / "cpu_tcp_10.0.0.1_3632_2"
    assert path.exists() and path.stat().st_size == 0
    slot.release()
    assert path.exists()  # lock files are never deleted, like distcc's


def test_two_processes_cannot_share_a_slot(lockdir: str) -> None:
    holder = Holder(lockdir, "localhost", 2)
    try:
        assert holder.got == ["1", "1"]
        assert slots.try_lock(lockdir, "localhost", 0) is None
        assert slots.try_lock(lockdir, "localhost", 1) is None
        third = slots.try_lock(lockdir, "localhost", 2)
        assert third is not None and third.index == 2
        third.release()
    finally:
        holder.release()
    # The kernel dropped the holder's locks when it exited.
    again = slots.try_lock(lockdir, "localhost", 0)
    assert again is not None
    again.release()


def test_our_lock_blocks_other_processes(lockdir: str) -> None:
    mine = slots.try_lock(lockdir, "tcp_h_1", 0)
    assert mine is not None
    holder = Holder(lockdir, "tcp_h_1", 2)
    try:
        assert holder.got == ["0", "1"]
    finally:
        holder.release()
        mine.release()


def test_same_process_does_not_double_take(lockdir: str) -> None:
    a = slots.try_lock(lockdir, "tcp_x_1", 0)
    assert a is not None
    assert slots.try_lock(lockdir, "tcp_x_1", 0) is None  # POSIX would say yes; we say no
    a.release()
    b = slots.try_lock(lockdir, "tcp_x_1", 0)
    assert b is not None
    b.release()


def test_breadth_first_selection(lockdir: str) -> None:
    hosts = [H("tcp_a_1", 2), H("tcp_b_1", 3), H("tcp_c_1", 1)]
    got = []
    for _ in range(6):
        host, slot = slots.lock_first_free(lockdir, hosts, sleep=_no_sleep)
        got.append((host.lock_name, slot.index))
    assert got == [
        ("tcp_a_1", 0),
        ("tcp_b_1", 0),
        ("tcp_c_1", 0),
        ("tcp_a_1", 1),
        ("tcp_b_1", 1),
        ("tcp_b_1", 2),
    ]
    for name, index in got:
        slots._held.pop(f"{lockdir}/cpu_{name}_{index}")


def _no_sleep(seconds: float) -> None:
    raise AssertionError("should not have had to wait")


def test_waits_while_all_busy(lockdir: str) -> None:
    holder = Holder(lockdir, "tcp_busy_1", 1)
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            holder.release()

    try:
        _host, slot = slots.lock_first_free(
            lockdir, [H("tcp_busy_1", 1)], pause_msec=250, sleep=fake_sleep
        )
    finally:
        if holder.proc.poll() is None:
            holder.release()
    assert sleeps == [0.25, 0.25]
    assert slot.index == 0
    slot.release()


def test_backoff_files(lockdir: str) -> None:
    assert not slots.is_backed_off(lockdir, "tcp_h_2", 60)
    slots.mark_backoff(lockdir, "tcp_h_2")
    path = Path(lockdir) / "backoff_tcp_h_2_0"
    assert path.read_bytes() == b"x"
    assert slots.is_backed_off(lockdir, "tcp_h_2", 60)
    assert not slots.is_backed_off(lockdir, "tcp_h_2", 0)  # period 0 disables backoff
    old = time.time() - 61
    os.utime(path, (old, old))
    assert not slots.is_backed_off(lockdir, "tcp_h_2", 60)
    slots.clear_backoff(lockdir, "tcp_h_2")
    assert not path.exists()


def test_usable_hosts_filters(lockdir: str) -> None:
    hosts = [H("tcp_a_1", 4), H("tcp_b_1", 4, down=True), H("tcp_c_1", 4), H("tcp_d_1", 4)]
    slots.mark_backoff(lockdir, "tcp_c_1")
    names = [h.lock_name for h in slots.usable_hosts(lockdir, hosts, 60, exclude={"tcp_d_1"})]
    assert names == ["tcp_a_1"]
    names = [h.lock_name for h in slots.usable_hosts(lockdir, hosts, 0)]
    assert names == ["tcp_a_1", "tcp_c_1", "tcp_d_1"]


def test_distcc_dir(tmp_path: Path) -> None:
    with pytest.raises(slots.DistccDirError, match="not a directory"):
        slots.distcc_dir({"DISTCC_DIR": str(tmp_path / "missing")})
    assert not (tmp_path / "missing").exists()
    home = tmp_path / "home"
    home.mkdir()
    top = slots.distcc_dir({"HOME": str(home)})
    assert top == str(home / ".distcc") and os.path.isdir(top)  # created, like distcc
