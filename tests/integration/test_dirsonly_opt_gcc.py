"""-fdirectives-only for optimizing jobs, against real gcc, real projects and stock distccd 3.4.

Why: with MESHCC_DIRECTIVES_ONLY=1 meshcc-gcc preprocesses optimizing jobs with
-fdirectives-only too (the client's cpp then costs 2-3x fewer instructions; macro expansion
moves to the server's gcc). That is only right where the object is the one a local compile
writes, byte for byte. These tests
compile real files of zlib, lua 5.4 and xz's liblzma at -O2 both ways (locally, and through
meshcc's client preprocessing, the server's policy and rewrite and a server-side gcc), show
that stock distccd 3.4 still compiles such jobs, and that the server's fast directive scan
(policy._fast_accepts) really vouches for these bodies, so they never pay for the full
lexer.  The whole-project survey (zlib 15, lua 34 and liblzma 80 files at -O2, all
identical) is in the branch's report; here a sample of each keeps the test short.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, copy_tree, parse_job_summaries
from harness import apt_source
from meshcc.compiler import args, policy
from meshcc.compiler.args import analyse, cpp_argv, remote_argv
from test_dirsonly_gcc import _server_compile, _wrapper

ZLIB_FLAGS = ["-O2", "-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN", "-I."]
LUA_FLAGS = ["-std=gnu99", "-O2", "-Wall", "-Wextra", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"]
# liblzma's own flags from its Makefile (CFLAGS=-O2), without the dependency options.
LZMA_INCLUDES = [
    f"-I../../src/liblzma/{d}"
    for d in ("api", "common", "check", "lz", "rangecoder", "lzma", "delta", "simple")
]
LZMA_FLAGS = [
    "-DHAVE_CONFIG_H",
    "-I.",
    "-I../..",
    *LZMA_INCLUDES,
    "-I../../src/common",
    "-DTUKLIB_SYMBOL_PREFIX=lzma_",
    "-pthread",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    "-O2",
]


def _source(package: str) -> Path:
    try:
        return apt_source(package)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(autouse=True)
def _optimizing_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The opt-in (MESHCC_DIRECTIVES_ONLY=1) for the in-process analyses below."""
    monkeypatch.setattr(args, "directives_only_when_optimizing", True)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """zlib configured, lua with upstream's build (Debian's build patches reversed, as in
    benchmarks/bench_serial.py) and xz-utils configured: the dir each project compiles in."""
    root = tmp_path_factory.mktemp("dirsonly-opt")
    zlib = copy_tree(_source("zlib"), root / "zlib")
    subprocess.run(
        ["./configure"], cwd=zlib, env=dict(os.environ, CC="gcc"), check=True, capture_output=True
    )
    lua = copy_tree(_source("lua5.4"), root / "lua")
    for patch in ("0003-extern_C", "0002-lua-modules-paths", "0001-build-system"):
        subprocess.run(
            ["patch", "-R", "-p1", "-s", "-i", f"debian/patches/{patch}.patch"],
            cwd=lua,
            check=True,
        )
    xz = copy_tree(_source("xz-utils"), root / "xz")
    subprocess.run(
        ["./configure", "CFLAGS=-O2", "--disable-nls", "--disable-shared", "--disable-doc"],
        cwd=xz,
        check=True,
        capture_output=True,
    )
    return {"zlib": zlib, "lua": lua / "src", "liblzma": xz / "src" / "liblzma"}


CASES = [
    ("zlib", ZLIB_FLAGS, "inflate.c"),
    ("zlib", ZLIB_FLAGS, "deflate.c"),
    ("zlib", ZLIB_FLAGS, "trees.c"),
    ("zlib", [*ZLIB_FLAGS, "-O3"], "inffast.c"),
    ("zlib", [*ZLIB_FLAGS, "-Os"], "crc32.c"),
    ("lua", LUA_FLAGS, "lvm.c"),
    ("lua", LUA_FLAGS, "lapi.c"),
    ("lua", LUA_FLAGS, "lstrlib.c"),
    ("lua", LUA_FLAGS, "ltable.c"),
    ("lua", [*LUA_FLAGS, "-g", "-gno-record-gcc-switches"], "lparser.c"),
    ("liblzma", LZMA_FLAGS, "lzma/lzma_encoder.c"),
    ("liblzma", LZMA_FLAGS, "lz/lz_decoder.c"),
    ("liblzma", LZMA_FLAGS, "check/crc64_fast.c"),
    ("liblzma", LZMA_FLAGS, "common/stream_decoder.c"),
]


@pytest.mark.parametrize("project,flags,source", CASES)
def test_optimizing_object_equals_local(
    trees: dict[str, Path], tmp_path: Path, project: str, flags: list[str], source: str
) -> None:
    cwd = trees[project]
    local = tmp_path / "local.o"
    subprocess.run(["gcc", *flags, "-c", source, "-o", str(local)], cwd=cwd, check=True)
    j = analyse(["gcc", *flags, "-c", source, "-o", str(tmp_path / "job.o")])
    assert j.distributable, j.reason
    assert args.directives_only(j)
    body = subprocess.run(cpp_argv(j), cwd=cwd, stdout=subprocess.PIPE, check=True).stdout
    assert b"#define" in body  # macros really are left for the server
    # The server's scan takes the fast path for these bodies (no Python lexer per comment).
    assert policy._fast_accepts(re.sub(policy._SPLICE, b"", body))
    got = _server_compile(tmp_path, remote_argv(j), body, j.temp_suffix)
    assert got == local.read_bytes()


def test_lto_and_recorded_switches_keep_full_preprocessing() -> None:
    for extra in (["-flto"], ["-g"], ["-flto=auto", "-g", "-gno-record-gcc-switches"]):
        j = analyse(["gcc", *ZLIB_FLAGS, *extra, "-c", "inflate.c", "-o", "i.o"])
        assert not args.directives_only(j), extra
        assert args.DIRECTIVES_ONLY not in cpp_argv(j) + remote_argv(j)


@pytest.mark.parametrize("kind", ["meshcc", "distccd"])
def test_wrapper_O2_directives_only_equals_local(
    kind: str,
    trees: dict[str, Path],
    tmp_path: Path,
    client_env: dict[str, str],
    meshcc_daemon: Callable[..., Daemon],
    distccd: Callable[..., Daemon],
) -> None:
    """meshcc-gcc -> a meshcc daemon and -> stock distccd 3.4: an -O2 lua file compiles
    remotely from its directives-only body and the object is the local one."""
    daemon = meshcc_daemon() if kind == "meshcc" else distccd()
    cwd = trees["lua"]
    argv = ["gcc", *LUA_FLAGS, "-c", "lvm.c", "-o", str(tmp_path / "remote.o")]
    assert args.directives_only(analyse(argv))
    local = tmp_path / "local.o"
    subprocess.run(["gcc", *LUA_FLAGS, "-c", "lvm.c", "-o", str(local)], cwd=cwd, check=True)
    _wrapper(client_env, daemon, cwd, argv, MESHCC_DIRECTIVES_ONLY="1")
    assert (tmp_path / "remote.o").read_bytes() == local.read_bytes()
    jobs = parse_job_summaries(daemon.log_path.read_text(errors="replace"))
    assert [j.result for j in jobs].count("COMPILE_OK") == 1


def test_server_gcc_obeys_a_spliced_digraph_include_and_policy_refuses(tmp_path: Path) -> None:
    """``%`` backslash-newline ``:include`` is a ``%:include`` directive once spliced, and
    gcc -fdirectives-only reads the file; the scan used to miss it (no ``#``, no ``%:``)."""
    secret = tmp_path / "secret.h"
    secret.write_text("int leaked_from_the_server;\n")
    body = f'%\\\n:include "{secret}"\nint a;\n'.encode()
    src = tmp_path / "x.i"
    src.write_bytes(body)
    res = subprocess.run(
        ["gcc", args.DIRECTIVES_ONLY, "-S", str(src), "-o", str(tmp_path / "x.s")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "leaked_from_the_server" in (tmp_path / "x.s").read_text()
    why = policy.scan_source_refusal(body)
    assert why is not None and "#include" in why
