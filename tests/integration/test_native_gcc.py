"""-march=native resolved by the client, against this box's real gcc 12.

What must hold, each proven with real compiles: the resolved command line gives the same
object bytes as the user's ``native`` one, for the option mixes where order or tuning
could matter (a later ``-mno-avx512f``, an explicit ``-mtune``, a user ``--param``,
``-mtune``/``-mcpu=native``, C++), and the one mix where it cannot (``-g`` with native's
``--param`` values) is kept local; the cache is hit after the first probe and survives
corruption; what goes on the wire has no ``native`` in it; and a compiler whose driver
cannot be asked keeps the job local with the reason.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import GOOD_CXX, VENV_BIN, Daemon, FakeServer
from meshcc.compiler import native

VECTOR_C = """\
#include <stddef.h>
#include <string.h>
void saxpy(float *restrict y, const float *restrict x, float a, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}
long dot(const int *a, const int *b, int n) {
    long s = 0; for (int i = 0; i < n; i++) s += (long)a[i] * b[i]; return s;
}
void clear(char *p, size_t n) { memset(p, 0, n); }
#ifdef __AVX512F__
int has_avx512(void) { return 1; }
#endif
"""


def _obj(cwd: Path, argv: list[str], out: str) -> str:
    subprocess.run([*argv, "-o", out], cwd=cwd, check=True, capture_output=True)
    return hashlib.sha256((cwd / out).read_bytes()).hexdigest()


def _close_without_reply(conn: socket.socket, request: bytes) -> None:
    pass


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "v.c").write_text(VECTOR_C)
    (tmp_path / "j.cc").write_text(GOOD_CXX)
    return tmp_path


@pytest.mark.parametrize(
    "opts",
    [
        "gcc -O2 -march=native -c v.c",
        "gcc -O3 -mno-avx512f -march=native -c v.c",  # the user's -mno wins in both
        "gcc -O3 -march=native -mno-avx2 -c v.c",
        "gcc -O2 -g -march=native -mtune=znver3 -c v.c",  # no --param: -g is fine
        "gcc -O2 -mtune=native -c v.c",
        "gcc -O2 -mcpu=native -march=x86-64-v2 -c v.c",
        "gcc -Os -march=native -mtune=native -fPIC --param l1-cache-size=16 -c v.c",
        "g++ -O2 -march=native -c j.cc",
    ],
)
def test_resolved_command_gives_the_same_object(src: Path, opts: str) -> None:
    argv = opts.split()
    exp = native.probe(argv[0], argv)
    resolved = native.rewrite(argv, exp)
    assert not any("native" in a for a in resolved)
    assert native.records_options(argv) is None or not any(t.startswith("--param") for t in exp)
    assert _obj(src, resolved, "r.o") == _obj(src, argv, "n.o"), resolved


def test_in_place_substitution_would_be_wrong(src: Path) -> None:
    """Why the list goes first: put where the user wrote native, native's -mavx512f would
    override the user's earlier -mno-avx512f, and the code would change."""
    argv = "gcc -O3 -mno-avx512f -march=native -c v.c".split()
    exp = native.probe("gcc", argv)
    if "-mavx512f" not in exp:
        pytest.skip("this CPU has no AVX-512, so the order cannot show")
    i = argv.index("-march=native")
    in_place = [*argv[:i], *exp, *argv[i + 1 :]]
    assert _obj(src, in_place, "p.o") != _obj(src, argv, "n.o")


@pytest.mark.parametrize(
    ("cmd", "option"),
    [
        ("gcc -O2 -g -march=native -c v.c", "-g"),
        ("gcc -O2 -frecord-gcc-switches -march=native -c v.c", "-frecord-gcc-switches"),
        ("gcc -O2 -flto -march=native -c v.c", "-flto"),
        ("gcc -O2 -fverbose-asm -march=native -S v.c", "-fverbose-asm"),
    ],
)
def test_recorded_options_with_native_params_would_differ_so_they_stay_local(
    src: Path, cmd: str, option: str
) -> None:
    """The one order the driver cannot reproduce: explicit --param lands after -g -O2 -f..."""
    argv = cmd.split()
    exp = native.probe("gcc", argv)
    assert any(t.startswith("--param=") for t in exp), exp
    assert _obj(src, native.rewrite(argv, exp), "r.o") != _obj(src, argv, "n.o")
    job = native.analyse("gcc", argv, {"DISTCC_DIR": str(src), "PATH": os.environ["PATH"]})
    assert not job.distributable
    assert f"-march=native with {option}:" in job.reason and "--param" in job.reason


def test_cache_first_probe_then_hit_then_corrupt(tmp_path: Path) -> None:
    env = {"DISTCC_DIR": str(tmp_path), "PATH": os.environ["PATH"]}
    argv = "gcc -O2 -march=native -c v.c".split()
    exp, cached = native.resolve("gcc", argv, env)
    assert not cached and exp[0].startswith("-march=") and exp[0] != "-march=native"
    files = list((tmp_path / "native").iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert native.resolve("gcc", argv, env) == (exp, True)
    # Other arch options are another entry (an explicit -mtune changes the expansion).
    other, cached = native.resolve("gcc", [*argv, "-mtune=k8"], env)
    assert not cached and other != exp
    # A corrupt entry is ignored and rewritten.
    files[0].write_text("meshcc-native 1\ngarbage")
    assert native.resolve("gcc", argv, env) == (exp, False)
    assert native.resolve("gcc", argv, env) == (exp, True)
    # Another compiler file (a copy: same bytes, another inode) is probed again.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gcc = bindir / "gcc"
    real = Path(subprocess.check_output(["which", "gcc"], text=True).strip()).resolve()
    gcc.write_bytes(real.read_bytes())
    gcc.chmod(0o755)
    env2 = dict(env, PATH=f"{bindir}:{env['PATH']}")
    assert native.resolve("gcc", argv, env2) == (exp, False)


def test_the_wire_carries_the_expansion_never_native(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], src: Path
) -> None:
    server = fake_server(_close_without_reply)
    env = dict(client_env, DISTCC_HOSTS=server.spec, MESHCC_VERBOSE="1")
    p = subprocess.run(
        [str(VENV_BIN / "meshcc-gcc"), "-O2", "-mno-avx2", "-march=native", "-c", "v.c"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr  # the server hung up: compiled locally after
    assert server.requests, p.stderr
    sent = [a.decode() for a in server.requests[0]]
    exp, cached = native.resolve("gcc", ["gcc", "-march=native"], client_env)
    assert cached  # the client wrote the entry this call just read
    assert sent[: 1 + len(exp)] == ["gcc", *exp]
    assert sent[1 + len(exp) : 1 + len(exp) + 2] == ["-O2", "-mno-avx2"]
    assert not any("native" in a for a in sent), sent
    assert "-march=native resolved (probed)" in p.stderr
    # The fallback compile was the user's own command: same object as plain gcc.
    local = _obj(src, ["gcc", "-O2", "-mno-avx2", "-march=native", "-c", "v.c"], "ref.o")
    assert hashlib.sha256((src / "v.o").read_bytes()).hexdigest() == local


def test_unresolvable_native_stays_local_with_the_reason(
    fake_server: Callable[..., FakeServer], client_env: dict[str, str], src: Path
) -> None:
    """A compiler whose driver refuses -### (a wrapper script here) is never sent native."""
    bindir = src / "bin"
    bindir.mkdir()
    cc = bindir / "mycc"
    cc.write_text(
        '#!/bin/sh\nfor a; do [ "$a" = "-###" ] && { echo "mycc: error: no" >&2; exit 1; }; done\n'
        'exec gcc "$@"\n'
    )
    cc.chmod(0o755)
    server = fake_server(_close_without_reply)
    env = dict(client_env, DISTCC_HOSTS=server.spec, DISTCC_FALLBACK="0", MESHCC_VERBOSE="1")
    p = subprocess.run(
        [str(VENV_BIN / "meshcc"), str(cc), "-O2", "-march=native", "-c", "v.c"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert (src / "v.o").exists()
    assert server.connections == 0
    assert "runs locally: -march=native cannot be resolved for a remote compile" in p.stderr
    assert "mycc: error: no" in p.stderr


@pytest.mark.parametrize(
    "cmd",
    [
        "gcc -O2 -march=native -c v.c",
        "gcc -Wp,-MD,v.d -march=native -mtune=native -DX=1 -I. -c v.c -o out/v.o",
        "g++ -x c++ -march=native -O2 -c j.cc",
        "gcc -march=native -D -march=native -c v.c",
    ],
)
def test_analyse_equals_a_full_analysis_of_the_resolved_line(src: Path, cmd: str) -> None:
    """native.analyse skips re-walking the ~100 resolved words; that must change nothing."""
    from meshcc.compiler import args

    argv = cmd.split()
    env = {"DISTCC_DIR": str(src), "PATH": os.environ["PATH"]}
    job = native.analyse(argv[0], argv, env)
    exp, _ = native.resolve(argv[0], argv, env)
    full = args.analyse(native.rewrite(argv, exp))
    assert job.distributable and full.distributable, (job.reason, full.reason)
    assert job.argv == full.argv
    assert args.remote_argv(job) == args.remote_argv(full)
    assert job.orig_argv == argv  # the local preprocessor runs the user's own command
    assert "-march=native" in args.cpp_argv(job)
    assert not any(a in native.NATIVE for a in args.remote_argv(job))


def test_local_for_another_reason_is_not_resolved(tmp_path: Path) -> None:
    env = {"DISTCC_DIR": str(tmp_path), "PATH": os.environ["PATH"]}
    job = native.analyse("gcc", ["gcc", "-march=native", "v.o", "-o", "prog"], env)
    assert not job.distributable and job.reason == "v.o is a link input"
    assert not (tmp_path / "native").exists()  # no probe was run for a link


def test_stock_distcc_native_is_refused_by_the_daemon(
    meshcc_daemon: Callable[..., Daemon], client_env: dict[str, str], src: Path
) -> None:
    """distcc 3.4 keeps -march/-mtune=native local but sends -mcpu=native (on x86 the
    deprecated alias of -mtune=native): the daemon must not compile it for *its* CPU."""
    daemon = meshcc_daemon()
    env = dict(client_env, DISTCC_HOSTS=daemon.host_spec(), DISTCC_VERBOSE="1")
    p = subprocess.run(
        ["distcc", "gcc", "-O2", "-mcpu=native", "-c", "v.c", "-o", "v.o"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    ref = _obj(src, ["gcc", "-O2", "-mcpu=native", "-c", "v.c"], "ref.o")
    assert hashlib.sha256((src / "v.o").read_bytes()).hexdigest() == ref
    assert daemon.jobs("COMPILE_OK") == []
    assert "-mcpu=native would select the server's CPU" in daemon.log_text(), (
        daemon.diagnostics() + p.stderr[-2000:]
    )
