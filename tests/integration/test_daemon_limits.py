"""`meshcc daemon` as a service manager sees it: distccd's exit code for bad options, and a
descriptor limit raised at start (systemd's default soft limit is 1024)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

from harness import free_port


def _daemon_cmd(*args: str) -> list[str]:
    # --no-cache: no result cache left in /var/cache by a test of the daemon's limits
    return [sys.executable, "-m", "meshcc", "daemon", "--no-cache", *args]


def test_bad_options_exit_101_as_distccd() -> None:
    for args in (["--bogus"], ["--port", "0"], ["--jobs", "many"]):
        p = subprocess.run(_daemon_cmd(*args), capture_output=True, text=True, timeout=60)
        assert p.returncode == 101, (args, p.returncode, p.stderr)
        assert "error:" in p.stderr
    p = subprocess.run(_daemon_cmd("--help"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    p = subprocess.run(
        [sys.executable, "-m", "meshcc", "hosts", "--bogus"], capture_output=True, timeout=60
    )
    assert p.returncode == 2  # the admin commands keep argparse's code


def _start_loopback_daemon(
    log: Path, *extra: str, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """A daemon on 127.0.0.1 only (no discovery), logging to ``log``; ``prefix`` wraps it."""
    argv = _daemon_cmd(
        "--listen",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--no-discovery",
        "--allow",
        "127.0.0.1",
        "--log-file",
        str(log),
        *extra,
    )
    return subprocess.Popen([*prefix, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def test_the_daemon_raises_its_descriptor_limit(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expect = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    assert expect > 256

    log = tmp_path / "daemon.log"
    limit = f"--nofile=256:{'unlimited' if hard == resource.RLIM_INFINITY else hard}"
    proc = _start_loopback_daemon(log, "--log-level", "info", prefix=("prlimit", limit, "--"))
    try:
        deadline = time.monotonic() + 30
        while "raised the open-file limit" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert f"from 256 to {expect}" in log.read_text()
        assert _open_files_limit(proc.pid) == expect
    finally:
        _stop(proc)


def test_idle_status_port_connections_are_capped(tmp_path: Path) -> None:
    """Connections that never send a request hold at most MAX_CONNECTIONS descriptors;
    further ones are closed at once, and a real request is served once one frees up."""
    import socket

    from meshcc.daemon.status_http import MAX_CONNECTIONS

    status_port = free_port()
    log = tmp_path / "daemon.log"
    proc = _start_loopback_daemon(log, "--status-port", str(status_port))
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                idle.append(socket.create_connection(("127.0.0.1", status_port), timeout=5))
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        idle += [
            socket.create_connection(("127.0.0.1", status_port), timeout=5)
            for _ in range(MAX_CONNECTIONS - 1)
        ]
        time.sleep(0.5)  # the daemon has accepted them all
        extra = socket.create_connection(("127.0.0.1", status_port), timeout=5)
        assert extra.recv(100) == b"", "a connection beyond the cap was kept"
        extra.close()
        idle.pop().close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", status_port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 200"), reply[:100]
        assert "closing new ones" in log.read_text()
    finally:
        for s in idle:
            s.close()
        _stop(proc)
