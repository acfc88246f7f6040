"""The compile client leasing peers from the local meshcc daemon (control socket, msgpack).

A small fake control server (a Unix socket speaking the protocol with the real ``msgpack``)
isolates the client: it records every message and when each connection closed, and answers
each lease request from a script. Leased jobs really run on a loopback distccd / meshcc
daemon whose job log must show them; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Daemon, FakeServer, close_listener, free_port
from meshcc.transport import control_client as cc
from meshcc.wire import control
from meshcc.wire import protocol as wire
from test_wrapper import env_with, local_object, meshcc, no_temp_litter, run

HANG = object()  # script entry: accept the request, never answer
REAL_GCC = shutil.which("gcc") or "/usr/bin/gcc"
ALT_NAME = "x86_64-linux-gnu-gcc-12"  # another name of the same gcc (distccd whitelists it)


# --------------------------------------------------------------------------- fake daemon


class Conn:
    """What one client connection did: (kind, payload, monotonic time) events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, float]] = []

    def messages(self, op: str | None = None) -> list[dict[str, Any]]:
        return [p for k, p, _ in self.events if k == "msg" and (op is None or p.get("op") == op)]

    @property
    def closed(self) -> bool:
        return bool(self.events) and self.events[-1][0] == "closed"

    def kinds(self) -> list[str]:
        return [k if k != "msg" else p.get("op") for k, p, _ in self.events]


class FakeControl:
    """A meshcc daemon's control socket that answers lease requests from ``script``
    (dicts sent as they are, HANG = never answer, callables get the request). When the
    script runs out it answers "local"."""

    def __init__(self, path: Path, script: list[Any]) -> None:
        self.path = path
        self.script = list(script)
        self.conns: list[Conn] = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            record = Conn()
            with self.lock:
                self.conns.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: Conn) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    record.events.append(("closed", None, time.monotonic()))
                    return
                unpacker.feed(data)
                for msg in unpacker:
                    record.events.append(("msg", msg, time.monotonic()))
                    if msg.get("op") != "lease":
                        continue
                    with self.lock:
                        answer = (
                            self.script.pop(0)
                            if self.script
                            else control.LeaseLocal("script done").to_message()
                        )
                    if callable(answer):
                        answer = answer(msg)
                    if answer is not HANG:
                        conn.sendall(control.packb(answer))  # maps, or garbage on purpose

    def wait_closed(self, count: int, timeout: float = 10.0) -> list[Conn]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.conns) >= count and all(c.closed for c in self.conns):
                break
            time.sleep(0.02)
        return self.conns

    def close(self) -> None:
        close_listener(self.sock)


@pytest.fixture
def fake_control(tmp_path: Path) -> Iterator[Callable[[list[Any]], FakeControl]]:
    made: list[FakeControl] = []

    def make(script: list[Any]) -> FakeControl:
        made.append(FakeControl(tmp_path / f"control{len(made)}.sock", script))
        return made[-1]

    yield make
    for each in made:
        each.close()


def grant(
    port: int, compiler: str = "gcc", protocol: int = 1, host: str = "127.0.0.1", peer: str = ""
) -> dict[str, Any]:
    return control.LeaseGranted(
        host, port, protocol, compiler, peer or f"{host}:{port}"
    ).to_message()


def lease_env(client_env: dict[str, str], server: FakeControl | Path, **kw: str) -> dict[str, str]:
    path = server.path if isinstance(server, FakeControl) else server
    # Direct mode off: these tests pin the lease conversation message by message
    # (direct mode's own conversation: tests/integration/test_direct_mode.py).
    return env_with(client_env, MESHCC_SOCKET=str(path), MESHCC_DIRECT="0", **kw)


def assert_lease_cycle(conn: Conn, ok: bool, connect_failed: bool = False) -> dict[str, Any]:
    """lease -> done -> closed, nothing else; returns the done message."""
    assert conn.kinds() == ["lease", "done", "closed"], conn.events
    [done] = conn.messages("done")
    assert done["ok"] is ok and done["connect_failed"] is connect_failed, done
    assert control.decode_request(done)  # the daemon's own codec accepts it
    return done


# --------------------------------------------------------------------------- codec, paths


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.text()
    | st.binary()
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_codec_agrees_with_msgpack(value: object) -> None:
    ours = control.packb(value)
    assert msgpack.unpackb(ours, raw=False, strict_map_key=False) == value
    theirs = msgpack.packb(value, use_bin_type=True)
    assert control.unpack_one(theirs) == (value, len(theirs))
    assert ours == theirs  # same (smallest) encodings
    for cut in range(len(theirs)):
        with pytest.raises(control._NeedData):
            control.unpack_one(theirs[:cut])


def test_codec_rejects_ext_and_bad_utf8() -> None:
    with pytest.raises(control.ControlError):
        control.unpack_one(msgpack.packb(msgpack.ExtType(1, b"x")))
    with pytest.raises(control.ControlError):
        control.unpack_one(b"\xa2\xff\xfe")
    with pytest.raises(control.ControlError, match="too deeply"):
        control.unpack_one(b"\x91" * 60000 + b"\xc0")  # no RecursionError
    with pytest.raises(control.ControlError, match="too deeply"):
        nested: list[object] = []
        for _ in range(100):
            nested = [nested]
        control.packb(nested)


def test_wrapper_does_not_import_msgpack(tmp_path: Path) -> None:
    """The client's lean path: its own msgpack subset, not the msgpack package."""
    code = (
        "import sys; from meshcc.client import wrapper; from meshcc.transport import "
        "control_client; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('msgpack', 'datetime', 'asyncio', 'zeroconf', 'ifaddr', 'logging', 'argparse')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- host choice


def test_no_socket_uses_host_files(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path, tmp_path: Path
) -> None:
    """No daemon listening (missing file, or a stale socket file): distcc's host files."""
    server = distccd()
    Path(client_env["DISTCC_DIR"], "hosts").write_text(server.host_spec() + "\n")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    for n, sock_path in enumerate([tmp_path / "missing.sock", stale], 1):
        env = env_with(
            client_env, MESHCC_SOCKET=str(sock_path), DISTCC_FALLBACK="0", DISTCC_VERBOSE="1"
        )
        res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
        assert res.returncode == 0, res.stderr
        assert f"no meshcc daemon at {sock_path}" in res.stderr
        ref = local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
        assert (proj / "foo.o").read_bytes() == ref
        assert len(server.wait_for_jobs(n)) == n, server.diagnostics()


def test_default_paths_absent_uses_host_files(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path, tmp_path: Path
) -> None:
    """Without MESHCC_SOCKET the default paths are tried: /run/meshcc (stale or missing
    here), then $XDG_RUNTIME_DIR/meshcc (missing)."""
    try:
        cc.Control.connect(control.ROOT_SOCKET).close()
    except cc.NoDaemon:
        pass
    else:
        pytest.skip(f"a meshcc daemon answers on {control.ROOT_SOCKET} on this machine")
    server = distccd()
    Path(client_env["DISTCC_DIR"], "hosts").write_text(server.host_spec() + "\n")
    env = env_with(
        client_env, XDG_RUNTIME_DIR=str(tmp_path), DISTCC_FALLBACK="0", DISTCC_VERBOSE="1"
    )
    del env["MESHCC_SOCKET"]
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert f"no meshcc daemon at {tmp_path}/meshcc/control.sock" in res.stderr
    assert len(server.wait_for_jobs(1)) == 1


def test_distcc_hosts_wins_over_the_daemon(
    distccd: Callable[..., Daemon],
    fake_control: Callable[..., FakeControl],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    server = distccd()
    ctl = fake_control([grant(free_port())])
    env = lease_env(client_env, ctl, DISTCC_HOSTS=server.host_spec(), DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert len(server.wait_for_jobs(1)) == 1
    assert ctl.conns == [], "the client asked the daemon despite DISTCC_HOSTS"


def test_local_only_jobs_never_ask_the_daemon(
    fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    ctl = fake_control([])
    env = lease_env(client_env, ctl)
    res = run([meshcc(), "-E", "src/foo.c", "-o", "foo.i"], env, proj)
    assert res.returncode == 0, res.stderr
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)  # sets up the link below
    res = run([meshcc(), "foo.o", "-o", "prog"], env, proj)
    assert res.returncode == 0, res.stderr
    assert len(ctl.wait_closed(1)) == 1  # only the -c compile asked (and was told "local")


# --------------------------------------------------------------------------- leases


@pytest.mark.parametrize("kind", ["distccd", "meshcc"])
@pytest.mark.parametrize("protocol", [1, 2])
def test_lease_used_with_the_peers_compiler_name(
    kind: str,
    protocol: int,
    distccd: Callable[..., Daemon],
    meshcc_daemon: Callable[..., Daemon],
    fake_control: Callable[..., FakeControl],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    server = distccd() if kind == "distccd" else meshcc_daemon(compilers=[f"/usr/bin/{ALT_NAME}"])
    ctl = fake_control([grant(server.port, ALT_NAME, protocol)])
    env = lease_env(client_env, ctl, DISTCC_FALLBACK="0", DISTCC_VERBOSE="1")
    res = run([meshcc(), "-O2", "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr + server.diagnostics()
    assert (proj / "foo.o").read_bytes() == local_object(
        proj, "gcc", ["-O2", "-c", "src/foo.c"], "r.o"
    )
    assert (
        f"leased 127.0.0.1:{server.port} (compiler {ALT_NAME}) from the meshcc daemon in "
        in res.stderr
    )
    [job] = server.wait_for_jobs(1)
    assert job.compiler == ALT_NAME and job.input and job.input.endswith("foo.c"), job
    [conn] = ctl.wait_closed(1)
    assert_lease_cycle(conn, ok=True)
    [lease] = conn.messages("lease")
    assert lease["cc"] == "gcc" and lease["source"] == "src/foo.c"
    assert lease["cc_path"] == shutil.which("gcc", path=env["PATH"])
    # DISTCC_FALLBACK=0: the client must not be handed this box's own share
    assert control.decode_request(lease) == control.LeaseRequest(
        "gcc", lease["cc_path"], "src/foo.c", local_ok=False
    )
    no_temp_litter(proj, client_env)


def test_lease_held_during_the_job_and_released_after(
    fake_server: Callable[..., FakeServer],
    fake_control: Callable[..., FakeControl],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    seen: list[list[str]] = []

    def reply(conn: socket.socket, request: bytes) -> None:
        seen.append(ctl.conns[0].kinds())  # the daemon's view while the peer has the job
        conn.sendall(wire.encode_reply(1, 0, b"", b"", b"fake object"))

    server = fake_server(reply)
    ctl = fake_control([grant(server.port)])
    env = lease_env(client_env, ctl, DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert (proj / "foo.o").read_bytes() == b"fake object"
    assert seen == [["lease"]], "lease not held (or already reported) while the job ran"
    assert_lease_cycle(ctl.wait_closed(1)[0], ok=True)


def test_local_answer_compiles_locally(
    fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    why = "no live peer offers gcc 12.2.0 for x86_64-linux-gnu"
    ctl = fake_control([control.LeaseLocal(why).to_message()] * 3)
    ref = local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], lease_env(client_env, ctl), proj)
    assert res.returncode == 0 and res.stderr == "", res.stderr  # quiet: normal on a lone box
    assert (proj / "foo.o").read_bytes() == ref
    (proj / "foo.o").unlink()
    res = run(
        [meshcc(), "-c", "src/foo.c", "-o", "foo.o"],
        lease_env(client_env, ctl, DISTCC_VERBOSE="1"),
        proj,
    )
    assert res.returncode == 0, res.stderr
    assert why in res.stderr and "compiling locally" in res.stderr
    assert (proj / "foo.o").read_bytes() == ref
    (proj / "foo.o").unlink()
    res = run(
        [meshcc(), "-c", "src/foo.c", "-o", "foo.o"],
        lease_env(client_env, ctl, DISTCC_FALLBACK="0"),
        proj,
    )
    assert res.returncode == 116 and why in res.stderr and "DISTCC_FALLBACK=0" in res.stderr
    assert not (proj / "foo.o").exists()
    conns = ctl.wait_closed(3)
    assert [c.kinds() for c in conns] == [["lease", "closed"]] * 3  # no lease, so no "done"


def test_own_share_is_held_by_the_local_compiler(
    fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    """Peers busy, this box's share free: the client compiles here and the compiler itself
    holds the lease connection (inherited across exec), so the daemon counts the slot busy
    exactly as long as the compile runs."""
    why = "all 2 matching peers are busy: compiling here (this box's share)"
    ctl = fake_control([control.LeaseLocal(why, hold=True).to_message()])
    bindir = proj / "bin"
    bindir.mkdir()
    fds = proj / "compiler-fds.txt"
    (bindir / "gcc").write_text(  # records its open fds when it compiles (not for -E)
        f'#!/bin/sh\ncase " $* " in *" -E "*) ;; *) ls -l /proc/$$/fd > "{fds}" ;; esac\n'
        'exec /usr/bin/gcc "$@"\n'
    )
    (bindir / "gcc").chmod(0o755)
    env = lease_env(client_env, ctl, DISTCC_VERBOSE="1")
    env["PATH"] = f"{bindir}:{env['PATH']}"
    ref = local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert why in res.stderr and "compiling locally" in res.stderr
    assert (proj / "foo.o").read_bytes() == ref
    assert "socket:[" in fds.read_text()  # the compiler held the daemon connection
    [conn] = ctl.wait_closed(1)
    [lease] = conn.messages("lease")
    assert lease["local_ok"] is True  # fallback allowed, so our own share may be offered
    assert "holding local slot" not in res.stderr  # the daemon's count replaces distcc's locks


def test_local_answer_uses_local_slot_locks(
    fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    """The daemon does not queue local jobs: distcc's cpu_localhost_N locks do."""
    ctl = fake_control([control.LeaseLocal("none").to_message()])
    env = lease_env(client_env, ctl, DISTCC_VERBOSE="1")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert "holding local slot 0 of 4" in res.stderr
    assert (Path(client_env["DISTCC_DIR"]) / "lock" / "cpu_localhost_0").exists()


@pytest.mark.parametrize("failure", ["connect-refused", "errm-refusal", "eof"])
def test_failed_peer_reported_and_next_lease_used(
    failure: str,
    distccd: Callable[..., Daemon],
    fake_server: Callable[..., FakeServer],
    fake_control: Callable[..., FakeControl],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    good = distccd()
    if failure == "connect-refused":
        bad_port = free_port()
    else:

        def refuse(conn: socket.socket, request: bytes) -> None:
            if failure == "errm-refusal":
                conn.sendall(wire.encode_refusal("compiler gcc is not offered here"))

        bad_port = fake_server(refuse).port
    ctl = fake_control([grant(bad_port, peer="bad"), grant(good.port, peer="good")])
    env = lease_env(client_env, ctl, DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # a retry that worked is not the user's business
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert len(good.wait_for_jobs(1)) == 1
    first, second = ctl.wait_closed(2)
    done = assert_lease_cycle(first, ok=False, connect_failed=failure == "connect-refused")
    if failure == "errm-refusal":
        assert "compiler gcc is not offered here" in done["reason"]
    elif failure == "connect-refused":
        assert "Connection refused" in done["reason"]
    assert_lease_cycle(second, ok=True)
    assert not list((Path(client_env["DISTCC_DIR"]) / "lock").glob("backoff_*"))


def test_every_lease_fails_then_local_once(
    fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    dead = [free_port() for _ in range(5)]
    ctl = fake_control([grant(p) for p in dead])
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], lease_env(client_env, ctl), proj)
    assert res.returncode == 0, res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # one warning line
    assert f"failed to distribute src/foo.c to 127.0.0.1:{dead[2]}" in res.stderr
    conns = ctl.wait_closed(3)
    assert len(conns) == 3  # bounded retries
    for c in conns:
        assert_lease_cycle(c, ok=False, connect_failed=True)

    ctl2 = fake_control([grant(p) for p in dead])
    res = run(
        [meshcc(), "-c", "src/foo.c", "-o", "foo2.o"],
        lease_env(client_env, ctl2, DISTCC_FALLBACK="0"),
        proj,
    )
    assert res.returncode == 116, res.stderr
    assert "DISTCC_FALLBACK=0" in res.stderr and not (proj / "foo2.o").exists()
    no_temp_litter(proj, client_env)


def test_remote_compile_error_retried_locally_holding_the_lease(
    distccd: Callable[..., Daemon],
    fake_control: Callable[..., FakeControl],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    """Same user-visible behaviour as with a host list: the error once, gcc's exit code; the
    lease ends after the local retry showed the peer was right (ok true)."""
    server = distccd()
    plain = run(["gcc", "-c", "src/bad.c", "-o", "x.o"], client_env, proj)
    ctl = fake_control([grant(server.port)])
    res = run([meshcc(), "-c", "src/bad.c", "-o", "bad.o"], lease_env(client_env, ctl), proj)
    assert res.returncode == plain.returncode != 0
    assert res.stderr.count("error:") == plain.stderr.count("error:") >= 1
    assert server.wait_for_jobs(1, result="COMPILE_ERROR")
    assert_lease_cycle(ctl.wait_closed(1)[0], ok=True)


def test_remote_crash_reports_the_peer(
    fake_server: Callable[..., FakeServer],
    fake_control: Callable[..., FakeControl],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    def crash(conn: socket.socket, request: bytes) -> None:
        conn.sendall(wire.encode_reply(1, 11, b"cc1: internal compiler error\n", b"", None))

    server = fake_server(crash)
    ctl = fake_control([grant(server.port)])
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], lease_env(client_env, ctl), proj)
    assert res.returncode == 0, res.stderr
    assert "internal compiler error" not in res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert_lease_cycle(ctl.wait_closed(1)[0], ok=False)


def test_daemon_that_never_answers_is_bounded(
    fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    ctl = fake_control([HANG])
    env = lease_env(client_env, ctl, DISTCC_IO_TIMEOUT="1")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "no answer from the meshcc daemon within 1s" in res.stderr
    assert (proj / "foo.o").exists()
    assert [c.kinds() for c in ctl.wait_closed(1)] == [["lease", "closed"]]


@pytest.mark.parametrize(
    "answer",
    [
        control.ErrorReply("lease: unknown compiler").to_message(),
        {"ok": True, "host": "127.0.0.1"},
        b"garbage",
    ],
    ids=["error", "malformed-grant", "not-a-map"],
)
def test_daemon_errors_compile_locally_with_a_warning(
    answer: Any, fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    ctl = fake_control([answer])
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], lease_env(client_env, ctl), proj)
    assert res.returncode == 0, res.stderr
    assert "meshcc daemon" in res.stderr and "compiling locally" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert (proj / "foo.o").exists()


def test_interrupted_while_queued_frees_everything(
    fake_control: Callable[..., FakeControl], client_env: dict[str, str], proj: Path
) -> None:
    """SIGTERM while waiting in the daemon's queue: the client dies by the signal at once and
    the daemon sees the connection close (no lease, nothing to report)."""
    ctl = fake_control([HANG])
    proc = subprocess.Popen(
        [meshcc(), "-c", "src/foo.c", "-o", "foo.o"],
        env=lease_env(client_env, ctl),
        cwd=proj,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not (ctl.conns and ctl.conns[0].messages("lease")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.terminate()
    assert proc.wait(20) == -15
    assert [c.kinds() for c in ctl.wait_closed(1)] == [["lease", "closed"]]
    no_temp_litter(proj, client_env)


@pytest.mark.parametrize(
    "mode,trusted", [(0o700, True), (0o755, True), (0o777, False), (0o1777, False)]
)
def test_guessed_tmp_path_must_be_a_private_dir(tmp_path: Path, mode: int, trusted: bool) -> None:
    """The per-user default in the shared /tmp is used only if its directory is ours and
    writable by nobody else (else anyone could steer our compiles)."""
    d = tmp_path / "meshcc-x"
    d.mkdir()
    d.chmod(mode)
    path = d / "control.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    try:
        cc.Control.connect(str(path)).close()  # an explicit path is not checked
        if trusted:
            cc.Control.connect(str(path), shared_tmp=True).close()
        else:
            with pytest.raises(cc.NoDaemon, match="not owned by us or is writable by others"):
                cc.Control.connect(str(path), shared_tmp=True)
    finally:
        server.close()


# --------------------------------------------------------------------------- the real daemon


@pytest.fixture
def loopback_meshd() -> Iterator[Any]:
    """A real `meshcc daemon` on 127.0.0.1 with a control socket (discovery off: no peers)."""
    from meshd import Meshd, private_dir

    work = private_dir("meshcc-lease-")
    d = Meshd(work, None, port=free_port())
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_real_daemon_answers_local_and_the_client_compiles_here(
    loopback_meshd: Any, client_env: dict[str, str], proj: Path
) -> None:
    """Our msgpack subset against the daemon's msgpack: the request is understood (its
    reason names the probed compiler's situation), the answer decoded, the job done locally."""
    env = lease_env(client_env, loopback_meshd.socket, DISTCC_VERBOSE="1")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr + loopback_meshd.log_text()
    assert "meshcc daemon: " in res.stderr and "discovery is off" in res.stderr, res.stderr
    assert "compiling locally" in res.stderr and "warning" not in res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    res = run(
        [meshcc(), "-c", "src/foo.c", "-o", "foo.o"],
        lease_env(client_env, loopback_meshd.socket, DISTCC_FALLBACK="0"),
        proj,
    )
    assert res.returncode == 116 and "discovery is off" in res.stderr
    st = loopback_meshd.status()
    assert st["leases"] == 0 and st["queued"] == 0  # nothing left held
    assert "Traceback" not in loopback_meshd.log_text()
