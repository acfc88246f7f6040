"""The SSH transport's child handling and ``meshcc daemon --inetd`` on the channels an inetd
or sshd may hand it, all on this machine (no sshd, loopback only): a stuck ssh killed at
``DISTCC_IO_TIMEOUT``; ``--inetd`` on one socket for stdin and stdout (what an sshd built
without pipes gives), on a TCP socket (``--allow`` applies), and failing to start (the
reason goes to the client as ERRM). The real sshd tests are in test_ssh.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshcc.wire import protocol as wire

SOURCE = "int hello(int x) { return x * 6 + 1; }\n"
INETD = [sys.executable, "-m", "meshcc", "daemon", "--inetd"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """hello.c, its preprocessed hello.i, and ref.o: what a local gcc makes of hello.c."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "hello.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-c", "hello.c", "-o", "ref.o"], cwd=w, check=True)
    subprocess.run(["gcc", "-O2", "-E", "hello.c", "-o", "hello.i"], cwd=w, check=True)
    return w


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_io_timeout_kills_a_stuck_ssh(client_env, work, tmp_path):
    """A DISTCC_SSH that never answers: after DISTCC_IO_TIMEOUT the job compiles locally and
    the ssh child is gone (killed and reaped, not left running)."""
    pidfile = tmp_path / "ssh.pid"
    fake = _write(  # stderr away from ours, so a survivor cannot hold the test's pipe open
        tmp_path / "stuck-ssh",
        f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600 2>/dev/null\n",
        0o755,
    )
    env = dict(client_env, DISTCC_HOSTS="@nowhere", DISTCC_SSH=str(fake))
    env["DISTCC_IO_TIMEOUT"] = "1"
    env["MESHCC_VERBOSE"] = "1"
    try:
        proc = subprocess.run(
            ["meshcc-gcc", "-O2", "-c", "hello.c", "-o", "hello.o"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        shown = f"exit {proc.returncode}\n{proc.stderr}"
        assert proc.returncode == 0, shown
        assert (work / "hello.o").read_bytes() == (work / "ref.o").read_bytes()
        assert "IO timeout" in proc.stderr, shown
        pid = int(pidfile.read_text())
        assert not Path(f"/proc/{pid}").exists(), f"ssh child {pid} outlived the compile"
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _request(work: Path, *extra: bytes) -> bytes:
    source = (work / "hello.i").read_bytes()
    argv = [b"gcc", *extra, b"-O2", b"-c", b"hello.c", b"-o", b"hello.o"]
    return wire.encode_request_head(1, argv) + wire.token(b"DOTI", len(source)) + source


def _reply(sock: socket.socket) -> dict[str, object]:
    """Read one reply, as events by type name; the socket stays open (a client keeps its
    side open until the reply is in: the server takes an early close for a disconnect)."""
    sock.settimeout(60)
    reader = wire.ReplyReader(1, wire.Limits())
    events: dict[str, object] = {}
    while True:
        event = reader.next_event()
        if event is wire.NEED_DATA:
            data = sock.recv(65536)
            reader.feed(data) if data else reader.feed_eof()
            continue
        events[type(event).__name__] = event
        if isinstance(event, (wire.ReplyEnd, wire.ReplyRefused)):
            return events


def _run_inetd(channel: socket.socket, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*INETD, *args], stdin=channel, stdout=channel, stderr=subprocess.PIPE)
    channel.close()
    return proc


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode(errors="replace")


def test_inetd_on_one_socket_for_stdin_and_stdout(work):
    """One duplex socket as fds 0 and 1: a compile, then a refusal, each on its own run."""
    ours, theirs = socket.socketpair()
    with ours:
        proc = _run_inetd(theirs)
        ours.sendall(_request(work))
        events = _reply(ours)
        code, err = _finish(proc)
    assert code == 0, err
    status, obj = events["ReplyStatus"], events["ReplyObject"]
    assert status.wait_status == 0, err
    assert obj.data == (work / "ref.o").read_bytes()

    ours, theirs = socket.socketpair()
    with ours:
        proc = _run_inetd(theirs, "--log-stderr")
        ours.sendall(_request(work, b"-fdump-tree-original"))
        events = _reply(ours)
        code, err = _finish(proc)
    refused = events["ReplyRefused"]
    assert refused.message == "-fdump-tree-original writes compiler dump files"
    assert "job refused: -fdump-tree-original" in err  # the log: stderr, never the channel


def test_inetd_on_a_tcp_socket_applies_the_access_list(work):
    """stdin a TCP socket (a classic inetd): the client address must pass --allow."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
    with client:
        proc = _run_inetd(conn, "--allow", "10.99.0.0/16")
        client.sendall(_request(work))
        events = _reply(client)
        code, err = _finish(proc)
    assert code == 0, err
    refused = events["ReplyRefused"]
    assert "127.0.0.1 is not allowed" in refused.message, refused


def test_inetd_that_cannot_start_says_why(work, tmp_path):
    """No usable compiler: the reason goes to the client as ERRM, the exit code is distcc's."""
    ours, theirs = socket.socketpair()
    with ours:
        proc = _run_inetd(theirs, "--compiler", str(tmp_path / "no-such-gcc"))
        ours.sendall(_request(work))
        events = _reply(ours)
        code, err = _finish(proc)
    assert code == 110, err  # EXIT_COMPILER_MISSING
    refused = events["ReplyRefused"]
    assert "no-such-gcc: no such file" in refused.message
