"""Process plumbing for the benchmarks: loopback daemons and cached Debian sources.

Standalone on purpose (no pytest import): benchmarks run outside the test suite. Mirrors the
behaviour of tests/conftest.py's fixtures and shares their pytest-free helpers
(tests/harness.py). Everything binds and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import harness as _shared
from harness import LOOPBACK, SOURCE_CACHE, free_port, port_accepts  # noqa: F401

VENV_BIN = Path(sys.executable).parent
_JOB_RE = re.compile(r"client: \S+ (?P<result>[A-Z_]+) exit:")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends a benchmark as Ctrl-C does, through its ``finally`` blocks, so the
    daemons and namespaces it started are stopped (by default SIGTERM skips them)."""
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _exit_on_sigterm)


class HarnessError(RuntimeError):
    """A daemon or tool could not be set up; the message says what to look at."""


def apt_source(package: str) -> Path:
    """The cached Debian source tree of PACKAGE (tests/harness.py), as a HarnessError."""
    try:
        return _shared.apt_source(package)
    except RuntimeError as e:
        raise HarnessError(str(e)) from None


def clean_env() -> dict[str, str]:
    """os.environ without DISTCC_*/MESHCC_* so the caller's setup cannot skew a run."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}


def client_env(state_dir: Path, hosts: str | None = None) -> dict[str, str]:
    """Compile-client environment: fresh DISTCC_DIR and TMPDIR, venv bin first on PATH."""
    env = clean_env()
    distcc_dir = state_dir / "distcc-dir"
    tmp = state_dir / "tmp"
    distcc_dir.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env["DISTCC_DIR"] = str(distcc_dir)
    env["TMPDIR"] = str(tmp)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
    env["MESHCC_SOCKET"] = str(state_dir / "no-meshcc-daemon.sock")  # never the box's daemon
    env["DISTCC_FALLBACK"] = "0"  # a silent local compile must not count as a remote one
    if hosts is not None:
        env["DISTCC_HOSTS"] = hosts
    return env


@dataclass(eq=False)
class Daemon:
    """A compile server on 127.0.0.1:port (meshcc or stock distccd)."""

    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    argv: list[str]

    def host_spec(self, lzo: bool, limit: int | None = None) -> str:
        spec = f"{LOOPBACK}:{self.port}"
        if limit is not None:
            spec += f"/{limit}"
        return spec + (",lzo" if lzo else "")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count_jobs(self, result: str = "COMPILE_OK") -> int:
        return sum(1 for m in _JOB_RE.finditer(self.log_text()) if m["result"] == result)

    def stop(self) -> None:
        """SIGTERM the daemon's process group, SIGKILL it after 10 s."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def _spawn(
    kind: str,
    argv: list[str],
    workdir: Path,
    port: int,
    log: Path,
    env: dict[str, str],
    out_path: Path,
) -> Daemon:
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = Daemon(kind, proc, port, log, argv)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(
                f"{kind} exited ({proc.returncode}) before listening: {' '.join(argv)}\n"
                f"{out_path.read_text(errors='replace')[-4000:]}\n{daemon.log_text()[-4000:]}"
            )
        if port_accepts(port):
            return daemon
        time.sleep(0.05)
    daemon.stop()
    raise HarnessError(
        f"{kind} did not listen on {LOOPBACK}:{port} within 10 s\n{daemon.log_text()}"
    )


def start_meshcc(workdir: Path, jobs: int, *extra: str, command: list[str] | None = None) -> Daemon:
    """`python -m meshcc daemon` on 127.0.0.1, loopback clients only; ``command``: another
    meshcc to run than this tree's (an install.sh prefix's ``bin/meshcc``).

    The result cache is off unless ``extra`` names a cache option: a benchmark that replays
    the same jobs would otherwise measure cache hits, not compiles (and share the box's
    default cache directory with every other run)."""
    if not any(a.startswith(("--cache", "--no-cache")) for a in extra):
        extra = (*extra, "--no-cache")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "meshccd.log"
    argv = _shared.loopback_daemon_argv(port, "--jobs", str(jobs), *extra, log_file=log)
    if command is not None:
        argv[:3] = command  # in place of [python, -m, meshcc]
    env = clean_env()
    env.pop("TMPDIR", None)  # like distccd: job dirs in /tmp, writable by the dropped user
    return _spawn("meshcc", argv, workdir, port, log, env, workdir / "meshccd.out")


def start_distccd(workdir: Path, jobs: int, *extra: str) -> Daemon:
    """Stock distccd on 127.0.0.1; as root it drops to user distccd, so it logs to our stderr."""
    if shutil.which("distccd") is None:
        raise HarnessError("distccd is not installed (Debian package `distcc`)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "distccd.log"
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
        "--allow",
        LOOPBACK,
        "--jobs",
        str(jobs),
        *extra,
    ]
    env = clean_env()
    env.pop("TMPDIR", None)
    return _spawn("distccd", argv, workdir, port, log, env, log)
