"""End to end: a real project built through a mesh of `meshcc daemon`s that found each other.

Four "machines" (network namespaces on one bridge, tests/netns.py), each running its own
`meshcc daemon` (own control socket, TMPDIR and log): the build host, two peers with the
same gcc, and one peer whose only compiler is a wrapper around gcc that reports another
version (-dumpfullversion 12.9.9): a toolchain mismatch the mesh must exclude. Once the
build host's `meshcc hosts` lists exactly the two matching peers, zlib is built on the build
host with `CC=meshcc-gcc make -j8` (no DISTCC_HOSTS: every host choice comes from leases)
and again with stock `distcc` and `DISTCC_HOSTS="$(meshcc hosts)"`. Every object must be
byte-identical to a local build, every compile must show up as COMPILE_OK on a matching
peer (DISTCC_FALLBACK=0: no silent local compile), and the mismatched peer must get none.

All traffic stays on the test LAN (no route out of the namespaces). Time bounds are only
against hangs.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN, copy_tree, parse_job_summaries, run
from meshd import Meshd, mismatched_gcc, private_dir, trusted_dir
from netns import Lan
from test_build_real_project import OBJECTS_MK, TARGET, _compiled_sources, _objects

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

JOBS = "-j8"
PEER_JOBS = "4"


def _jobs(d: Meshd, result: str | None = "COMPILE_OK") -> list:
    return [j for j in parse_job_summaries(d.log_text()) if result in (None, j.result)]


def _wait_jobs(daemons: list[Meshd], count: int, timeout: float = 20.0) -> int:
    """Total COMPILE_OK jobs on ``daemons`` once it reaches ``count`` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        total = sum(len(_jobs(d)) for d in daemons)
        if total >= count or time.monotonic() > deadline:
            return total
        time.sleep(0.1)


def _diagnostics(daemons: list[Meshd]) -> str:
    return "\n".join(f"--- {d.name} log ---\n{d.log_text()[-6000:]}" for d in daemons)


def _make(host: netns.Host, tree: Path, env: dict[str, str], *overrides: str) -> str:
    proc = host.run(
        ["make", JOBS, "-f", "Makefile", "-f", "objects.mk", *overrides, TARGET],
        cwd=tree,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"make failed ({proc.returncode})\n--- stdout ---\n"
        f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


def test_zlib_through_the_mesh(lan: Callable[..., Lan], zlib_source: Path, tmp_path: Path) -> None:
    net = lan()
    names = ("build", "p1", "p2", "odd")
    hosts = {n: net.add_host(n) for n in names}
    work = private_dir("meshcc-build-")
    try:
        _run_mesh_build(hosts, work, zlib_source, tmp_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_mesh_build(
    hosts: dict[str, netns.Host], work: Path, zlib_source: Path, tmp_path: Path
) -> None:
    odd_gcc = mismatched_gcc(trusted_dir("meshcc-odd-bin-"), "12.9.9")
    common = ("--interface", "eth0", "--jobs", PEER_JOBS)
    daemons = {
        "build": Meshd(work, hosts["build"], *common, name="build"),
        "p1": Meshd(work, hosts["p1"], *common, name="p1"),
        "p2": Meshd(work, hosts["p2"], *common, name="p2"),
        "odd": Meshd(work, hosts["odd"], *common, "--compiler", str(odd_gcc), name="odd"),
    }
    for d in daemons.values():
        d.start()
    build, p1, p2, odd = (daemons[n] for n in ("build", "p1", "p2", "odd"))
    everyone = list(daemons.values())

    # 1. The mesh assembles: `meshcc hosts` on the build host lists exactly the matching peers.
    want = {hosts["p1"].address, hosts["p2"].address}

    def listed() -> str | None:
        res = build.cli("hosts", "--cc", "gcc", inside=True)
        got = {tok.split(":")[0] for tok in res.stdout.split()}
        # the matching peers, then this box's own share (distcc's `localhost/2`)
        ok = res.returncode == 0 and got == want | {"localhost/2"}
        return res.stdout.strip() if ok and res.stdout.strip().endswith(" localhost/2") else None

    try:
        line = netns.wait_for(listed, 60, 0.25, "the build host's meshcc hosts to list p1 and p2")
    except TimeoutError:
        explain = build.cli("hosts", "--cc", "gcc", "--explain", inside=True)
        pytest.fail(f"{explain.stdout}\n{explain.stderr}\n{_diagnostics(everyone)}")
    explain = build.cli("hosts", "--cc", "gcc", "--explain", inside=True)
    assert hosts["odd"].address in explain.stdout, explain.stdout  # seen, and excluded
    print(f"mesh assembled; meshcc hosts: {line}\n{explain.stdout}")

    # 2. Reference: a plain local build (same flags, same directory).
    tree = copy_tree(zlib_source, tmp_path / "zlib")
    (tree / "objects.mk").write_text(OBJECTS_MK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    (tmp_path / "distcc-dir").mkdir()
    (tmp_path / "client-tmp").mkdir()
    env.update(
        DISTCC_DIR=str(tmp_path / "distcc-dir"),
        TMPDIR=str(tmp_path / "client-tmp"),
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
    )
    run(["./configure"], cwd=tree, env=dict(env, CC="gcc"))
    local_out = run(
        ["make", JOBS, "-f", "Makefile", "-f", "objects.mk", TARGET], cwd=tree, env=env
    ).stdout
    reference = _objects(tree)
    expected = _compiled_sources(local_out)
    n = sum(expected.values())
    assert len(reference) >= 30 and n == len(reference), (expected, sorted(reference))

    def rebuild(cc: str, extra_env: dict[str, str]) -> None:
        run(["make", "-f", "Makefile", "clean"], cwd=tree, env=env)
        assert _objects(tree) == {}
        out = _make(hosts["build"], tree, dict(env, DISTCC_FALLBACK="0", **extra_env), f"CC={cc}")
        assert _compiled_sources(out) == expected, "the builds ran different compiles"
        got = _objects(tree)
        assert sorted(got) == sorted(reference), "object file sets differ"
        differing = sorted(k for k in reference if got[k] != reference[k])
        assert not differing, f"objects differ from the local build ({cc}): {differing}"

    # 3. One verbose compile first: the lease and where it came from.
    res = hosts["build"].run(
        ["meshcc-gcc", "-c", "adler32.c", "-o", "/dev/null"],
        cwd=tree,
        env=dict(env, MESHCC_SOCKET=str(build.socket), DISTCC_VERBOSE="1", DISTCC_FALLBACK="0"),
    )
    assert res.returncode == 0, res.stderr
    assert "from the meshcc daemon in" in res.stderr, res.stderr
    assert any(f"leased {a}:" in res.stderr for a in want), res.stderr
    print(res.stderr)

    # 4. meshcc-gcc, hosts from leases only (MESHCC_SOCKET = the build host's daemon).
    assert shutil.which("meshcc-gcc", path=env["PATH"])
    rebuild("meshcc-gcc", {"MESHCC_SOCKET": str(build.socket)})
    total = _wait_jobs([p1, p2], n + 1)
    ran = Counter(j.input for d in (p1, p2) for j in _jobs(d))
    ran["adler32.c"] -= 1  # the verbose compile
    assert total == n + 1 and ran == expected, (
        f"peers' COMPILE_OK jobs != the build's compiles: missing {dict(expected - ran)}, "
        f"extra {dict(ran - expected)}\n{_diagnostics(everyone)}"
    )
    per_peer = {d.name: len(_jobs(d)) for d in (p1, p2)}
    print(f"meshcc-gcc: {n} compiles, per peer {per_peer}")
    assert all(per_peer.values()), f"a matching peer got no job: {per_peer}"
    assert not _jobs(odd, None), "the mismatched peer was sent jobs"
    assert not _jobs(build, None), "the build host's own daemon compiled (leases exclude it)"
    failed = [j for d in (p1, p2) for j in _jobs(d, None) if j.result != "COMPILE_OK"]
    assert not failed, failed

    # 5. Stock distcc with DISTCC_HOSTS="$(meshcc hosts)": the peers take jobs, and the
    # trailing localhost/2 lets this box compile its own share (objects checked by rebuild).
    before = {d.name: len(_jobs(d)) for d in (p1, p2)}
    rebuild("distcc gcc", {"DISTCC_HOSTS": line})
    _wait_jobs([p1, p2], sum(before.values()) + n, timeout=3.0)  # summaries trail replies
    after = {d.name: len(_jobs(d)) for d in (p1, p2)}
    sent = {k: after[k] - before[k] for k in after}
    print(f"distcc: per peer {sent}, the rest on localhost")
    assert all(sent.values()) and sum(sent.values()) <= n, (sent, _diagnostics(everyone))
    assert not _jobs(odd, None), "the mismatched peer was sent jobs by distcc"


def test_peer_killed_mid_build_never_fails_a_compile(
    lan: Callable[..., Lan], tmp_path: Path
) -> None:
    """kill -9 a peer (no goodbye, mDNS still lists it): compiles keep succeeding remotely
    (DISTCC_FALLBACK=0). A lease that still names the dead peer fails to connect; the client
    reports it (done: connect_failed) and takes the next lease, and the daemon drops the peer
    at once instead of waiting for its own probe."""
    net = lan()
    hosts = {n: net.add_host(n) for n in ("build", "p1", "p2")}
    work = private_dir("meshcc-kill-")
    try:
        common = ("--interface", "eth0", "--jobs", "2")
        build, p1, p2 = (Meshd(work, hosts[n], *common, name=n).start() for n in hosts)
        want = {hosts["p1"].address, hosts["p2"].address}

        def listed() -> bool:
            res = build.cli("hosts", "--cc", "gcc", inside=True)
            return {t.split(":")[0] for t in res.stdout.split()} == want | {"localhost/2"}

        netns.wait_for(listed, 60, 0.25, "p1 and p2 listed on the build host")
        src = tmp_path / "k.c"
        src.write_text("int k(int x) { return x * 3; }\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        (tmp_path / "dd").mkdir()
        env.update(
            DISTCC_DIR=str(tmp_path / "dd"),
            MESHCC_SOCKET=str(build.socket),
            DISTCC_FALLBACK="0",
            DISTCC_VERBOSE="1",
            PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
        )
        p1.kill9()
        dead = f"{hosts['p1'].address}:"
        hit_dead = False
        for _i in range(8):
            res = hosts["build"].run(
                ["meshcc-gcc", "-c", str(src), "-o", str(tmp_path / "k.o")], env=env
            )
            assert res.returncode == 0, res.stderr + build.log_text()
            leased = [ln for ln in res.stderr.splitlines() if " leased " in ln]
            assert leased and f"leased {hosts['p2'].address}:" in leased[-1], res.stderr
            if any(dead in ln for ln in leased):
                hit_dead = True
                assert "connect failed" in res.stderr
                assert len(leased) == 2, res.stderr  # the dead one, then p2
        assert _wait_jobs([p2], 8) == 8, p2.log_text()  # logged just after each reply
        if hit_dead:
            assert "(connect failed)" in build.log_text(), build.log_text()
        print(f"a lease named the killed peer: {hit_dead}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
