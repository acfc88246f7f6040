"""meshcc.pyz: built by `meshcc zipapp`, run by a bare python3 (no meshcc deps importable).

The bare interpreter is the system ``/usr/bin/python3`` under ``-I -S`` (no site-packages,
no PYTHONPATH, no user site), with an empty HOME and working directory. The LAN test runs
the pyz daemon in a network namespace and has a second "machine" fetch the pyz from its
status port, check it, and compile through it; all traffic stays on loopback or the LAN.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from harness import free_port
from meshd import Meshd, private_dir
from netns import Lan

BARE_PYTHON = "/usr/bin/python3"
SOURCE = "int twice(int x) { return 2 * x; }\nconst char *who(void) { return __FILE__; }\n"


def _bare_reason() -> str | None:
    if not os.access(BARE_PYTHON, os.X_OK):
        return f"{BARE_PYTHON} is missing"
    p = subprocess.run(
        [BARE_PYTHON, "-I", "-S", "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
    )
    if p.stdout.strip() != "True":
        return f"{BARE_PYTHON} is older than 3.11"
    return None


pytestmark = pytest.mark.skipif(_bare_reason() is not None, reason=str(_bare_reason()))


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: nothing from the venv, no PYTHONPATH."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **extra}


def build(out: Path) -> str:
    """`meshcc zipapp -o out` with the venv's meshcc; the file's sha256."""
    p = subprocess.run(
        [sys.executable, "-m", "meshcc", "zipapp", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stderr and "Traceback" not in p.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """meshcc.pyz in a directory only root can read, like /root/meshcc.pyz: the daemon
    drops to nobody, so everything it needs must be imported before the drop."""
    d = private_dir("meshcc-pyz-")
    d.chmod(0o700)
    out = d / "meshcc.pyz"
    build(out)
    return out


def test_build_is_deterministic(pyz: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.pyz"
    assert build(again) == hashlib.sha256(pyz.read_bytes()).hexdigest()
    assert os.stat(again).st_mode & 0o777 == 0o755
    import zipfile

    with zipfile.ZipFile(again) as zf:
        names = zf.namelist()
    assert names == sorted(names[:1]) + sorted(names[1:]) and names[0] == "__main__.py"
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py")]
    assert {
        "meshcc/cli/entry.py",
        "zeroconf/asyncio.py",
        "ifaddr/_posix.py",
    } <= set(names)
    assert not [n for n in names if n.startswith(("lz4/", "lzallright/", "msgpack/"))]


def test_runs_under_a_bare_python(pyz: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = bare_env(home)

    def bare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BARE_PYTHON, "-I", "-S", *args],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for mod in ("zeroconf", "ifaddr", "msgpack", "lz4", "lzallright", "meshcc"):
        p = bare("-c", f"import {mod}")
        assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr, f"{mod} importable"
    p = bare(str(pyz), "--version")
    assert p.returncode == 0 and p.stdout.strip().startswith("meshcc "), p.stderr
    p = bare(str(pyz), "hosts", "--help")
    assert p.returncode == 0 and "usage: meshcc hosts" in p.stdout, p.stderr
    p = bare(str(pyz), "daemon", "--help")
    assert p.returncode == 0 and "--status-port" in p.stdout, p.stderr
    # Pure code paths: zeroconf's .py modules, no LZO.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import zeroconf._cache as c, "
        "meshcc.mesh.discovery; from meshcc import compression as z; "
        "print(c.__file__.endswith('.py'), z.available('lzo'))"
    )
    p = bare("-c", code, str(pyz))
    assert p.stdout.split() == ["True", "False"], p.stderr
    # A pyz copied under another name is still the explicit wrapper.
    (home / "x.c").write_text(SOURCE)
    other = home / "mcc.pyz"
    other.write_bytes(pyz.read_bytes())
    p = subprocess.run(
        [BARE_PYTHON, "-I", "-S", str(other), "gcc", "-c", "x.c"],
        cwd=home,
        env={**env, "DISTCC_HOSTS": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and (home / "x.o").exists(), p.stderr


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_status_port_on_loopback(pyz: Path, tmp_path: Path) -> None:
    """The pyz daemon serves its own file, the hash and a bootstrap that checks both."""
    work = private_dir("meshcc-pyzd-")
    (work / "tmp").mkdir(mode=0o1777)
    (work / "tmp").chmod(0o1777)
    port, sport = free_port(), free_port()
    log = work / "d.log"
    env = bare_env(work, TMPDIR=str(work / "tmp"))
    proc = subprocess.Popen(
        [
            BARE_PYTHON,
            "-I",
            "-S",
            str(pyz),
            "daemon",
            "--listen",
            "127.0.0.1",
            "--no-discovery",
            "--port",
            str(port),
            "--status-port",
            str(sport),
            "--log-level",
            "info",
            "--log-file",
            str(log),
        ],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{sport}"
    try:
        netns.wait_for(
            lambda: (
                proc.poll() is not None
                or "status port" in (log.read_text() if log.exists() else "")
            ),
            30,
            what="status port",
        )
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        data = _get(base + "/meshcc.pyz")
        assert data == pyz.read_bytes()  # this very file, not a rebuild
        digest = hashlib.sha256(data).hexdigest()
        assert _get(base + "/meshcc.pyz.sha256") == f"{digest}  meshcc.pyz\n".encode()
        page = _get(base + "/").decode()
        assert page.startswith("meshcc ") and digest in page
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(base + "/nothing")
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(base + "/", data=b"x"), timeout=10)
        assert e.value.code == 405
        # The one-liner, with the destination redirected (never /usr/local/bin in a test).
        dest = tmp_path / "got.pyz"
        one_liner = f"import urllib.request as u; exec(u.urlopen('{base}/bootstrap').read())"
        p = subprocess.run(
            [BARE_PYTHON, "-I", "-S", "-c", one_liner],
            cwd=tmp_path,
            env=bare_env(tmp_path, MESHCC_PYZ=str(dest)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert dest.read_bytes() == data and os.stat(dest).st_mode & 0o777 == 0o755
        assert f"python3 {dest} daemon" in p.stdout
        # A client with LZO asking for protocol 2 gets the reason, not an obscure failure.
        (tmp_path / "x.c").write_text(SOURCE)
        meshcc = str(Path(sys.executable).parent / "meshcc")
        p = subprocess.run(
            [meshcc, "gcc", "-c", "x.c"],
            cwd=tmp_path,
            env=dict(
                os.environ,
                DISTCC_HOSTS=f"127.0.0.1:{port},lzo",
                DISTCC_FALLBACK="0",
                MESHCC_SOCKET=str(tmp_path / "none"),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode != 0
        assert "no LZO support (pure-Python meshcc.pyz); use the host without ,lzo" in p.stderr
        text = log.read_text()
        assert "LZO unavailable (no lzallright): serving distcc protocol 1 only" in text
        assert "fetched /meshcc.pyz (" in text
    finally:
        proc.terminate()
        proc.wait(15)


class PyzDaemon(Meshd):
    """A Meshd run as ``python3 -I -S meshcc.pyz daemon`` with a bare environment."""

    def __init__(self, pyz: Path, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.pyz = pyz

    def argv(self) -> list[str]:
        return [BARE_PYTHON, "-I", "-S", str(self.pyz), *super().argv()[3:]]

    def env(self) -> dict[str, str]:
        return bare_env(self.dir, TMPDIR=str(self.dir / "tmp"))


FETCH = r"""
import hashlib, sys, urllib.request
base, out = sys.argv[1], sys.argv[2]
try:
    data = urllib.request.urlopen(base + "/meshcc.pyz", timeout=10).read()
    want = urllib.request.urlopen(base + "/meshcc.pyz.sha256", timeout=10).read().split()[0]
except OSError as e:
    print("NO", type(e).__name__, e)
    sys.exit(0)
assert hashlib.sha256(data).hexdigest() == want.decode(), "hash mismatch"
open(out, "wb").write(data)
print("OK", len(data))
"""


@pytest.mark.netns
def test_pyz_daemon_on_a_lan(lan: Callable[..., Lan], pyz: Path) -> None:
    net = lan()
    ha, hb, hc = net.add_host("a"), net.add_host("b"), net.add_host("c")
    work = private_dir("meshcc-pyzlan-")
    iface = ("--interface", "eth0")
    # A (pure pyz) serves B only: C is on the wire but not allowed.
    a = PyzDaemon(pyz, work, ha, *iface, "--allow", f"{hb.address}/32", name="a")
    b = Meshd(work, hb, *iface, name="b")  # the venv's meshcc, with LZO
    try:
        a.start()
        b.start()
        base = f"http://{ha.address}:3633"
        got = work / "fetched.pyz"
        p = hb.run([BARE_PYTHON, "-I", "-S", "-c", FETCH, base, str(got)])
        assert p.stdout.startswith("OK"), p.stdout + p.stderr
        assert got.read_bytes() == pyz.read_bytes()
        p = hc.run([BARE_PYTHON, "-I", "-S", "-c", FETCH, base, str(work / "no.pyz")])
        assert p.stdout.startswith("NO"), p.stdout + p.stderr
        assert not (work / "no.pyz").exists()

        src = work / "src"
        src.mkdir(mode=0o777)
        (src / "x.c").write_text(SOURCE)
        subprocess.run(["gcc", "-c", "x.c", "-o", "local.o"], cwd=src, check=True)
        for spec in (ha.address, f"{ha.address},lzo"):
            out = src / "remote.o"
            out.unlink(missing_ok=True)
            env = bare_env(
                src,
                DISTCC_HOSTS=spec,
                DISTCC_FALLBACK="0",
                DISTCC_VERBOSE="1",
                MESHCC_SOCKET=str(src / "none"),
            )
            p = hb.run(
                [BARE_PYTHON, "-I", "-S", str(got), "gcc", "-c", "x.c", "-o", "remote.o"],
                cwd=src,
                env=env,
            )
            assert p.returncode == 0, p.stderr
            assert out.read_bytes() == (src / "local.o").read_bytes()
            if spec.endswith(",lzo"):
                assert "distcc protocol 1 instead of 2" in p.stderr
        assert a.log_text().count("COMPILE_OK") == 2
        assert "LZO unavailable (no lzallright)" in a.log_text()
        assert "refused" in a.log_text()  # C's fetch
        assert "Traceback" not in a.log_text() and "cannot import" not in a.log_text()

        # B (venv meshcc) lists A without ',lzo': A announces protocol 1 only.
        def a_listed() -> str | None:
            line = b.hosts()["line"]
            return next((e for e in line.split() if e.startswith(ha.address + ":")), None)

        entry = netns.wait_for(a_listed, 20, what="A in B's hosts line")
        assert not entry.endswith(",lzo"), entry
    finally:
        for m in (b, a):
            m.stop()
