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

        # 2. A meshcc client asking for a slot with its request hears BUSY at once, the
        # job still running (the answer comes in place of the reply, no compile waited).
        with pytest.raises(client.Busy) as busy:
            _pipelined(daemon.port, b"b.c", b"int b(int x) { return x; }\n")
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
        with pytest.raises(client.Busy):
            _pipelined(daemon.port, b"b.c", b"int b(int x) { return x; }\n")
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

    # 4. With the slot free, a lone SLOT (a client that waits for FREE before its request,
    # as meshcc's did before pipelining) reserves it, and the job follows on that connection.
    netns.wait_for(lambda: _status(sock).slots_held == 0, 30, what="the slot to be free")
    cpp = run(["gcc", "-E", "c.c"], cwd=tmp_path, env=client_env).stdout.encode()
    s, answer = _ask_slot(daemon.port, LOOPBACK)
    with s:
        assert answer == wire.SLOT_GRANTED
        netns.wait_for(lambda: _status(sock).slots_held == 1, 30, what="the reservation")
        # Reserved, not yet sent: a SLOT request now is BUSY, the reservation counts.
        with pytest.raises(client.Busy) as busy:
            _pipelined(daemon.port, b"b.c", b"int b(int x) { return x; }\n")
        assert busy.value.running == 0  # the slot is reserved, nothing runs yet
        s.sendall(wire.encode_request_head(1, [b"gcc", b"-c", b"c.c", b"-o", b"c.o"]))
        s.sendall(wire.encode_source(cpp))
        events = _read_reply(s, 1)
    assert events[0] == wire.ReplyStart(1) and events[1] == wire.ReplyStatus(0), events
    [obj] = [e.data for e in events if isinstance(e, wire.ReplyObject)]
    assert obj.startswith(b"\x7fELF")
    assert _status(sock).slots_held == 0
    # 5. And a pipelined request (SLOT, request, no wait) with the slot free: FREE, the reply.
    reply = _pipelined(daemon.port, b"c.c", cpp)
    assert reply.status == 0 and reply.obj == obj, reply.stderr
    assert [j.input for j in daemon.wait_for_jobs(4)].count("c.c") == 2, daemon.diagnostics()


def test_refusal_before_the_slot_reaches_the_meshcc_client(
    meshcc_daemon: Callable[..., Daemon],
) -> None:
    """A SLOT request from an address the access list refuses gets the ERRM reason, not a
    slot (the access check comes first)."""
    daemon = meshcc_daemon(allow=("10.99.0.0/16",))
    with pytest.raises(client.Refused, match="not allowed by this server's access list"):
        _pipelined(daemon.port, b"a.c", b"int a;\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "denied by access list" not in daemon.log_text():
        time.sleep(0.05)
    assert "denied by access list" in daemon.log_text()


# --------------------------------------------------------------------------- pipelined SLOT


def _pipelined(
    port: int, source: bytes, data: bytes, version: int = 1, *, host: str = LOOPBACK
) -> client.Reply:
    """meshcc's compile client's exchange with a ``busy`` peer: SLOT, the request, no wait;
    the reply, or client.Busy / client.Refused."""
    with client.Connection(host, port, version, io_timeout=IO_TIMEOUT) as conn:
        conn.connect()
        conn.reserve_slot()
        conn.send_head([b"gcc", b"-c", source, b"-o", b"out.o"])
        conn.send_source(data)
        return conn.read_reply()


def _read_reply(s: socket.socket, version: int) -> list[object]:
    """Every event of a plain distcc reply read from ``s``, until the reply ends."""
    reader = wire.ReplyReader(version)
    events: list[object] = []
    while True:
        event = reader.next_event()
        if event is wire.NEED_DATA:
            chunk = s.recv(1 << 16)
            if chunk:
                reader.feed(chunk)
            else:
                reader.feed_eof()
            continue
        events.append(event)
        if isinstance(event, (wire.ReplyEnd, wire.ReplyRefused)):
            return events


def _big_source(size: int) -> bytes:
    """A preprocessed source of about ``size`` bytes (mostly one comment: cheap to compile)."""
    return b"/* " + b"x" * size + b" */\nint big(int x) { return x * 7; }\n"


def test_full_server_answers_busy_to_a_big_pipelined_request_and_the_client_stops_sending(
    meshcc_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The server's only slot is reserved (a lone SLOT); a client pipelines SLOT and a
    48 MiB request (protocol 1: the bytes go as they are, far over the 8 MiB the server
    discards after a BUSY). It hears BUSY, every time, without sending the whole request:
    it saw the BUSY between two pieces and stopped, so the server never had to close on
    unread bytes (which would reset the connection and could destroy the BUSY). With the
    slot free, the same big request compiles."""
    daemon = meshcc_daemon("--log-level", "debug", jobs=1)
    big = _big_source(48 * 1024 * 1024)
    holder, answer = _ask_slot(daemon.port, LOOPBACK)
    try:
        assert answer == wire.SLOT_GRANTED
        for _ in range(5):
            with pytest.raises(client.Busy):
                _pipelined(daemon.port, b"big.c", big)
    finally:
        holder.close()
    netns.wait_for(
        lambda: daemon.log_text().count("bytes read after SLOT until") == 5, 30, what="the logs"
    )
    drained = [
        int(line.split(" bytes read after SLOT")[0].rsplit(" ", 1)[1])
        for line in daemon.log_text().splitlines()
        if "bytes read after SLOT until its close" in line
    ]
    assert len(drained) == 5, daemon.log_text()[-3000:]  # the client closed, no limit hit
    assert max(drained) < len(big) // 2, drained  # it stopped sending early
    netns.wait_for(lambda: _status_port_free(daemon.port), 30, what="the reservation to end")
    reply = _pipelined(daemon.port, b"big.c", big)
    assert reply.status == 0 and reply.obj.startswith(b"\x7fELF"), reply.stderr


def _status_port_free(port: int) -> bool:
    """The only slot is free again: a lone SLOT gets FREE (and gives it back at once)."""
    s, answer = _ask_slot(port, LOOPBACK)
    s.close()
    return answer == wire.SLOT_GRANTED


def test_busy_reaches_a_client_that_sent_its_whole_request_without_reading(
    meshcc_daemon: Callable[..., Daemon],
) -> None:
    """A client that pipelines SLOT and a 4 MiB request and reads only once it has sent
    everything still reads BUSY then a clean end of stream, not a reset: after BUSY the server
    shuts down its side and reads (discards) the rest until the client closes."""
    daemon = meshcc_daemon(jobs=1)
    holder, answer = _ask_slot(daemon.port, LOOPBACK)
    try:
        assert answer == wire.SLOT_GRANTED
        request_bytes = (
            wire.SLOT_REQUEST
            + wire.encode_request_head(1, [b"gcc", b"-c", b"big.c", b"-o", b"big.o"])
            + wire.encode_source(_big_source(4 * 1024 * 1024))
        )
        for _ in range(5):
            with socket.create_connection((LOOPBACK, daemon.port), timeout=IO_TIMEOUT) as s:
                s.sendall(request_bytes)
                got = b""
                while chunk := s.recv(1 << 16):  # ConnectionResetError fails the test
                    got += chunk
            assert got == wire.encode_busy(0)
    finally:
        holder.close()


def test_stock_distcc_client_compiles_on_a_full_meshcc_server_after_it_frees(
    meshcc_daemon: Callable[..., Daemon], client_env: dict[str, str], tmp_path: Path
) -> None:
    """A stock distcc 3.4 client sends no SLOT: while meshcc clients' pipelined requests
    to the full server hear BUSY, its job waits inside the server (distccd's behaviour) and
    compiles once the slot frees, object identical to a local build."""
    sock = tmp_path / "control.sock"
    daemon = meshcc_daemon("--socket", str(sock), jobs=1)
    (tmp_path / "d.c").write_text("int d(int x) { return x - 1; }\n")
    env = dict(client_env, DISTCC_HOSTS=f"{LOOPBACK}:{daemon.port}", DISTCC_FALLBACK="0")
    holder, answer = _ask_slot(daemon.port, LOOPBACK)
    proc = None
    try:
        assert answer == wire.SLOT_GRANTED
        proc = _popen(["distcc", "gcc", "-c", "d.c", "-o", "d.o"], tmp_path, env)
        netns.wait_for(lambda: _status(sock).slot_waiting == 1, 30, what="distcc's job to queue")
        with pytest.raises(client.Busy):
            _pipelined(daemon.port, b"e.c", b"int e;\n")
        assert proc.poll() is None
    except BaseException:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.communicate()
        raise
    finally:
        holder.close()
    _finish(proc, "distcc gcc d.c")
    local = run(["gcc", "-c", "d.c", "-o", "local-d.o"], cwd=tmp_path, env=client_env)
    assert local.returncode == 0
    assert (tmp_path / "d.o").read_bytes() == (tmp_path / "local-d.o").read_bytes()
    [job] = daemon.wait_for_jobs(1)
    assert job.input == "d.c" and job.queue_ms is not None, daemon.diagnostics()


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
