"""Shared fixtures for meshcc's tests: daemons on loopback, client environments, real sources.

Hard rule: every daemon binds 127.0.0.1 and allows loopback clients only, so no test sends
anything to the machine's real network interfaces.

Fixtures
--------
``meshcc_daemon``  factory ``start(*extra_args, allow=("127.0.0.1",), jobs=None, compilers=())``
                   -> :class:`Daemon` running ``python -m meshcc daemon`` on 127.0.0.1.
``distccd``        factory ``start(*extra_args, allow=("127.0.0.1",), jobs=None)``
                   -> :class:`Daemon`
                   running stock distccd 3.4 on 127.0.0.1.
``client_env``     ``dict`` environment for a compile client: fresh DISTCC_DIR, no DISTCC_HOSTS,
                   private TMPDIR, the venv's bin dir first on PATH, MESHCC_SOCKET pointing
                   nowhere (no box-wide daemon).
``zlib_source``    (session) pristine zlib source tree from ``apt-get source zlib``, cached in
                   ``/var/cache/meshcc-tests``; never modify it, copy it with :func:`copy_tree`.
``zlib_tree``      a private, writable copy of ``zlib_source`` under ``tmp_path``.
``proj``           a small C/C++ tree (``src/foo.c``, ``foo.h``, ``bar.cpp``, ``bad.c``,
                   ``warn.c``) for the compile-client tests.
``fake_server``    factory ``make(behaviour) -> FakeServer``: a loopback distcc server that
                   reads a whole request, then misbehaves as told; all closed at the end.

Helpers: :func:`free_port`, :func:`copy_tree`, :func:`apt_source`, :func:`run`,
:func:`hash_objects`, :func:`parse_job_summaries`, :class:`Daemon`, :class:`FakeServer`.

This is the tree's only conftest.py (tests/unit and tests/integration have none): test modules
import the helpers above by name (``from conftest import Daemon``), and pytest imports every
directory's conftest.py as the same module name ``conftest``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from harness import (  # noqa: F401 - re-exported for the test modules
    LOOPBACK,
    SOURCE_CACHE,
    JobSummary,
    apt_source,
    close_listener,
    copy_tree,
    free_port,
    hash_objects,
    loopback_daemon_argv,
    parse_job_summaries,
    port_accepts,
)
from meshcc.wire import protocol as wire

# The network-namespace LAN fixtures (`lan`) and the `netns` marker.
pytest_plugins = ["netns_fixtures"]

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (tests/run.sh sets "ci"):
# - "dev" (default): new random examples every run, and failures saved in .hypothesis/ are
#   replayed first, so a failure found once keeps failing until it is fixed;
# - "ci": the same examples on every run (derandomize) and no example database read or
#   written, so a verdict depends only on the code under test; no per-example deadline on
#   machines busy with other work. A failure prints the blob that reproduces it.
settings.register_profile("dev")
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# The README's test command adds the deb-src entry that `apt-get source` needs.

# distccd and meshcc write the same job summary layout (distcc's serve.c:dcc_job_summary).


# --------------------------------------------------------------------------- helpers


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run a command capturing output; on failure, fail the test showing both streams."""
    proc = subprocess.run(
        [os.fspath(c) for c in cmd],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed with status {proc.returncode}: {' '.join(map(str, cmd))}\n"
            f"cwd: {cwd}\n--- stdout ---\n{proc.stdout[-8000:]}\n--- stderr ---\n"
            f"{proc.stderr[-8000:]}",
            pytrace=False,
        )
    return proc


# --------------------------------------------------------------------------- daemons


@dataclass(eq=False)
class Daemon:
    """A compile server (meshcc or stock distccd) listening on 127.0.0.1:port."""

    kind: str  # "meshcc" or "distccd"
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stderr_path: Path
    workdir: Path
    argv: list[str]
    # Parent of the daemon's job directories (its TMPDIR), None for distccd (uses /tmp).
    tmp_dir: Path | None = None

    def host_spec(self, lzo: bool = False, cpp: bool = False) -> str:
        """DISTCC_HOSTS entry: ``127.0.0.1:PORT[,lzo]`` (``cpp=True``: ``,cpp,lzo``, protocol 3)."""
        spec = f"{LOOPBACK}:{self.port}"
        if cpp:
            return spec + ",cpp,lzo"
        return spec + (",lzo" if lzo else "")

    def log_text(self) -> str:
        """Whole log so far (empty if not yet created)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_text(self) -> str:
        """What the process wrote to stdout/stderr (for diagnostics)."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def jobs(self, result: str | None = None) -> list[JobSummary]:
        """Job summaries from the log, optionally only those with the given result word."""
        return [j for j in parse_job_summaries(self.log_text()) if result in (None, j.result)]

    def wait_for_jobs(
        self, count: int, result: str | None = "COMPILE_OK", timeout: float = 10.0
    ) -> list[JobSummary]:
        """Wait until the log holds >= count summaries (servers log them after replying)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(result)
            if len(jobs) >= count or time.monotonic() > deadline:
                return jobs
            time.sleep(0.05)

    def diagnostics(self) -> str:
        """Log and output, for failure messages."""
        return (
            f"{self.kind} argv: {' '.join(self.argv)}\n"
            f"--- {self.kind} log ({self.log_path}) ---\n{self.log_text()[-12000:]}\n"
            f"--- {self.kind} stdout/stderr ---\n{self.stderr_text()[-4000:]}"
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        # Both daemons lead their own process group (start_new_session / distccd's setpgid), so
        # signalling the group also reaches forked workers and compilers.
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the daemon's group and wait; SIGKILL it if it does not exit in time."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # Workers may outlive the leader briefly; make sure nothing of the group is left.
        self._signal_group(signal.SIGKILL)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Remove what the fixture created outside tmp_path (the daemon's TMPDIR)."""
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the whole group (simulates a crash; no goodbye)."""
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


def _wait_listening(daemon: Daemon, timeout: float = START_TIMEOUT) -> None:
    """Wait until the daemon accepts on its port; fail with its log if it dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.alive():
            pytest.fail(
                f"{daemon.kind} exited with status {daemon.proc.returncode} before listening "
                f"on {LOOPBACK}:{daemon.port}\n{daemon.diagnostics()}",
                pytrace=False,
            )
        if port_accepts(daemon.port):
            return
        time.sleep(0.05)
    daemon.kill()
    pytest.fail(
        f"{daemon.kind} did not accept on {LOOPBACK}:{daemon.port} within {timeout}s\n"
        f"{daemon.diagnostics()}",
        pytrace=False,
    )


def _spawn(
    kind: str, argv: list[str], workdir: Path, port: int, log_path: Path, env: dict[str, str]
) -> Daemon:
    stderr_path = workdir / f"{kind}.out"
    with open(stderr_path, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Daemon(kind, proc, port, log_path, stderr_path, workdir, argv)


def _clean_env() -> dict[str, str]:
    """os.environ without distcc/meshcc settings, so the developer's setup cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}


@pytest.fixture
def meshcc_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Daemon]]:
    """Factory starting `python -m meshcc daemon` on 127.0.0.1; all are stopped at the end."""
    started: list[Daemon] = []

    def start(
        *extra_args: str,
        allow: Sequence[str] = (LOOPBACK,),
        jobs: int | None = None,
        compilers: Sequence[str] = (),
    ) -> Daemon:
        workdir = tmp_path_factory.mktemp("meshccd")
        port = free_port()
        log_path = workdir / "meshccd.log"
        argv = loopback_daemon_argv(port, allow=allow, log_file=log_path)
        if jobs is not None:
            argv += ["--jobs", str(jobs)]
        for compiler in compilers:
            argv += ["--compiler", compiler]
        argv += list(extra_args)
        if any(a.startswith("--cache") for a in extra_args):
            argv.remove("--no-cache")  # this test asks for the result cache (its own dir)
        env = _clean_env()
        # As root the daemon drops to an unprivileged user, which cannot enter pytest's 0700
        # tmp_path; Python's tempfile would then silently fall back to /tmp. A sticky
        # world-writable dir of our own keeps the job directories observable.
        tmp_dir = Path(tempfile.mkdtemp(prefix="meshccd-jobs-"))
        os.chmod(tmp_dir, 0o1777)
        env["TMPDIR"] = str(tmp_dir)
        daemon = _spawn("meshcc", argv, workdir, port, log_path, env)
        daemon.tmp_dir = tmp_dir
        started.append(daemon)
        _wait_listening(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
        daemon.cleanup()


@pytest.fixture
def distccd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Daemon]]:
    """Factory starting stock distccd 3.4 on 127.0.0.1; every daemon is stopped at the end.

    As root, distccd switches to user `distccd` before opening its log, so the log goes to
    stderr (--log-stderr), which we redirect to a file we opened ourselves.
    """
    if shutil.which("distccd") is None:
        pytest.fail("distccd is not installed (Debian package `distcc`)", pytrace=False)
    started: list[Daemon] = []

    def start(
        *extra_args: str, allow: Sequence[str] = (LOOPBACK,), jobs: int | None = None
    ) -> Daemon:
        workdir = tmp_path_factory.mktemp("distccd")
        port = free_port()
        argv = [
            "distccd",
            "--daemon",
            "--no-detach",
            "--log-stderr",
            "--log-level",
            "info",
            "--listen",
            LOOPBACK,
            "--port",
            str(port),
            "--jobs",
            str(jobs or 4),
        ]
        for cidr in allow:
            argv += ["--allow", cidr]
        argv += list(extra_args)
        env = _clean_env()
        env.pop("TMPDIR", None)  # distccd's user must be able to write its TMPDIR: use /tmp
        daemon = _spawn("distccd", argv, workdir, port, workdir / "distccd.out", env)
        started.append(daemon)
        _wait_listening(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


# --------------------------------------------------------------------------- clients, sources


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """Environment for compile clients: fresh DISTCC_DIR, no hosts, private TMPDIR, venv on PATH.

    All DISTCC_*/MESHCC_* variables of the calling shell are dropped so a developer's setup
    cannot change what a test exercises; tests set the ones they need. MESHCC_SOCKET names a
    control socket nobody listens on (an explicit choice: the client never falls back to the
    box-wide daemon, whose peers are real hosts); a test that starts a daemon with
    ``--socket`` overrides it. Tests must set DISTCC_HOSTS (loopback) before compiling: without
    it clients read ``$DISTCC_DIR/hosts`` and then ``/etc/distcc/hosts``.
    """
    env = _clean_env()
    distcc_dir = tmp_path / "distcc-dir"
    tmpdir = tmp_path / "client-tmp"
    distcc_dir.mkdir()
    tmpdir.mkdir()
    env["DISTCC_DIR"] = str(distcc_dir)
    env["TMPDIR"] = str(tmpdir)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
    env["MESHCC_SOCKET"] = str(tmp_path / "no-meshcc-daemon.sock")
    return env


@pytest.fixture(scope="session")
def zlib_source() -> Path:
    """Pristine zlib source tree (Debian's, patches applied), fetched once and cached."""
    try:
        return apt_source("zlib")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def zlib_tree(zlib_source: Path, tmp_path: Path) -> Path:
    """A private writable copy of the zlib tree for one test's build."""
    return copy_tree(zlib_source, tmp_path / "zlib")


# --------------------------------------------------------------------------- compile clients
# Shared by integration/test_wrapper.py and integration/test_lease_client.py.

GOOD_C = """\
#include <stdio.h>
#include "foo.h"
int foo(int x) { return x * FOO_FACTOR; }
int main(void) { printf("%d\\n", foo(3)); return 0; }
"""
FOO_H = "#define FOO_FACTOR 7\n"
GOOD_CXX = """\
#include <string>
#include <vector>
std::string join(const std::vector<std::string>& v) {
    std::string r; for (auto& s : v) r += s; return r;
}
"""
BAD_C = "int main(void) { return undeclared_thing; }\n"
WARN_C = "#warning from the preprocessor\nint w(void) { return 1; }\n"


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A small tree: src/foo.c (+ foo.h), src/bar.cpp, src/bad.c, src/warn.c, obj/."""
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "foo.c").write_text(GOOD_C)
    (root / "src" / "foo.h").write_text(FOO_H)
    (root / "src" / "bar.cpp").write_text(GOOD_CXX)
    (root / "src" / "bad.c").write_text(BAD_C)
    (root / "src" / "warn.c").write_text(WARN_C)
    return root


class FakeServer:
    """A loopback TCP server that reads a whole distcc request and then misbehaves on purpose.

    ``behaviour(conn, request_bytes)`` decides what is sent back. Counts connections.
    """

    def __init__(self, behaviour: Callable[[socket.socket, bytes], None]) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[list[bytes]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(30)
                reader = wire.RequestReader()
                raw = b""
                argv: list[bytes] = []
                try:
                    while True:
                        ev = reader.next_event()
                        if ev is wire.NEED_DATA:
                            data = conn.recv(65536)
                            if not data:
                                break
                            raw += data
                            reader.feed(data)
                            continue
                        if isinstance(ev, wire.RequestArgs):
                            argv = ev.argv
                        if isinstance(ev, wire.RequestEnd):
                            self.requests.append(argv)
                            self.behaviour(conn, raw)
                            break
                except (OSError, wire.ProtocolError):
                    pass

    def close(self) -> None:
        self._stop = True
        close_listener(self.sock)

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], FakeServer]]:
    servers: list[FakeServer] = []

    def make(behaviour: Callable[[socket.socket, bytes], None]) -> FakeServer:
        s = FakeServer(behaviour)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def user_pythonpath() -> Iterator[str]:
    """A copy of the meshcc package that any user can read. The checkout need not be: as
    README's test command runs it on a fresh box it is a 0700 directory of root's (see
    tests/fresh_root.sh), and so is the venv's interpreter path inside it."""
    top = Path(tempfile.mkdtemp(prefix="meshcc-pkg-", dir="/tmp"))
    try:
        shutil.copytree(
            Path(__file__).resolve().parents[1] / "meshcc",
            top / "meshcc",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for path in [top, *top.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield str(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)
