"""Direct mode's manifests survive a daemon restart (meshcc.cache.direct keeps them in the
result store), with real gcc and real daemons on loopback (--no-discovery).

A tree is built through a daemon (each job's manifest recorded), the daemon is stopped and
a new one started on the same cache directory and control socket; a fresh copy of the tree
at the same path is then answered from the manifests read back from disk: no preprocessor
runs (the logging gcc shim of test_direct_mode.py), objects, warnings and depfiles as the
first build gave them. A stored manifest that was damaged on disk is discarded with one
log line, and its job compiles again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon
from meshcc.cache.store import Entry
from test_direct_mode import (
    JOBS,
    FirstBuild,
    Objects,
    _build,
    _cpp_runs,
    _local,
    _write_tree,
    built,
    daemon,
    parent,
    shim,
    start_daemon,
)

__all__ = ["built", "daemon", "parent", "shim"]  # test_direct_mode's fixtures, used here by name

ELF = b"\x7fELF"


def _start(meshcc_daemon: Callable[..., Daemon], parent: Path) -> tuple[Daemon, Path]:
    """A daemon on the result cache in ``parent/results``: the same one after a restart."""
    return start_daemon(meshcc_daemon, parent, "--cache-dir", str(parent / "results"))


@pytest.fixture
def stopped(built: FirstBuild, parent: Path) -> FirstBuild:
    """test_direct_mode's first build, whose daemon (on ``parent/results``, as ``_start``
    makes them) is then stopped and its control socket removed, for the next daemon's."""
    built.daemon.stop()
    (parent / "control.sock").unlink(missing_ok=True)
    return built


def _restart_and_rebuild(
    meshcc_daemon: Callable[..., Daemon], parent: Path, b: FirstBuild
) -> tuple[Daemon, Objects]:
    """A new daemon on the same cache directory and control socket, and a build through it
    of a fresh copy of the tree at the same path (the hashes decide, as after a checkout)."""
    second_daemon, _ = _start(meshcc_daemon, parent)
    _write_tree(b.root)
    # The same socket path; only the daemon's port is new.
    return second_daemon, _build(b.root, dict(b.env, DISTCC_HOSTS=second_daemon.host_spec()))


def test_manifests_survive_a_restart(
    parent: Path, meshcc_daemon: Callable[..., Daemon], stopped: FirstBuild
) -> None:
    second_daemon, second = _restart_and_rebuild(meshcc_daemon, parent, stopped)
    assert _cpp_runs(stopped.log) == len(JOBS), "a hit after the restart ran the preprocessor"
    assert second == stopped.first, second_daemon.diagnostics()
    hits = [line for line in second_daemon.log_text().splitlines() if ": hit for " in line]
    assert len(hits) == len(JOBS), second_daemon.diagnostics()
    for src, *_ in JOBS:
        assert second[src][0] == _local(stopped.root, src)


def test_a_damaged_stored_manifest_is_discarded_and_the_job_compiles(
    parent: Path, meshcc_daemon: Callable[..., Daemon], stopped: FirstBuild
) -> None:
    # Damage every stored manifest (an entry whose object is not an ELF object); parent is
    # the test's own, so every entry is the first build's.
    entries = [p for p in (parent / "results").rglob("*") if p.is_file()]
    manifests = [p for p in entries if not Entry.decode(p.name, p.read_bytes()).obj[:4] == ELF]
    assert len(manifests) == len(JOBS), entries
    for p in manifests:
        data = bytearray(p.read_bytes())
        data[-1] ^= 0xFF
        p.write_bytes(bytes(data))

    second_daemon, second = _restart_and_rebuild(meshcc_daemon, parent, stopped)
    assert _cpp_runs(stopped.log) == 2 * len(JOBS)  # every job preprocessed and compiled again
    text = second_daemon.log_text()
    assert text.count("discarding corrupt entry") == len(JOBS), second_daemon.diagnostics()
    for src, *_ in JOBS:
        assert second[src][0] == _local(stopped.root, src)
