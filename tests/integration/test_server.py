"""The compile server (`meshcc daemon`) against stock distcc 3.4 and hand-made requests.

Everything binds and connects on 127.0.0.1 only. Started as root (as the tests run), the
daemon drops to `nobody` by default; tests whose compiler wrappers, payloads or markers live
in pytest's 0700 tmp_path pass ``--user root`` instead. That also makes the "nothing ran,
nothing was written" proofs meaningful: a dropped user could not write the markers anyway.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import LOOPBACK, Daemon, free_port, loopback_daemon_argv, port_accepts
from meshcc import compression
from meshcc.transport.addresses import client_allowed, normalize_client_ip
from meshcc.transport.server import JobResult, JobSummary
from meshcc.wire import protocol as wire

ROOT = ("--user", "root")
GCC = "/usr/bin/gcc"
HELLO_C = "int twice(int x) { return 2 * x; }\nint main(void) { return twice(21) - 42; }\n"
HELLO_CPP = (
    "#include <vector>\n#include <numeric>\n"
    "int sum() { std::vector<int> v{1, 2, 3}; return std::accumulate(v.begin(), v.end(), 0); }\n"
)
BAD_C = "int broken(void) { return undeclared_thing; }\n"


# --------------------------------------------------------------------------- raw client


@dataclass
class Reply:
    refused: str | None = None
    status: int | None = None
    stderr: bytes = b""
    stdout: bytes = b""
    obj: bytes = b""
    closed_without_reply: bool = False


def read_reply(sock: socket.socket, version: int) -> Reply:
    """Read one reply with the codec; decompress bodies as the protocol says."""
    reader = wire.ReplyReader(version)
    codec = compression.codec_for_protocol(version)
    reply = Reply()
    got_any = False
    while True:
        try:
            event = reader.next_event()
        except wire.ProtocolError:
            if not got_any:
                reply.closed_without_reply = True
                return reply
            raise
        if event is wire.NEED_DATA:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                got_any = True
                reader.feed(chunk)
            else:
                reader.feed_eof()
            continue
        if isinstance(event, wire.ReplyRefused):
            reply.refused = event.message
            return reply
        if isinstance(event, wire.ReplyStatus):
            reply.status = event.wait_status
        elif isinstance(event, wire.ReplyStderr):
            reply.stderr = compression.decompress(codec, event.data, 1 << 28)
        elif isinstance(event, wire.ReplyStdout):
            reply.stdout = compression.decompress(codec, event.data, 1 << 28)
        elif isinstance(event, wire.ReplyObject):
            reply.obj = compression.decompress(codec, event.data, 1 << 28)
        elif isinstance(event, wire.ReplyEnd):
            return reply


def request_bytes(argv: list[str], source: str | bytes, version: int = 1) -> bytes:
    data = source.encode() if isinstance(source, str) else source
    codec = compression.codec_for_protocol(version)
    return wire.encode_request_head(version, [a.encode() for a in argv]) + wire.encode_source(
        compression.compress(codec, data)
    )


def send_job(
    port: int,
    argv: list[str],
    source: str | bytes = HELLO_C,
    version: int = 1,
    timeout: float = 30.0,
) -> Reply:
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(request_bytes(argv, source, version))
        return read_reply(s, version)


def send_raw(port: int, data: bytes, *, half_close: bool = False, timeout: float = 15.0) -> Reply:
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_reply(s, 1)


def summaries_after(daemon: Daemon, count: int, timeout: float = 10.0) -> list:
    return daemon.wait_for_jobs(count, result=None, timeout=timeout)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def job_dirs(daemon: Daemon) -> list[str]:
    """What the daemon left in its TMPDIR (the fixture gives each daemon its own)."""
    return sorted(os.listdir(daemon.tmp_dir))


def write_script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def spy_compiler(tmp_path: Path) -> tuple[str, Path]:
    """A gcc wrapper that records every compile it is asked to run (probes are not logged)."""
    calls = tmp_path / "spy-calls"
    path = write_script(
        tmp_path / "spygcc",
        f'#!/bin/sh\ncase " $* " in *" -c "*|*" -S "*) echo "$*" >> {calls};; esac\n'
        f'exec {GCC} "$@"\n',
    )
    return path, calls


def slow_compiler(tmp_path: Path, seconds: float) -> tuple[str, Path]:
    """A gcc wrapper that sleeps (in a child, so only a process-group kill stops both) first."""
    d = tmp_path / "slow"
    d.mkdir()
    path = write_script(
        tmp_path / "slowgcc",
        "#!/bin/sh\n"
        'case " $* " in *" -c "*|*" -S "*)\n'
        f'  echo "start $(date +%s.%N)" >> {d}/events\n'
        f"  echo $$ > {d}/pid.tmp && mv {d}/pid.tmp {d}/pid\n"
        f"  sleep {seconds} &\n"
        f"  echo $! > {d}/sleeppid\n"
        "  wait\n"
        f'  echo "end $(date +%s.%N)" >> {d}/events;;\n'
        "esac\n"
        f'exec {GCC} "$@"\n',
    )
    return path, d


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text(HELLO_C)
    (src / "hello.cpp").write_text(HELLO_CPP)
    (src / "bad.c").write_text(BAD_C)
    return src


def distcc_env(client_env: dict[str, str], daemon: Daemon, lzo: bool) -> dict[str, str]:
    return dict(
        client_env,
        DISTCC_HOSTS=daemon.host_spec(lzo=lzo),
        DISTCC_FALLBACK="0",
        DISTCC_SKIP_LOCAL_RETRY="1",
    )


def run_cmd(argv: list[str], cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- stock distcc


@pytest.mark.parametrize("lzo", [False, True], ids=["protocol1", "protocol2-lzo"])
def test_stock_distcc_client_objects_identical_to_local(
    lzo: bool, meshcc_daemon, client_env, hello: Path
) -> None:
    daemon = meshcc_daemon()
    env = distcc_env(client_env, daemon, lzo)
    cases = [
        # (C++ with -g differs in DWARF columns after distcc's local -E, with distccd too.)
        (["gcc", "-O2", "-g", "-c", "hello.c", "-o", "{out}.o"], "{out}.o"),
        (["g++", "-O2", "-c", "hello.cpp", "-o", "{out}.o"], "{out}.o"),
        (["gcc", "-O2", "-S", "hello.c", "-o", "{out}.s"], "{out}.s"),
    ]
    for i, (argv, out) in enumerate(cases):
        local = [a.format(out=f"local{i}") for a in argv]
        remote = [a.format(out=f"remote{i}") for a in argv]
        p = run_cmd(local, hello)
        assert p.returncode == 0, p.stderr
        p = run_cmd(["distcc", *remote], hello, env)
        assert p.returncode == 0, f"{p.stderr}\n{daemon.diagnostics()}"
        local_bytes = (hello / out.format(out=f"local{i}")).read_bytes()
        remote_bytes = (hello / out.format(out=f"remote{i}")).read_bytes()
        assert remote_bytes == local_bytes, f"{remote} differs from the local compile"
    ok = daemon.wait_for_jobs(3)
    assert [j.input for j in ok] == ["hello.c", "hello.cpp", "hello.c"], daemon.diagnostics()
    assert all(j.client.startswith("127.0.0.1:") and j.exit == 0 for j in ok)
    assert job_dirs(daemon) == [], "job temp dirs were left behind"


@pytest.mark.parametrize("lzo", [False, True], ids=["protocol1", "protocol2-lzo"])
def test_stock_distcc_compile_error(lzo: bool, meshcc_daemon, client_env, hello: Path) -> None:
    daemon = meshcc_daemon()
    p = run_cmd(
        ["distcc", "gcc", "-c", "bad.c", "-o", "bad.o"], hello, distcc_env(client_env, daemon, lzo)
    )
    assert p.returncode == 1, p.stderr
    assert "undeclared_thing" in p.stderr and "error" in p.stderr
    assert not (hello / "bad.o").exists()
    (job,) = daemon.wait_for_jobs(1, result="COMPILE_ERROR")
    assert (job.exit, job.sig, job.compiler, job.input) == (1, 0, "x86_64-linux-gnu-gcc", "bad.c")


def test_ipv4_mapped_client_on_dual_stack_socket(meshcc_daemon, client_env, hello: Path) -> None:
    """An IPv4 client seen as ::ffff:127.0.0.1 must match --allow 127.0.0.1 (distcc 3.4 bug)."""
    probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        probe.bind(("::ffff:127.0.0.1", 0))
    except OSError:
        pytest.skip("no IPv6 sockets here")
    finally:
        probe.close()
    daemon = meshcc_daemon("--listen", "::ffff:127.0.0.1")
    assert "listening on [::ffff:127.0.0.1]" in daemon.log_text()
    p = run_cmd(
        ["distcc", "gcc", "-c", "hello.c", "-o", "hello.o"],
        hello,
        distcc_env(client_env, daemon, False),
    )
    assert p.returncode == 0, p.stderr
    (job,) = daemon.wait_for_jobs(1)
    assert job.client.startswith("127.0.0.1:")


# --------------------------------------------------------------------------- refusals


def test_disallowed_client_refused(meshcc_daemon, client_env, hello: Path) -> None:
    # 10.9.9.0/24 is only a config value: all traffic stays on 127.0.0.1.
    daemon = meshcc_daemon(allow=("10.9.9.0/24",))
    reply = send_job(daemon.port, ["gcc", "-c", "hello.c", "-o", "hello.o"])
    assert reply.refused is not None and "not allowed" in reply.refused
    assert "127.0.0.1" in reply.refused
    p = run_cmd(
        ["distcc", "gcc", "-c", "hello.c", "-o", "hello.o"],
        hello,
        distcc_env(client_env, daemon, False),
    )
    assert p.returncode != 0 and not (hello / "hello.o").exists()
    # Refusals by the access list are logged once per interval (a peer outside --allow may
    # probe every second): the first job's summary is there, later ones are counted.
    jobs = summaries_after(daemon, 1)
    assert len(jobs) >= 1 and {(j.result, j.ret) for j in jobs} == {("OTHER", 113)}
    assert "denied by access list" in daemon.log_text()


@pytest.mark.parametrize(
    "compiler",
    ["frobcc", "/bin/sh", "../gcc", "bin/gcc", "gcc-ar", "/usr/local/lib/gcc", "/usr/bin/sh"],
)
def test_unknown_compiler_refused(compiler: str, meshcc_daemon) -> None:
    daemon = meshcc_daemon()
    reply = send_job(daemon.port, [compiler, "-c", "hello.c", "-o", "hello.o"])
    assert reply.refused is not None, reply
    assert compiler in reply.refused and "offers" in reply.refused and "gcc" in reply.refused
    (job,) = summaries_after(daemon, 1)
    assert job.result == "OTHER"
    log = daemon.log_text()
    assert "WARNING" in log and "job refused" in log and f"'{compiler}'" in log


def _payloads(tmp: Path) -> dict[str, Path]:
    """Programs that create a marker file if anything ever runs them."""
    markers = tmp / "markers"
    markers.mkdir()
    d = {"dir": markers}
    # -wrapper: gcc runs every subprogram through this script.
    write_script(tmp / "wrap.sh", f'#!/bin/sh\ntouch {markers}/wrapper-ran\nexec "$@"\n')
    # -B: gcc looks for as/cc1 in this directory first.
    bdir = tmp / "bdir"
    bdir.mkdir()
    write_script(bdir / "as", f'#!/bin/sh\ntouch {markers}/B-ran\nexec /usr/bin/as "$@"\n')
    # -fplugin: a shared object whose constructor runs as soon as gcc dlopens it.
    (tmp / "evil.c").write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {"
        f' FILE *f = fopen("{markers}/plugin-ran", "w"); if (f) fclose(f); }}\n'
        "int plugin_is_GPL_compatible; int plugin_init(void) { return 0; }\n"
    )
    subprocess.run(
        [GCC, "-shared", "-fPIC", "-o", str(tmp / "evil.so"), str(tmp / "evil.c")], check=True
    )
    # @file: a response file smuggling -wrapper.
    (tmp / "args.rsp").write_text(f"-wrapper {tmp}/wrap.sh\n")
    # -specs: a specs file adding -wrapper to every command.
    (tmp / "evil.specs").write_text(f"*self_spec:\n+ -wrapper {tmp}/wrap.sh\n\n")
    return d


POLICY_CASES: dict[str, tuple[list[str], str]] = {
    # name: (extra args with {t} = tmp dir, {m} = marker dir; words expected in the reason)
    "fplugin": (["-fplugin={t}/evil.so"], "-fplugin"),
    "specs": (["-specs={t}/evil.specs"], "specs"),
    "wrapper": (["-wrapper", "{t}/wrap.sh"], "-wrapper"),
    "B": (["-B{t}/bdir/"], "-B"),
    "B-separate": (["-B", "{t}/bdir/"], "-B"),
    "response-file": (["@{t}/args.rsp"], "response file"),
    "aux-info": (["-aux-info", "{m}/aux-info-written"], "-aux-info"),
    "Wa-listing": (["-Wa,-adhln={m}/listing-written"], "listing"),
    "Xassembler-listing": (["-Xassembler", "-a={m}/listing2-written"], "listing"),
    "save-temps": (["-save-temps=obj"], "-save-temps"),
    "fdump-tree-all": (["-fdump-tree-all"], "dump"),
    "fdump-to-file": (["-fdump-tree-original={m}/dump-written"], "dump"),
}


@pytest.mark.parametrize("case", sorted(POLICY_CASES))
def test_policy_refusal_runs_nothing(case: str, meshcc_daemon, tmp_path: Path) -> None:
    spy, calls = spy_compiler(tmp_path)
    markers = _payloads(tmp_path)["dir"]
    daemon = meshcc_daemon(*ROOT, compilers=(spy,))
    extra, expect = POLICY_CASES[case]
    extra = [a.format(t=tmp_path, m=markers) for a in extra]
    argv = ["spygcc", "-O2", *extra, "-c", "hello.c", "-o", "hello.o"]
    reply = send_job(daemon.port, argv)
    assert reply.refused is not None, f"{case} was not refused: {reply}"
    assert expect in reply.refused
    (job,) = summaries_after(daemon, 1)
    assert job.result == "OTHER"
    assert "job refused" in daemon.log_text()
    # Proof that nothing ran and nothing was written.
    assert not calls.exists(), f"the compiler ran: {calls.read_text()}"
    assert sorted(os.listdir(markers)) == []
    assert job_dirs(daemon) == []
    # And the payloads are real: the same options do create markers when run locally.
    if case not in ("fdump-tree-all", "save-temps"):  # those two write only into the cwd
        work = tmp_path / "local"
        work.mkdir()
        (work / "hello.c").write_text(HELLO_C)
        subprocess.run([GCC, *argv[1:]], cwd=work, capture_output=True, timeout=60)
        assert os.listdir(markers), f"payload for {case} did not fire even locally"


def test_absolute_and_dotdot_output_names_stay_in_job_dir(meshcc_daemon, tmp_path: Path) -> None:
    """-o is replaced by the job's own file: absolute or '..' names write nothing outside."""
    spy, calls = spy_compiler(tmp_path)
    daemon = meshcc_daemon(*ROOT, compilers=(spy,))
    abs_marker = tmp_path / "abs-marker.o"
    for out in (str(abs_marker), "../../../../../../tmp/dotdot-marker-meshcc.o"):
        reply = send_job(daemon.port, ["spygcc", "-c", "hello.c", "-o", out])
        assert reply.refused is None and reply.status == 0, reply
        assert reply.obj.startswith(b"\x7fELF")
    assert not abs_marker.exists()
    assert not Path("/tmp/dotdot-marker-meshcc.o").exists()
    assert len(calls.read_text().splitlines()) == 2
    assert job_dirs(daemon) == []


@pytest.mark.parametrize("lang", ["c", "c++"])
def test_x_language_cannot_reprocess_includes(lang: str, meshcc_daemon, tmp_path: Path) -> None:
    """`-x c` must not make the server preprocess the received text (reading server files)."""
    secret = tmp_path / "secret.h"
    secret.write_text("int leaked_secret_symbol = 42;\n")
    daemon = meshcc_daemon(*ROOT)
    gcc = "gcc" if lang == "c" else "g++"
    source = f'#include "{secret}"\n#include "/etc/hostname"\nint main(void) {{ return 0; }}\n'
    reply = send_job(daemon.port, [gcc, "-x", lang, "-c", "hello.c", "-o", "hello.o"], source)
    assert reply.refused is not None or reply.status != 0, "the server preprocessed the input"
    assert b"leaked_secret_symbol" not in reply.obj + reply.stderr
    hostname = Path("/etc/hostname").read_text().strip().encode()
    if hostname:
        assert hostname not in reply.stderr


@pytest.mark.parametrize(
    "source",
    [
        '__asm__(".incbin \\"/etc/passwd\\"");\n',
        '__asm__(".include \\"/etc/passwd\\"");\n',
        '__asm__(".INCBIN \\"/etc/passwd\\"");\n',
    ],
    ids=["incbin", "include", "INCBIN"],
)
def test_source_reading_server_files_refused(source: str, meshcc_daemon, tmp_path: Path) -> None:
    spy, calls = spy_compiler(tmp_path)
    daemon = meshcc_daemon(*ROOT, compilers=(spy,))
    for version in (1, 2):
        reply = send_job(daemon.port, ["spygcc", "-c", "x.c", "-o", "x.o"], source, version)
        assert reply.refused is not None and "server" in reply.refused
        assert b"root:" not in reply.obj
    assert not calls.exists()
    assert [j.result for j in summaries_after(daemon, 2)] == ["OTHER", "OTHER"]


def test_pump_protocol_refused_with_reason(meshcc_daemon) -> None:
    daemon = meshcc_daemon()
    head = wire.encode_request_head(3, [b"gcc", b"-c", b"x.c", b"-o", b"x.o"], cwd=b"/tmp")
    reply = send_raw(daemon.port, head + wire.encode_pump_files([(b"/tmp/x.c", "FILE", b"")]))
    assert reply.refused == "pump mode (',cpp') is not supported; use ',lzo'"
    (job,) = summaries_after(daemon, 1)
    assert job.result == "OTHER"


# --------------------------------------------------------------------------- bad streams


def test_bad_streams_logged_and_daemon_keeps_serving(meshcc_daemon) -> None:
    daemon = meshcc_daemon()
    argv = [b"gcc", b"-c", b"x.c", b"-o", b"x.o"]
    head = wire.encode_request_head(1, argv)

    # 1. Garbage (an HTTP request): protocol derailment, with the reason.
    reply = send_raw(daemon.port, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert reply.refused is not None and "derailment" in reply.refused
    # 2. A DOTI claiming 4 GiB: refused from its header, nothing allocated.
    reply = send_raw(daemon.port, head + b"DOTIffffffff")
    assert reply.refused is not None and "exceeds limit" in reply.refused
    # 3. Truncated: the client stops in the middle of DOTI and half-closes.
    reply = send_raw(daemon.port, head + b"DOTI00000100" + b"int x;", half_close=True)
    assert reply.closed_without_reply and reply.refused is None
    # 4. A connection that sends nothing (a liveness probe) is not a job.
    with socket.create_connection((LOOPBACK, daemon.port)):
        pass
    # 5. Unsupported version.
    reply = send_raw(daemon.port, b"DIST00000007")
    assert reply.refused is not None and "version" in reply.refused

    ok = send_job(daemon.port, ["gcc", "-c", "x.c", "-o", "x.o"])
    assert ok.status == 0 and ok.obj.startswith(b"\x7fELF")
    jobs = summaries_after(daemon, 5)
    assert [(j.result, j.ret) for j in jobs] == [
        ("REJ_BAD_REQ", 109),
        ("REJ_BAD_REQ", 109),
        ("OTHER", 108),
        ("REJ_BAD_REQ", 109),
        ("COMPILE_OK", 0),
    ], daemon.diagnostics()
    log = daemon.log_text()
    assert "truncated" in log and "Traceback" not in log
    assert job_dirs(daemon) == []


def test_stalled_client_dropped_after_io_timeout(meshcc_daemon) -> None:
    daemon = meshcc_daemon("--io-timeout", "0.5")
    with socket.create_connection((LOOPBACK, daemon.port), timeout=10) as s:
        s.sendall(wire.encode_request_head(1, [b"gcc", b"-c", b"x.c", b"-o", b"x.o"]))
        s.sendall(b"DOTI00000100")  # ... and never the body
        assert s.recv(100) == b""  # the server gave up and closed
    (job,) = summaries_after(daemon, 1)
    assert job.result == "CLI_DISCONN"
    assert "stalled" in daemon.log_text()


# --------------------------------------------------------------------------- compiles in flight


def test_client_disconnect_kills_compiler_and_cleans_up(meshcc_daemon, tmp_path: Path) -> None:
    slow, d = slow_compiler(tmp_path, 60)
    daemon = meshcc_daemon(*ROOT, compilers=(slow,))
    s = socket.create_connection((LOOPBACK, daemon.port), timeout=10)
    s.sendall(request_bytes(["slowgcc", "-c", "hello.c", "-o", "hello.o"], HELLO_C))
    wait_for(lambda: (d / "pid").exists() and (d / "sleeppid").exists(), what="compiler start")
    pid = int((d / "pid").read_text())
    sleeper = int((d / "sleeppid").read_text())
    assert job_dirs(daemon), "the job should have a temp dir while it runs"
    s.close()
    wait_for(lambda: process_gone(pid) and process_gone(sleeper), what="compiler killed")
    (job,) = summaries_after(daemon, 1)
    assert job.result == "CLI_DISCONN"
    assert job_dirs(daemon) == []
    assert "end" not in (d / "events").read_text()


def test_job_lifetime_kills_compiler(meshcc_daemon, tmp_path: Path) -> None:
    slow, d = slow_compiler(tmp_path, 60)
    daemon = meshcc_daemon(*ROOT, "--job-lifetime", "0.5", compilers=(slow,))
    reply = send_job(daemon.port, ["slowgcc", "-c", "hello.c", "-o", "hello.o"])
    assert reply.status == 118 << 8 and reply.obj == b""
    assert b"job-lifetime" in reply.stderr
    assert process_gone(int((d / "sleeppid").read_text()))
    (job,) = summaries_after(daemon, 1)
    assert (job.result, job.exit, job.ret) == ("COMPILE_TIMEOUT", 118, 118)
    assert job_dirs(daemon) == []


def _interval_pairs(events: str) -> list[tuple[float, float]]:
    starts = [float(line.split()[1]) for line in events.splitlines() if line.startswith("start")]
    ends = [float(line.split()[1]) for line in events.splitlines() if line.startswith("end")]
    return sorted(zip(sorted(starts), sorted(ends), strict=True))


@pytest.mark.parametrize("jobs", [1, 2])
def test_jobs_bound_concurrent_compiles(jobs: int, meshcc_daemon, tmp_path: Path) -> None:
    slow, d = slow_compiler(tmp_path, 0.6)
    daemon = meshcc_daemon(*ROOT, jobs=jobs, compilers=(slow,))
    replies: list[Reply] = []

    def one() -> None:
        replies.append(send_job(daemon.port, ["slowgcc", "-c", "hello.c", "-o", "hello.o"]))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status for r in replies] == [0, 0]
    (first, second) = _interval_pairs((d / "events").read_text())
    if jobs == 1:
        assert second[0] >= first[1], f"compiles overlapped with --jobs 1: {first} {second}"
    else:
        assert second[0] < first[1], f"compiles did not overlap with --jobs 2: {first} {second}"


def test_sigterm_lets_running_job_finish(meshcc_daemon, tmp_path: Path) -> None:
    slow, d = slow_compiler(tmp_path, 1.5)
    daemon = meshcc_daemon(*ROOT, compilers=(slow,))
    result: list[Reply] = []
    t = threading.Thread(
        target=lambda: result.append(
            send_job(daemon.port, ["slowgcc", "-c", "hello.c", "-o", "hello.o"])
        )
    )
    t.start()
    wait_for((d / "pid").exists, what="compiler start")
    idle = socket.create_connection((LOOPBACK, daemon.port))  # never sends: must not block exit
    os.kill(daemon.proc.pid, signal.SIGTERM)  # the daemon only, not its group
    wait_for(lambda: "SIGTERM received" in daemon.log_text(), what="signal logged")
    assert not port_accepts(daemon.port), "still accepting after SIGTERM"
    t.join(30)
    (reply,) = result
    assert reply.status == 0 and reply.obj.startswith(b"\x7fELF")
    assert daemon.proc.wait(15) == 0
    assert idle.recv(10) == b""
    idle.close()
    assert [j.result for j in daemon.jobs()] == ["COMPILE_OK"]
    assert "daemon stopped" in daemon.log_text()


# --------------------------------------------------------------------------- start-up


def _daemon_cmd(*args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = loopback_daemon_argv(port or free_port(), *ROOT, *args)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_port_in_use_exits_102_with_one_line() -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        p = _daemon_cmd(port=s.getsockname()[1])
    assert p.returncode == 102
    assert "cannot listen" in p.stderr and "Traceback" not in p.stderr
    assert len([line for line in p.stderr.splitlines() if "ERROR" in line]) == 1


@pytest.mark.parametrize("compiler", ["/bin/true", "/nonexistent/gcc", "/etc/passwd"])
def test_bad_compiler_exits_110(compiler: str) -> None:
    p = _daemon_cmd("--compiler", compiler)
    assert p.returncode == 110, p.stderr
    assert compiler in p.stderr and "Traceback" not in p.stderr


def test_no_compilers_on_path_exits_110(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))
    argv = loopback_daemon_argv(free_port(), *ROOT, allow=())
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 110 and "no compilers found" in p.stderr, p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a private mount namespace)")
def test_no_usable_temp_dir_for_the_run_user_is_a_clear_error() -> None:
    """Dropped to nobody with no writable temp dir anywhere: one clear line, no traceback.

    A private mount namespace makes /tmp and /var/tmp read-only (bind-mounted onto
    themselves, so a checkout or venv under /tmp stays readable) and cwd is /, so every
    candidate of Python's tempfile fails for the run user."""
    script = (
        "mount --make-rprivate / && "
        "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp && "
        "mount --bind /var/tmp /var/tmp && mount -o remount,bind,ro /var/tmp && "
        'cd / && exec env -u TMPDIR "$@"'
    )
    daemon = [sys.executable, "-m", "meshcc", "daemon", "--listen", LOOPBACK, "--no-discovery"]
    argv = ["unshare", "-m", "sh", "-c", script, "sh", *daemon, "--port", str(free_port())]
    p = subprocess.run([*argv, "--user", "nobody"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 100, p.stderr  # distccd's EXIT_DISTCC_FAILED
    assert "cannot create job directories as uid" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("value", ["10.0.0.x", "300.1.1.1/8", "fe80::/200", "eth0"])
def test_bad_allow_is_a_usage_error(value: str) -> None:
    p = _daemon_cmd("--allow", value)
    assert p.returncode == 101  # distccd's EXIT_BAD_ARGUMENTS
    assert "--allow" in p.stderr and value in p.stderr and "Traceback" not in p.stderr


def test_default_allow_and_startup_log(meshcc_daemon) -> None:
    daemon = meshcc_daemon(allow=())
    log = daemon.log_text()
    assert "dropped root privileges: running as user nobody (default)" in log
    assert "allowing clients from (default): 127.0.0.0/8, ::1/128" in log
    assert "listening on 127.0.0.1:" in log
    assert "compiler /usr/bin/gcc: gcc " in log and "binutils" in log
    reply = send_job(daemon.port, ["gcc", "-c", "x.c", "-o", "x.o"])
    assert reply.status == 0


# --------------------------------------------------------------------------- units


def test_ipv4_mapped_addresses_checked_as_ipv4() -> None:
    nets = [ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("fd00::/8")]
    assert normalize_client_ip("::ffff:192.168.1.7") == ipaddress.ip_address("192.168.1.7")
    assert client_allowed(normalize_client_ip("::ffff:192.168.1.7"), nets)
    assert not client_allowed(normalize_client_ip("::ffff:192.168.2.7"), nets)
    assert client_allowed(normalize_client_ip("fd00::5"), nets)
    assert not client_allowed(normalize_client_ip("fe80::1%eth0"), nets)
    # A mapped network given as IPv6 still matches an IPv4 client.
    assert client_allowed(
        ipaddress.ip_address("10.1.2.3"), [ipaddress.ip_network("::ffff:10.0.0.0/104")]
    )


def test_summary_line_layout() -> None:
    s = JobSummary("127.0.0.1:4000", JobResult.COMPILE_OK, time_ms=12, compiler="gcc", source="a.c")
    assert s.line() == (
        "client: 127.0.0.1:4000 COMPILE_OK exit:0 sig:0 core:0 ret:0 time:12ms gcc a.c"
    )
    s = JobSummary("127.0.0.1:4000", JobResult.OTHER, ret=113, compiler="gcc", source="a.c")
    assert s.line() == "client: 127.0.0.1:4000 OTHER exit:0 sig:0 core:0 ret:113 time:0ms"


def test_entry_dispatch_table_matches_cli() -> None:
    from meshcc.cli import entry
    from meshcc.cli import main as cli

    assert entry.COMMANDS == frozenset(cli.COMMANDS)
    p = subprocess.run(
        [sys.executable, "-m", "meshcc", "--version"], capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0 and p.stdout.startswith("meshcc ")
