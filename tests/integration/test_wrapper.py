"""The compile client (meshcc-gcc & co) against stock distccd, meshcc's daemon and fake servers.

Everything runs on 127.0.0.1. Each test asserts on real effects: object bytes compared with
plain gcc's, the server's job log (so a silent local fallback cannot pass), exit codes,
stderr contents, files left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import VENV_BIN, Daemon, FakeServer, free_port
from meshcc.wire import protocol as wire

# --------------------------------------------------------------------------- helpers


def meshcc(tool: str = "meshcc-gcc") -> str:
    path = VENV_BIN / tool
    assert path.exists(), f"{path} missing: is meshcc installed in the venv?"
    return str(path)


def run(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def local_object(proj: Path, compiler: str, args: list[str], out: str) -> bytes:
    """What plain gcc makes of the same command (written to a scratch name)."""
    res = subprocess.run([compiler, *args, "-o", out], cwd=proj, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = (proj / out).read_bytes()
    (proj / out).unlink()
    return data


def env_with(client_env: dict[str, str], **kw: str) -> dict[str, str]:
    env = dict(client_env)
    env.update(kw)
    return env


def closed_port() -> int:
    """A loopback port with nobody listening (connect is refused at once)."""
    return free_port()


def no_temp_litter(proj: Path, client_env: dict[str, str]) -> None:
    leftovers = [p.name for p in proj.rglob("*.meshcc-*")]
    leftovers += [p.name for p in Path(client_env["TMPDIR"]).glob("distcc_*")]
    assert not leftovers, f"temp files left behind: {leftovers}"


# --------------------------------------------------------------------------- stock distccd


@pytest.mark.parametrize("lzo", [False, True], ids=["protocol1", "protocol2"])
@pytest.mark.parametrize(
    "tool,compiler,source,obj",
    [
        ("meshcc-gcc", "gcc", "src/foo.c", "obj/foo.o"),
        ("meshcc-g++", "g++", "src/bar.cpp", "obj/bar.o"),
    ],
    ids=["gcc", "g++"],
)
def test_distccd_object_identical(
    distccd: Callable[..., Daemon],
    client_env: dict[str, str],
    proj: Path,
    lzo: bool,
    tool: str,
    compiler: str,
    source: str,
    obj: str,
) -> None:
    server = distccd()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(lzo=lzo), DISTCC_FALLBACK="0")
    args = ["-O2", "-c", source]
    res = run([meshcc(tool), *args, "-o", obj], env, proj)
    assert res.returncode == 0, res.stderr + server.diagnostics()
    assert (proj / obj).read_bytes() == local_object(proj, compiler, args, "ref.o")
    jobs = server.wait_for_jobs(1)
    assert len(jobs) == 1, server.diagnostics()
    assert jobs[0].input and jobs[0].input.endswith(source), jobs
    assert res.stderr == ""
    no_temp_litter(proj, client_env)

    # With -g, plain-mode objects can differ from a local build in .debug_line (the .i's
    # file table); they must match what the stock distcc client gets from the same server.
    args = ["-O2", "-g", "-c", source]
    res = run([meshcc(tool), *args, "-o", obj], env, proj)
    assert res.returncode == 0, res.stderr
    ref = run(["distcc", compiler, *args, "-o", "distcc.o"], env, proj)
    assert ref.returncode == 0, ref.stderr
    assert (proj / obj).read_bytes() == (proj / "distcc.o").read_bytes()
    assert len(server.wait_for_jobs(3)) == 3, server.diagnostics()


def test_output_symlink_and_dev_null(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path, tmp_path: Path
) -> None:
    server = distccd()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(), DISTCC_FALLBACK="0")
    null = tmp_path / "null"
    os.mkfifo(null)  # a non-regular output, like /dev/null, must be written in place
    reader = subprocess.Popen(["cat", str(null)], stdout=subprocess.PIPE)
    res = run([meshcc(), "-c", "src/foo.c", "-o", str(null)], env, proj)
    out, _ = reader.communicate(timeout=30)
    assert res.returncode == 0, res.stderr
    assert null.is_fifo() and out.startswith(b"\x7fELF")
    real = tmp_path / "real.o"
    real.write_bytes(b"old")
    (proj / "link.o").symlink_to(real)
    res = run([meshcc(), "-c", "src/foo.c", "-o", "link.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert (proj / "link.o").is_symlink()  # written through, like gcc does
    assert real.read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert len(server.wait_for_jobs(2)) == 2


def test_distccd_dash_S(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(lzo=True), DISTCC_FALLBACK="0")
    res = run([meshcc(), "-O1", "-S", "src/foo.c"], env, proj)  # no -o: foo.s in cwd
    assert res.returncode == 0, res.stderr
    remote = (proj / "foo.s").read_text()
    assert "foo:" in remote
    assert remote.encode() == local_object(proj, "gcc", ["-O1", "-S", "src/foo.c"], "ref.s")
    assert len(server.wait_for_jobs(1)) == 1


def test_distccd_output_without_dir_and_preprocessed_input(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(), DISTCC_FALLBACK="0")
    subprocess.run(["gcc", "-E", "src/foo.c", "-o", "foo.i"], cwd=proj, check=True)
    res = run([meshcc(), "-c", "foo.i", "-o", "pre.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert (proj / "pre.o").read_bytes() == local_object(proj, "gcc", ["-c", "foo.i"], "r.o")
    res = run([meshcc(), "-c", "src/foo.c"], env, proj)  # implied foo.o in cwd
    assert res.returncode == 0, res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert len(server.wait_for_jobs(2)) == 2, server.diagnostics()


@pytest.mark.parametrize("dep", ["-MD", "-MMD"])
@pytest.mark.parametrize("with_o", [True, False], ids=["with-o", "no-o"])
def test_dependency_files_like_plain_gcc(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path, dep: str, with_o: bool
) -> None:
    server = distccd()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(lzo=True), DISTCC_FALLBACK="0")
    out = ["-o", "obj/foo.o"] if with_o else []
    (proj / "obj").mkdir()
    # Plain gcc first, into a copy of the tree, to see where its .d lands and what it says.
    ref = proj.parent / "ref"
    shutil.copytree(proj, ref)
    subprocess.run(["gcc", dep, "-c", "src/foo.c", *out], cwd=ref, check=True)
    res = run([meshcc(), dep, "-c", "src/foo.c", *out], env, proj)
    assert res.returncode == 0, res.stderr
    expected = sorted(str(p.relative_to(ref)) for p in ref.rglob("*.d"))
    got = sorted(str(p.relative_to(proj)) for p in proj.rglob("*.d"))
    assert got == expected == (["obj/foo.d"] if with_o else ["foo.d"])
    assert (proj / got[0]).read_text() == (ref / got[0]).read_text()
    obj = "obj/foo.o" if with_o else "foo.o"
    assert (proj / obj).read_bytes() == (ref / obj).read_bytes()
    assert len(server.wait_for_jobs(1)) == 1


def test_compile_error_reported_once(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    plain = run(["gcc", "-c", "src/bad.c", "-o", "obj-bad.o"], client_env, proj)
    assert plain.returncode != 0
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(lzo=True))
    res = run([meshcc(), "-c", "src/bad.c", "-o", "bad.o"], env, proj)
    assert res.returncode == plain.returncode
    assert res.stderr.count("undeclared_thing") == plain.stderr.count("undeclared_thing") >= 1
    assert res.stderr.count("error:") == plain.stderr.count("error:")
    assert not (proj / "bad.o").exists()
    assert server.wait_for_jobs(1, result="COMPILE_ERROR"), server.diagnostics()  # remote
    # Same source error locally: the host is innocent, so no backoff file.
    lockdir = Path(client_env["DISTCC_DIR"]) / "lock"
    assert not list(lockdir.glob("backoff_*"))

    # DISTCC_SKIP_LOCAL_RETRY: the server's diagnostics, once, and the compiler's exit code.
    env["DISTCC_SKIP_LOCAL_RETRY"] = "1"
    res = run([meshcc(), "-c", "src/bad.c", "-o", "bad.o"], env, proj)
    assert res.returncode == plain.returncode
    assert res.stderr.count("error:") == plain.stderr.count("error:")
    assert len(server.wait_for_jobs(2, result="COMPILE_ERROR")) == 2
    no_temp_litter(proj, client_env)


def test_cpp_warning_shown_once_on_remote_success(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(), DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/warn.c", "-o", "warn.o"], env, proj)
    assert res.returncode == 0
    assert res.stderr.count("warning: #warning from the preprocessor") == 1, res.stderr
    assert len(server.wait_for_jobs(1)) == 1


def test_cpp_failure_is_final(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    (proj / "src" / "noinc.c").write_text('#include "missing_header.h"\nint x;\n')
    plain = run(["gcc", "-c", "src/noinc.c", "-o", "n.o"], client_env, proj)
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec())
    res = run([meshcc(), "-c", "src/noinc.c", "-o", "n.o"], env, proj)
    assert res.returncode == plain.returncode != 0
    assert res.stderr.count("missing_header.h") == plain.stderr.count("missing_header.h")
    assert not server.jobs("COMPILE_OK")
    assert not (proj / "n.o").exists()
    no_temp_litter(proj, client_env)


# --------------------------------------------------------------------------- failures


def test_server_down_falls_back_locally(client_env: dict[str, str], proj: Path) -> None:
    port = closed_port()
    env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{port}")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert f"failed to distribute src/foo.c to 127.0.0.1:{port}" in res.stderr
    assert "compiling locally" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    backoff = Path(client_env["DISTCC_DIR"]) / "lock" / f"backoff_tcp_127.0.0.1_{port}_0"
    assert backoff.exists()


def test_connect_timeout(client_env: dict[str, str], proj: Path) -> None:
    """A host that never answers the SYN (full accept queue): the fixed 4 s connect timeout,
    then a local compile."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue so further SYNs are dropped
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.2)
    try:
        env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{port}")
        res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj, timeout=60)
    finally:
        for c in fillers:
            c.close()
        listener.close()
    assert res.returncode == 0, res.stderr
    assert "connect timed out after 4s" in res.stderr
    assert (proj / "foo.o").exists()


def test_fallback_disabled_server_down(client_env: dict[str, str], proj: Path) -> None:
    port = closed_port()
    env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{port}", DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 116
    assert "DISTCC_FALLBACK=0" in res.stderr and "Connection refused" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (proj / "foo.o").exists()
    no_temp_litter(proj, client_env)


def _truncated_doto(conn: socket.socket, request: bytes) -> None:
    conn.sendall(
        wire.token(b"DONE", 1)
        + wire.token(b"STAT", 0)
        + wire.token(b"SERR", 0)
        + wire.token(b"SOUT", 0)
        + wire.token(b"DOTO", 5000)
        + b"\x7fELF"
        + b"x" * 100
    )


def _reset_mid_reply(conn: socket.socket, request: bytes) -> None:
    conn.sendall(wire.token(b"DONE", 1) + wire.token(b"STAT", 0) + wire.token(b"SERR", 0))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _close_without_reply(conn: socket.socket, request: bytes) -> None:
    pass


@pytest.mark.parametrize(
    "behaviour",
    [_truncated_doto, _reset_mid_reply, _close_without_reply],
    ids=["truncated-doto", "reset", "eof"],
)
def test_server_dies_mid_job(
    fake_server: Callable[..., FakeServer],
    client_env: dict[str, str],
    proj: Path,
    behaviour: Callable[[socket.socket, bytes], None],
) -> None:
    server = fake_server(behaviour)
    env = env_with(client_env, DISTCC_HOSTS=server.spec)
    (proj / "foo.o").write_bytes(b"old object")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert server.requests, "the client never sent a complete request"
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    assert f"failed to distribute src/foo.c to {server.spec}" in res.stderr
    no_temp_litter(proj, client_env)


def test_remote_signal_retries_locally(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    def crash(conn: socket.socket, request: bytes) -> None:
        conn.sendall(
            wire.encode_reply(
                1, 11, b"cc1: internal compiler error: Segmentation fault\n", b"", None
            )
        )

    server = fake_server(crash)
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_SKIP_LOCAL_RETRY="1")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert server.connections == 1
    assert "Segmentation fault" not in res.stderr  # only the local run's diagnostics
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    backoff = Path(client_env["DISTCC_DIR"]) / "lock" / f"backoff_tcp_127.0.0.1_{server.port}_0"
    assert backoff.exists()  # a crashing remote compiler is suspect


def test_remote_error_local_success_backs_off_host(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    """The remote compiler failed where the local one succeeds: the host is to blame."""

    def fail(conn: socket.socket, request: bytes) -> None:
        conn.sendall(wire.encode_reply(1, 1 << 8, b"as: unknown option\n", b"", None))

    server = fake_server(fail)
    env = env_with(client_env, DISTCC_HOSTS=server.spec)
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert "unknown option" not in res.stderr and res.stderr == ""
    assert (proj / "foo.o").exists()
    backoff = Path(client_env["DISTCC_DIR"]) / "lock" / f"backoff_tcp_127.0.0.1_{server.port}_0"
    assert backoff.exists()


def test_sigterm_mid_job_cleans_up(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    release = threading.Event()
    server = fake_server(lambda conn, req: release.wait(30))
    env = env_with(client_env, DISTCC_HOSTS=server.spec)
    (proj / "foo.o").write_bytes(b"old object, complete")
    proc = subprocess.Popen(
        [meshcc(), "-c", "src/foo.c", "-o", "foo.o"],
        env=env,
        cwd=proj,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.requests, "the request never arrived"
        assert list(Path(client_env["TMPDIR"]).glob("distcc_*"))  # the .i exists meanwhile
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM  # died by the signal, as the shell expects
    assert (proj / "foo.o").read_bytes() == b"old object, complete"
    no_temp_litter(proj, client_env)


def test_failed_job_never_truncates_old_output(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    server = fake_server(_truncated_doto)
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_FALLBACK="0")
    (proj / "foo.o").write_bytes(b"old object, complete")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 116, res.stderr
    assert "closed the connection early" in res.stderr
    assert (proj / "foo.o").read_bytes() == b"old object, complete"
    no_temp_litter(proj, client_env)


def test_refusal_reason_shown(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    def refuse(conn: socket.socket, request: bytes) -> None:
        conn.sendall(wire.encode_refusal("compiler gcc is not offered by this host"))

    server = fake_server(refuse)
    env = env_with(client_env, DISTCC_HOSTS=server.spec, MESHCC_VERBOSE="1")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert "compiler gcc is not offered by this host" in res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    # Not verbose: the reason is still in the one-line fallback warning.
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_BACKOFF_PERIOD="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert "refused: compiler gcc is not offered by this host" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_refusal_text_cannot_drive_the_terminal(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    """A hostile server's refusal is printed with its control characters escaped."""

    def refuse(conn: socket.socket, request: bytes) -> None:
        conn.sendall(wire.encode_refusal("busy\x1b]0;pwned\x07\x1b[2J\nfake: line"))

    server = fake_server(refuse)
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_BACKOFF_PERIOD="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert "busy\\x1b]0;pwned\\x07\\x1b[2J\\nfake: line" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_success_with_an_empty_object_is_a_remote_failure(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    """Status 0 and a 0-byte object: never written as the output; compiled locally instead
    (or, without fallback, the old output stays and distcc's 116 is returned)."""

    def empty(conn: socket.socket, request: bytes) -> None:
        conn.sendall(wire.encode_reply(1, 0, b"", b"", b""))

    server = fake_server(empty)
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_BACKOFF_PERIOD="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert "empty object file" in res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    (proj / "foo.o").write_bytes(b"old object, complete")
    env = env_with(env, DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 116, res.stderr
    assert (proj / "foo.o").read_bytes() == b"old object, complete"
    no_temp_litter(proj, client_env)


def test_refusal_before_whole_request_read(client_env: dict[str, str], proj: Path) -> None:
    """A server that refuses after the head and closes without reading DOTI: the client's
    send may fail (EPIPE/ECONNRESET) but the ERRM reason must still come through."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve() -> None:
        for _ in range(1):
            conn, _ = srv.accept()
            conn.recv(12)  # DIST header only
            conn.sendall(wire.encode_refusal("too busy to take requests"))
            time.sleep(0.2)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    # A big source so the DOTI cannot fit in socket buffers before the close.
    (proj / "src" / "big.c").write_text("".join(f"int v{i} = {i};\n" for i in range(300000)))
    env = env_with(client_env, DISTCC_HOSTS=f"127.0.0.1:{port}", MESHCC_VERBOSE="1")
    res = run([meshcc(), "-c", "src/big.c", "-o", "big.o"], env, proj)
    srv.close()
    assert res.returncode == 0, res.stderr
    assert "too busy to take requests" in res.stderr
    assert (proj / "big.o").exists()


def test_bad_host_spec_compiles_locally(client_env: dict[str, str], proj: Path) -> None:
    env = env_with(client_env, DISTCC_HOSTS="127.0.0.1:3632,frobnicate")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "frobnicate" in lines[0] and "locally" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")


def test_bad_io_timeout(client_env: dict[str, str], proj: Path) -> None:
    for value in ("0", "-3", "soon"):
        env = env_with(client_env, DISTCC_HOSTS="127.0.0.1:1", DISTCC_IO_TIMEOUT=value)
        res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
        assert res.returncode == 101, (value, res.stderr)
        assert "DISTCC_IO_TIMEOUT" in res.stderr and "Traceback" not in res.stderr


def test_io_timeout_is_a_transport_failure(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    server = fake_server(lambda conn, req: time.sleep(3))
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_IO_TIMEOUT="0.5")
    t0 = time.monotonic()
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert "IO timeout" in res.stderr
    assert time.monotonic() - t0 < 2.9  # did not wait for the server
    assert (proj / "foo.o").exists()


def test_missing_distcc_dir(client_env: dict[str, str], proj: Path) -> None:
    env = env_with(client_env, DISTCC_HOSTS="127.0.0.1:1", DISTCC_DIR=str(proj / "nope"))
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0
    assert "nope" in res.stderr and "locally" in res.stderr
    assert (proj / "foo.o").exists()


# --------------------------------------------------------------------------- backoff


def test_backoff_written_and_honoured(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    server = fake_server(_close_without_reply)
    env = env_with(client_env, DISTCC_HOSTS=server.spec)
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0
    assert server.connections == 1
    backoff = Path(client_env["DISTCC_DIR"]) / "lock" / f"backoff_tcp_127.0.0.1_{server.port}_0"
    assert backoff.exists()
    # Within the period the host is skipped: no new connection.
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0
    assert server.connections == 1
    assert "no usable host" in res.stderr
    # Once the file is old enough, the host is tried again.
    old = time.time() - 120
    os.utime(backoff, (old, old))
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert server.connections == 2


def test_success_clears_backoff(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    lockdir = Path(client_env["DISTCC_DIR"]) / "lock"
    lockdir.mkdir()
    backoff = lockdir / f"backoff_tcp_127.0.0.1_{server.port}_0"
    backoff.write_text("x")
    old = time.time() - 120
    os.utime(backoff, (old, old))
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(), DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert not backoff.exists()


def test_backoff_disabled_retries_are_bounded(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    server = fake_server(_close_without_reply)
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_BACKOFF_PERIOD="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj, timeout=60)
    assert res.returncode == 0, res.stderr
    assert server.connections == 3
    assert not list((Path(client_env["DISTCC_DIR"]) / "lock").glob("backoff_*"))


def test_second_host_used_after_first_fails(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    hosts = f"127.0.0.1:{closed_port()} {server.host_spec(lzo=True)}"
    env = env_with(client_env, DISTCC_HOSTS=hosts, DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert len(server.wait_for_jobs(1)) == 1


def test_down_hosts_never_chosen(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    server = fake_server(_close_without_reply)
    env = env_with(client_env, DISTCC_HOSTS=server.spec + ",down", DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 116
    assert server.connections == 0


# --------------------------------------------------------------------------- local-only


@pytest.mark.parametrize(
    "args,expect_file,reason_word",
    [
        (["-E", "src/foo.c", "-o", "foo.i"], "foo.i", "-E"),
        (["src/foo.c", "-o", "prog"], "prog", "link"),
        (["-c", "conftest.c"], "conftest.o", "conftest"),
        # -march=native itself is distributed (test_native_gcc.py); with -g it stays local.
        (["-march=native", "-g", "-c", "src/foo.c", "-o", "nat.o"], "nat.o", "native"),
    ],
    ids=["-E", "link", "conftest", "march-native"],
)
def test_local_only(
    fake_server: Callable[..., FakeServer],
    client_env: dict[str, str],
    proj: Path,
    args: list[str],
    expect_file: str,
    reason_word: str,
) -> None:
    server = fake_server(_close_without_reply)
    (proj / "conftest.c").write_text("int main(void) { return 0; }\n")
    env = env_with(client_env, DISTCC_HOSTS=server.spec, DISTCC_FALLBACK="0", MESHCC_VERBOSE="1")
    res = run([meshcc(), *args], env, proj)
    assert res.returncode == 0, res.stderr
    assert (proj / expect_file).exists()
    assert server.connections == 0
    verbose = [line for line in res.stderr.splitlines() if line.startswith("meshcc[")]
    assert any("locally" in line and reason_word.lower() in line.lower() for line in verbose), (
        res.stderr
    )


def test_local_only_quiet_without_verbose(client_env: dict[str, str], proj: Path) -> None:
    env = env_with(client_env, DISTCC_HOSTS="127.0.0.1:1")
    res = run([meshcc(), "src/foo.c", "-o", "prog"], env, proj)
    assert res.returncode == 0 and res.stderr == ""
    assert subprocess.run([str(proj / "prog")], capture_output=True, text=True).stdout == "21\n"


def test_local_exit_code_and_stdio_passthrough(client_env: dict[str, str], proj: Path) -> None:
    env = env_with(client_env, DISTCC_HOSTS="127.0.0.1:1")
    res = run([meshcc(), "--version"], env, proj)
    assert res.returncode == 0 and "gcc" in res.stdout
    plain = run(["gcc", "src/bad.c", "-o", "prog"], client_env, proj)
    res = run([meshcc(), "src/bad.c", "-o", "prog"], env, proj)
    assert res.returncode == plain.returncode != 0
    assert res.stderr == plain.stderr


def test_local_only_holds_a_local_slot(client_env: dict[str, str], proj: Path) -> None:
    """The exec'd compiler keeps the cpu_localhost slot lock for its whole run."""
    fifo = proj / "fifo"
    os.mkfifo(fifo)
    env = env_with(client_env, DISTCC_HOSTS="--localslots=1 127.0.0.1:1")
    # -E with a FIFO as input: the compiler blocks reading it while we inspect the lock.
    proc = subprocess.Popen(
        [meshcc(), "-x", "c", "-E", str(fifo)],
        env=env,
        cwd=proj,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lockdir = Path(client_env["DISTCC_DIR"]) / "lock"
        deadline = time.monotonic() + 10
        held = False
        while time.monotonic() < deadline and not held:
            time.sleep(0.05)
            held = _locked_by_other(lockdir / "cpu_localhost_0")
        assert held, "no cpu_localhost_0 lock held while the compiler runs"
    finally:
        with open(fifo, "w") as f:
            f.write("int x;\n")
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not _locked_by_other(lockdir / "cpu_localhost_0")


def _locked_by_other(path: Path) -> bool:
    """True if another process holds a write lock on ``path`` (checked from a child process,
    since POSIX locks never conflict within one process)."""
    if not path.exists():
        return False
    code = (
        "import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY)\n"
        "try:\n fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(1)\n"
    )
    return subprocess.run([os.sys.executable, "-c", code, str(path)]).returncode == 1


# --------------------------------------------------------------------------- invocation modes


def test_masquerade_symlink_finds_real_compiler(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    masq = proj.parent / "masq"
    masq.mkdir()
    (masq / "gcc").symlink_to(meshcc())
    env = env_with(
        client_env,
        DISTCC_HOSTS=server.host_spec(),
        DISTCC_FALLBACK="0",
        PATH=f"{masq}:{client_env['PATH']}",
    )
    res = run(["gcc", "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert len(server.wait_for_jobs(1)) == 1
    assert (proj / "foo.o").read_bytes() == local_object(proj, "gcc", ["-c", "src/foo.c"], "r.o")
    res = run(["gcc", "src/foo.c", "-o", "prog"], env, proj, timeout=30)  # local: no recursion
    assert res.returncode == 0, res.stderr


def test_explicit_and_implicit_modes(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(), DISTCC_FALLBACK="0")
    res = run([meshcc("meshcc"), "gcc", "-c", "src/foo.c", "-o", "a.o"], env, proj)
    assert res.returncode == 0, res.stderr
    res = run([meshcc("meshcc"), "-c", "src/foo.c", "-o", "b.o"], env, proj)  # implicit cc
    assert res.returncode == 0, res.stderr
    assert len(server.wait_for_jobs(2)) == 2
    assert (proj / "a.o").read_bytes() == (proj / "b.o").read_bytes()


def test_safeguard_runs_compiler_directly(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], proj: Path
) -> None:
    server = fake_server(_close_without_reply)
    env = env_with(client_env, DISTCC_HOSTS=server.spec, _DISTCC_SAFEGUARD="1", DISTCC_FALLBACK="0")
    res = run([meshcc(), "-c", "src/foo.c", "-o", "foo.o"], env, proj)
    assert res.returncode == 0, res.stderr
    assert server.connections == 0


# --------------------------------------------------------------------------- meshcc daemon


@pytest.mark.parametrize("lzo", [False, True], ids=["protocol1", "protocol2"])
def test_meshcc_daemon_object_identical(
    meshcc_daemon: Callable[..., Daemon], client_env: dict[str, str], proj: Path, lzo: bool
) -> None:
    server = meshcc_daemon()
    env = env_with(client_env, DISTCC_HOSTS=server.host_spec(lzo=lzo), DISTCC_FALLBACK="0")
    for tool, compiler, src in (
        ("meshcc-gcc", "gcc", "src/foo.c"),
        ("meshcc-g++", "g++", "src/bar.cpp"),
    ):
        res = run([meshcc(tool), "-O2", "-c", src, "-o", "out.o"], env, proj)
        assert res.returncode == 0, res.stderr + server.diagnostics()
        assert (proj / "out.o").read_bytes() == local_object(
            proj, compiler, ["-O2", "-c", src], "r.o"
        )
    assert len(server.wait_for_jobs(2)) == 2, server.diagnostics()
