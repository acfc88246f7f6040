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

from test_direct_mode import (
    JOBS,
    FirstBuild,
    H,
    _age,
    _build,
    _cpp_runs,
    _direct_hits,
    _write_tree,
    all_recompiled,
    built,
    daemon,
    parent,
    shim,
)

__all__ = ["built", "daemon", "parent", "shim"]  # test_direct_mode's fixtures, used by name


def _rewrite_keeping_size_and_mtime(path: Path, text: str) -> None:
    st = path.stat()
    assert len(text.encode()) == st.st_size
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    path.write_text(text)
    frac = f"{st.st_mtime_ns % 1_000_000_000:09d}"
    subprocess.run(["touch", "-d", f"{stamp}.{frac}", str(path)], check=True)
    again = path.stat()
    assert (again.st_size, again.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_header_changed_behind_its_size_and_mtime_recompiles(built: FirstBuild) -> None:
    cache = Path(built.env["DISTCC_DIR"]) / f"direct-{os.geteuid()}" / "hashes"
    assert cache.stat().st_size > 0, "the first build's records filled no hash cache"
    assert cache.stat().st_mode & 0o077 == 0 and cache.parent.stat().st_mode & 0o077 == 0

    changed = H.replace("3", "4")
    _rewrite_keeping_size_and_mtime(built.root / "inc2" / "h.h", changed)
    _age()  # the new ctime must be old enough for the second build to record again
    second = all_recompiled(built)

    # The second build's records hold the header's new hash, not the cached old one: a
    # fresh copy of the changed tree (new times, same bytes) is hashed and hits.
    _write_tree(built.root, changed)
    third = _build(built.root, built.env)
    assert _cpp_runs(built.log) == 2 * len(JOBS), "the records did not hold the new hash"
    assert _direct_hits(built.daemon) == len(JOBS), built.daemon.diagnostics()
    assert third == second
