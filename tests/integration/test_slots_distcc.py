"""Slot locks shared with stock distcc 3.4: while meshcc holds every localhost slot, a stock
distcc local compile waits (the lock rules themselves: unit/test_slots.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from meshcc.client import slots


def test_stock_distcc_and_meshcc_share_slots(tmp_path: Path) -> None:
    """While we hold every localhost slot, a stock distcc local compile must wait."""
    distcc_dir = tmp_path / "dd"
    distcc_dir.mkdir()
    lockdir = slots.lock_dir(str(distcc_dir))
    held = [slots.try_lock(lockdir, "localhost", i) for i in range(4)]
    assert all(held)
    (tmp_path / "x.c").write_text("int x;\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCC_")}
    env.update(DISTCC_DIR=str(distcc_dir), DISTCC_HOSTS="localhost/1", DISTCC_PAUSE_TIME_MSEC="50")
    # distcc's local-only path (-c with conftest.c is local) takes a cpu_localhost slot.
    (tmp_path / "conftest.c").write_text("int y;\n")
    proc = subprocess.Popen(
        ["distcc", "gcc", "-c", "conftest.c"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "distcc compiled although every local slot was held"
        assert not (tmp_path / "conftest.o").exists()
    finally:
        for s in held:
            assert s is not None
            s.release()
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert (tmp_path / "conftest.o").exists()
