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

from userprocs import remove_user

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
        remove_user(user.pw_uid, name)  # and the zygote its meshcc-gcc started
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
        _launchers_skip_site(as_user, env, home, home / ".local" / "share" / "meshcc", bindir)
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)


def _launchers_skip_site(
    as_user: list[str], env: dict[str, str], home: Path, prefix: Path, bindir: Path
) -> None:
    """install.sh's launchers start Python with -I -S: no site, no .pth file of the venv
    (setuptools' _distutils_hack costs ~1 ms a compile), no PYTHON* variable. A .pth file
    that leaves a marker proves it: plain `python3` of the same venv runs it, the commands
    do not; a PYTHONPATH whose `meshcc` package would break them is ignored."""
    site = subprocess.run(
        [
            str(prefix / "bin" / "python3"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    marker = home / "pth-ran"
    probe = Path(site) / "zz-meshcc-test-probe.pth"
    probe.write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    try:
        subprocess.run(
            [*as_user, str(prefix / "bin" / "python3"), "-c", "pass"], env=env, check=True
        )
        assert marker.exists(), "the probe .pth file did not run: it proves nothing"
        marker.unlink()

        shadow = home / "shadow" / "meshcc"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise SystemExit('PYTHONPATH was used')\n")
        (home / "hello.c").write_text("int main(void) { return 0; }\n")
        user_env = dict(env, PYTHONPATH=str(shadow.parent), DISTCC_HOSTS="localhost")
        libexec = prefix / "libexec" / "meshcc"
        for cmd in ("meshcc-gcc", "meshcc-cc", "meshcc-g++", "meshcc-c++", "meshcc"):
            script = prefix / "bin" / cmd
            if script.read_bytes()[:4] == b"\x7fELF":  # the C launcher: its Python fallback
                script = libexec / ("cli" if cmd == "meshcc" else "client")
            first = script.read_text().splitlines()[0]
            assert first == f"#!{prefix}/bin/python3 -IS", (cmd, first)
        cc = subprocess.run(
            [*as_user, str(bindir / "meshcc-gcc"), "-c", "hello.c", "-o", "hello.o"],
            cwd=home,
            env=user_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cc.returncode == 0, cc.stdout + cc.stderr
        assert (home / "hello.o").read_bytes()[:4] == b"\x7fELF"
        v = subprocess.run(
            [*as_user, str(bindir / "meshcc"), "--version"],
            env=user_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert v.returncode == 0 and v.stdout.startswith("meshcc "), v.stdout + v.stderr
        assert not marker.exists(), "a command ran the venv's .pth files (site was imported)"

        # The daemon's own dependencies import the same way (site-packages from the script).
        meshcc = prefix / "bin" / "meshcc"
        if meshcc.read_bytes()[:4] == b"\x7fELF":
            meshcc = libexec / "cli"
        body = meshcc.read_text().split("\n", 1)[1].replace("del sys.argv[0]", "pass")
        deps = body.replace("from meshcc.cli.entry import main", "import zeroconf, ifaddr")
        deps = deps.replace(
            "sys.exit(main())",
            "print(sorted(m for m in sys.modules if m in ('site', '_distutils_hack')))",
        )
        out = subprocess.run(
            [*as_user, str(prefix / "bin" / "python3"), "-IS", "-c", deps],
            env=user_env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "[]", out.stdout + out.stderr
        assert not marker.exists()
    finally:
        probe.unlink(missing_ok=True)
