"""meshcc-gcc inside a network sandbox reaches its hosts through DISTCC_SOCKS_PROXY.

Portage runs every build phase in a network namespace of its own with only a loopback
(``FEATURES=network-sandbox``, on by default) and, for ``FEATURES=distcc``, serves a SOCKS5
proxy on a UNIX socket outside it, named in ``DISTCC_SOCKS_PROXY`` (Gentoo's distcc
connects through it). This test builds the same thing: the client runs under
``unshare --net`` (a fresh namespace, loopback only, gone when the process ends), a real
SOCKS5 server (microsocks) runs outside it on loopback, and socat serves it on a UNIX
socket, as Portage's proxy is served. Inside the sandbox nothing listens on the daemon's
port, so a compile that succeeds with ``DISTCC_FALLBACK=0`` and is in the daemon's job log
went through the proxy. Only address literals are used: a name would be resolved by the
proxy through this box's resolver, which may mean DNS.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import VENV_BIN, Daemon, free_port
from harness import port_accepts
from netns import wait_for

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: tests/run.sh installs it", pytrace=False)
    return path


class Proxy:
    """microsocks on 127.0.0.1:port, optionally also on a UNIX socket (socat)."""

    def __init__(self, tmp: Path, *auth: str) -> None:
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self._start(tmp, auth)
        except BaseException:
            self.stop()  # the fixture never saw this proxy: stop what did start, by PID
            raise

    def _start(self, tmp: Path, auth: tuple[str, ...]) -> None:
        self.log = tmp / "microsocks.log"
        with self.log.open("wb") as log:
            self.procs.append(
                subprocess.Popen(
                    [_tool("microsocks"), "-i", "127.0.0.1", "-p", str(self.port), *auth],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for(lambda: port_accepts(self.port), 10, what="microsocks listening")
        self.unix = tmp / "socks5.sock"
        self.procs.append(
            subprocess.Popen(
                [
                    _tool("socat"),
                    f"UNIX-LISTEN:{self.unix},fork,mode=600",
                    f"TCP:127.0.0.1:{self.port}",
                ],
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        wait_for(self.unix.exists, 10, what="socat's UNIX socket")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(*auth: str) -> Proxy:
        d = tmp_path / f"proxy{len(started)}"
        d.mkdir()
        p = Proxy(d, *auth)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def _sandboxed(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` in a fresh network namespace with only loopback up, as Portage runs a phase."""
    script = 'ip link set lo up && exec "$@"'
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", script, "sandbox", *argv],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )


def _local(proj: Path, args: list[str]) -> bytes:
    out = proj / "ref.o"
    subprocess.run(["gcc", *args, "-o", str(out)], cwd=proj, check=True)
    data = out.read_bytes()
    out.unlink()
    return data


def test_a_sandboxed_compile_goes_through_portages_kind_of_proxy(
    meshcc_daemon: Callable[..., Daemon],
    proxy: Callable[..., Proxy],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    daemon = meshcc_daemon()
    socks = proxy()
    args = ["-O2", "-c", "src/foo.c"]
    # no backoff: the control below marks the host down, and the next run must try it again
    env = dict(client_env, DISTCC_FALLBACK="0", DISTCC_BACKOFF_PERIOD="0")
    meshcc_gcc = str(VENV_BIN / "meshcc-gcc")

    # Without the proxy the sandbox reaches nothing: the control that makes the rest count.
    env["DISTCC_HOSTS"] = f"127.0.0.1:{daemon.port}"
    res = _sandboxed([meshcc_gcc, *args, "-o", "none.o"], env, proj)
    assert res.returncode != 0 and "Connection refused" in res.stderr, res.stderr
    assert daemon.jobs() == []

    # By address, twice (protocol 1 and 2). Names go to the proxy to resolve (the bytes are
    # proven in tests/unit/test_socks5.py); no name is used here, because the proxy would
    # resolve it through this box's resolver, and a root without /etc/hosts (the fresh-root
    # check) would ask DNS for "localhost".
    env["DISTCC_SOCKS_PROXY"] = str(socks.unix)
    for n, spec in enumerate(("/2,lzo", "/2")):
        env["DISTCC_HOSTS"] = f"127.0.0.1:{daemon.port}{spec}"
        res = _sandboxed([meshcc_gcc, *args, "-o", f"foo{n}.o"], env, proj)
        assert res.returncode == 0, res.stderr + daemon.diagnostics()
        assert res.stderr == ""
        assert (proj / f"foo{n}.o").read_bytes() == _local(proj, args)
        assert len(daemon.wait_for_jobs(n + 1)) == n + 1, daemon.diagnostics()

    # A host:port proxy value, outside the sandbox.
    env["DISTCC_SOCKS_PROXY"] = f"127.0.0.1:{socks.port}"
    env["DISTCC_HOSTS"] = f"127.0.0.1:{daemon.port}"
    res = subprocess.run(
        [meshcc_gcc, *args, "-o", "foo2.o"], env=env, cwd=proj, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert len(daemon.wait_for_jobs(3)) == 3, daemon.diagnostics()


def test_proxy_failures_say_why_and_fall_back_like_any_unreachable_host(
    meshcc_daemon: Callable[..., Daemon],
    proxy: Callable[..., Proxy],
    client_env: dict[str, str],
    proj: Path,
) -> None:
    daemon = meshcc_daemon()
    socks = proxy()
    args = ["-c", "src/foo.c"]
    meshcc_gcc = str(VENV_BIN / "meshcc-gcc")
    closed = free_port()
    cases = [
        # the proxy is up but nothing listens where it is sent
        (str(socks.unix), f"127.0.0.1:{closed}", "the proxy could not connect: connection refused"),
        # no proxy at that path
        (str(proj / "no-proxy.sock"), f"127.0.0.1:{daemon.port}", "cannot reach the SOCKS proxy"),
        # a proxy that wants a password (meshcc, as Gentoo's distcc, offers none)
        (
            str(proxy("-u", "builder", "-P", "secret").unix),
            f"127.0.0.1:{daemon.port}",
            "wants authentication",
        ),
    ]
    for value, hosts, reason in cases:
        env = dict(
            client_env, DISTCC_SOCKS_PROXY=value, DISTCC_HOSTS=hosts, DISTCC_BACKOFF_PERIOD="0"
        )
        res = _sandboxed([meshcc_gcc, *args, "-o", "foo.o"], dict(env, DISTCC_FALLBACK="0"), proj)
        assert res.returncode != 0, res.stderr
        assert res.stderr.count(reason) == 1, res.stderr
        assert "Traceback" not in res.stderr
        # With fallback (the default) the job compiles here, as for any unreachable host.
        res = _sandboxed([meshcc_gcc, *args, "-o", "foo.o"], env, proj)
        assert res.returncode == 0, res.stderr
        assert (proj / "foo.o").read_bytes() == _local(proj, args)
    assert daemon.jobs() == []
