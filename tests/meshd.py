"""Helpers for tests that run real ``meshcc daemon`` processes (loopback or netns hosts).

* :func:`private_dir` — a directory the daemon can still use after dropping to ``nobody``.
* :func:`mismatched_gcc` — a real gcc that reports another version: a toolchain the mesh
  must exclude.
* :class:`Meshd` — one daemon (argv, its socket, log file, TMPDIR) inside a netns
  :class:`netns.Host`, or on loopback in the test's own namespace (discovery off).
* :func:`request` / :class:`ControlConn` — talk to a control socket directly (Unix sockets
  are filesystem objects, reachable from any network namespace).
* :class:`Mesh` — a daemon on each host of a LAN of namespaces, started and stopped
  together, with what the mesh tests and benchmarks ask of them (peers listed, figures),
  and :func:`build_objects` / :func:`differing` to compare a build's objects.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import netns
from harness import hash_objects
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


_CPP_LOGGING_GCC = """#!/bin/sh
# gcc; a preprocessor run (-E) is logged to the file $MESHCC_TEST_CPP_LOG names, if any
# (a compile client's caller names one; the daemons' own runs, which never preprocess, none).
case " $* " in
*" -E "*) [ -n "$MESHCC_TEST_CPP_LOG" ] && echo "$*" >> "$MESHCC_TEST_CPP_LOG" ;;
esac
exec {gcc} "$@"
"""


def cpp_logging_gcc(path: Path, gcc: str) -> Path:
    """Write ``path``: the real ``gcc``, except that it logs its preprocessor runs to the file
    named by MESHCC_TEST_CPP_LOG, so "no preprocessor ran" is counted, not assumed."""
    path.write_text(_CPP_LOGGING_GCC.format(gcc=gcc))
    path.chmod(0o755)
    return path


def trusted_dir(prefix: str) -> Path:
    """A fresh 0755 root-owned directory under /run: a compiler placed there is as
    trustworthy as /usr/bin's, so a daemon agrees to run it when a client names it
    (anything under the world-writable /tmp is refused). Removed at exit."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/run"))
    d.chmod(0o755)
    atexit.register(shutil.rmtree, d, True)
    return d


def private_dir(prefix: str) -> Path:
    """A fresh 0777 directory under /tmp (the daemon runs as nobody after the drop).

    Removed at exit, as :func:`trusted_dir`'s are: several fixtures hand it to a daemon
    and never remove it themselves."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o777)
    atexit.register(shutil.rmtree, d, True)
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


_FIGURES = """
import json, sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}:3633/status.json", timeout=5) as r:
    print(json.dumps(json.load(r)["result_cache"]))
"""


class Mesh:
    """A ``meshcc daemon`` (:class:`Meshd`, ``--interface eth0``) on each of ``hosts``, the
    hosts of one :class:`netns.Lan`: ``args`` for all, ``own[name]`` for one, and with
    ``cache`` a result cache each (``work/NAME/cache``). A context manager: every daemon
    starts on entry (those started are stopped if one fails) and is stopped on exit."""

    def __init__(
        self,
        work: Path,
        hosts: Mapping[str, netns.Host],
        *args: str,
        cache: bool = False,
        own: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.hosts = dict(hosts)
        self.daemons: dict[str, Meshd] = {}
        for name, host in self.hosts.items():
            cache_dir = ("--cache-dir", str(work / name / "cache")) if cache else ()
            extra = (own or {}).get(name, ())
            self.daemons[name] = Meshd(
                work, host, "--interface", "eth0", *args, *cache_dir, *extra, name=name
            )

    def __enter__(self) -> Mesh:
        try:
            for d in self.daemons.values():
                d.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for d in self.daemons.values():
            d.stop()

    def __getitem__(self, name: str) -> Meshd:
        return self.daemons[name]

    def address(self, name: str) -> str:
        return self.hosts[name].address

    def listed(self, name: str) -> set[str]:
        """What ``meshcc hosts --cc gcc`` lists on box ``name``: its peers' addresses, and
        distcc's ``localhost/N`` for the box's own share."""
        out = self[name].cli("hosts", "--cc", "gcc", inside=True).stdout
        return {token.split(":")[0] for token in out.split()}

    def wait_listed(
        self,
        want: Mapping[str, set[str]] | None = None,
        exact: bool = False,
        timeout: float = 60.0,
    ) -> None:
        """Until each box of ``want`` lists those peers (with ``exact``: those alone), box
        after box, each within ``timeout``; by default every box, every other box. If not,
        AssertionError with every daemon's log."""
        if want is None:
            want = {n: {self.address(o) for o in self.hosts if o != n} for n in self.hosts}
        for name, peers in want.items():

            def check(name: str = name, peers: set[str] = peers) -> bool:
                got = self.listed(name)
                return got == peers if exact else peers <= got

            try:
                netns.wait_for(check, timeout, 0.25, f"{name} to list {sorted(peers)}")
            except TimeoutError as e:
                raise AssertionError(f"{e}\n{self.diagnostics()}") from None

    def build(
        self,
        name: str,
        tree: Path,
        env: Mapping[str, str],
        argv: Sequence[str],
        reference: Mapping[str, str],
    ) -> None:
        """``make clean`` in ``tree``, then ``argv`` (make, CC=meshcc-gcc) on box ``name``
        through its daemon (MESHCC_SOCKET): it must succeed and write ``reference``'s
        objects (:func:`build_objects`), byte for byte."""
        clean = subprocess.run(
            ["make", "-f", "Makefile", "clean"], cwd=tree, env=env, capture_output=True, text=True
        )
        assert clean.returncode == 0, clean.stdout + clean.stderr
        env = dict(env, MESHCC_SOCKET=str(self[name].socket))
        p = self.hosts[name].run(argv, cwd=tree, env=env, timeout=900)
        assert p.returncode == 0, f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
        bad = differing(reference, build_objects(tree))
        assert not bad, bad

    def figures(self, name: str) -> dict[str, int]:
        """Box ``name``'s result-cache figures (``result_cache`` of its /status.json, read
        from inside its namespace)."""
        p = self.hosts[name].python(_FIGURES, self.address(name))
        if p.returncode != 0:
            raise AssertionError(f"cannot read {name}'s figures: {p.stderr}")
        figures = json.loads(p.stdout)
        assert isinstance(figures, dict)
        return figures

    def diagnostics(self, tail: int = 6000) -> str:
        """The end of every daemon's log, for a failure's message."""
        return "\n".join(
            f"--- {d.name} log ---\n{d.log_text()[-tail:]}" for d in self.daemons.values()
        )


def build_objects(tree: Path) -> dict[str, str]:
    """The sha256 of every object a build wrote under ``tree`` (``*.o``, libtool's ``*.lo``)."""
    return hash_objects(tree, "*.o") | hash_objects(tree, "*.lo")


def differing(reference: Mapping[str, str], got: Mapping[str, str]) -> list[str]:
    """The objects missing from ``got``, extra in it, or with other bytes than in
    ``reference``: [] when the build is identical."""
    return sorted(k for k in reference.keys() | got.keys() if got.get(k) != reference.get(k))


def client_env(state: Path, *path: Path | str, **extra: str) -> dict[str, str]:
    """A compile client's environment for a build in the mesh: os.environ without DISTCC_*
    and MESHCC_* (the box's own settings must not skew it), DISTCC_DIR and TMPDIR of its
    own under ``state``, ``path`` then this venv's bin (meshcc-gcc) first on PATH, no
    local fallback (a job the mesh does not take fails instead of compiling here
    unseen), and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    for sub in ("distcc-dir", "tmp"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    search = [*map(str, path), str(Path(sys.executable).parent), env.get("PATH", os.defpath)]
    env.update(
        DISTCC_DIR=str(state / "distcc-dir"),
        TMPDIR=str(state / "tmp"),
        PATH=os.pathsep.join(search),
        DISTCC_FALLBACK="0",
    )
    env.update(extra)
    return env
