"""A real open-source C project (Debian's zlib) built through the mesh, byte for byte.

Why: unit tests of the codec and argv rules cannot show that a whole `make -j` of a real
project, with its own flags, dependency order and link steps, produces the same object
files as a local build. Each case configures zlib once with CC=gcc, builds it locally,
records the sha256 of every object, runs `make clean`, and rebuilds in the *same* directory
with a distributing client (CC overridden on make's command line, so flags are identical).
DISTCC_FALLBACK=0 makes a failed remote job fail the build instead of silently compiling
locally, and the daemon's log must show one COMPILE_OK job per compiled source, so a client
that quietly ran everything locally cannot pass either.

All three directions the design requires are covered, with protocols 1 and 2 (`,lzo`):
meshcc-gcc -> meshcc daemon, stock distcc -> meshcc daemon, meshcc-gcc -> stock distccd.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, hash_objects, run

# Objects only (static and -fPIC ones, plus the test programs' objects) and two static
# links, which exercise the client's local path for link commands. `make -f Makefile -f
# objects.mk meshcc-objects` lets make expand zlib's own object lists.
OBJECTS_MK = "meshcc-objects: libz.a $(PIC_OBJS) example minigzip example64.o minigzip64.o\n"
TARGET = "meshcc-objects"
JOBS = "-j4"

# A compile line as make echoes it: `<cc...> ... -c -o obj src.c` (the .lo rules write
# objs/x.o then move it, silently).
_SOURCE_RE = re.compile(r"(?:^|\s)(\S+\.c)(?:\s|$)")


def _make(tree: Path, env: dict[str, str], *overrides: str) -> str:
    """Run the zlib object build; return make's stdout (the echoed commands)."""
    proc = run(
        ["make", JOBS, "-f", "Makefile", "-f", "objects.mk", *overrides, TARGET],
        cwd=tree,
        env=env,
    )
    return proc.stdout


def _compiled_sources(make_output: str) -> Counter[str]:
    """Sources named on `-c` command lines in make's output (one entry per compile)."""
    sources: Counter[str] = Counter()
    for line in make_output.splitlines():
        if " -c " in f" {line} ":
            found = _SOURCE_RE.findall(line)
            assert len(found) == 1, f"cannot tell the source of: {line}"
            sources[found[0]] += 1
    return sources


def _objects(tree: Path) -> dict[str, str]:
    return hash_objects(tree, "*.o") | hash_objects(tree, "*.lo")


def _wait_tmp_empty(tmp: Path, timeout: float = 10.0) -> list[str]:
    """Names left in a daemon's TMPDIR once cleanup had `timeout` seconds to happen."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(p.name for p in tmp.iterdir())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


CASES = [
    pytest.param("meshcc-gcc", "meshcc", False, id="meshcc-gcc->meshcc-p1"),
    pytest.param("meshcc-gcc", "meshcc", True, id="meshcc-gcc->meshcc-p2lzo"),
    pytest.param("distcc", "meshcc", False, id="distcc->meshcc-p1"),
    pytest.param("distcc", "meshcc", True, id="distcc->meshcc-p2lzo"),
    pytest.param("meshcc-gcc", "distccd", False, id="meshcc-gcc->distccd-p1"),
    pytest.param("meshcc-gcc", "distccd", True, id="meshcc-gcc->distccd-p2lzo"),
    # Control: stock client and server; if this fails the harness, not meshcc, is wrong.
    pytest.param("distcc", "distccd", True, id="distcc->distccd-p2lzo-control"),
]


@pytest.mark.parametrize(("client", "server", "lzo"), CASES)
def test_zlib_objects_identical_to_local_build(
    client: str,
    server: str,
    lzo: bool,
    zlib_tree: Path,
    client_env: dict[str, str],
    meshcc_daemon: Callable[..., Daemon],
    distccd: Callable[..., Daemon],
) -> None:
    """Distributed zlib objects equal the local build's, and every compile really went remote."""
    tree = zlib_tree
    (tree / "objects.mk").write_text(OBJECTS_MK)
    local_env = dict(client_env)
    run(["./configure"], cwd=tree, env=dict(local_env, CC="gcc"))
    assert re.search(r"^CC=gcc$", (tree / "Makefile").read_text(), re.M)

    # 1. Reference: plain local gcc, as configured.
    local_out = _make(tree, local_env)
    reference = _objects(tree)
    expected_sources = _compiled_sources(local_out)
    assert len(reference) >= 30, f"zlib build produced too few objects: {sorted(reference)}"
    assert sum(expected_sources.values()) == len(reference), (expected_sources, sorted(reference))

    run(["make", "-f", "Makefile", "clean"], cwd=tree, env=local_env)
    assert _objects(tree) == {}, "make clean left objects behind"

    # 2. Same directory, same flags, compiles sent to the daemon.
    daemon = meshcc_daemon(jobs=4) if server == "meshcc" else distccd(jobs=4)
    env = dict(client_env, DISTCC_HOSTS=daemon.host_spec(lzo=lzo), DISTCC_FALLBACK="0")
    cc = "meshcc-gcc" if client == "meshcc-gcc" else "distcc gcc"
    if client == "meshcc-gcc":
        assert shutil.which("meshcc-gcc", path=env["PATH"]), "meshcc-gcc not on the venv PATH"
    tmp_mtime = daemon.tmp_dir.stat().st_mtime_ns if daemon.tmp_dir else 0
    dist_out = _make(tree, env, f"CC={cc}")
    assert _compiled_sources(dist_out) == expected_sources, "the two builds ran different compiles"

    distributed = _objects(tree)
    assert sorted(distributed) == sorted(reference), "object file sets differ"
    differing = sorted(name for name in reference if distributed[name] != reference[name])
    assert not differing, f"objects differ from the local build: {differing}"

    # 3. The daemon compiled every source (no silent local compile on the client).
    ok = daemon.wait_for_jobs(sum(expected_sources.values()))
    remote_sources = Counter(job.input for job in ok)
    assert remote_sources == expected_sources, (
        f"daemon COMPILE_OK jobs do not match the build's compiles\n"
        f"missing: {dict(expected_sources - remote_sources)}\n"
        f"extra: {dict(remote_sources - expected_sources)}\n{daemon.diagnostics()}"
    )
    failed = [
        j for j in daemon.jobs() if j.result.startswith("COMPILE_") and j.result != "COMPILE_OK"
    ]
    assert not failed, f"daemon reported failed compiles: {failed}\n{daemon.diagnostics()}"

    # 4. The programs linked from distributed objects (locally, through the client) work.
    proc = run(["./example"], cwd=tree, env=local_env)
    assert "inflate with dictionary: hello, hello!" in proc.stdout
    # 5. meshcc ran the jobs in its TMPDIR (its mtime moved) and removed every job directory.
    if daemon.tmp_dir is not None:
        left = _wait_tmp_empty(daemon.tmp_dir)
        assert not left, f"meshcc daemon left job files in its TMPDIR: {left}"
        assert daemon.tmp_dir.stat().st_mtime_ns > tmp_mtime, (
            f"no job directory was ever created in the daemon's TMPDIR {daemon.tmp_dir}\n"
            f"{daemon.diagnostics()}"
        )
