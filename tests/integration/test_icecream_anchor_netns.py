"""bench_serial's icecream anchor really compiles on the server box (benchmarks/_icecream.py).

Why: issue 12 uses icecream as a second anchor only if its jobs leave the client box;
icecream compiles locally whenever its scheduler hands the job back to the submitter or
finds no idle server, and it does so silently. This starts the cluster exactly as the
benchmark does (scheduler and server iceccd in one namespace, a ``-m 0 --no-remote``
client iceccd in another), compiles a real C file with ``icecc gcc``, and checks the
object and that the scheduler logged the job as done on the server node, which is the
check the benchmark itself relies on. Skipped where Debian's icecc is not installed
(``apt-get install icecc``): the first job builds icecream's compiler tarball (~30 s).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _harness as h
import _icecream
import bench_serial

import netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(netns.unavailable_reason()), reason=str(netns.unavailable_reason())),
    pytest.mark.skipif(
        bool(_icecream.unavailable_reason()), reason=str(_icecream.unavailable_reason())
    ),
]


@pytest.mark.parametrize("veth", [True, False], ids=["veth", "loopback"])
def test_icecc_job_runs_on_the_server_node(veth: bool) -> None:
    # Not pytest's tmp_path: its parents are 0700, and the daemons run as the `icecc` user.
    tmp_path = Path(tempfile.mkdtemp(prefix="meshcc-icecream-test-"))
    tmp_path.chmod(0o755)
    src = tmp_path / "square.c"
    src.write_text("#include <stdio.h>\nint square(int x) { return x * x; }\n")
    site = bench_serial.make_site(veth, icecream=True)
    ice = None
    try:
        ice = _icecream.start(site, tmp_path / "icecream", 1, loopback=not veth)
        env = ice.client_env(h.client_env(tmp_path / "client"))

        def compile_once(env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["icecc", "gcc", "-O2", "-c", "square.c", "-o", "square.o"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )

        done = site.run_as_client(compile_once)
        assert done.returncode == 0, done.stderr
        symbols = subprocess.run(
            ["nm", str(tmp_path / "square.o")], capture_output=True, text=True, check=True
        ).stdout
        assert " T square" in symbols
        assert ice.remote_jobs() == 1, ice.logs()
        if not veth:
            # Without icecream's test switch the client compiles a job itself when the
            # scheduler names 127.0.0.1: what the switch is there for.
            plain = {k: v for k, v in env.items() if k != "ICECC_TEST_REMOTEBUILD"}
            again = site.run_as_client(lambda: compile_once(plain))
            assert again.returncode == 0, again.stderr
            assert ice.remote_jobs() == 1, ice.logs()
    finally:
        if ice is not None:
            ice.stop()
        site.close()
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert ice is not None
    assert all(p.returncode is not None for p in ice.procs.values())  # stopped and reaped
