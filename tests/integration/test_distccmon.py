"""distcc's monitors see meshcc jobs; DISTCC_SAVE_TEMPS keeps distcc's files; --version.

The monitor is Debian's real ``distccmon-text`` reading ``$DISTCC_DIR/state``. Jobs are
held in a known phase without any timing assumption: a loopback proxy in front of a
real server (stock distccd or ``meshcc daemon``) withholds every reply until the test
releases it (the clients sit in "Compile" on that host), and a FIFO included by the
source holds the preprocessor or a local compiler until the test writes it. Polling
deadlines are upper bounds that keep a broken build from hanging the suite, never
performance assertions. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Daemon, close_listener, free_port
from test_lease_client import FakeControl, grant
from test_wrapper import env_with, meshcc, no_temp_litter, run

POLL_LIMIT = 90.0  # seconds: an upper bound for a broken build, not a measurement

pytestmark = pytest.mark.skipif(
    shutil.which("distccmon-text") is None, reason="distccmon-text (Debian's distcc) missing"
)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Job:
    pid: int
    phase: str
    file: str
    host: str
    slot: int


# distccmon-text: printf("%6ld  %-10.10s  %-30.30s %24.24s[%d]\n", ...); fields may be empty
_LINE = re.compile(r"^ *(\d+)  (.{10})  (.{30}) (.{24})\[(-?\d+)\]$")


def monitor(env: dict[str, str]) -> list[Job]:
    """One run of the real distccmon-text (no delay: print once and exit)."""
    out = subprocess.run(
        ["distccmon-text"], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    jobs = []
    for line in out.stdout.splitlines():
        if line.strip():
            m = _LINE.match(line)
            assert m, f"unexpected distccmon-text line: {line!r}"
            pid, phase, file, host, slot = m.groups()
            jobs.append(Job(int(pid), phase.strip(), file.strip(), host.strip(), int(slot)))
    return jobs


def wait_monitor(
    env: dict[str, str], want: Callable[[list[Job]], bool], what: str, procs: Sequence[Popen] = ()
) -> list[Job]:
    """Poll distccmon-text until ``want`` holds (fail with the last output otherwise)."""
    deadline = time.monotonic() + POLL_LIMIT
    jobs: list[Job] = []
    while time.monotonic() < deadline:
        jobs = monitor(env)
        if want(jobs):
            return jobs
        for p in procs:
            if p.poll() is not None:
                out, err = p.communicate()
                pytest.fail(f"{p.args} ended ({p.returncode}) before {what}: {out}{err}")
        time.sleep(0.05)
    pytest.fail(f"distccmon-text never showed {what}; last: {jobs}")


def state_files(env: dict[str, str]) -> list[str]:
    state = Path(env["DISTCC_DIR"]) / "state"
    return sorted(p.name for p in state.glob("*")) if state.is_dir() else []


Popen = subprocess.Popen[str]


def start(argv: list[str], env: dict[str, str], cwd: Path) -> Popen:
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: cleanup reaches the compiler too
    )


def finish(proc: Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def feed_fifo(path: Path, text: str) -> None:
    """Write ``text`` to the FIFO once a reader (the held compiler) has it open."""
    deadline = time.monotonic() + POLL_LIMIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    try:
        os.set_blocking(fd, True)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def feed_fifo_until_done(path: Path, text: str, proc: Popen) -> None:
    """Feed every reader of the FIFO until ``proc`` ends: a preprocessor killed for a local
    fallback leaves its cc1 (an orphan, as after any kill of a gcc driver) blocked on it."""
    deadline = time.monotonic() + POLL_LIMIT
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            time.sleep(0.02)
            continue
        try:
            os.set_blocking(fd, True)
            os.write(fd, text.encode())
        except BrokenPipeError:
            pass  # that reader closed between our open and write (gcc reopening the file)
        finally:
            os.close(fd)


class HoldingProxy:
    """127.0.0.1 TCP proxy to a real compile server that withholds replies until released."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.released = threading.Event()
        self.connections = 0
        self.errors: list[str] = []  # upstream connects that failed (a test reports them)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            server = self._connect_upstream()
            if server is None:
                client.close()  # the client sees a failed host, as with a dead server
                continue
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.released), daemon=True
            ).start()

    def _connect_upstream(self) -> socket.socket | None:
        """Connect to the real server, retrying a refusal for a while (a loaded box)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.upstream), timeout=POLL_LIMIT)
            except OSError as e:
                if time.monotonic() > deadline:
                    self.errors.append(f"connect to 127.0.0.1:{self.upstream}: {e}")
                    return None
                time.sleep(0.1)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, gate: threading.Event | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if gate is not None:
                    gate.wait(POLL_LIMIT * 2)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if gate is not None:  # the reply direction ends the connection
            src.close()
            dst.close()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        close_listener(self.sock)


@pytest.fixture
def proxies() -> Iterator[Callable[[Daemon], HoldingProxy]]:
    made: list[HoldingProxy] = []

    def make(server: Daemon) -> HoldingProxy:
        made.append(HoldingProxy(server.port))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def procs() -> Iterator[list[Popen]]:
    """Clients a test starts; any still running at the end are killed (by PID)."""
    started: list[Popen] = []
    yield started
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group is the client's own, by its PID
        except ProcessLookupError:
            pass
        p.communicate(timeout=30)


def server_of(
    kind: str, meshcc_daemon: Callable[..., Daemon], distccd: Callable[..., Daemon]
) -> Daemon:
    return meshcc_daemon() if kind == "meshcc" else distccd()


SOURCES = ("alpha.c", "beta.c", "gamma.c", "delta.c")


def make_project(root: Path) -> Path:
    root.mkdir()
    for i, name in enumerate(SOURCES):
        (root / name).write_text(f"int f{i}(int x) {{ return x * {i + 2}; }}\n")
    objs = " ".join(n.replace(".c", ".o") for n in SOURCES)
    (root / "Makefile").write_text(f"all: {objs}\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n")
    return root


# --------------------------------------------------------------------------- distccmon-text


@pytest.mark.parametrize("kind", ["meshcc", "distccd"])
def test_make_build_shows_every_job_with_host_and_slot(
    kind: str,
    meshcc_daemon: Callable[..., Daemon],
    distccd: Callable[..., Daemon],
    proxies: Callable[[Daemon], HoldingProxy],
    procs: list[Popen],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """make -j4 with DISTCC_HOSTS=.../4: distccmon-text lists the four meshcc jobs in
    Compile on the server, slots 0-3, each a live meshcc-gcc; nothing is left after."""
    server = server_of(kind, meshcc_daemon, distccd)
    proxy = proxies(server)
    proj = make_project(tmp_path / "proj")
    env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{proxy.port}/4", CC=meshcc())
    procs.append(make := start(["make", "-j4"], env, proj))

    jobs = wait_monitor(
        env,
        lambda js: len(js) == 4 and all(j.phase == "Compile" for j in js),
        "four jobs compiling",
        procs,
    )
    assert sorted(j.file for j in jobs) == sorted(SOURCES)
    assert {j.host for j in jobs} == {"127.0.0.1"}
    assert sorted(j.slot for j in jobs) == [0, 1, 2, 3]
    for j in jobs:  # the pid in each record is the live client process
        assert "meshcc-gcc" in Path(f"/proc/{j.pid}/cmdline").read_text(), j
    assert len(state_files(env)) == 4

    proxy.release()
    code, err = finish(make)
    assert code == 0, err
    assert proxy.errors == [], server.diagnostics()
    assert len(server.wait_for_jobs(4, timeout=POLL_LIMIT)) == 4, server.diagnostics()
    assert state_files(env) == [] and monitor(env) == []
    no_temp_litter(proj, env)


def test_a_job_waiting_for_a_slot_is_blocked(
    distccd: Callable[..., Daemon],
    proxies: Callable[[Daemon], HoldingProxy],
    procs: list[Popen],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """One slot (host/1), two jobs: one compiles on the host, the other shows Blocked."""
    proxy = proxies(distccd())
    proj = make_project(tmp_path / "proj")
    env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{proxy.port}/1")
    for name in SOURCES[:2]:
        procs.append(start([meshcc(), "-c", name], env, proj))
    jobs = wait_monitor(
        env,
        lambda js: sorted(j.phase for j in js) == ["Blocked", "Compile"],
        "one job compiling, one blocked",
        procs,
    )
    [running] = [j for j in jobs if j.phase == "Compile"]
    assert (running.host, running.slot) == ("127.0.0.1", 0)
    proxy.release()
    for p in procs:
        code, err = finish(p)
        assert code == 0, err
    assert proxy.connections == 2 and proxy.errors == []
    assert state_files(env) == []


def test_leased_jobs_show_the_peer_and_distinct_slots(
    meshcc_daemon: Callable[..., Daemon],
    proxies: Callable[[Daemon], HoldingProxy],
    procs: list[Popen],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Leases from the local daemon's control socket: each job shows the leased peer and
    its own slot (a distcc lock file of that peer, held for the job)."""
    proxy = proxies(meshcc_daemon())
    control = FakeControl(tmp_path / "control.sock", [grant(proxy.port), grant(proxy.port)])
    try:
        proj = make_project(tmp_path / "proj")
        env = env_with(client_env, MESHCC_SOCKET=str(control.path))
        for name in SOURCES[:2]:
            procs.append(start([meshcc(), "-c", name], env, proj))
        jobs = wait_monitor(
            env,
            lambda js: len(js) == 2 and all(j.phase == "Compile" for j in js),
            "two leased jobs compiling",
            procs,
        )
        assert {j.host for j in jobs} == {"127.0.0.1"}
        assert sorted(j.slot for j in jobs) == [0, 1]
        locks = Path(env["DISTCC_DIR"]) / "lock"
        assert {p.name for p in locks.glob("cpu_tcp_*")} == {
            f"cpu_tcp_127.0.0.1_{proxy.port}_{i}" for i in (0, 1)
        }
        proxy.release()
        for p in procs:
            code, err = finish(p)
            assert code == 0, err
        assert proxy.errors == []
    finally:
        control.close()
    assert state_files(env) == [] and monitor(env) == []


def test_preprocess_then_compile_phases_of_one_remote_job(
    meshcc_daemon: Callable[..., Daemon],
    proxies: Callable[[Daemon], HoldingProxy],
    procs: list[Popen],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """cpp held on a FIFO: Preprocess on localhost (connected already, as distcc overlaps
    them); then Compile on the server; then nothing."""
    proxy = proxies(meshcc_daemon())
    proj = tmp_path / "proj"
    proj.mkdir()
    os.mkfifo(proj / "held.h")
    (proj / "held.c").write_text('#include "held.h"\nint held(void) { return HELD; }\n')
    env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{proxy.port}")
    procs.append(p := start([meshcc(), "-c", "held.c"], env, proj))

    [job] = wait_monitor(
        env, lambda js: [j.phase for j in js] == ["Preprocess"], "Preprocess", procs
    )
    assert (job.file, job.host, job.pid) == ("held.c", "localhost", p.pid)
    assert proxy.connections == 1  # connect overlaps cpp
    feed_fifo(proj / "held.h", "#define HELD 7\n")
    [job] = wait_monitor(env, lambda js: [j.phase for j in js] == ["Compile"], "Compile", procs)
    assert (job.file, job.host, job.slot) == ("held.c", "127.0.0.1", 0)
    proxy.release()
    code, err = finish(p)
    assert code == 0 and (proj / "held.o").exists(), err
    assert state_files(env) == []


@pytest.mark.parametrize("why", ["local-only", "fallback"])
def test_local_compiles_show_localhost_and_go_at_exit(
    why: str, procs: list[Popen], client_env: dict[str, str], tmp_path: Path
) -> None:
    """A local-only job (autoconf's conftest.c) and a local fallback (the only host
    refuses connections) show as Compile on localhost while the compiler runs; the file
    goes when it is done, with the compiler's exit status."""
    proj = tmp_path / "proj"
    proj.mkdir()
    os.mkfifo(proj / "held.h")
    name = "conftest.c" if why == "local-only" else "held.c"
    # The error is outside held.h: gcc reopens a file to quote it in a diagnostic.
    (proj / name).write_text('#include "held.h"\nint held(void) { return HELD + nope; }\n')
    env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{free_port()}")
    procs.append(p := start([meshcc(), "-c", name], env, proj))

    [job] = wait_monitor(env, lambda js: [j.phase for j in js] == ["Compile"], "Compile", procs)
    assert (job.file, job.host, job.pid) == (name, "localhost", p.pid)
    feed_fifo_until_done(proj / "held.h", "#define HELD 7\n", p)
    code, err = finish(p)
    assert code == 1 and "'nope' undeclared" in err.replace("\u2018", "'").replace("\u2019", "'")
    assert state_files(env) == []


@pytest.mark.parametrize("where", ["remote", "local"])
def test_sigterm_removes_the_state_file(
    where: str,
    meshcc_daemon: Callable[..., Daemon],
    proxies: Callable[[Daemon], HoldingProxy],
    procs: list[Popen],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """SIGTERM to a client held remotely, or running its compiler locally: it dies by
    SIGTERM (passed on to a local compiler) and leaves no state file."""
    proj = tmp_path / "proj"
    proj.mkdir()
    os.mkfifo(proj / "held.h")
    if where == "remote":
        proxy = proxies(meshcc_daemon())
        name, hosts = "x.c", f"127.0.0.1:{proxy.port}"
        (proj / name).write_text("int x(void) { return 1; }\n")
    else:
        name, hosts = "conftest.c", "127.0.0.1:1"
        (proj / name).write_text('#include "held.h"\n')
    env = env_with(client_env, DISTCC_HOSTS=hosts)
    procs.append(p := start([meshcc(), "-c", name], env, proj))
    wait_monitor(env, lambda js: [j.phase for j in js] == ["Compile"], "Compile", procs)
    children: list[str] = []
    deadline = time.monotonic() + POLL_LIMIT
    while where == "local" and not children and time.monotonic() < deadline:
        # Compile is noted just before the compiler is spawned
        children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    p.send_signal(signal.SIGTERM)
    # wait(), not communicate(): cc1, blocked on the FIFO, outlives its driver (as it would
    # if gcc had been exec'd) and keeps the pipes; the fixture kills the process group.
    assert p.wait(timeout=POLL_LIMIT) == -signal.SIGTERM
    assert state_files(env) == []
    no_temp_litter(proj, env)
    if where == "local":  # the gcc driver got the signal, and ended before the client did
        assert len(children) == 1
        assert not Path(f"/proc/{children[0]}").exists()


# --------------------------------------------------------------------------- DISTCC_SAVE_TEMPS

WARN_SRC = "int w(void) { int unused; return 0; }\n"  # -Wall: a warning from cc1, remote
BAD_SRC = "int b(void) { return undeclared; }\n"
KEPT = re.compile(r"^(distcc_[0-9a-f]{8}\.i|distcc_server_stderr_[0-9a-f]{8}\.txt)$")


def kept_files(tmpdir: Path) -> dict[str, bytes]:
    """TMPDIR's files by kind ('.i', 'server_stderr'), checking distcc's naming."""
    out: dict[str, bytes] = {}
    for p in sorted(tmpdir.iterdir()):
        assert KEPT.match(p.name), f"unexpected temp file {p.name}"
        kind = "server_stderr" if "server_stderr" in p.name else ".i"
        assert kind not in out, f"two {kind} files: {sorted(tmpdir.iterdir())}"
        out[kind] = p.read_bytes()
    return out


@pytest.mark.parametrize("kind", ["meshcc", "distccd"])
@pytest.mark.parametrize("src", ["warn", "bad"])
def test_save_temps_keeps_what_distcc_keeps(
    kind: str,
    src: str,
    meshcc_daemon: Callable[..., Daemon],
    distccd: Callable[..., Daemon],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """DISTCC_SAVE_TEMPS=1: the stock distcc client and meshcc-gcc, same server, same job,
    leave the same files under the same names: distcc_XXXXXXXX.i and
    distcc_server_stderr_XXXXXXXX.txt holding what the server's compiler printed."""
    server = server_of(kind, meshcc_daemon, distccd)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / f"{src}.c").write_text(WARN_SRC if src == "warn" else BAD_SRC)
    kept = {}
    for client in ("distcc", "meshcc"):
        tmpdir = tmp_path / f"tmp-{client}"
        tmpdir.mkdir()
        env = env_with(
            client_env,
            DISTCC_HOSTS=server.host_spec(),
            DISTCC_SAVE_TEMPS="1",
            TMPDIR=str(tmpdir),
        )
        cc = ["distcc", "gcc"] if client == "distcc" else [meshcc()]
        # -g (switches recorded): fully preprocessed by both clients (otherwise meshcc-gcc
        # keeps the macros for the server: -fdirectives-only, another .i by design)
        res = run([*cc, "-O2", "-g", "-Wall", "-c", f"{src}.c"], env, proj)
        assert res.returncode == (0 if src == "warn" else 1), res.stderr
        kept[client] = kept_files(tmpdir)
    deadline = time.monotonic() + POLL_LIMIT  # both jobs really went to the server
    while len([j for j in server.jobs() if j.input == f"{src}.c"]) < 2:
        assert time.monotonic() < deadline, server.diagnostics()
        time.sleep(0.05)
    assert kept["meshcc"].keys() == kept["distcc"].keys() == {".i", "server_stderr"}
    assert kept["meshcc"]["server_stderr"] == kept["distcc"]["server_stderr"]
    expect = b"unused variable" if src == "warn" else b"error: \xe2\x80\x98undeclared"
    assert expect in kept["meshcc"]["server_stderr"]
    assert kept["meshcc"][".i"] == kept["distcc"][".i"]


def test_without_save_temps_nothing_is_kept(
    distccd: Callable[..., Daemon], client_env: dict[str, str], tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "warn.c").write_text(WARN_SRC)
    env = env_with(client_env, DISTCC_HOSTS=distccd().host_spec())
    res = run([meshcc(), "-Wall", "-c", "warn.c"], env, proj)
    assert res.returncode == 0 and "unused variable" in res.stderr, res.stderr
    assert list(Path(env["TMPDIR"]).iterdir()) == []


# --------------------------------------------------------------------------- --version

# How a script reads distcc's version output: NAME VERSION TARGET, then the protocols and
# the default port on the second line.
_FIRST = re.compile(r"^(\S+) (\d+(?:\.\d+)+) (\S+-\S+)$")
_SECOND = re.compile(r"^  \(protocols? ([\d, and]+)\) \(default port (\d+)\)$")


def parse_version(text: str) -> tuple[str, str, str, list[int], int]:
    first, second = text.splitlines()[:2]
    m1, m2 = _FIRST.match(first), _SECOND.match(second)
    assert m1 and m2, text
    protocols = [int(n) for n in re.findall(r"\d+", m2.group(1))]
    return m1.group(1), m1.group(2), m1.group(3), protocols, int(m2.group(2))


def test_version_parses_like_distccs(client_env: dict[str, str], tmp_path: Path) -> None:
    import meshcc as pkg

    distcc = parse_version(run(["distcc", "--version"], client_env, tmp_path).stdout)
    assert distcc[0] == "distcc" and distcc[3] == [1, 2, 3] and distcc[4] == 3632
    for argv in ([meshcc("meshcc"), "--version"], [meshcc("meshcc"), "daemon", "--version"]):
        res = run(argv, client_env, tmp_path)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        name, version, target, protocols, port = parse_version(res.stdout)
        assert (name, version, protocols, port) == ("meshcc", pkg.__version__, [1, 2], 3632)
        assert target == distcc[2]  # the same triplet distcc was configured for
    # Like `distcc gcc --version`, the wrappers and masquerade names keep the compiler's
    # meaning: that is gcc's version, not ours.
    gcc = run(["gcc", "--version"], client_env, tmp_path).stdout
    distcc_gcc = run(["distcc", "gcc", "--version"], client_env, tmp_path).stdout
    # (distcc runs gcc as x86_64-linux-gnu-gcc, which names itself so)
    assert distcc_gcc.split(" ", 1)[1] == gcc.split(" ", 1)[1]
    assert run([meshcc(), "--version"], client_env, tmp_path).stdout == gcc
    assert run([meshcc("meshcc"), "gcc", "--version"], client_env, tmp_path).stdout == gcc
