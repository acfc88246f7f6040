"""meshcc.posixenv stands in for ``os`` on the compile client's path: same answers.

The path functions are compared with ``posixpath`` on awkward inputs; the environment
with ``os.environ`` in a fresh interpreter started without ``os`` (``python -IS``), where
posixenv makes its own view of the environment: a change must reach the C environment
(what an exec'd compiler inherits) and an ``os`` imported afterwards, and the reverse.
"""

from __future__ import annotations

import ast
import os
import posixpath
import subprocess
import sys
from pathlib import Path

import pytest

from meshcc import posixenv

ROOT = Path(__file__).resolve().parents[2]
PATHS = [
    "",
    "/",
    "//",
    "///a",
    "a",
    "a/",
    "a//",
    "/a/b",
    "/a/b/",
    "a/b//c",
    "//a//b//",
    "./x.o",
    "../x/y.c",
    "dir/.hidden",
]


@pytest.mark.parametrize("p", PATHS)
def test_basename_dirname_as_posixpath(p: str) -> None:
    assert posixenv.path.basename(p) == posixpath.basename(p)
    assert posixenv.path.dirname(p) == posixpath.dirname(p)


@pytest.mark.parametrize(
    "parts",
    [("a", "b"), ("a/", "b"), ("", "b"), ("a", "/b"), ("a", "", "c"), ("/", "x"), ("a",)],
)
def test_join_as_posixpath(parts: tuple[str, ...]) -> None:
    assert posixenv.path.join(*parts) == posixpath.join(*parts)


ABS_PATHS = [
    *PATHS,
    "/usr/bin/gcc",
    "/usr/bin/",
    "/usr//bin/gcc",
    "//usr/bin/gcc",
    "///usr/bin/gcc",
    "/usr/./bin/gcc",
    "/usr/bin/.",
    "/usr/bin/..",
    "/usr/../bin/gcc",
    "/.",
    "/..",
    "/...",
    "/a/.b/..c/...",
    "/a/b./c..",
    "bin/gcc",
    "./gcc",
    "/é/ü",
]


@pytest.mark.parametrize("p", ABS_PATHS)
def test_abspath_as_posixpath(p: str) -> None:
    assert posixenv.path.abspath(p) == posixpath.abspath(p)


def test_abspath_of_a_normal_absolute_path_imports_no_os() -> None:
    """The lease path asks abspath of the compiler's path: no posixpath (so no os)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from meshcc import posixenv\n"
        "assert posixenv.path.abspath('/usr/bin/gcc') == '/usr/bin/gcc'\n"
        "print(sorted(m for m in ('os', 'posixpath') if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-IS", "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_constants_and_fsencode(tmp_path: Path) -> None:
    assert posixenv.defpath == posixpath.defpath
    assert posixenv.pathsep == os.pathsep
    assert posixenv.sep == os.sep
    for text in ("plain", "caf\u00e9", "bad\udcff byte", ""):
        assert posixenv.fsencode(text) == os.fsencode(text)
    assert posixenv.fsencode(b"raw") == b"raw"
    (tmp_path / "f").write_text("")
    assert posixenv.path.isdir(str(tmp_path)) and not posixenv.path.isdir(str(tmp_path / "f"))
    assert posixenv.path.isfile(str(tmp_path / "f")) and not posixenv.path.isfile(str(tmp_path))
    assert not posixenv.path.isdir(str(tmp_path / "missing")) and not posixenv.path.isdir("a\0b")


def test_environ_is_os_environ_when_os_is_loaded() -> None:
    assert posixenv.environ is os.environ


SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from meshcc import posixenv
assert "os" not in sys.modules, "posixenv imported os"
env = posixenv.environ
assert type(env) is posixenv.Environ
env["MESHCC_T_SET"] = "v\u00e9"
env.setdefault("MESHCC_T_DEF", "d")
env.update({"MESHCC_T_UPD": "u"})
del env["MESHCC_T_GONE"]
assert env.pop("MESHCC_T_POP") == "p" and env.pop("MESHCC_T_POP", "x") == "x"
import posix
assert posixenv.environ_bytes is posix.environ
pid = posix.posix_spawnp(  # as the wrapper spawns its compilers
    "sh", ["sh", "-c", "env > " + sys.argv[2]], posixenv.environ_bytes
)
posix.waitpid(pid, 0)
pid = posix.fork()
if pid == 0:  # an exec'd child inherits the C environment, not the dict
    posix.execv("/bin/sh", ["sh", "-c", "env > " + sys.argv[3]])
posix.waitpid(pid, 0)
import os  # a later os sees the same values, and the other way round
assert os.environ["MESHCC_T_SET"] == "v\u00e9" and "MESHCC_T_GONE" not in os.environ
assert os.environ["MESHCC_T_UPD"] == "u" and os.environ["MESHCC_T_DEF"] == "d"
os.environ["MESHCC_T_OS"] = "o"
del os.environ["MESHCC_T_UPD"]
assert env["MESHCC_T_OS"] == "o" and env.get("MESHCC_T_UPD") is None
assert "MESHCC_T_UPD" not in env and env.get("MESHCC_T_UPD", "z") == "z"
assert dict(env.items()) == dict(os.environ) == env.copy() and len(env) == len(os.environ)
assert sorted(env) == sorted(os.environ) and sorted(env.values()) == sorted(os.environ.values())
try:
    env["MESHCC_T_NONE"]
except KeyError as e:
    assert e.args == ("MESHCC_T_NONE",)
else:
    raise AssertionError("no KeyError")
print("ok")
"""


def test_environ_without_os_writes_through(tmp_path: Path) -> None:
    spawned, execd = tmp_path / "spawned.env", tmp_path / "execd.env"
    env = dict(os.environ, MESHCC_T_GONE="g", MESHCC_T_POP="p")
    res = subprocess.run(
        [sys.executable, "-IS", "-c", SCRIPT, str(ROOT), str(spawned), str(execd)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
    for f in (spawned, execd):
        lines = set(f.read_text(encoding="utf-8").splitlines())
        assert {"MESHCC_T_SET=v\u00e9", "MESHCC_T_DEF=d", "MESHCC_T_UPD=u"} <= lines, f
        assert not any(x.startswith(("MESHCC_T_GONE=", "MESHCC_T_POP=")) for x in lines), f


def test_spawned_environment_follows_os_environ(tmp_path: Path) -> None:
    """With ``os`` loaded (the zygote's workers, where ``environ`` is ``os.environ``), what
    the wrapper hands ``posix_spawn`` is what ``os.environ`` says, changes included."""
    out = tmp_path / "spawned.env"
    code = f"""
import os, posix, sys
sys.path.insert(0, {str(ROOT)!r})
from meshcc import posixenv
os.environ["MESHCC_T_SET"] = "v\\u00e9"
del os.environ["MESHCC_T_GONE"]
posixenv.environ["MESHCC_T_VIA"] = "p"
to_file = [(posix.POSIX_SPAWN_OPEN, 1, {str(out)!r}, posix.O_WRONLY | posix.O_CREAT, 0o600)]
pid = posix.posix_spawnp("env", ["env", "-0"], posixenv.environ_bytes, file_actions=to_file)
posix.waitpid(pid, 0)
print(repr(dict(os.environ)))
"""
    env = dict(os.environ, MESHCC_T_GONE="g")
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    items = out.read_bytes().decode("utf-8", "surrogateescape").split("\0")
    seen = dict(item.split("=", 1) for item in items if item)
    assert seen == ast.literal_eval(res.stdout)
    assert seen["MESHCC_T_SET"] == "v\u00e9" and seen["MESHCC_T_VIA"] == "p"
    assert "MESHCC_T_GONE" not in seen


def test_the_client_path_does_not_import_os() -> None:
    """The modules a remote compile loads (host list or lease) stay off ``os``."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import meshcc.client.wrapper, meshcc.client.decisions, meshcc.client.slots\n"
        "import meshcc.client.outcome, meshcc.client.state, meshcc.compiler.args\n"
        "import meshcc.compiler.hostspec, meshcc.transport.client, meshcc.compression\n"
        "import meshcc.transport.control_client, meshcc.wire.control\n"
        "print(sorted(m for m in ('os', 'posixpath', 'stat', '_collections_abc')"
        " if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-IS", "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
