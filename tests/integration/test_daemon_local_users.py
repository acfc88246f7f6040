"""Local users against a real `meshcc daemon` on loopback: the daemon never runs a compiler
that someone other than root or its own user could have written, and fingerprinting never
holds up compiles. The unprivileged user is a real account the test creates and removes."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcc.compiler.fingerprints import untrusted_reason
from meshcc.wire import control
from meshd import Meshd, private_dir, request

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a user account: needs root")

PROBE_SCRIPT = """#!/bin/sh
# A fake compiler: leaves a trace of every run; blocks on a FIFO when one is given.
echo "$@" >> {marker}
[ -n "{fifo}" ] && read _ < "{fifo}"
case "$1" in
  -dumpfullversion|-dumpversion) echo 12.2.0 ;;
  -dumpmachine) echo x86_64-linux-gnu ;;
  -print-prog-name=as) echo as ;;
esac
"""


@pytest.fixture
def local_user() -> Iterator[pwd.struct_passwd]:
    name = f"mcc{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def daemon() -> Iterator[Meshd]:
    work = private_dir("meshcc-users-")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    d = Meshd(work, None, port=port)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)


def _fake_compiler(directory: Path, marker: Path, fifo: str = "") -> Path:
    path = directory / "gcc"
    path.write_text(PROBE_SCRIPT.format(marker=marker, fifo=fifo))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def user_pythonpath() -> Iterator[str]:
    """A copy of the meshcc package that any user can read. The checkout need not be: as
    README's test command runs it on a fresh box it is a 0700 directory of root's (see
    tests/fresh_root.sh), and so is the venv's interpreter path inside it."""
    top = Path(tempfile.mkdtemp(prefix="meshcc-pkg-", dir="/tmp"))
    try:
        shutil.copytree(
            Path(__file__).resolve().parents[2] / "meshcc",
            top / "meshcc",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for path in [top, *top.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield str(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _as_user(
    user: pwd.struct_passwd, pythonpath: str, code: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as ``user`` (no root, no capabilities); the code imports meshcc's
    stdlib-only modules from ``pythonpath``, with the venv's base interpreter."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            os.path.realpath(sys.executable),
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": pythonpath},
    )


LEASE_AS_USER = """
import sys
from meshcc.transport.control_client import Control
conn = Control.connect(sys.argv[1])
reply = conn.lease("gcc", sys.argv[2], "a.c", 30)
print(type(reply).__name__, getattr(reply, "error", getattr(reply, "reason", "")))
"""


def test_a_compiler_another_user_owns_is_never_run(
    daemon: Meshd, local_user: pwd.struct_passwd, user_pythonpath: str
) -> None:
    home = Path(tempfile.mkdtemp(prefix="meshcc-user-home-", dir="/tmp"))
    try:
        os.chown(home, local_user.pw_uid, local_user.pw_gid)
        home.chmod(0o755)
        marker = home / "ran"
        fake = _fake_compiler(home, marker)
        os.chown(fake, local_user.pw_uid, local_user.pw_gid)
        p = _as_user(local_user, user_pythonpath, LEASE_AS_USER, str(daemon.socket), str(fake))
        assert p.returncode == 0, p.stderr
        kind, _, why = p.stdout.strip().partition(" ")
        assert kind == "ErrorReply", p.stdout
        assert f"belongs to uid {local_user.pw_uid}" in why and "per-user daemon" in why
        assert not marker.exists(), "the daemon ran a user's file"
        assert "lease for" in daemon.log_text() and "refused" in daemon.log_text()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_trust_follows_the_whole_path(tmp_path: Path) -> None:
    trusted = Path(tempfile.mkdtemp(prefix="meshcc-trust-", dir="/run"))
    try:
        trusted.chmod(0o755)
        tool = _fake_compiler(trusted, trusted / "ran")
        assert untrusted_reason(str(tool)) is None
        trusted.chmod(0o775)
        assert "writable by its group" in (untrusted_reason(str(tool)) or "")
        trusted.chmod(0o755)
        tool.chmod(0o757)
        assert "it is writable by others" in (untrusted_reason(str(tool)) or "")
        # /tmp itself is world-writable: nothing below it is as trustworthy as /usr/bin.
        assert "/tmp is writable by others" in (untrusted_reason(str(tmp_path)) or "")
        assert untrusted_reason("/usr/bin/gcc") is None
    finally:
        shutil.rmtree(trusted, ignore_errors=True)


def test_probes_never_hold_up_compiles(daemon: Meshd, tmp_path: Path) -> None:
    """Twelve slow compilers submitted for fingerprinting (blocked until the test lets them
    go): an LZO compile through the same daemon completes meanwhile, and the user's extra
    probes are refused at once with a reason."""
    tools = Path(tempfile.mkdtemp(prefix="meshcc-slow-", dir="/run"))
    fifo = tools / "hold"
    os.mkfifo(fifo)
    marker = tools / "ran"
    replies: list[dict[str, object]] = []
    try:
        tools.chmod(0o755)
        paths = []
        for i in range(12):
            d = tools / f"gcc{i}"
            d.mkdir(mode=0o755)
            paths.append(_fake_compiler(d, marker, str(fifo)))

        def ask(path: Path) -> None:
            replies.append(
                request(
                    daemon.socket, control.LeaseRequest("gcc", str(path), "slow.c").to_message()
                )
            )

        threads = [threading.Thread(target=ask, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        # The compile: real gcc through the daemon's compile port, protocol 2 (LZO).
        (tmp_path / "x.c").write_text("int f(int a) { return a * 3; }\n")
        (tmp_path / "distcc").mkdir()
        env = dict(
            os.environ,
            DISTCC_HOSTS=f"127.0.0.1:{daemon.port},lzo",
            DISTCC_FALLBACK="0",
            DISTCC_DIR=str(tmp_path / "distcc"),
            MESHCC_SOCKET=str(tmp_path / "no-daemon.sock"),
        )
        meshcc_gcc = str(Path(sys.executable).parent / "meshcc-gcc")
        done = subprocess.run(
            [meshcc_gcc, "-c", "x.c", "-o", "x.o"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "x.o").exists()
        refused = [r for r in replies if r.get("ok") is False and "being probed" in str(r)]
        assert len(refused) >= 12 - 2, replies  # two probes per user at a time
    finally:
        # Let the blocked probes finish, then clean up.
        with open(fifo, "w") as hold:
            hold.write("go\n" * 64)
        for t in threads:
            t.join(30)
        shutil.rmtree(tools, ignore_errors=True)


OPEN_AS_USER = """
import sys
from meshcc.transport.control_socket import ControlSocketError, open_control_socket
try:
    open_control_socket(sys.argv[1]).close()
    print("opened")
except ControlSocketError as e:
    print("refused:", e)
"""


def test_a_per_user_daemon_will_not_listen_in_a_directory_someone_else_planted(
    local_user: pwd.struct_passwd, user_pythonpath: str
) -> None:
    """Another user (here root) made /tmp/meshcc-UID first: the user's daemon refuses it,
    as its clients refuse to trust a socket there; in its own private directory it listens."""
    planted = Path(f"/tmp/meshcc-{local_user.pw_uid}")
    shutil.rmtree(planted, ignore_errors=True)
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    try:
        p = _as_user(local_user, user_pythonpath, OPEN_AS_USER, str(planted / "control.sock"))
        assert p.stdout.startswith("refused:") and "not a private directory" in p.stdout, (
            p.stdout + p.stderr
        )
        shutil.rmtree(planted)
        p = _as_user(local_user, user_pythonpath, OPEN_AS_USER, str(planted / "control.sock"))
        assert p.stdout.strip() == "opened", p.stdout + p.stderr
        assert planted.stat().st_uid == local_user.pw_uid
        assert planted.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(planted, ignore_errors=True)
