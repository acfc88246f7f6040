"""A real meshcc daemon killed (SIGKILL) while it compiles a client's job.

The compiler on the daemon is a gcc wrapper that stalls before compiling, so the kill lands
mid-job with certainty; the wrapper is a probed compiler like any other (--compiler).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Daemon

SLOW_GCC = """#!/bin/sh
# gcc, but a compile (-c) first creates the marker and stalls while it exists (at most
# 30 s), so a test can kill the daemon mid-job and then release this orphan.
for a in "$@"; do
    if [ "$a" = "-c" ]; then
        touch "{marker}"
        i=0
        while [ -e "{marker}" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        exit 1
    fi
done
exec gcc "$@"
"""

SOURCE = "int answer(void) { return 42; }\n"


@pytest.fixture
def slow_daemon(
    meshcc_daemon: Callable[..., Daemon], tmp_path: Path
) -> Iterator[tuple[Daemon, Path]]:
    marker = tmp_path / "compiling"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gcc = bindir / "gcc"
    gcc.write_text(SLOW_GCC.format(marker=marker))
    gcc.chmod(0o755)
    # --user root: the job writes the marker into the test's private directory
    yield meshcc_daemon("--user", "root", compilers=[str(gcc)]), marker
    marker.unlink(missing_ok=True)  # lets the orphaned stalled compiler exit


def _start_compile(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    tool = os.path.join(os.path.dirname(sys.executable), "meshcc-gcc")
    return subprocess.Popen(
        [tool, "-O2", "-c", "answer.c", "-o", "answer.o"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, (
            f"client ended before the remote compile started: {proc.communicate()}"
        )
        assert time.monotonic() < deadline, "the remote compile never started"
        time.sleep(0.05)


@pytest.mark.parametrize("lzo", [False, True], ids=["p1", "p2"])
def test_client_falls_back_when_daemon_killed_mid_job(
    slow_daemon: tuple[Daemon, Path], client_env: dict[str, str], tmp_path: Path, lzo: bool
) -> None:
    server, marker = slow_daemon
    work = tmp_path / "work"
    work.mkdir()
    (work / "answer.c").write_text(SOURCE)
    env = dict(client_env, DISTCC_HOSTS=server.host_spec(lzo=lzo))
    proc = _start_compile(env, work)
    _wait_for(marker, proc)
    server.kill()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "compiling locally" in err, err  # the fallback is announced, once
    subprocess.run(["gcc", "-O2", "-c", "answer.c", "-o", "ref.o"], cwd=work, check=True)
    assert (work / "answer.o").read_bytes() == (work / "ref.o").read_bytes()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".answer.o")]


def test_killed_daemon_with_fallback_disabled_keeps_old_output(
    slow_daemon: tuple[Daemon, Path], client_env: dict[str, str], tmp_path: Path
) -> None:
    server, marker = slow_daemon
    work = tmp_path / "work"
    work.mkdir()
    (work / "answer.c").write_text(SOURCE)
    old = b"previous object file contents"
    (work / "answer.o").write_bytes(old)
    env = dict(client_env, DISTCC_HOSTS=server.host_spec(lzo=True), DISTCC_FALLBACK="0")
    proc = _start_compile(env, work)
    _wait_for(marker, proc)
    server.kill()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 116, err  # distcc's EXIT_NO_HOSTS
    assert "DISTCC_FALLBACK=0" in err, err
    assert (work / "answer.o").read_bytes() == old  # neither truncated nor replaced
    assert sorted(p.name for p in work.iterdir()) == ["answer.c", "answer.o"]
