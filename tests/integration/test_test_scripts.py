"""The test runners themselves (tests/run.sh, tests/fresh_root.sh) checked by shellcheck and
bash: they run as root, install packages, mount and delete directories, so a quoting slip
there costs more than anywhere else. (What they do is proven by running them: CI runs
tests/run.sh, whose last step is tests/fresh_root.sh.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "tests" / "run.sh", ROOT / "tests" / "fresh_root.sh"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_test_scripts() -> None:
    p = subprocess.run(
        ["shellcheck", "-s", "bash", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stdout


def test_fresh_root_inside_mode_refuses_outside_a_fresh_root() -> None:
    """--inside installs meshcc into / and runs the suite: it must never do that on a real
    box (only inside the root fresh_root.sh made, marked by /run/meshcc-fresh-root)."""
    if os.path.exists("/run/meshcc-fresh-root"):
        pytest.skip("running inside the fresh root, where --inside is what runs this test")
    p = subprocess.run(
        ["bash", str(ROOT / "tests" / "fresh_root.sh"), "--inside"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
    )
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "runs only inside the root" in p.stderr
    assert p.stdout == ""
