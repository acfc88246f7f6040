"""The result cache is asked before a job slot is taken (meshcc issue 12/13): a job whose
result is stored is answered at once even when every slot is held, instead of queueing
behind the compiles (and then holding a slot for the lookup). Real daemon, real gcc, a
stock-protocol client on loopback; the slot is held by a busy-capable client that took it
with SLOT and has not sent its request yet (it keeps it until its header deadline, 10 s).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import LOOPBACK, Daemon
from meshcc.wire import protocol as wire
from test_server import send_job

_SUMMARY = re.compile(r"client: \S+ (?P<result>[A-Z_]+) .*rcache:(?P<rcache>[\w-]+)")


@pytest.fixture
def cache_root() -> Iterator[Path]:
    """A 0755 parent the dropped daemon user can traverse; the daemon makes results/."""
    parent = Path(tempfile.mkdtemp(prefix="meshcc-cache-slot-test-"))
    os.chmod(parent, 0o755)
    yield parent / "results"
    shutil.rmtree(parent, ignore_errors=True)


def _summaries(d: Daemon, count: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in d.log_text().splitlines() if _SUMMARY.search(line)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _still_open(s: socket.socket) -> bool:
    """The server has neither closed this connection nor written to it."""
    s.setblocking(False)
    try:
        s.recv(1)
    except BlockingIOError:
        return True
    finally:
        s.setblocking(True)
    return False


def test_a_cached_job_is_answered_while_every_slot_is_held(
    meshcc_daemon: Callable[..., Daemon], cache_root: Path
) -> None:
    d = meshcc_daemon("--cache-dir", str(cache_root), jobs=1)
    argv = ["gcc", "-O2", "-c", "x.c", "-o", "x.o"]
    first = send_job(d.port, argv)
    assert first.status == 0 and first.obj.startswith(b"\x7fELF")
    (stored,) = _summaries(d, 1)
    assert "COMPILE_OK" in stored and "rcache:miss" in stored

    with socket.create_connection((LOOPBACK, d.port), timeout=15) as holder:
        holder.sendall(wire.SLOT_REQUEST)  # takes the only slot; the request never follows
        granted = b""
        while len(granted) < len(wire.SLOT_GRANTED):
            chunk = holder.recv(len(wire.SLOT_GRANTED) - len(granted))
            assert chunk, "the server closed the SLOT connection"
            granted += chunk
        assert granted == wire.SLOT_GRANTED

        again = send_job(d.port, argv, timeout=30)
        # Answered from the cache while the slot is still held: before, this job queued
        # for the slot until the holder's header deadline dropped it.
        assert _still_open(holder)
    assert again.status == 0 and again.obj == first.obj
    lines = _summaries(d, 2)
    hit = lines[1]
    assert "COMPILE_OK" in hit and "rcache:hit" in hit
    assert "queue:" not in hit  # it never waited for a slot
