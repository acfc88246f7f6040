"""The compile client's plain remote path (``DISTCC_HOSTS`` set, no local meshcc daemon)
stays lean: what a real job loads, checked in the process that ran it (real gcc, real
stock distccd on loopback), and the daemon probe that keeps the control protocol and
direct mode off that path agrees with the control client it stands in for."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon
from meshcc.client import wrapper
from meshcc.transport import control_client as cc
from test_lease_client import FakeControl, grant
from test_wrapper import env_with, local_object

ROOT = Path(__file__).resolve().parents[2]

# Modules a plain remote job must not load: the control protocol and direct mode (only
# when a daemon answers), and stdlib modules the client does without (``os`` and
# ``socket`` cost milliseconds; ``errno`` only on a send error).
HEAVY = (
    "meshcc.wire",
    "meshcc.wire.control",
    "meshcc.transport.control_client",
    "meshcc.client.direct",
    "meshcc.cache",
    "os",
    "socket",
    "errno",
    "enum",
    "re",
    "hashlib",
    "subprocess",
)

# Runs one compile in this process, as the launcher does (``-IS``), then lists what it
# loaded: main() returns on the remote path, so sys.modules is the job's whole set.
_JOB = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from meshcc.client.wrapper import main\n"
    "code = main(['meshcc-gcc', *sys.argv[2:]])\n"
    "heavy = " + repr(HEAVY) + "\n"
    "print(sorted(m for m in heavy if m in sys.modules))\n"
    "sys.exit(code)\n"
)
# What a leased job may not load either (the control protocol it needs, of course).
HEAVY_LEASED = tuple(m for m in HEAVY if "control" not in m and m != "meshcc.wire")
_LEASED_JOB = _JOB.replace(repr(HEAVY), repr((*HEAVY_LEASED, "posixpath")))


def _plain_job(proj: Path, env: dict[str, str], *argv: str, script: str = _JOB) -> None:
    """Run one compile the launcher's way (``-IS``) in a fresh interpreter; it must succeed
    and have loaded none of the modules ``script`` lists."""
    res = subprocess.run(
        [sys.executable, "-IS", "-c", script, str(ROOT), *argv],
        env=env,
        cwd=proj,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"modules this job must not load: {res.stdout}"


def _stale_socket(path: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays and nobody listens: ECONNREFUSED
    return path


@pytest.mark.parametrize("daemon_socket", ["missing", "stale"])
def test_plain_remote_job_loads_no_control_code(
    daemon_socket: str,
    distccd: Callable[..., Daemon],
    client_env: dict[str, str],
    proj: Path,
    tmp_path: Path,
) -> None:
    server = distccd()
    sock = tmp_path / "control.sock"
    if daemon_socket == "stale":
        _stale_socket(sock)
    env = env_with(
        client_env, DISTCC_HOSTS=server.host_spec(), DISTCC_FALLBACK="0", MESHCC_SOCKET=str(sock)
    )
    _plain_job(proj, env, "-c", "src/foo.c", "-o", "foo.o")
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert len(server.wait_for_jobs(1)) == 1, server.diagnostics()


def test_probe_errors_are_the_control_clients() -> None:
    """The probe's "no daemon here" errors are the control client's (a test keeps them
    equal: the probe decides alone when nothing listens)."""
    assert set(wrapper._NO_DAEMON) == set(cc._ABSENT)


def test_probe_says_no_daemon_only_when_none_listens(tmp_path: Path) -> None:
    """Missing, stale, a plain file: False (no control code imported). Listening: the
    connection, which control_client.connect adopts and speaks on. An odd error (a path
    too long for AF_UNIX): True, so control_client looks itself and reports it."""
    missing = tmp_path / "missing.sock"
    assert wrapper._probe_daemon({"MESHCC_SOCKET": str(missing)}) is False
    stale = _stale_socket(tmp_path / "stale.sock")
    assert wrapper._probe_daemon({"MESHCC_SOCKET": str(stale)}) is False

    live = tmp_path / "live.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(live))
    listener.listen(1)
    try:
        env = {"MESHCC_SOCKET": str(live)}
        probed = wrapper._probe_daemon(env)
        assert isinstance(probed, tuple) and probed[1] == str(live)
        conn = cc.connect(env, probed=probed)
        peer, _ = listener.accept()
        with peer:
            assert conn.sock is probed[0] and conn.sock.gettimeout() == cc.CONNECT_TIMEOUT
            conn.sock.sendall(b"x")
            assert peer.recv(1) == b"x"  # the probe's own connection, blocking again
            conn.close()
            assert peer.recv(1) == b""  # one connection in all: nothing else was opened
    finally:
        listener.close()

    plain_file = tmp_path / "file.sock"
    plain_file.write_text("")  # connect: ECONNREFUSED on Linux for a non-socket file
    assert wrapper._probe_daemon({"MESHCC_SOCKET": str(plain_file)}) is False
    too_long = {"MESHCC_SOCKET": "/" + "x" * 200}  # AF_UNIX path too long: not "absent"
    assert wrapper._probe_daemon(too_long) is True
    with pytest.raises((cc.NoDaemon, cc.ControlError)):
        cc.connect(too_long)


def test_probed_connection_in_a_shared_tmp_dir_not_ours_is_refused(tmp_path: Path) -> None:
    """A guessed per-user path under /tmp is trusted only in a private directory of ours:
    the probe's connection gets the same check as control_client's own connect."""
    import os

    from meshcc.wire import control

    try:
        cc.Control.connect(control.ROOT_SOCKET).close()
    except cc.NoDaemon:
        pass
    else:
        pytest.skip(f"a meshcc daemon answers on {control.ROOT_SOCKET} on this machine")
    bad_dir = Path(f"/tmp/meshcc-probe-test-{os.getpid()}")
    bad_dir.mkdir(mode=0o777)
    bad_dir.chmod(0o777)  # writable by others: not trusted
    path = bad_dir / "control.sock"
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(path))
        listener.listen(1)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        with pytest.raises(cc.NoDaemon):
            cc.connect({"XDG_RUNTIME_DIR": str(tmp_path / "none")}, probed=(client, str(path)))
        assert client.fileno() == -1  # closed, not used
    finally:
        listener.close()
        path.unlink(missing_ok=True)
        bad_dir.rmdir()


def test_preprocessed_job_never_asks_a_listening_daemon(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path, tmp_path: Path
) -> None:
    """With DISTCC_HOSTS only direct mode asks a local daemon, and direct mode never
    applies to a ``.i`` job: no connection, no control code, even with a daemon there."""
    server = distccd()
    subprocess.run(["gcc", "-E", "src/foo.c", "-o", "foo.i"], cwd=proj, check=True)
    sock = tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen(4)
    listener.setblocking(False)
    try:
        env = env_with(
            client_env,
            DISTCC_HOSTS=server.host_spec(),
            DISTCC_FALLBACK="0",
            MESHCC_SOCKET=str(sock),
        )
        _plain_job(proj, env, "-c", "foo.i", "-o", "foo.o")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
        assert len(server.wait_for_jobs(1)) == 1, server.diagnostics()
    finally:
        listener.close()


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 300_001])
def test_read_all_reads_what_open_reads(tmp_path: Path, size: int) -> None:
    """The source read without a file object: the same bytes, whatever the size."""
    import random

    data = random.Random(size).randbytes(size)
    path = tmp_path / "x.i"
    path.write_bytes(data)
    assert wrapper._read_all(str(path)) == data
    with pytest.raises(FileNotFoundError):
        wrapper._read_all(str(tmp_path / "missing.i"))


def test_read_all_reads_past_a_stale_size(tmp_path: Path) -> None:
    """A file longer than fstat said (a pipe reports 0): read to its real end."""
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = b"y" * 200_000

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        assert wrapper._read_all(str(fifo)) == data
    finally:
        t.join(10)


def test_leased_remote_job_loads_no_os(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path, tmp_path: Path
) -> None:
    """A lease granted and the job sent to the peer: the compiler's path is made absolute
    without posixpath (which imports ``os``), and a .i job loads no direct mode."""
    server = distccd()
    ctl = FakeControl(tmp_path / "control.sock", [grant(server.port)])
    try:
        subprocess.run(["gcc", "-E", "src/foo.c", "-o", "foo.i"], cwd=proj, check=True)
        env = env_with(client_env, MESHCC_SOCKET=str(ctl.path), DISTCC_FALLBACK="0")
        _plain_job(proj, env, "-c", "foo.i", "-o", "foo.o", script=_LEASED_JOB)
        assert len(server.wait_for_jobs(1)) == 1, server.diagnostics()
        conns = ctl.wait_closed(1)
        assert [c.kinds() for c in conns] == [["lease", "done", "closed"]]
    finally:
        ctl.close()
