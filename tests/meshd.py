"""Helpers for tests that run real ``meshcc daemon`` processes (loopback or netns hosts).

* :func:`private_dir` — a directory the daemon can still use after dropping to ``nobody``.
* :func:`mismatched_gcc` — a real gcc that reports another version: a toolchain the mesh
  must exclude.
* :class:`Meshd` — one daemon (argv, its socket, log file, TMPDIR) inside a netns
  :class:`netns.Host`, or on loopback in the test's own namespace (discovery off).
* :func:`request` / :class:`ControlConn` — talk to a control socket directly (Unix sockets
  are filesystem objects, reachable from any network namespace).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import netns
from meshcc.wire import control

PORT = 3632

_MISMATCHED_GCC = """#!/bin/sh
# gcc, claiming to be version {version}: a toolchain the mesh must not match with the real one.
for a in "$@"; do
  case "$a" in
    -dumpfullversion) echo {version}; exit 0 ;;
    -dumpversion) echo {short}; exit 0 ;;
  esac
done
exec /usr/bin/gcc "$@"
"""


def mismatched_gcc(directory: Path, version: str = "12.9.0") -> Path:
    """Write ``directory/gcc``: the real gcc, except that it reports ``version``."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory.chmod(0o755)
    gcc = directory / "gcc"
    gcc.write_text(_MISMATCHED_GCC.format(version=version, short=version.split(".", maxsplit=1)[0]))
    gcc.chmod(0o755)
    return gcc


def trusted_dir(prefix: str) -> Path:
    """A fresh 0755 root-owned directory under /run: a compiler placed there is as
    trustworthy as /usr/bin's, so a daemon agrees to run it when a client names it
    (anything under the world-writable /tmp is refused). Removed at exit."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/run"))
    d.chmod(0o755)
    atexit.register(shutil.rmtree, d, True)
    return d


def private_dir(prefix: str) -> Path:
    """A fresh 0777 directory under /tmp (the daemon runs as nobody after the drop)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o777)
    return d


class ControlConn:
    """A blocking control-socket connection (one lease, or several status/hosts)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 20.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(path))
        self.reader = control.MessageReader()

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(control.encode(msg))

    def recv(self) -> dict[str, Any] | None:
        """The next message, or None when the daemon closed the connection."""
        while True:
            msg = self.reader.next_message()
            if msg is not None:
                return msg
            data = self.sock.recv(65536)
            if not data:
                return None
            self.reader.feed(data)

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.send(msg)
        reply = self.recv()
        assert reply is not None, f"daemon closed the connection after {msg}"
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(path: str | os.PathLike[str], msg: dict[str, Any]) -> dict[str, Any]:
    with ControlConn(path) as c:
        return c.ask(msg)


class Meshd:
    """One ``meshcc daemon``; in ``host``'s namespace, or on loopback when host is None."""

    def __init__(
        self,
        workdir: Path,
        host: netns.Host | None = None,
        *args: str,
        name: str = "d",
        port: int = PORT,
    ) -> None:
        self.host = host
        self.name = name
        self.port = port
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o777)
        (self.dir / "tmp").mkdir(exist_ok=True)
        (self.dir / "tmp").chmod(0o1777)
        self.socket = self.dir / "run" / "control.sock"
        self.log = self.dir / "daemon.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "meshcc",
            "daemon",
            "--port",
            str(self.port),
            "--socket",
            str(self.socket),
            "--log-level",
            "info",
            "--log-file",
            str(self.log),
        ]
        if self.host is None:
            argv += ["--listen", "127.0.0.1", "--allow", "127.0.0.1"]
        if not any(a.startswith("--cache") for a in self.args):
            argv.append("--no-cache")  # result cache: only tests that ask for it (their dir)
        return argv + list(self.args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ, TMPDIR=str(self.dir / "tmp"))
        env.pop("MESHCC_SOCKET", None)
        return env

    def start(self, wait: bool = True) -> Meshd:
        argv = self.argv()
        kw: dict[str, Any] = {
            "env": self.env(),
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.DEVNULL,
            "stderr": subprocess.PIPE,
        }
        if self.host is None:
            self.proc = subprocess.Popen(argv, start_new_session=True, **kw)
        else:
            self.proc = self.host.popen(argv, **kw)
        self.started = time.monotonic()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name}: daemon exited {self.proc.returncode}\n"
                    f"{self.log_text()}\n{self.stderr()}"
                )
            try:
                return request(self.socket, control.StatusRequest().to_message())["ok"] is True
            except OSError:
                return False

        netns.wait_for(ready, timeout, what=f"{self.name}'s control socket")

    def status(self) -> dict[str, Any]:
        return request(self.socket, control.StatusRequest().to_message())

    def hosts(self, cc: str | None = "gcc") -> dict[str, Any]:
        path = None if cc is None else os.path.realpath(cc) if "/" in cc else f"/usr/bin/{cc}"
        return request(self.socket, control.HostsRequest(cc, path).to_message())

    def cli(self, *args: str, inside: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``meshcc ARGS`` pointed at this daemon (MESHCC_SOCKET); in the netns if inside."""
        env = dict(os.environ, MESHCC_SOCKET=str(self.socket))
        argv = [sys.executable, "-m", "meshcc", *args]
        if inside and self.host is not None:
            return self.host.run(argv, env=env, **kw)
        return subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            **kw,
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


class BareMeshd(Meshd):
    """A daemon whose PATH is one directory holding only python: no compiler, no binutils
    (a mesh-only node, like a LiveCD before the stage3's gcc exists)."""

    def __init__(self, bare_path: Path, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.bare_path = bare_path

    def argv(self) -> list[str]:
        # Set by env(1) inside the namespace: `ip netns exec` itself needs the real PATH.
        return ["/usr/bin/env", f"PATH={self.bare_path}", *super().argv()]


def bare_path(work: Path) -> Path:
    """A PATH directory under ``work`` with python3 and no compiler or assembler."""
    bare = work / "bare-bin"
    bare.mkdir(mode=0o755)
    bare.chmod(0o755)
    (bare / "python3").symlink_to(sys.executable)
    for tool in ("gcc", "cc", "g++", "c++", "as"):
        assert shutil.which(tool, path=str(bare)) is None
    return bare


_BROWSE_NAMES = r"""
import sys, time
from zeroconf import ServiceBrowser, Zeroconf, IPVersion
service_type, interface = sys.argv[1], sys.argv[2]
seconds, stop_after = float(sys.argv[3]), int(sys.argv[4])
seen = set()
class L:
    def add_service(self, zc, t, name): seen.add(name)
    def update_service(self, zc, t, name): seen.add(name)
    def remove_service(self, zc, t, name): pass
zc = Zeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
ServiceBrowser(zc, service_type, L())
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and not 0 < stop_after <= len(seen):
    time.sleep(0.05)
zc.close()
print("\n".join(sorted(seen)))
"""


def browse_names(
    host: netns.Host, service_type: str, seconds: float, stop_after: int = 0
) -> list[str]:
    """The DNS-SD instance names python-zeroconf sees from ``host`` (as a stock distcc
    browser would): for ``seconds``, or until ``stop_after`` names when that is not 0."""
    p = host.python(_BROWSE_NAMES, service_type, host.address, str(seconds), str(stop_after))
    assert p.returncode == 0, p.stderr
    return p.stdout.split()
