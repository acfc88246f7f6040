"""Stalled, slow and idle connections never hold the compile server hostage (hardening
issue, items 1 and 2): the request header has a deadline, a source body must keep flowing,
the wait for the source holds nothing, connection caps stay below the descriptor limit and
shed the oldest idle connection first, and a full server leaves new clients in the kernel's
accept queue instead of failing them.

Real sockets on 127.0.0.x only, a few hundred connections at most. Nothing asserts on time:
every wait has a generous bound, and the facts checked are structural (a compile completes
while N stalled connections are held, a connection was shed, a cap was respected).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import LOOPBACK, Daemon, free_port, loopback_daemon_argv, port_accepts
from meshcc.compiler.toolchain import ToolchainRegistry
from meshcc.transport.server import CompileServer, ServerConfig, bind_listener
from meshcc.wire import protocol as wire

GCC = "/usr/bin/gcc"
ROOT = ("--user", "root")
HELLO_C = "int twice(int x) { return 2 * x; }\n"
ARGV = [b"gcc", b"-c", b"hello.c", b"-o", b"hello.o"]
HEAD = wire.encode_request_head(1, ARGV)
HANG = 60.0  # bound on any wait that would hang on a server without the fix

pytestmark = pytest.mark.skipif(not os.path.exists(GCC), reason="gcc not installed")


# --------------------------------------------------------------------------- raw clients


def request(source: str = HELLO_C) -> bytes:
    return HEAD + wire.encode_source(source.encode())


def read_reply(sock: socket.socket) -> wire.Event | None:
    """The reply's outcome: ReplyRefused, ReplyObject of a finished reply, or None (closed)."""
    reader = wire.ReplyReader(1)
    obj: wire.Event | None = None
    while True:
        try:
            event = reader.next_event()
        except wire.ProtocolError:
            return None
        if event is wire.NEED_DATA:
            try:
                chunk = sock.recv(1 << 16)
            except (ConnectionResetError, TimeoutError):
                chunk = b""
            if chunk:
                reader.feed(chunk)
            else:
                reader.feed_eof()
        elif isinstance(event, wire.ReplyRefused):
            return event
        elif isinstance(event, wire.ReplyObject):
            obj = event
        elif isinstance(event, wire.ReplyEnd):
            return obj


def compile_once(port: int, source_ip: str = LOOPBACK) -> bytes:
    """A good compile from another client; the object file (raises on anything else)."""
    with socket.create_connection(
        (LOOPBACK, port), timeout=HANG, source_address=(source_ip, 0)
    ) as s:
        s.sendall(request())
        got = read_reply(s)
    assert isinstance(got, wire.ReplyObject), f"no object: {got!r}"
    assert got.data.startswith(b"\x7fELF")
    return got.data


def connect(port: int, source_ip: str = LOOPBACK, send: bytes = b"") -> socket.socket:
    s = socket.create_connection((LOOPBACK, port), timeout=HANG, source_address=(source_ip, 0))
    if send:
        s.sendall(send)
    return s


def closed_by_server(s: socket.socket, wait: float = 0.0) -> bool:
    """True when the server closed (or refused) this connection: readable with EOF or ERRM."""
    ready, _, _ = select.select([s], [], [], wait)
    if not ready:
        return False
    try:
        return s.recv(1 << 16, socket.MSG_PEEK) is not None
    except (ConnectionResetError, OSError):
        return True


def refusal_of(s: socket.socket) -> str | None:
    got = read_reply(s)
    return got.message if isinstance(got, wire.ReplyRefused) else None


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def trickle(s: socket.socket, data: bytes, gap: float, bound: float) -> bool:
    """Send ``data`` a byte at a time, ``gap`` apart; True if the server closed the
    connection (or answered) before all of it was sent or ``bound`` seconds passed."""
    deadline = time.monotonic() + bound
    for i in range(len(data)):
        if time.monotonic() > deadline:
            return False
        if closed_by_server(s, gap):
            return True
        try:
            s.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return True
    return closed_by_server(s, gap)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------- daemons


@pytest.fixture
def limited_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """`meshcc daemon` on 127.0.0.1 with a hard descriptor limit it cannot raise
    (`prlimit --nofile=N:N`), allowing all of 127.0.0.0/8 (the tests use many source
    addresses); every daemon is killed (its whole process group) at the end."""
    started: list[Daemon] = []

    def start(nofile: int, *extra: str) -> Daemon:
        port = free_port()
        log_path = tmp_path / f"meshccd-{port}.log"
        argv = [
            "prlimit",
            f"--nofile={nofile}:{nofile}",
            "--",
            *loopback_daemon_argv(
                port, "--status-port", "0", *ROOT, *extra, allow=("127.0.0.0/8",), log_file=log_path
            ),
        ]
        out = tmp_path / f"meshccd-{port}.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                argv,
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        daemon = Daemon("meshcc", proc, port, log_path, out, tmp_path, argv)
        started.append(daemon)
        deadline = time.monotonic() + 30
        while not port_accepts(port):
            assert proc.poll() is None and time.monotonic() < deadline, daemon.diagnostics()
            time.sleep(0.05)
        return daemon

    yield start
    for daemon in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(30)


class InProcessServer:
    """A CompileServer on its own event loop in a thread, with a chosen config."""

    def __init__(self, config: ServerConfig, compilers: tuple[str, ...] = (GCC,)) -> None:
        self.config = config
        self.registry = ToolchainRegistry.from_paths(list(compilers))
        self.sock = bind_listener(LOOPBACK, 0)
        self.port = int(self.sock.getsockname()[1])
        self.server: CompileServer | None = None
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = CompileServer(self.registry, self.config)
            await self.server.start(self.sock)
            self._ready.set()
            await self.server.serve_until_stopped()

        self.loop.run_until_complete(main())

    def call(self, fn: Callable[[CompileServer], int]) -> int:
        """Run ``fn(server)`` on the server's loop (its state is not thread-safe)."""
        assert self.server is not None
        server = self.server

        async def run() -> int:
            return fn(server)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self) -> None:
        if self.server is not None:
            self.loop.call_soon_threadsafe(self.server.abort)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def in_process() -> Iterator[Callable[..., InProcessServer]]:
    servers: list[InProcessServer] = []

    def start(compilers: tuple[str, ...] = (GCC,), **config: object) -> InProcessServer:
        allowed = (ipaddress.ip_network("127.0.0.0/8"),)
        cfg = ServerConfig(allowed=allowed, **config)  # type: ignore[arg-type]
        s = InProcessServer(cfg, compilers)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------- item 1


def test_compile_completes_while_stalled_connections_are_held(meshcc_daemon) -> None:
    """Today's server gives four read slots to the first four partial requests for up to
    the IO timeout (300 s): a good compile behind them waits minutes."""
    daemon = meshcc_daemon(*ROOT, jobs=2)
    held: list[socket.socket] = []
    try:
        for _ in range(40):
            held.append(connect(daemon.port))  # idle: no request bytes
            held.append(connect(daemon.port, send=HEAD[:30]))  # mid-header
            held.append(connect(daemon.port, send=HEAD))  # between the args and the source
            held.append(connect(daemon.port, send=HEAD + b"DOTI00001000" + b"int x"))  # mid-body
        compile_once(daemon.port)
        assert sum(not closed_by_server(s) for s in held) > 0  # they were still being held
        assert daemon.alive()
    finally:
        for s in held:
            s.close()


def test_request_header_has_a_deadline(meshcc_daemon) -> None:
    """A header trickled a byte at a time (each gap well under the IO timeout) is cut at the
    header deadline, with the reason; today's server waits for it forever."""
    daemon = meshcc_daemon(*ROOT, "--io-timeout", "2")
    with connect(daemon.port) as s:
        assert trickle(s, HEAD, gap=0.25, bound=HANG), "header trickle never cut"
        why = refusal_of(s)
    assert why is not None and "request header" in why and "within 2s" in why, why
    assert "did not arrive within 2s" in daemon.log_text()
    compile_once(daemon.port)


def test_source_body_must_keep_flowing(meshcc_daemon) -> None:
    """A source sent at a few bytes per second (never a stall as long as the IO timeout)
    is dropped for its rate; today's server keeps reading it for hours."""
    daemon = meshcc_daemon(*ROOT, "--io-timeout", "2")
    with connect(daemon.port, send=HEAD + b"DOTI00100000") as s:
        assert trickle(s, b"x" * 1000, gap=0.25, bound=HANG), "slow body never cut"
    wait_until(lambda: "too slowly" in daemon.log_text(), "the rate-floor log line")
    compile_once(daemon.port)


def test_waiting_for_the_source_holds_no_read_slot(in_process) -> None:
    """Clients preprocessing (args sent, source not yet) and stalled bodies beyond the
    old read-slot count do not stop a good compile."""
    srv = in_process(jobs=1)  # the old server: max(4, jobs) = 4 read slots
    held = [connect(srv.port, send=HEAD) for _ in range(10)]
    held += [connect(srv.port, send=HEAD + b"DOTI00000100" + b"int") for _ in range(10)]
    try:
        compile_once(srv.port)
        assert not any(closed_by_server(s) for s in held)  # nobody needed shedding
    finally:
        for s in held:
            s.close()


# --------------------------------------------------------------------------- caps


def test_cap_sheds_the_oldest_idle_connection_first(in_process) -> None:
    """At the total cap the oldest *idle* connection goes (with a reason), not an older
    one that is waiting for its source, and the newcomer is served."""
    srv = in_process(max_connections=3, max_per_address=3)
    waiting = connect(srv.port, send=HEAD)  # oldest, but mid-request
    wait_until(lambda: srv.call(lambda s: s.counted_connections) == 1, "first admitted")
    idle_old = connect(srv.port)
    wait_until(lambda: srv.call(lambda s: s.counted_connections) == 2, "second admitted")
    idle_new = connect(srv.port)
    try:
        compile_once(srv.port)  # the fourth: needs a place
        assert closed_by_server(idle_old, HANG)
        why = refusal_of(idle_old)
        assert why is not None and "idle connection" in why and "limit" in why, why
        assert not closed_by_server(waiting) and not closed_by_server(idle_new)
        assert srv.call(lambda s: s.shed_count) == 1
    finally:
        for s in (waiting, idle_old, idle_new):
            s.close()


def test_per_address_cap_sheds_only_that_address(in_process) -> None:
    """At its per-address cap an address loses its own oldest idle connection; when it has
    none old enough to be idle for sure, the newcomer is refused with the reason."""
    srv = in_process(max_connections=50, max_per_address=4)
    other = [connect(srv.port, "127.0.0.2") for _ in range(4)]
    old = [connect(srv.port, "127.0.0.3") for _ in range(4)]
    time.sleep(1.0)  # now they are idle for sure
    new = [connect(srv.port, "127.0.0.3") for _ in range(4)]
    extra = connect(srv.port, "127.0.0.3")
    try:
        wait_until(lambda: all(closed_by_server(s) for s in old), "127.0.0.3's old ones shed")
        why = refusal_of(extra)
        assert why is not None and "per-address limit" in why, why
        assert not any(closed_by_server(s) for s in other + new)
        why = refusal_of(old[0])
        assert why is not None and "per-address limit" in why, why
        compile_once(srv.port, "127.0.0.2")  # sheds one of 127.0.0.2's idle ones
        wait_until(lambda: closed_by_server(other[0]), "127.0.0.2's oldest shed")
        assert sum(closed_by_server(s) for s in other) == 1
        assert not any(closed_by_server(s) for s in new)
    finally:
        for s in other + old + new + [extra]:
            s.close()


def test_full_server_leaves_clients_in_the_accept_queue(in_process, tmp_path: Path) -> None:
    """When every connection is doing real work (here: jobs waiting for the one job slot)
    the server stops accepting instead of refusing: every compile succeeds, and the server
    never holds more connections than its cap."""
    slow = tmp_path / "slowgcc"
    slow.write_text(f'#!/bin/sh\ncase " $* " in *" -c "*) sleep 0.3;; esac\nexec {GCC} "$@"\n')
    slow.chmod(0o755)
    srv = in_process(compilers=(str(slow),), jobs=1, max_connections=3, max_per_address=3)
    argv = [b"slowgcc", b"-c", b"hello.c", b"-o", b"hello.o"]
    job = wire.encode_request_head(1, argv) + wire.encode_source(HELLO_C.encode())
    results: list[object] = []
    peak = [0]
    done = threading.Event()

    def client() -> None:
        with socket.create_connection((LOOPBACK, srv.port), timeout=HANG) as s:
            s.sendall(job)
            results.append(read_reply(s))

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], srv.call(lambda s: s.counted_connections))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=client) for _ in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    done.set()
    sampler.join(HANG)
    assert len(results) == 7
    assert all(isinstance(r, wire.ReplyObject) and r.data for r in results), results
    assert 1 <= peak[0] <= 3
    assert srv.call(lambda s: s.shed_count) == 0


def test_idle_connections_cannot_exhaust_descriptors(limited_daemon) -> None:
    """Item 2: with a 256-descriptor limit, 300 idle connections used to take every
    descriptor (accept failing with EMFILE, good compiles waiting in the queue); now the
    caps stay below the limit, the oldest idle connections are shed with a reason, the log
    says so in a few lines, and a good compile goes through."""
    daemon = limited_daemon(256)
    held: list[socket.socket] = []
    try:
        for i in range(300):  # 10 per address: under the per-address cap (16)
            held.append(connect(daemon.port, f"127.0.0.{2 + i // 10}"))
        compile_once(daemon.port)
        assert fd_count(daemon.proc.pid) < 200
        wait_until(lambda: closed_by_server(held[0]), "the oldest idle connection shed")
        why = refusal_of(held[0])
        assert why is not None and "idle connection" in why, why
        open_now = sum(not closed_by_server(s) for s in held)
        assert open_now <= 64  # connection_caps(256): 64 in total
        log_text = daemon.log_text()
        assert "shedding an idle connection" in log_text
        assert log_text.count("shedding an idle connection") < 20  # rate-limited, no flood
        assert "Too many open files" not in log_text
    finally:
        for s in held:
            s.close()


def test_caps_follow_the_descriptor_limit() -> None:
    from meshcc.transport.server import connection_caps

    for fds in (64, 256, 1024, 4096, 20000, 65536, 1 << 20):
        total, per_address = connection_caps(fds)
        assert per_address <= total
        assert total <= max(16, fds // 4)  # well below the limit
    assert connection_caps(1024) == (256, 64)
    assert connection_caps(65536) == (4096, 1024)


def test_shed_and_deadline_lines_are_rate_limited(in_process, caplog) -> None:
    srv = in_process(max_connections=2, max_per_address=2)
    caplog.set_level(logging.INFO, logger="meshcc.server")
    held = [connect(srv.port) for _ in range(30)]
    try:
        wait_until(lambda: srv.call(lambda s: s.shed_count) >= 28, "28 sheds")
    finally:
        for s in held:
            s.close()
    lines = [r for r in caplog.records if "shedding" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]


def test_large_header_and_body_are_read_against_the_body_budget(in_process) -> None:
    """A header far beyond the usual few hundred bytes (here ~90 KB of -D options) still
    compiles: its bytes past the free allowance are read against the body budget, which
    one request may exceed when it is alone; so does a source bigger than the budget."""
    srv = in_process(body_memory=64 * 1024)
    defines = [f"-DBIG{i}={'x' * 30000}".encode() for i in range(3)]
    argv = [b"gcc", *defines, b"-c", b"hello.c", b"-o", b"hello.o"]
    with socket.create_connection((LOOPBACK, srv.port), timeout=HANG) as s:
        data = wire.encode_request_head(1, argv) + wire.encode_source(HELLO_C.encode())
        for i in range(0, len(data), 16384):  # in pieces: the header is read in several
            s.sendall(data[i : i + 16384])
            time.sleep(0.02)
        got = read_reply(s)
    assert isinstance(got, wire.ReplyObject) and got.data.startswith(b"\x7fELF"), got
    # and a source five times the budget, in pieces, never waits for its own bytes
    big = "/*" + "y" * 320_000 + "*/\n" + HELLO_C
    with socket.create_connection((LOOPBACK, srv.port), timeout=HANG) as s:
        data = request(big)
        for i in range(0, len(data), 65536):
            s.sendall(data[i : i + 65536])
            time.sleep(0.02)
        got = read_reply(s)
    assert isinstance(got, wire.ReplyObject) and got.data.startswith(b"\x7fELF"), got
    wait_until(lambda: srv.call(lambda s: s.counted_connections) == 0, "connections closed")
    assert srv.call(lambda s: s._budget.used) == 0  # every byte given back
