"""-fdirectives-only jobs against real gcc, a real meshcc daemon and real stock distccd 3.4.

Why: a fully preprocessed .i loses the virtual locations of macro-expanded tokens, and
gcc -O0's block merging depends on them, so zlib's inflate.c at -O0 compiled from its .i
gets other code than compiled from the .c. With -fdirectives-only on both sides (client:
directives done, macros left in; server: gcc expands them itself) the remote object is the
local one byte for byte. Also proves the danger the server's directive_refusal guards
against: under -fdirectives-only gcc obeys an #include in the received text.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, copy_tree, parse_job_summaries
from meshcc.compiler import args, policy
from meshcc.compiler.args import analyse, cpp_argv, remote_argv

ZLIB_FLAGS = ["-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN", "-I."]


@pytest.fixture(scope="module")
def zlib_configured(zlib_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One configured copy of zlib for the module (configure writes zconf.h and Makefile)."""
    tree = copy_tree(zlib_source, tmp_path_factory.mktemp("dirsonly") / "zlib")
    env = dict(os.environ, CC="gcc")
    subprocess.run(["./configure"], cwd=tree, env=env, check=True, capture_output=True)
    return tree


def _server_compile(tmp: Path, sent: list[str], body: bytes, suffix: str) -> bytes:
    """What meshcc's server does with a received job: policy, rewrite, gcc in its own dir."""
    assert policy.refusal(sent) is None
    assert policy.scan_source_refusal(body) is None
    server = tmp / "server"
    server.mkdir(exist_ok=True)
    inp, out = server / ("in" + suffix), server / "out.o"
    inp.write_bytes(body)
    subprocess.run(policy.rewrite_for_job(sent, str(inp), str(out)), cwd=server, check=True)
    return out.read_bytes()


@pytest.mark.parametrize(
    "source,opts,dirs_only",
    [
        ("inflate.c", ["-O0"], True),  # the reported case: full preprocessing changes its code
        ("inflate.c", ["-O2"], False),  # optimizing: full preprocessing, the same object
        ("deflate.c", ["-O0"], True),
        ("trees.c", ["-O2", "-g", "-gno-record-gcc-switches"], True),  # -g columns too
        ("inflate.c", ["-O0", "-g", "-gno-record-gcc-switches"], True),
    ],
)
def test_pipeline_object_equals_local(
    zlib_configured: Path, tmp_path: Path, source: str, opts: list[str], dirs_only: bool
) -> None:
    tree = zlib_configured
    argv = ["gcc", *opts, *ZLIB_FLAGS, "-c", source, "-o", str(tmp_path / "job.o")]
    local = tmp_path / "local.o"
    subprocess.run(
        ["gcc", *opts, *ZLIB_FLAGS, "-c", source, "-o", str(local)], cwd=tree, check=True
    )
    j = analyse(argv)
    assert j.distributable, j.reason
    assert args.directives_only(j) == dirs_only
    cpp = cpp_argv(j)
    body = subprocess.run(cpp, cwd=tree, stdout=subprocess.PIPE, check=True).stdout
    assert (b"#define" in body) == dirs_only  # macros really are left for the server
    got = _server_compile(tmp_path, remote_argv(j), body, j.temp_suffix)
    assert got == local.read_bytes()


def test_full_preprocessing_differs_for_inflate_O0(zlib_configured: Path, tmp_path: Path) -> None:
    """The bug itself, kept as evidence: without -fdirectives-only the objects differ (if a
    future gcc fixes this, this test says so and the option becomes optional)."""
    tree = zlib_configured
    local = tmp_path / "local.o"
    subprocess.run(
        ["gcc", "-O0", *ZLIB_FLAGS, "-c", "inflate.c", "-o", str(local)], cwd=tree, check=True
    )
    j = analyse(["gcc", "-O0", *ZLIB_FLAGS, "-c", "inflate.c", "-o", "x.o"])
    cpp = [a for a in cpp_argv(j) if a != args.DIRECTIVES_ONLY]
    sent = [a for a in remote_argv(j) if a != args.DIRECTIVES_ONLY]
    body = subprocess.run(cpp, cwd=tree, stdout=subprocess.PIPE, check=True).stdout
    assert _server_compile(tmp_path, sent, body, ".i") != local.read_bytes()


def test_recorded_options_keep_full_preprocessing(zlib_configured: Path, tmp_path: Path) -> None:
    """-g records the options in DW_AT_producer: such a job must not carry -fdirectives-only
    (the producer string would name it), and its producer equals the local one."""
    j = analyse(["gcc", "-O2", "-g", *ZLIB_FLAGS, "-c", "adler32.c", "-o", "a.o"])
    assert not args.directives_only(j)
    assert args.DIRECTIVES_ONLY not in cpp_argv(j) + remote_argv(j)
    # What would go wrong: gcc does record it.
    src = tmp_path / "p.c"
    src.write_text("int x;\n")
    obj = tmp_path / "p.o"
    subprocess.run(["gcc", "-g", "-fdirectives-only", "-c", str(src), "-o", str(obj)], check=True)
    dump = subprocess.run(
        ["readelf", "--debug-dump=info", str(obj)], capture_output=True, text=True, check=True
    ).stdout
    assert "-fdirectives-only" in dump


def test_server_gcc_obeys_include_and_policy_refuses(tmp_path: Path) -> None:
    """Under -fdirectives-only gcc reads a file named by #include in the received text and
    echoes it in an error: directive_refusal must (and does) refuse such a body."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRETVALUE\n")
    body = f'#include "{secret}"\nint a;\n'.encode()
    inp = tmp_path / "in.i"
    inp.write_bytes(body)
    res = subprocess.run(
        ["gcc", args.DIRECTIVES_ONLY, "-c", str(inp), "-o", str(tmp_path / "o.o")],
        capture_output=True,
        text=True,
    )
    assert "TOPSECRETVALUE" in res.stderr  # the threat is real
    assert policy.refusal(["gcc", args.DIRECTIVES_ONLY, "-c", "in.i"]) is None
    why = policy.scan_source_refusal(body)
    assert why is not None and "#include" in why


# --- end to end: meshcc-gcc -> meshcc daemon / stock distccd 3.4 ---------------------------


def _wrapper(env: dict[str, str], daemon: Daemon, cwd: Path, argv: list[str], **extra: str) -> None:
    """``meshcc ARGV`` in ``cwd`` to ``daemon`` only (no local fallback), with ``extra``
    added to the environment; it must succeed."""
    env = dict(env, DISTCC_HOSTS=daemon.host_spec(), DISTCC_FALLBACK="0", **extra)
    env["DISTCC_SKIP_LOCAL_RETRY"] = "1"
    res = subprocess.run(["meshcc", *argv], cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("kind", ["meshcc", "distccd"])
def test_wrapper_inflate_O0_equals_local(
    kind: str,
    zlib_configured: Path,
    tmp_path: Path,
    client_env: dict[str, str],
    meshcc_daemon: Callable[..., Daemon],
    distccd: Callable[..., Daemon],
) -> None:
    daemon = meshcc_daemon() if kind == "meshcc" else distccd()
    tree = zlib_configured
    local, remote = tmp_path / "local.o", tmp_path / "remote.o"
    subprocess.run(
        ["gcc", "-O0", *ZLIB_FLAGS, "-c", "inflate.c", "-o", str(local)], cwd=tree, check=True
    )
    _wrapper(
        client_env, daemon, tree, ["gcc", "-O0", *ZLIB_FLAGS, "-c", "inflate.c", "-o", str(remote)]
    )
    assert remote.read_bytes() == local.read_bytes()
    jobs = parse_job_summaries(daemon.log_path.read_text(errors="replace"))
    # (distccd also logs the client's connection probe as OTHER)
    assert [j.result for j in jobs].count("COMPILE_OK") == 1


def test_wrapper_counter_in_if_and_date_compile_locally(
    tmp_path: Path, client_env: dict[str, str], distccd: Callable[..., Daemon]
) -> None:
    """__COUNTER__ in #if makes the directives-only cpp fail, __DATE__ would take the server's
    date: both compile locally (the build still works) and the server sees no job."""
    daemon = distccd()
    (tmp_path / "c.c").write_text("#if __COUNTER__ == 0\nint c = __COUNTER__;\n#endif\n")
    (tmp_path / "d.c").write_text('const char *d = __DATE__ " " __TIME__;\n')
    for name in ("c", "d"):
        _wrapper(client_env, daemon, tmp_path, ["gcc", "-O0", "-c", f"{name}.c", "-o", f"{name}.o"])
        assert (tmp_path / f"{name}.o").stat().st_size > 0
    jobs = parse_job_summaries(daemon.log_path.read_text(errors="replace"))
    assert "COMPILE_OK" not in [j.result for j in jobs]


def test_a_plain_i_compile_does_not_obey_an_include(tmp_path: Path) -> None:
    """Why the server vets directives only for -fdirectives-only jobs: without the option gcc
    treats a received ``#include`` as a stray token, and never opens the file."""
    secret = tmp_path / "secret.h"
    secret.write_text("int leaked_from_the_server;\n")
    body = f'# 1 "x.c"\n#include "{secret}"\nint x;\n'.encode()
    assert policy.scan_source_refusal(body, directives=False) is None
    assert policy.scan_source_refusal(body, directives=True) is not None
    src = tmp_path / "x.i"
    src.write_bytes(body)
    plain = subprocess.run(
        ["gcc", "-c", str(src), "-o", str(tmp_path / "x.o")], capture_output=True, text=True
    )
    assert plain.returncode != 0 and "leaked_from_the_server" not in plain.stderr
    obeyed = subprocess.run(
        ["gcc", "-fdirectives-only", "-S", str(src), "-o", str(tmp_path / "x.s")],
        capture_output=True,
        text=True,
    )
    assert obeyed.returncode == 0 and "leaked_from_the_server" in (tmp_path / "x.s").read_text()
