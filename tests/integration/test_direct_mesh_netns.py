"""Direct mode across the mesh: box a builds a real project through the mesh; box b, with
its own copy of the same tree at the same path, builds it with no preprocessor run.

Three "machines" (network namespaces on one bridge, tests/netns.py), each with its own
`meshcc daemon`, result cache and direct-mode manifests: two build boxes (a, b) and a
server (s). zlib is built on a with `CC=meshcc-gcc`: every job is preprocessed on a and
compiled on b or s (leases keep a box's jobs off its own daemon), and a's daemon records
each job's manifest and pushes its mesh record to the mesh key's home (a, b or s:
rendezvous hashing). Then the tree is removed and copied afresh to the same path (new
inodes, mtimes and ctimes: what a second box's checkout looks like) and built from b:

- every job is a direct hit: b's daemon had no manifest of its own, asked the home, and
  the client checked every file by hash; no preprocessor ran (the compiler the client
  and the daemons run is a logging shim that records each `-E` command line, as in
  test_direct_mode.py) and no job went to a server;
- every object is byte-identical to a plain local build's, and a job's warning is the
  same text from b as from a;
- a header changed on b makes the job that reads it miss: it is preprocessed and
  compiled, and its object is what a local gcc gives for the changed header;
- b's /status.json and /metrics count the direct hits and the records from home peers.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from conftest import copy_tree, run
from meshd import Mesh, build_objects, client_env, cpp_logging_gcc, private_dir, trusted_dir
from netns import Lan
from test_build_real_project import OBJECTS_MK, TARGET, _compiled_sources

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

GCC = shutil.which("gcc") or "/usr/bin/gcc"
WARN_H = "#define FACTOR 3\n"
WARN_C = '#include "warn.h"\nint f(int x) { int unused; return x * FACTOR; }\n'
WARN_FLAGS = ("-O2", "-Wall", "-c", "warn.c", "-o", "warn.o")
MAKE = ["make", "-j8", "-f", "Makefile", "-f", "objects.mk", "CC=meshcc-gcc", TARGET]

_METRICS = """
import sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}:3633/metrics", timeout=5) as r:
    sys.stdout.write(r.read().decode())
"""


def _pushes_settled(mesh: Mesh, want: int, timeout: float = 60.0) -> int:
    """Until the boxes' pushed + push_failed counts reach ``want`` (pushes to the homes
    run in the background after each put); the number pushed."""
    deadline = time.monotonic() + timeout
    while True:
        figs = [mesh.figures(n) for n in mesh.hosts]
        pushed = sum(f["direct_mesh_pushed"] for f in figs)
        failed = sum(f["direct_mesh_push_failed"] for f in figs)
        if pushed + failed >= want or time.monotonic() > deadline:
            return pushed
        time.sleep(0.5)


def _cpp_runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_second_box_runs_no_preprocessor(
    lan: Callable[..., Lan], zlib_source: Path, tmp_path: Path
) -> None:
    net = lan()
    hosts = {n: net.add_host(n) for n in ("a", "b", "s")}
    work = private_dir("meshcc-direct-mesh-")
    bindir = trusted_dir("direct-mesh-bin-")
    shim = cpp_logging_gcc(bindir / "gcc", GCC)
    # What the mesh finds is under test, not how fast: on a loaded 2-core box a home's
    # answer can take longer than the default wait (0.25 s).
    wait = ("--cache-lookup-timeout", "3")
    try:
        with Mesh(work, hosts, "--jobs", "4", "--compiler", str(shim), *wait, cache=True) as mesh:
            _run(mesh, bindir, zlib_source, tmp_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(mesh: Mesh, bindir: Path, zlib_source: Path, tmp_path: Path) -> None:
    # Both boxes must see the same candidates for a key's home (everyone), or a's push
    # and b's lookup could go to different homes.
    mesh.wait_listed()

    tree = tmp_path / "zlib"
    cpp_log = tmp_path / "cpp-runs.log"
    env = client_env(tmp_path / "client", bindir, MESHCC_TEST_CPP_LOG=str(cpp_log))

    def checkout() -> None:
        """A fresh copy of the tree at the same path: new inodes, mtimes and ctimes."""
        if tree.exists():
            shutil.rmtree(tree)
        copy_tree(zlib_source, tree)
        (tree / "objects.mk").write_text(OBJECTS_MK)
        (tree / "warn.h").write_text(WARN_H)
        (tree / "warn.c").write_text(WARN_C)
        run(["./configure"], cwd=tree, env=dict(env, CC="gcc"))

    checkout()
    local_out = run(
        ["make", "-j4", "-f", "Makefile", "-f", "objects.mk", TARGET], cwd=tree, env=env
    )
    reference = build_objects(tree)
    n = sum(_compiled_sources(local_out.stdout).values())
    assert n == len(reference) >= 30
    time.sleep(2.2)  # a record is made only for files older than 2 s (test_direct_mode.py)

    def warn(box: str) -> tuple[str, bytes]:
        p = mesh.hosts[box].run(
            ["meshcc-gcc", *WARN_FLAGS],
            cwd=tree,
            env=dict(env, MESHCC_SOCKET=str(mesh[box].socket)),
        )
        assert p.returncode == 0, p.stderr
        return str(p.stderr), (tree / "warn.o").read_bytes()

    # 1. Box a: every job preprocessed on a, compiled in the mesh, its manifest recorded
    # by a's daemon and pushed to its home.
    mesh.build("a", tree, env, MAKE, reference)
    assert len(_cpp_runs(cpp_log)) == n, _cpp_runs(cpp_log)
    warn_a, _ = warn("a")
    assert "unused" in warn_a
    fa = mesh.figures("a")
    assert fa["direct_stored"] == n + 1, (fa, mesh.diagnostics())
    pushed = _pushes_settled(mesh, n + 1)
    assert pushed == n + 1, (pushed, mesh.diagnostics())

    # 2. Box b: a fresh copy at the same path; every job a direct hit, no preprocessor.
    checkout()
    cpp_log.unlink()
    served_before = _served(mesh)
    mesh.build("b", tree, env, MAKE, reference)
    runs = _cpp_runs(cpp_log)
    fb = mesh.figures("b")
    print(f"box b: {fb['direct_hit']} of {n} direct hits, {fb['direct_mesh_hit']} from homes")
    assert runs == [], (runs, fb, mesh.diagnostics())
    assert fb["direct_hit"] == n and fb["direct_mesh_hit"] + fb["direct_loaded"] >= 1, fb
    assert _served(mesh) == served_before  # no job served
    warn_b, _ = warn("b")
    assert warn_b == warn_a  # the warning exactly as the first compile gave it
    assert _cpp_runs(cpp_log) == []
    assert mesh.figures("b")["direct_hit"] == n + 1

    # 3. A changed header on b: that job misses, is preprocessed and compiled, and its
    # object is what a local gcc gives.
    (tree / "warn.h").write_text("#define FACTOR 5\n")
    _, obj = warn("b")
    assert [r for r in _cpp_runs(cpp_log) if "warn.c" in r], _cpp_runs(cpp_log)
    run([GCC, "-O2", "-Wall", "-c", "warn.c", "-o", "local-warn.o"], cwd=tree)
    assert obj == (tree / "local-warn.o").read_bytes()
    assert mesh.figures("b")["direct_hit"] == n + 1

    # The figures on /metrics.
    p = mesh.hosts["b"].python(_METRICS, mesh.address("b"))
    assert f'meshcc_direct_lookups_total{{result="hit"}} {n + 1}' in p.stdout, p.stdout
    assert 'meshcc_direct_mesh_total{event="hit"}' in p.stdout


def _served(mesh: Mesh) -> int:
    """How many jobs the daemons served (their compile servers' job summary lines)."""
    lines = [line for d in mesh.daemons.values() for line in d.log_text().splitlines()]
    return sum(" rcache:" in line and "client:" in line for line in lines)
