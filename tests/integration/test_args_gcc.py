"""meshcc.compiler.args against real gcc: the dependency files of cpp_argv equal plain gcc's,
and the client/server pipeline makes plain gcc's object (the pure rules: unit/test_args.py)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from meshcc.compiler import policy
from meshcc.compiler.args import analyse, cpp_argv, remote_argv

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not installed")


# --- real gcc: .d files from cpp_argv equal plain gcc's ------------------------------------


def _tree(root: Path) -> None:
    for d in ("src", "obj", "dir.x", "deps", "out"):
        (root / d).mkdir(parents=True)
    (root / "src" / "h.h").write_text("#define H 1\n")
    body = '#include "h.h"\n#include <stddef.h>\nint x = H;\n'
    for name in ("foo.c", "a$b.c", "a b.c", "foo.tar.c"):
        (root / "src" / name).write_text(body)
    (root / "src" / "foo.cc").write_text(body + "struct S { int y; };\n")


def _dfiles(root: Path, output: str | None = None) -> dict[str, bytes]:
    """Every file the compile wrote except its output: that is the dependency file(s)."""
    found = {}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_file() and not rel.startswith("src/") and rel != output:
            found[rel] = p.read_bytes()
    return found


DEP_CASES = [
    "gcc -MD -c src/foo.c -o obj/foo.o",
    "gcc -MMD -c src/foo.c -o obj/foo.o",
    "gcc -MD -c src/foo.c",
    "gcc -MD -S src/foo.c",
    "gcc -MD -S src/foo.c -o out/x.s",
    "gcc -MD -c src/foo.c -o foo.obj",
    "gcc -MD -c src/foo.c -o foo",
    "gcc -MD -c src/foo.c -o dir.x/foo",
    "gcc -MD -c src/foo.c -o obj/foo.o.x",
    "gcc -MD -c src/foo.c -oobj/foo.o",
    "gcc -MD -c src/foo.tar.c",
    "gcc -MD -MF deps/foo.dep -c src/foo.c -o obj/foo.o",
    "gcc -MD -MF deps/foo.dep -c src/foo.c",
    "gcc -MD -MFdeps/foo.dep -c src/foo.c -o obj/foo.o",
    "gcc -MD -MT mytarget -c src/foo.c -o obj/foo.o",
    "gcc -MD -MT t1 -MQ t$2 -c src/foo.c -o obj/foo.o",
    "gcc -MMD -MQ q$q -c src/foo.c -o obj/foo.o",
    "gcc -MMD -MP -c src/foo.c -o obj/foo.o",
    "gcc -Wp,-MD,obj/.foo.o.d -c src/foo.c -o obj/foo.o",
    "gcc -Wp,-MMD,obj/.foo.o.d -c src/foo.c -o obj/foo.o",
    "gcc -Wp,-MMD,obj/.foo.o.d -c src/foo.c",
    "gcc -MD -Wp,-MT,zz -c src/foo.c -o obj/foo.o",
    "gcc -MD -Wp,-MF,deps/w.d -c src/foo.c -o obj/foo.o",
    "gcc -MD -c src/a$b.c -o obj/a$b.o",
    "gcc -MD -c src/a$b.c",
    "g++ -MD -c src/foo.cc -o obj/foo.o",
    "gcc -x c++ -MMD -c src/foo.c -o obj/foo.o",
    "gcc -MD -MMD -c src/foo.c -o obj/foo.o",
]


@needs_gcc
@pytest.mark.parametrize("cmd", DEP_CASES)
def test_dep_file_matches_plain_gcc(tmp_path, cmd):
    argv = cmd.split()
    plain, ours = tmp_path / "plain", tmp_path / "ours"
    _tree(plain)
    _tree(ours)
    subprocess.run(argv, cwd=plain, check=True)
    j = analyse(argv)
    assert j.distributable, j.reason
    res = subprocess.run(
        cpp_argv(j), cwd=ours, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True
    )
    assert res.stderr == b""
    want, got = _dfiles(plain, j.output), _dfiles(ours)
    assert want, "plain gcc wrote no .d file"
    assert got == want


@needs_gcc
@pytest.mark.parametrize("name", ["a b.c"])
def test_dep_file_with_space_in_name(tmp_path, name):
    argv = ["gcc", "-MD", "-c", f"src/{name}", "-o", "obj/a b.o"]
    plain, ours = tmp_path / "plain", tmp_path / "ours"
    _tree(plain)
    _tree(ours)
    subprocess.run(argv, cwd=plain, check=True)
    subprocess.run(cpp_argv(analyse(argv)), cwd=ours, stdout=subprocess.DEVNULL, check=True)
    assert _dfiles(ours) == _dfiles(plain, "obj/a b.o")


# --- real gcc: the whole client/server pipeline gives the same object ------------------------


@needs_gcc
@pytest.mark.parametrize(
    "cmd",
    [
        "gcc -O2 -Wall -DFOO=2 -Isrc -c src/foo.c -o obj/foo.o",
        "gcc -O2 -g -c src/foo.c -o obj/foo.o",
        "gcc -x c -O1 -MD -c src/foo.c",
        "gcc -xc -O2 -c src/foo.c -o obj/foo.o",
        "g++ -O2 -c src/foo.cc -o obj/foo.o",
        "gcc -O2 -S src/foo.c -o out/foo.s",
        "gcc -O2 -flto -c src/foo.c -o obj/foo.o",
    ],
)
def test_pipeline_matches_local_compile(tmp_path, cmd):
    argv = cmd.split()
    client = tmp_path / "client"
    _tree(client)
    # Local build first, in the same directory (-g records the cwd), then clean up.
    subprocess.run(argv, cwd=client, check=True)
    j = analyse(argv)
    assert j.distributable, j.reason
    want_obj = (client / j.output).read_bytes()
    want_deps = _dfiles(client, j.output)
    for p in [*want_deps, j.output]:
        (client / p).unlink()
    pre = subprocess.run(cpp_argv(j), cwd=client, stdout=subprocess.PIPE, check=True).stdout
    # "server": a different directory, the received argv rewritten for the job's files
    server = tmp_path / "server"
    server.mkdir()
    sent = remote_argv(j)
    assert policy.refusal(sent) is None
    assert policy.scan_source_refusal(pre) is None
    inp = server / ("in" + j.temp_suffix)
    inp.write_bytes(pre)
    run = policy.rewrite_for_job(sent, str(inp), str(server / "out.o"))
    subprocess.run(run, cwd=server, check=True)
    got = (server / "out.o").read_bytes()
    if "-flto" in argv:
        # LTO objects carry a random seed and the compile options: never byte-stable.
        assert b".gnu.lto_" in got
    else:
        assert got == want_obj
    assert _dfiles(client) == want_deps
