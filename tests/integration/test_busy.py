"""BUSY on a real daemon (loopback): a full server answers a meshcc client's SLOT request at
once with BUSY, while a stock distcc 3.4 client's job still waits inside the server and
succeeds, as with distccd, only now that wait is visible (the status reply's
``slot_waiting``, the job summary's ``queue:``). The server never runs or reserves more than
``--jobs``.

The daemon runs with ``--jobs 1`` and one compiler: a wrapper around the real gcc that, for
a compile (``-c``), says it started and then waits while the test's hold file exists. So a
job holds the only slot exactly as long as the test wants, with no sleep-based timing.
Also: turns between boxes on a freed slot (an in-process server), and the compile client's
BUSY path against a real full server with a fake local daemon (``done`` says busy, the next
lease is this box's share). Two boxes and two servers: integration/test_busy_netns.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import netns
from conftest import LOOPBACK, Daemon, run
from meshcc.transport import client
from meshcc.wire import control
from meshcc.wire import protocol as wire
from meshd import private_dir, request, trusted_dir
from test_lease_client import FakeControl, fake_control, lease_env  # noqa: F401  (fixture)
from test_server_stalled import in_process  # noqa: F401  (a fixture, used by name)
from test_wrapper import local_object, meshcc
from test_wrapper import run as run_client

# A server that queued a SLOT request instead of answering would fail the test after this
# long, rather than hang it (an answer is due at once).
IO_TIMEOUT = 10.0

HELD_GCC = """#!/bin/sh
# gcc; a compile (-c) first says it started, then waits while {marks}/hold exists.
for a in "$@"; do
  if [ "$a" = "-c" ]; then
    : > "{marks}/started.$$"
    while [ -e "{marks}/hold" ]; do sleep 0.02; done
    break
  fi
done
exec /usr/bin/gcc "$@"
"""


@pytest.fixture
def marks() -> Iterator[Path]:
    d = private_dir("slotwait-marks-")
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def _held_gcc(marks: Path) -> list[str]:
    """The held gcc under both names a job may ask for (stock distcc sends the triplet's)."""
    bindir = trusted_dir("slotwait-bin-")
    names = []
    triplet = run(["gcc", "-dumpmachine"]).stdout.strip()
    for name in ("gcc", f"{triplet}-gcc"):
        gcc = bindir / name
        gcc.write_text(HELD_GCC.format(marks=marks))
        gcc.chmod(0o755)
        names.append(str(gcc))
    return names


def _status(sock: Path) -> control.StatusReply:
    reply = control.decode_status_reply(request(sock, control.StatusRequest().to_message()))
    assert isinstance(reply, control.StatusReply), reply
    return reply


def _started(marks: Path) -> int:
    return len(list(marks.glob("started.*")))


def _popen(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str], what: str) -> str:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n{out}\n{err}"
    return err


def test_full_server_says_busy_to_meshcc_and_queues_stock_distcc_visibly(
    meshcc_daemon: Callable[..., Daemon],
    client_env: dict[str, str],
    tmp_path: Path,
    marks: Path,
) -> None:
    sock = tmp_path / "control.sock"
    daemon = meshcc_daemon("--socket", str(sock), jobs=1, compilers=_held_gcc(marks))
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.c").write_text(f"int {name}(int x) {{ return x * 3; }}\n")
    env = dict(client_env, DISTCC_HOSTS=f"{LOOPBACK}:{daemon.port}", DISTCC_FALLBACK="0")
    (marks / "hold").touch()
    procs: list[subprocess.Popen[str]] = []
    try:
        # 1. A job takes the only slot and stays in it.
        procs.append(_popen(["meshcc-gcc", "-c", "a.c", "-o", "a.o"], tmp_path, env))
        netns.wait_for(lambda: _started(marks) == 1, 30, what="the first job to start")
        st = _status(sock)
        assert (st.jobs, st.running, st.slots_held, st.slot_waiting) == (1, 1, 1, 0), st

        # 2. A meshcc client asking for a slot hears BUSY at once, the job still running.
        conn = client.Connection(LOOPBACK, daemon.port, 1, io_timeout=IO_TIMEOUT)
        conn.connect()
        with pytest.raises(client.Busy) as busy:
            conn.reserve_slot()
        conn.close()
        assert busy.value.running == 1
        assert procs[0].poll() is None and (marks / "hold").exists()

        # 3. A stock distcc client is not told anything new: its job waits inside the
        # server as with distccd, and the status reply shows the wait.
        procs.append(_popen(["distcc", "gcc", "-c", "b.c", "-o", "b.o"], tmp_path, env))
        try:
            netns.wait_for(lambda: _status(sock).slot_waiting == 1, 30, what="b.c to queue")
        except TimeoutError:
            pytest.fail(f"{_status(sock)}\n{daemon.diagnostics()}")
        st = _status(sock)
        assert (st.running, st.slots_held, _started(marks)) == (1, 1, 1), st
        # A queued request is owed the next slot: a SLOT request is still answered BUSY.
        conn = client.Connection(LOOPBACK, daemon.port, 1, io_timeout=IO_TIMEOUT)
        conn.connect()
        with pytest.raises(client.Busy):
            conn.reserve_slot()
        conn.close()
    except BaseException:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.communicate()
        raise
    finally:
        (marks / "hold").unlink(missing_ok=True)
    _finish(procs[0], "meshcc-gcc a.c")
    _finish(procs[1], "distcc gcc b.c")
    assert (tmp_path / "a.o").stat().st_size > 0 and (tmp_path / "b.o").stat().st_size > 0
    jobs = {j.input: j for j in daemon.wait_for_jobs(2)}
    assert set(jobs) == {"a.c", "b.c"}, daemon.diagnostics()
    assert jobs["a.c"].queue_ms is None, "a.c found a free slot"
    assert jobs["b.c"].queue_ms is not None, (
        f"b.c's wait is not in its summary\n{daemon.log_text()}"
    )

    # 4. With the slot free, SLOT reserves it (FREE) and the job follows on that connection.
    netns.wait_for(lambda: _status(sock).slots_held == 0, 30, what="the slot to be free")
    cpp = run(["gcc", "-E", "c.c"], cwd=tmp_path, env=client_env).stdout.encode()
    with client.Connection(LOOPBACK, daemon.port, 1, io_timeout=IO_TIMEOUT) as conn:
        conn.connect()
        conn.reserve_slot()
        netns.wait_for(lambda: _status(sock).slots_held == 1, 30, what="the reservation")
        # Reserved, not yet sent: a SLOT request now is BUSY, the reservation counts.
        other = client.Connection(LOOPBACK, daemon.port, 1, io_timeout=IO_TIMEOUT)
        other.connect()
        with pytest.raises(client.Busy) as busy:
            other.reserve_slot()
        other.close()
        assert busy.value.running == 0  # the slot is reserved, nothing runs yet
        conn.send_head([b"gcc", b"-c", b"c.c", b"-o", b"c.o"])
        conn.send_source(cpp)
        reply = conn.read_reply()
    assert reply.status == 0 and reply.obj.startswith(b"\x7fELF"), reply.stderr
    assert _status(sock).slots_held == 0
    assert "c.c" in {j.input for j in daemon.wait_for_jobs(3)}, daemon.diagnostics()


def test_refusal_before_the_slot_reaches_the_meshcc_client(
    meshcc_daemon: Callable[..., Daemon],
) -> None:
    """A SLOT request from an address the access list refuses gets the ERRM reason, not a
    slot (the access check comes first)."""
    daemon = meshcc_daemon(allow=("10.99.0.0/16",))
    conn = client.Connection(LOOPBACK, daemon.port, 1, io_timeout=IO_TIMEOUT)
    conn.connect()
    with pytest.raises(client.Refused, match="not allowed by this server's access list"):
        conn.reserve_slot()
    conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "denied by access list" not in daemon.log_text():
        time.sleep(0.05)
    assert "denied by access list" in daemon.log_text()


# --------------------------------------------------------------------------- turns


def _ask_slot(port: int, source: str) -> tuple[socket.socket, bytes]:
    """A raw SLOT request from ``source`` (a loopback address); the socket and the answer."""
    s = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT, source_address=(source, 0))
    s.sendall(wire.SLOT_REQUEST)
    answer = b""
    while len(answer) < wire.HEADER_LEN:
        chunk = s.recv(wire.HEADER_LEN - len(answer))
        if not chunk:
            break
        answer += chunk
    return s, answer


@pytest.mark.parametrize("grace", [60.0, 0.0])
def test_a_freed_slot_goes_to_the_box_turned_away(in_process, grace: float) -> None:  # noqa: F811
    """Box A (127.0.0.1) holds the only slot; box B (127.0.0.2) hears BUSY. When A's slot
    frees and A asks again at once (its own next job, milliseconds later), B was turned away
    first, so it is B's turn: A hears BUSY and B gets the slot. A turn lasts ``turn_grace``
    (60 s here, so the test never races it); with 0, whoever asks first gets it (no turns)."""
    server = in_process(jobs=1, turn_grace=grace)
    a, answer = _ask_slot(server.port, "127.0.0.1")
    assert answer == wire.SLOT_GRANTED
    b, answer = _ask_slot(server.port, "127.0.0.2")
    assert answer == wire.encode_busy(0)  # reserved, nothing running yet
    b.close()
    a.close()  # A's job ends (here: before sending it): its slot frees
    netns.wait_for(lambda: server.call(lambda s: s.slots_held) == 0, 30, what="the slot")
    a, answer = _ask_slot(server.port, "127.0.0.1")
    if grace:
        assert answer == wire.encode_busy(0), "A took B's turn"
        b, answer = _ask_slot(server.port, "127.0.0.2")
        assert answer == wire.SLOT_GRANTED
        b.close()
    else:
        assert answer == wire.SLOT_GRANTED
    a.close()


# --------------------------------------------------------------------------- the wrapper


def test_meshcc_gcc_hears_busy_tells_its_daemon_and_compiles_in_its_share(
    meshcc_daemon: Callable[..., Daemon],
    fake_control: Callable[..., FakeControl],  # noqa: F811
    client_env: dict[str, str],
    proj: Path,
) -> None:
    """The compile client's BUSY path, end to end on a real full server: the (fake) local
    daemon leases a peer announcing ``busy``; the peer says BUSY at once; the client reports
    ``done`` with ``busy`` (not a failure: no backoff file) and asks again at once; the
    daemon's next answer is this box's own share, where it compiles. (With the live-load
    channel a real daemon usually knows a peer is full before anyone asks; BUSY covers the
    moments it does not: integration/test_busy_netns.py.)"""
    daemon = meshcc_daemon(jobs=1)
    holder, answer = _ask_slot(daemon.port, "127.0.0.1")  # another box holds the only slot
    try:
        assert answer == wire.SLOT_GRANTED
        full = control.LeaseGranted(
            LOOPBACK, daemon.port, 1, "gcc", "m:full", busy=True
        ).to_message()
        why = "all 1 matching peers are busy: compiling here (this box's share)"
        ctl = fake_control([full, control.LeaseLocal(why, hold=True).to_message()])
        env = lease_env(client_env, ctl, MESHCC_VERBOSE="1")
        res = run_client([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
        assert res.returncode == 0, res.stderr
        assert "is busy (0 jobs running): trying elsewhere" in res.stderr, res.stderr
        assert why in res.stderr
        assert (proj / "foo.o").read_bytes() == local_object(
            proj, "gcc", ["-c", "src/foo.c"], "r.o"
        )
        first, second = ctl.wait_closed(2)
        assert first.kinds() == ["lease", "done", "closed"], first.events
        [done] = first.messages("done")
        assert done["busy"] is True and done["ok"] is True, done
        assert control.decode_request(done) == control.DoneMessage(True, False, "", True)
        assert second.kinds()[0] == "lease"
        assert not list((Path(client_env["DISTCC_DIR"]) / "lock").glob("backoff_*"))
        assert daemon.jobs() == [], "the full server ran or queued the job"
    finally:
        holder.close()
