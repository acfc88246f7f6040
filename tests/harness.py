"""Test and benchmark plumbing that needs no pytest: ports, Debian sources, job summaries.

Shared by tests/conftest.py and benchmarks/_harness.py. Everything binds and talks to
127.0.0.1 only.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
SOURCE_CACHE = Path(os.environ.get("MESHCC_TEST_CACHE", "/var/cache/meshcc-tests"))
README_HINT = (
    "run the tests with the README's command, `bash tests/run.sh` (as root): it adds a deb-src "
    "entry (/etc/apt/sources.list.d/meshcc-tests-src.sources), runs `apt-get update` and "
    "installs dpkg-dev, so that `apt-get source` works"
)
_JOB_RE = re.compile(
    r"client: (?P<client>\S+) (?P<result>[A-Z_]+) exit:(?P<exit>-?\d+) sig:(?P<sig>\d+) "
    r"core:(?P<core>\d+) ret:(?P<ret>\d+) time:(?P<time>\d+)ms ?(?P<rest>.*)$"
)

_EXTRA_RE = re.compile(r"^(?:queue:\d+ms|cache:\w+)$")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def loopback_daemon_argv(
    port: int,
    *extra: str,
    allow: Sequence[str] = (LOOPBACK,),
    log_file: Path | str | None = None,
) -> list[str]:
    """``python -m meshcc daemon`` on 127.0.0.1 with discovery off, for tests and benchmarks.

    --no-discovery always: whatever a caller adds (another --listen), no mDNS may reach this
    machine's real interfaces. ``allow=()`` leaves the daemon's default access list.
    --no-cache unless ``extra`` names a --cache option: a repeated compile must run (and
    leave nothing in a shared /var/cache) unless the caller is testing the result cache.
    """
    argv = [sys.executable, "-m", "meshcc", "daemon", "--listen", LOOPBACK, "--no-discovery"]
    argv += ["--port", str(port)]
    for cidr in allow:
        argv += ["--allow", cidr]
    if log_file is not None:
        argv += ["--log-file", str(log_file), "--log-level", "info"]
    if not any(a.startswith(("--cache", "--no-cache")) for a in extra):
        argv.append("--no-cache")  # the result cache only for callers that ask (their dir)
    return [*argv, *extra]


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if a TCP connect to host:port succeeds (used to wait for a daemon to listen)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def close_listener(sock: socket.socket) -> None:
    """Close a listening socket that another thread may be blocked on in ``accept()``.

    ``close()`` alone does not wake that thread on Linux: it stays in ``accept()`` on the
    old descriptor number, which the next socket of a later test may reuse, and then it
    steals that test's connections. ``shutdown()`` wakes it (accept raises) first."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected/listening any more: nothing to wake
    sock.close()


def copy_tree(src: Path | str, dst: Path | str) -> Path:
    """Copy a source tree (symlinks kept, timestamps preserved) so a build never touches `src`."""
    dst = Path(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def hash_objects(root: Path | str, pattern: str = "*.o") -> dict[str, str]:
    """Map every file matching `pattern` under `root` (relative path) to its sha256 hex."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One distccd-style job summary line (``client: IP:PORT RESULT exit:.. time:NNms cc file``)."""

    client: str
    result: str
    exit: int
    sig: int
    core: int
    ret: int
    time_ms: int
    compiler: str | None
    input: str | None
    queue_ms: int | None = None  # meshcc: how long the job waited for a slot (queue:NNms)


def parse_job_summaries(text: str) -> list[JobSummary]:
    """Parse every job summary line in a meshcc or distccd log."""
    jobs: list[JobSummary] = []
    for line in text.splitlines():
        m = _JOB_RE.search(line)
        if not m:
            continue
        rest = m["rest"].strip()
        # meshcc appends fields after distccd's layout: queue:NNms, cache:WORD
        queue_ms = None
        words = rest.split(" ")
        while words and _EXTRA_RE.match(words[-1]):
            key, _, value = words.pop().partition(":")
            if key == "queue":
                queue_ms = int(value[:-2])
        rest = " ".join(words)
        compiler, _, source = rest.partition(" ")
        jobs.append(
            JobSummary(
                client=m["client"],
                result=m["result"],
                exit=int(m["exit"]),
                sig=int(m["sig"]),
                core=int(m["core"]),
                ret=int(m["ret"]),
                time_ms=int(m["time"]),
                compiler=compiler or None,
                input=source or None,
                queue_ms=queue_ms,
            )
        )
    return jobs


def apt_source(package: str, cache: Path = SOURCE_CACHE) -> Path:
    """Fetch and unpack `apt-get source PACKAGE` once into `cache/PACKAGE`; return the tree.

    Unpacks into a temporary directory and renames it into place, under an flock, so
    concurrent sessions and interrupted runs never see a half-extracted tree.
    """
    pkg_dir = cache / package
    stamp = pkg_dir / ".complete"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{package}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return pkg_dir / stamp.read_text().strip()
        if pkg_dir.exists():
            shutil.rmtree(pkg_dir)
        work = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=cache))
        # _apt cannot write into a root-only mkdtemp dir; let it, to avoid the sandbox warning.
        os.chmod(work, 0o755)
        proc = subprocess.run(
            ["apt-get", "source", "--only-source", package],
            cwd=work,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
        )
        if proc.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            output = proc.stdout + proc.stderr
            hint = (
                README_HINT
                if "deb-src" in output or "Unable to find a source package" in output
                else "see apt-get's output"
            )
            raise RuntimeError(f"`apt-get source {package}` failed ({hint}):\n{output}")
        trees = [p for p in work.iterdir() if p.is_dir()]
        if len(trees) != 1:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"`apt-get source {package}` produced {trees}, expected one tree")
        (work / ".complete").write_text(trees[0].name + "\n")
        work.rename(pkg_dir)
        return pkg_dir / trees[0].name
