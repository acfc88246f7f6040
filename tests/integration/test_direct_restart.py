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

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Daemon
from meshcc.cache.store import Entry
from test_direct_mode import GCC, JOBS, _age, _build, _cpp_runs, _env, _local, _write_tree

ELF = b"\x7fELF"


@pytest.fixture
def parent() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="meshcc-direct-restart-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shim(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "shim"
    bin_dir.mkdir()
    log = tmp_path / "gcc-runs.log"
    script = bin_dir / "gcc"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {GCC} "$@"\n')
    script.chmod(0o755)
    log.write_text("")
    return bin_dir, log


def _start(meshcc_daemon: Callable[..., Daemon], parent: Path) -> Daemon:
    sock = parent / "control.sock"
    d = meshcc_daemon("--cache-dir", str(parent / "results"), "--socket", str(sock), jobs=2)
    deadline = time.monotonic() + 20
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return d


def test_manifests_survive_a_restart(
    meshcc_daemon: Callable[..., Daemon],
    parent: Path,
    shim: tuple[Path, Path],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    shim_dir, log = shim
    sock = parent / "control.sock"
    first_daemon = _start(meshcc_daemon, parent)
    root = tmp_path / "tree"
    _write_tree(root)
    _age()
    first = _build(root, _env(client_env, first_daemon, sock, shim_dir))
    assert _cpp_runs(log) == len(JOBS), log.read_text()
    first_daemon.stop()
    sock.unlink(missing_ok=True)

    second_daemon = _start(meshcc_daemon, parent)
    _write_tree(root)  # a fresh copy at the same path: the hashes decide, as after a checkout
    second = _build(root, _env(client_env, second_daemon, sock, shim_dir))
    assert _cpp_runs(log) == len(JOBS), "a hit after the restart ran the preprocessor"
    assert second == first, second_daemon.diagnostics()
    hits = [line for line in second_daemon.log_text().splitlines() if ": hit for " in line]
    assert len(hits) == len(JOBS), second_daemon.diagnostics()
    for src, *_ in JOBS:
        assert second[src][0] == _local(root, src)


def test_a_damaged_stored_manifest_is_discarded_and_the_job_compiles(
    meshcc_daemon: Callable[..., Daemon],
    parent: Path,
    shim: tuple[Path, Path],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    shim_dir, log = shim
    sock = parent / "control.sock"
    before = set((parent / "results").rglob("*")) if (parent / "results").exists() else set()
    first_daemon = _start(meshcc_daemon, parent)
    root = tmp_path / "tree"
    _write_tree(root)
    _age()
    _build(root, _env(client_env, first_daemon, sock, shim_dir))
    first_daemon.stop()
    sock.unlink(missing_ok=True)
    # Damage every stored manifest (an entry whose object is not an ELF object).
    entries = [p for p in (parent / "results").rglob("*") if p.is_file() and p not in before]
    manifests = [p for p in entries if not Entry.decode(p.name, p.read_bytes()).obj[:4] == ELF]
    assert len(manifests) == len(JOBS), entries
    for p in manifests:
        data = bytearray(p.read_bytes())
        data[-1] ^= 0xFF
        p.write_bytes(bytes(data))

    second_daemon = _start(meshcc_daemon, parent)
    _write_tree(root)
    second = _build(root, _env(client_env, second_daemon, sock, shim_dir))
    assert _cpp_runs(log) == 2 * len(JOBS)  # every job preprocessed and compiled again
    text = second_daemon.log_text()
    assert text.count("discarding corrupt entry") == len(JOBS), second_daemon.diagnostics()
    for src, *_ in JOBS:
        assert second[src][0] == _local(root, src)
