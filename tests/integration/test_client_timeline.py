"""The compile client's per-job timeline (MESHCC_VERBOSE=1) and its launchers' exit.

Against a real stock distccd on 127.0.0.1: the timeline is one line per remote job, its
phases in the order they happen, and nothing at all is printed without MESHCC_VERBOSE.
The venv's launchers end with ``launch()`` (``os._exit``, no interpreter teardown): exit
codes and the compiler's output must come through exactly as before.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import VENV_BIN, Daemon

PHASES = ("lease", "cpp", "connect", "send", "wait", "receive", "write")


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _spans(line: str) -> dict[str, tuple[float, float]]:
    return {
        m["phase"]: (float(m["a"]), float(m["b"]))
        for m in re.finditer(r"(?P<phase>[a-z]+) (?P<a>[\d.]+)-(?P<b>[\d.]+)", line)
    }


def test_timeline_line_per_job(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    server = distccd()
    env = dict(client_env, DISTCC_HOSTS=server.host_spec(lzo=True), DISTCC_FALLBACK="0")
    gcc = str(VENV_BIN / "meshcc-gcc")

    quiet = _run([gcc, "-O2", "-c", "src/foo.c", "-o", "obj/foo.o"], env, proj)
    assert quiet.returncode == 0, quiet.stderr + server.diagnostics()
    assert quiet.stderr == ""  # the timeline costs nothing and says nothing when unset

    res = _run(
        [gcc, "-O2", "-c", "src/foo.c", "-o", "obj/foo.o"], dict(env, MESHCC_VERBOSE="1"), proj
    )
    assert res.returncode == 0, res.stderr + server.diagnostics()
    lines = [ln for ln in res.stderr.splitlines() if " timeline " in ln]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert "src/foo.c" in line and server.host_spec(lzo=True) in line, line
    assert re.search(r": python [\d.]+ ", line), line
    spans = _spans(line)
    assert list(spans) == list(PHASES), line
    for a, b in spans.values():
        assert a <= b, line
    # the order things happen in: a host first, cpp while connecting, the source sent
    # after cpp, the server's part, then the reply and the object written
    assert spans["lease"][1] <= spans["cpp"][0], line
    assert spans["lease"][1] <= spans["connect"][0], line
    assert spans["cpp"][1] <= spans["send"][0], line
    assert spans["connect"][1] <= spans["send"][0], line
    assert spans["send"][1] <= spans["wait"][0] <= spans["wait"][1] <= spans["receive"][0], line
    assert spans["receive"][1] <= spans["write"][0], line
    end = float(re.search(r" end ([\d.]+) ", line)[1])  # type: ignore[index]
    assert spans["write"][1] <= end, line
    assert len(server.wait_for_jobs(2)) == 2, server.diagnostics()


def test_launcher_exit_codes_and_output(
    distccd: Callable[..., Daemon], client_env: dict[str, str], proj: Path
) -> None:
    """launch() ends with os._exit: the remote compiler's status, its diagnostics (stderr),
    and a local compile's own output still reach the caller."""
    launcher = (VENV_BIN / "meshcc-gcc").read_text()
    assert "launch()" in launcher, "the venv's launcher predates launch(): reinstall meshcc"
    server = distccd()
    env = dict(
        client_env,
        DISTCC_HOSTS=server.host_spec(lzo=True),
        DISTCC_FALLBACK="0",
        DISTCC_SKIP_LOCAL_RETRY="1",
    )
    gcc = str(VENV_BIN / "meshcc-gcc")
    (proj / "bad.c").write_text("int f(void) { return undeclared; }\n")
    bad = _run([gcc, "-c", "bad.c", "-o", "bad.o"], env, proj)
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.count("undeclared") >= 1, bad.stderr
    assert not (proj / "bad.o").exists()

    good = _run([gcc, "-O2", "-c", "src/foo.c", "-o", "obj/foo.o"], env, proj)
    assert good.returncode == 0, good.stderr
    assert (proj / "obj/foo.o").stat().st_size > 0

    # a local-only command (-E to stdout) keeps its output byte for byte
    pre = _run([gcc, "-E", "src/foo.c"], env, proj)
    ref = _run(["gcc", "-E", "src/foo.c"], env, proj)
    assert pre.returncode == 0 and pre.stdout == ref.stdout
