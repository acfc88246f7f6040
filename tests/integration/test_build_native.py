"""Debian's zlib built with ``-march=native`` through a meshcc daemon, byte for byte.

Why: the point of resolving native on the client is that a whole real build, with its own
flags, goes remote *and* gives the objects a local ``-march=native`` build gives. zlib is
configured once with ``CFLAGS="-O2 -march=native"``, built locally with plain gcc (the
reference), cleaned, and rebuilt in the same directory with ``CC=meshcc-gcc`` sending to a
loopback ``meshcc daemon``. DISTCC_FALLBACK=0 makes a failed remote job fail the build,
and the daemon's log must hold one COMPILE_OK job per compiled source, so a client that
quietly compiled locally cannot pass.

The second case is the documented limit: with ``-g`` the DWARF producer string records
the options, and native's --param values would be recorded in another order remotely,
so every compile must stay local (none reaches the daemon) and still match the reference.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, hash_objects, run

OBJECTS_MK = "meshcc-objects: libz.a $(PIC_OBJS) example minigzip example64.o minigzip64.o\n"
TARGET = "meshcc-objects"
_SOURCE_RE = re.compile(r"(?:^|\s)(\S+\.c)(?:\s|$)")


def _make(tree: Path, env: dict[str, str], *overrides: str) -> str:
    proc = run(
        ["make", "-j4", "-f", "Makefile", "-f", "objects.mk", *overrides, TARGET],
        cwd=tree,
        env=env,
    )
    return proc.stdout


def _compiles(make_output: str) -> list[str]:
    """The sources of the `-c` lines make echoed, each with -march=native on it."""
    out = []
    for line in make_output.splitlines():
        if " -c " in f" {line} ":
            assert "-march=native" in line.split(), f"compiled without -march=native: {line}"
            found = _SOURCE_RE.findall(line)
            assert len(found) == 1, line
            out.append(found[0])
    return sorted(out)


def _objects(tree: Path) -> dict[str, str]:
    return hash_objects(tree, "*.o") | hash_objects(tree, "*.lo")


@pytest.mark.parametrize(
    ("cflags", "remote"),
    [
        pytest.param("-O2 -march=native", True, id="O2-native-remote"),
        pytest.param("-O2 -g -march=native", False, id="O2-g-native-stays-local"),
    ],
)
def test_zlib_march_native_through_daemon_is_byte_identical(
    cflags: str,
    remote: bool,
    zlib_tree: Path,
    client_env: dict[str, str],
    meshcc_daemon: Callable[..., Daemon],
) -> None:
    tree = zlib_tree
    (tree / "objects.mk").write_text(OBJECTS_MK)
    run(["./configure"], cwd=tree, env=dict(client_env, CC="gcc", CFLAGS=cflags))
    assert "-march=native" in (tree / "Makefile").read_text()

    # 1. The reference: a plain local -march=native build.
    local_out = _make(tree, client_env)
    reference = _objects(tree)
    compiles = _compiles(local_out)
    assert len(reference) >= 30 and len(compiles) == len(reference), (compiles, reference)
    run(["make", "-f", "Makefile", "clean"], cwd=tree, env=client_env)
    assert _objects(tree) == {}

    # 2. The same build through meshcc-gcc and a loopback daemon.
    daemon = meshcc_daemon(jobs=4)
    log = tree.parent / "meshcc-client.log"
    env = dict(
        client_env,
        DISTCC_HOSTS=daemon.host_spec(lzo=True),
        DISTCC_FALLBACK="0",
        MESHCC_VERBOSE="1",
        DISTCC_LOG=str(log),
    )
    assert shutil.which("meshcc-gcc", path=env["PATH"])
    dist_out = _make(tree, env, "CC=meshcc-gcc")
    assert _compiles(dist_out) == compiles

    distributed = _objects(tree)
    assert sorted(distributed) == sorted(reference)
    differing = sorted(n for n in reference if distributed[n] != reference[n])
    assert not differing, f"objects differ from the local -march=native build: {differing}"

    client_log = log.read_text()
    if remote:
        # Every compile went to the daemon, resolved (never with native) ...
        ok = daemon.wait_for_jobs(len(compiles))
        assert sorted(j.input or "" for j in ok) == compiles, daemon.diagnostics()
        assert "-march=native resolved" in client_log
        # Only the links ran locally, and for that reason, not for native.
        local = [ln for ln in client_log.splitlines() if "runs locally" in ln]
        assert local and all("link" in ln and "native" not in ln for ln in local), local
        # ... and the resolution was probed at most a few times (concurrent first jobs),
        # then read from the cache.
        probed = client_log.count("-march=native resolved (probed)")
        cached = client_log.count("-march=native resolved (cached)")
        assert probed + cached == len(compiles) and 1 <= probed <= 4, (probed, cached)
        assert not any(
            j.result.startswith("COMPILE_") and j.result != "COMPILE_OK" for j in daemon.jobs()
        )
    else:
        assert daemon.jobs() == [], daemon.diagnostics()
        local = [
            ln for ln in client_log.splitlines() if "runs locally: -march=native with -g" in ln
        ]
        assert len(local) == len(compiles), client_log[-3000:]

    proc = run(["./example"], cwd=tree, env=client_env)
    assert "inflate with dictionary: hello, hello!" in proc.stdout
