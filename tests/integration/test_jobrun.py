"""meshcc.transport.jobrun with real child processes: the exit seen through a pidfd, and
through the waiting thread used where the kernel has no pidfd (forced here by making
os.pidfd_open fail, the one thing this kernel cannot show us)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from meshcc.transport import jobrun


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _run(script: str, cwd: Path, cap: int = 1 << 20) -> tuple[int, bytes, bytes]:
    async def main() -> tuple[int, bytes, bytes]:
        out = jobrun.open_capture(str(cwd))
        err = jobrun.open_capture(str(cwd))
        try:
            run = jobrun.CompilerRun(
                ["/bin/sh", "-c", script],
                cwd=str(cwd),
                env=dict(os.environb),
                stdout=out,
                stderr=err,
            )
            code = await asyncio.wait_for(run.exited, 30)
            assert run.returncode == code
            return code, jobrun.read_capture(out, cap), jobrun.read_capture(err, cap)
        finally:
            os.close(out)
            os.close(err)

    return asyncio.run(main())


@pytest.fixture(params=["pidfd", "thread"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "thread":

        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, "pidfd_open not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    return str(request.param)


def test_status_and_output(way: str, tmp_path: Path) -> None:
    code, out, err = _run("echo out; pwd; echo err >&2; exit 3", tmp_path)
    assert code == 3
    assert out == f"out\n{tmp_path}\n".encode()  # it ran in the directory it was given
    assert err == b"err\n"
    assert os.listdir(tmp_path) == []  # the captures are unnamed files


def test_signal_is_negative(way: str, tmp_path: Path) -> None:
    code, _, _ = _run("kill -TERM $$", tmp_path)
    assert code == -15


def test_output_cap(way: str, tmp_path: Path) -> None:
    _, out, _ = _run("printf 0123456789", tmp_path, cap=4)
    assert out == b"0123\nmeshcc: 6 more bytes of output were dropped\n"


def test_leftovers_of_the_group_are_killed(way: str, tmp_path: Path) -> None:
    code, _, _ = _run(f"sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {tmp_path}/pid", tmp_path)
    assert code == 0
    pid = int((tmp_path / "pid").read_text())
    for _ in range(200):
        if _gone(pid):
            break
        asyncio.run(asyncio.sleep(0.01))
    assert _gone(pid)


def test_exec_failure_is_oserror(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(OSError):
            jobrun.CompilerRun(
                [str(tmp_path / "missing")], cwd=str(tmp_path), env={}, stdout=1, stderr=2
            )

    asyncio.run(main())
