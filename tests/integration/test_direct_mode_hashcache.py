"""Direct mode's hash cache (meshcc.client.hashcache) end to end: real gcc, a real daemon
on loopback (--no-discovery), the fixtures and helpers of test_direct_mode.

What must hold: a header changed with its size and mtime kept (``touch -d``) is never
answered from a record, whatever the hash cache holds from the build before; the record
made then carries the header's new hash (a fresh copy of the changed tree, new times and
the same bytes, is all direct hits); and the cache is this user's private file under
$DISTCC_DIR."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import Daemon
from test_direct_mode import (  # noqa: F401  (daemon, shim: fixtures used by name)
    JOBS,
    H,
    _age,
    _build,
    _cpp_runs,
    _direct_hits,
    _env,
    _local,
    _write_tree,
    daemon,
    shim,
)


def _rewrite_keeping_size_and_mtime(path: Path, text: str) -> None:
    st = path.stat()
    assert len(text.encode()) == st.st_size
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    path.write_text(text)
    frac = f"{st.st_mtime_ns % 1_000_000_000:09d}"
    subprocess.run(["touch", "-d", f"{stamp}.{frac}", str(path)], check=True)
    again = path.stat()
    assert (again.st_size, again.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_header_changed_behind_its_size_and_mtime_recompiles(
    daemon: tuple[Daemon, Path],  # noqa: F811
    shim: tuple[Path, Path],  # noqa: F811
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, sock = daemon
    shim_dir, log = shim
    env = _env(client_env, d, sock, shim_dir)
    root = tmp_path / "tree"
    _write_tree(root)
    _age()
    first = _build(root, env)
    assert _cpp_runs(log) == len(JOBS)
    cache = Path(env["DISTCC_DIR"]) / f"direct-{os.geteuid()}" / "hashes"
    assert cache.stat().st_size > 0, "the first build's records filled no hash cache"
    assert cache.stat().st_mode & 0o077 == 0 and cache.parent.stat().st_mode & 0o077 == 0

    changed = H.replace("3", "4")
    _rewrite_keeping_size_and_mtime(root / "inc2" / "h.h", changed)
    _age()  # the new ctime must be old enough for the second build to record again
    second = _build(root, env)
    assert _cpp_runs(log) == 2 * len(JOBS), "a changed header was answered from a record"
    assert _direct_hits(d) == 0, d.diagnostics()
    for src, *_ in JOBS:
        assert second[src][0] != first[src][0]
        assert second[src][0] == _local(root, src)

    # The second build's records hold the header's new hash, not the cached old one: a
    # fresh copy of the changed tree (new times, same bytes) is hashed and hits.
    _write_tree(root, changed)
    third = _build(root, env)
    assert _cpp_runs(log) == 2 * len(JOBS), "the records did not hold the new hash"
    assert _direct_hits(d) == len(JOBS), d.diagnostics()
    assert third == second
