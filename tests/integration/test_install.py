"""The README's install command as a normal user, from a checkout that user cannot write.

A real account made by the test runs `install.sh` from a read-only copy of the tree: the
install builds out of the checkout (no build/ or *.egg-info written there), puts meshcc in
~/.local/share/meshcc with its commands in ~/.local/bin, and says how to get them on PATH.
pip fetches the dependencies from the package registry, as a user's install would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None,
    reason="creates a user account: needs root, useradd and setpriv",
)


@pytest.fixture
def user_home() -> Iterator[tuple[pwd.struct_passwd, Path]]:
    name = f"mci{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="meshcc-home-", dir="/tmp"))
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
        check=True,
    )
    user = pwd.getpwnam(name)
    os.chown(home, user.pw_uid, user.pw_gid)
    home.chmod(0o700)
    try:
        yield user, home
    finally:
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _read_only_copy() -> Path:
    top = Path(tempfile.mkdtemp(prefix="meshcc-ro-", dir="/tmp"))
    src = top / "meshcc-src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis", ".*_cache"
        ),
    )
    for path in [src, *src.rglob("*")]:
        mode = path.lstat().st_mode
        if not path.is_symlink():
            path.chmod(mode & ~0o222 | 0o444 | (0o111 if path.is_dir() else 0))
    top.chmod(0o755)
    return src


def test_user_install_from_a_read_only_checkout(user_home: tuple[pwd.struct_passwd, Path]) -> None:
    user, home = user_home
    src = _read_only_copy()
    try:
        (home / "tmp").mkdir()
        os.chown(home / "tmp", user.pw_uid, user.pw_gid)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYENV", "MESHCC_", "DISTCC_"))
        }
        env.update(
            HOME=str(home),
            USER=user.pw_name,
            TMPDIR=str(home / "tmp"),
            PATH="/usr/local/bin:/usr/bin:/bin",
        )
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        p = subprocess.run(
            [*as_user, "sh", str(src / "install.sh")],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        bindir = home / ".local" / "bin"
        assert f"meshcc installed in {home}/.local/share/meshcc" in p.stdout
        assert f'export PATH="{bindir}:$PATH"' in p.stderr, p.stderr  # what to do now
        assert f"{bindir}/meshcc daemon" in p.stderr
        assert not list(src.glob("*.egg-info")) and not (src / "build").exists()
        v = subprocess.run(
            [*as_user, str(bindir / "meshcc"), "--version"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert v.returncode == 0 and v.stdout.startswith("meshcc "), v.stdout + v.stderr
        assert (bindir / "meshcc-gcc").is_symlink()
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)
