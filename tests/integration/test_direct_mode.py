"""Direct mode (meshcc.client.direct, meshcc.cache.direct) with real gcc and a real daemon
on loopback (--no-discovery).

What must hold: a second build of a tree, from a fresh copy at the same path (new
mtimes and ctimes, same bytes), is answered from the local daemon's manifests with no
preprocessor run at all, and gives the same objects, warnings and depfiles as the first;
a header whose content changed, or a new header that shadows one earlier in the include
search, misses and compiles again (objects as a local gcc gives them); a job whose
source or headers use __DATE__/__TIME__ is never answered in direct mode.

How "no preprocessor" is proven: the compiler the client runs is a logging shim (a shell
script named gcc, first on PATH) that appends its command line to a file and runs the
real gcc; a direct hit leaves no ``-E`` line in it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Daemon, run

GCC = shutil.which("gcc") or "/usr/bin/gcc"
H = "#define FACTOR 3\n"
A = '#include "h.h"\n#include <stdio.h>\nint a(int x) { int unused; return x * FACTOR; }\n'
B = '#include "h.h"\nint b(int x) { return x + FACTOR; }\n'
# The jobs of the "tree": (source, extra options, object, depfile or None).
JOBS = (
    ("a.c", ("-MD", "-MF", "a.d"), "a.o", "a.d"),
    ("b.c", (), "b.o", None),
)
FLAGS = ("-O2", "-Wall", "-Iinc1", "-Iinc2")


@pytest.fixture
def parent() -> Iterator[Path]:
    """A daemon's control socket and result cache: a fresh 0755 directory outside pytest's
    0700 tmp_path (as root the daemon drops to an unprivileged user). Requested before
    meshcc_daemon, it is removed after the daemons are stopped."""
    d = Path(tempfile.mkdtemp(prefix="meshcc-direct-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_daemon(
    meshcc_daemon: Callable[..., Daemon], parent: Path, *args: str
) -> tuple[Daemon, Path]:
    """A daemon (loopback, 2 jobs, ``args``) and its control socket ``parent/control.sock``,
    once the socket exists (the client asks it for direct-mode records)."""
    sock = parent / "control.sock"
    d = meshcc_daemon(*args, "--socket", str(sock), jobs=2)
    deadline = time.monotonic() + 20
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return d, sock


@pytest.fixture
def daemon(parent: Path, meshcc_daemon: Callable[..., Daemon]) -> tuple[Daemon, Path]:
    """A daemon with its result cache (direct mode's manifests) in ``parent/results``."""
    return start_daemon(meshcc_daemon, parent, "--cache-dir", str(parent / "results"))


@pytest.fixture
def shim(tmp_path: Path) -> tuple[Path, Path]:
    """A directory with a logging ``gcc`` (first on PATH), and its log."""
    bin_dir = tmp_path / "shim"
    bin_dir.mkdir()
    log = tmp_path / "gcc-runs.log"
    script = bin_dir / "gcc"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {GCC} "$@"\n')
    script.chmod(0o755)
    log.write_text("")
    return bin_dir, log


def _write_tree(root: Path, header: str = H) -> None:
    """The tree's files, written afresh (new mtimes and ctimes: a second box's copy)."""
    if root.exists():
        shutil.rmtree(root)
    (root / "inc2").mkdir(parents=True)
    (root / "inc1").mkdir()
    (root / "inc2" / "h.h").write_text(header)
    (root / "a.c").write_text(A)
    (root / "b.c").write_text(B)


def _age() -> None:
    """Wait out the too-new rule: no record is made for files changed less than 2 s
    before the compile (they might have changed under the preprocessor)."""
    time.sleep(2.2)


def _env(client_env: dict[str, str], d: Daemon, sock: Path, shim_dir: Path) -> dict[str, str]:
    return dict(
        client_env,
        DISTCC_HOSTS=d.host_spec(),
        DISTCC_FALLBACK="0",
        DISTCC_SKIP_LOCAL_RETRY="1",
        MESHCC_SOCKET=str(sock),
        PATH=f"{shim_dir}{os.pathsep}{client_env['PATH']}",
    )


def _build(root: Path, env: dict[str, str]) -> dict[str, tuple[bytes, str, bytes | None]]:
    """Compile every job with meshcc-gcc: {source: (object, stderr, depfile)}."""
    out = {}
    for src, extra, obj, dep in JOBS:
        p = run(["meshcc-gcc", *FLAGS, *extra, "-c", src, "-o", obj], cwd=root, env=env)
        out[src] = (
            (root / obj).read_bytes(),
            p.stderr,
            (root / dep).read_bytes() if dep else None,
        )
    return out


def _cpp_runs(log: Path) -> int:
    return sum(" -E " in f" {line} " for line in log.read_text().splitlines())


def _direct_hits(d: Daemon) -> int:
    return sum("direct: " in line and ": hit for " in line for line in d.log_text().splitlines())


Objects = dict[str, tuple[bytes, str, bytes | None]]  # _build's {source: (obj, stderr, dep)}


@dataclass
class FirstBuild:
    """A tree built once through a daemon, each job's manifest recorded (``built``)."""

    daemon: Daemon
    log: Path  # the shim's log of gcc runs
    env: dict[str, str]  # the client's, for this daemon
    root: Path
    first: Objects


@pytest.fixture
def built(
    daemon: tuple[Daemon, Path],
    shim: tuple[Path, Path],
    client_env: dict[str, str],
    tmp_path: Path,
) -> FirstBuild:
    """The tree written at ``tmp_path/tree``, aged, and built once through ``daemon`` with
    the shim as gcc. Every job ran the preprocessor (nothing was recorded before), so each
    recorded its manifest."""
    d, sock = daemon
    shim_dir, log = shim
    env = _env(client_env, d, sock, shim_dir)
    root = tmp_path / "tree"
    _write_tree(root)
    _age()
    first = _build(root, env)
    assert _cpp_runs(log) == len(JOBS), log.read_text()
    return FirstBuild(d, log, env, root, first)


def _local(root: Path, src: str) -> bytes:
    run([GCC, *FLAGS, "-c", src, "-o", "local.o"], cwd=root)
    data = (root / "local.o").read_bytes()
    (root / "local.o").unlink()
    return data


def all_recompiled(b: FirstBuild) -> Objects:
    """Build ``b``'s tree again after a change every job sees: no job is answered from a
    record (each runs the preprocessor), every object differs from the first build's and
    is what a local gcc gives now. The new build."""
    second = _build(b.root, b.env)
    assert _cpp_runs(b.log) == 2 * len(JOBS), "a changed tree was answered from a record"
    assert _direct_hits(b.daemon) == 0, b.daemon.diagnostics()
    for src, *_ in JOBS:
        assert second[src][0] != b.first[src][0]
        assert second[src][0] == _local(b.root, src)
    return second


def test_second_copy_is_all_direct_hits(built: FirstBuild) -> None:
    d, log, env, root, first = built.daemon, built.log, built.env, built.root, built.first
    assert "unused" in first["a.c"][1]
    assert first["a.c"][2] is not None and b"h.h" in first["a.c"][2]
    assert _direct_hits(d) == 0, d.diagnostics()

    _write_tree(root)  # a fresh copy at the same path: same bytes, new times
    second = _build(root, env)
    assert _cpp_runs(log) == len(JOBS), "a direct hit ran the preprocessor"
    assert second == first  # objects, warnings and depfiles, byte for byte
    assert _direct_hits(d) == len(JOBS), d.diagnostics()
    for src, *_ in JOBS:
        assert second[src][0] == _local(root, src)

    # MESHCC_DIRECT=0 (or MESHCC_CACHE=0) turns it off: the preprocessor runs again.
    _build(root, dict(env, MESHCC_DIRECT="0"))
    assert _cpp_runs(log) == 2 * len(JOBS)
    assert _direct_hits(d) == len(JOBS)


def test_changed_header_misses(built: FirstBuild) -> None:
    # Same size, other content: the stat differs, so the hash decides.
    (built.root / "inc2" / "h.h").write_text(H.replace("3", "4"))
    all_recompiled(built)


def test_shadowing_header_misses(built: FirstBuild) -> None:
    """inc1 comes before inc2 in the search: a new inc1/h.h is what cpp would read now,
    though no file of the manifest changed."""
    (built.root / "inc1" / "h.h").write_text("#define FACTOR 5\n")
    all_recompiled(built)


@pytest.mark.parametrize("where", ["source", "header"])
def test_clock_macros_are_never_direct(
    where: str,
    daemon: tuple[Daemon, Path],
    shim: tuple[Path, Path],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, sock = daemon
    shim_dir, log = shim
    env = _env(client_env, d, sock, shim_dir)
    root = tmp_path / "tree"
    header = H + ("#define STAMP __TIME__\n" if where == "header" else "")
    _write_tree(root, header)
    if where == "source":
        (root / "b.c").write_text(B + "const char *when = __DATE__;\n")
    else:
        (root / "b.c").write_text(B + "const char *when = STAMP;\n")
    _age()
    for _ in range(2):
        run(["meshcc-gcc", *FLAGS, "-c", "b.c", "-o", "b.o"], cwd=root, env=env)
    assert _cpp_runs(log) == 2
    assert _direct_hits(d) == 0, d.diagnostics()


def test_daemon_without_cache_says_so_beside_its_socket_and_is_never_asked(
    parent: Path,
    meshcc_daemon: Callable[..., Daemon],
    shim: tuple[Path, Path],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """--no-cache: a marker beside the control socket says so, and the client sends no
    lookup at all; without the marker (a daemon from before it) the client asks, hears
    "off" and records nothing. Either way the build is as without direct mode."""
    d, sock = start_daemon(meshcc_daemon, parent, "--no-cache", "--log-level", "debug")
    marker = Path(f"{sock}.nocache")
    assert "keeps no result cache: --no-cache" in marker.read_text()
    shim_dir, log = shim
    env = dict(_env(client_env, d, sock, shim_dir), DISTCC_VERBOSE="1")
    root = tmp_path / "tree"
    _write_tree(root)
    _age()
    heard = []
    for removed in (False, True):
        if removed:
            marker.unlink()
        p = run(["meshcc-gcc", *FLAGS, "-c", "b.c", "-o", "b.o"], cwd=root, env=env)
        assert "direct mode: not recorded" not in p.stderr
        assert (root / "b.o").read_bytes() == _local(root, "b.c")
        said = "direct mode: off (the daemon keeps no result cache" in p.stderr
        asked = "direct mode: off (the daemon answered" in p.stderr
        heard.append((said, asked))
    assert heard == [(True, False), (False, True)]
    assert _cpp_runs(log) == 2
    assert "direct_put" not in d.log_text() and "direct: " not in d.log_text()


def test_leased_compile_skips_the_lookup_when_the_daemon_keeps_no_cache(
    parent: Path,
    meshcc_daemon: Callable[..., Daemon],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Without DISTCC_HOSTS the job is the daemon's to lease; the lease's own connection
    is the one direct mode would have asked on, and the marker spares that too."""
    _, sock = start_daemon(meshcc_daemon, parent, "--no-cache")
    env = dict(client_env, MESHCC_SOCKET=str(sock), DISTCC_VERBOSE="1")
    root = tmp_path / "tree"
    _write_tree(root)
    p = run(["meshcc-gcc", *FLAGS, "-c", "b.c", "-o", "b.o"], cwd=root, env=env)
    assert "direct mode: off (the daemon keeps no result cache" in p.stderr, p.stderr
    assert "direct mode: off (the daemon answered" not in p.stderr
    assert (root / "b.o").read_bytes() == _local(root, "b.c")


def test_a_daemon_with_a_cache_removes_the_marker_an_earlier_one_left(
    parent: Path, meshcc_daemon: Callable[..., Daemon]
) -> None:
    """The marker goes with the daemon that wrote it: the next daemon on that socket,
    keeping a cache, takes it away (else its clients would never ask it)."""
    sock = parent / "control.sock"
    Path(f"{sock}.nocache").write_text("left by a daemon started with --no-cache\n")
    start_daemon(meshcc_daemon, parent, "--cache-dir", str(parent / "results"))
    assert sock.exists() and not Path(f"{sock}.nocache").exists()
