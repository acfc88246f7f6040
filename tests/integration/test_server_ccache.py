"""``meshcc daemon --ccache`` with a real ccache, real gcc, stock distcc 3.4 and meshcc-gcc.

What must hold: a second identical job, from any client and any directory, is a hit in the
daemon's cache and returns an object byte-identical to a local compile; a job whose object
would differ (other options, -g from another directory) is a miss; the per-job verdicts in
the summary lines and on the status page agree with ccache's own statistics, also when jobs
run at once; start-up mistakes end with one clear line and an exit code; ``--compiler`` at
ccache's masquerade link says what it is.

Daemons listen on 127.0.0.1 with --no-discovery. As root the daemon drops to ``nobody``,
so the cache lives under a 0755 temp dir of our own (pytest's tmp_path is 0700).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import LOOPBACK, Daemon, free_port, loopback_daemon_argv, run

GCC = shutil.which("gcc") or "/usr/bin/gcc"
MASQUERADE_GCC = "/usr/lib/ccache/gcc"  # Debian's ccache package makes these links

HELLO = '#include <stdio.h>\n#include "hello.h"\nint main(void) { puts(GREETING); return 0; }\n'
HELLO_H = '#define GREETING "hello from the mesh"\n'
# For -g: no macro expanded on a code line. The columns in -g line tables are those of the
# preprocessed text, so a macro use makes any distcc-style -g object differ from a local one,
# with or without ccache (a limit of compiling preprocessed source, not of the cache).
HELLO_G = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
WARN = "int f(int x) { int unused; return x; }\n"
BAD = "int f(void) { return nope; }\n"

_SUMMARY = re.compile(r"client: \S+ (?P<result>[A-Z_]+) .* cache:(?P<cache>\w+)$")


@pytest.fixture(scope="module", autouse=True)
def _need_ccache() -> None:
    if shutil.which("ccache") is None:
        pytest.fail("ccache is not installed (Debian package `ccache`)", pytrace=False)


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    """Where the daemon's cache goes: inside a 0755 dir the dropped user can traverse."""
    parent = Path(tempfile.mkdtemp(prefix="meshcc-ccache-test-"))
    os.chmod(parent, 0o755)
    yield parent / "ccache"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def cached_daemon(
    meshcc_daemon: Callable[..., Daemon], cache_dir: Path
) -> Callable[..., tuple[Daemon, int]]:
    """start(*extra) -> (daemon with --ccache in cache_dir, its status port)."""

    def start(*extra: str, jobs: int = 4) -> tuple[Daemon, int]:
        status = free_port()
        d = meshcc_daemon(
            "--ccache",
            "--ccache-dir",
            str(cache_dir),
            "--ccache-size",
            "1G",
            "--status-port",
            str(status),
            *extra,
            jobs=jobs,
        )
        return d, status

    return start


def _verdicts(d: Daemon) -> list[tuple[str, str]]:
    """(result word, cache word) of every job summary so far."""
    out = []
    for line in d.log_text().splitlines():
        m = _SUMMARY.search(line)
        if m:
            out.append((m["result"], m["cache"]))
    return out


def _wait_verdicts(d: Daemon, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while len(v := _verdicts(d)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return v


def _ccache_stats(cache_dir: Path) -> dict[str, int]:
    """ccache's own counters for the daemon's cache (`ccache --print-stats`)."""
    p = run(["ccache", "-d", str(cache_dir), "--print-stats"])
    stats = {}
    for line in p.stdout.splitlines():
        key, _, value = line.partition("\t")
        if value.isdigit():
            stats[key] = int(value)
    return stats


def _status_page(port: int) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/", timeout=10) as r:
        return str(r.read().decode())


def _project(root: Path, name: str, files: dict[str, str]) -> Path:
    d = root / name
    d.mkdir()
    for fname, text in files.items():
        (d / fname).write_text(text)
    return d


def _distcc(
    d: Daemon, cwd: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Stock distcc 3.4 (strict: no local fallback, so a compile that returns came back from
    the daemon)."""
    env = dict(env, DISTCC_HOSTS=d.host_spec(), DISTCC_FALLBACK="0", DISTCC_SKIP_LOCAL_RETRY="1")
    return run(["distcc", "gcc", *args], cwd=cwd, env=env, check=check)


def _meshcc_gcc(
    d: Daemon, cwd: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(env, DISTCC_HOSTS=d.host_spec(), DISTCC_FALLBACK="0", DISTCC_SKIP_LOCAL_RETRY="1")
    return run(["meshcc-gcc", *args], cwd=cwd, env=env, check=check)


def _local(cwd: Path, *args: str) -> bytes:
    out = cwd / "local.o"
    run([GCC, *args, "-o", str(out)], cwd=cwd)
    return out.read_bytes()


def test_second_identical_job_from_another_client_is_a_hit(
    cached_daemon: Callable[..., tuple[Daemon, int]],
    cache_dir: Path,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, status = cached_daemon()
    files = {"hello.c": HELLO, "hello.h": HELLO_H}
    a, b, c = (_project(tmp_path, n, files) for n in ("a", "b", "c"))
    want = _local(a, "-O2", "-c", "hello.c")

    _distcc(d, a, client_env, "-O2", "-c", "hello.c", "-o", "hello.o")
    assert _wait_verdicts(d, 1) == [("COMPILE_OK", "miss")], d.diagnostics()
    # Another client (meshcc's: an optimizing job is fully preprocessed), another directory:
    # the same job.
    _meshcc_gcc(d, b, client_env, "-O2", "-c", "hello.c", "-o", "hello.o")
    assert _wait_verdicts(d, 2) == [("COMPILE_OK", "miss"), ("COMPILE_OK", "hit")], d.diagnostics()
    _distcc(d, c, client_env, "-O2", "-c", "hello.c", "-o", "hello.o")
    assert _wait_verdicts(d, 3)[2] == ("COMPILE_OK", "hit"), d.diagnostics()
    # A -fdirectives-only job (no -O), which ccache 4.7 would compile without that option
    # (and fail), runs without ccache, and its object is the local one.
    _meshcc_gcc(d, c, client_env, "-c", "hello.c", "-o", "plain.o")
    time.sleep(0.3)
    assert len(_verdicts(d)) == 3, d.diagnostics()
    assert (c / "plain.o").read_bytes() == _local(c, "-c", "hello.c")
    for where in (a, b, c):
        assert (where / "hello.o").read_bytes() == want, where

    stats = _ccache_stats(cache_dir)
    assert stats["cache_miss"] == 1 and stats["preprocessed_cache_hit"] == 2, stats
    assert "ccache: 2 hits, 1 misses, 0 uncached since start" in _status_page(status)
    assert f"cache {cache_dir}, max size 1G" in d.log_text()

    # The cache belongs to the user the compilers run as, and nobody else may enter it.
    st = cache_dir.stat()
    runs_as = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert st.st_uid == runs_as and stat.S_IMODE(st.st_mode) == 0o700
    assert "max_size = 1G" in (cache_dir / "ccache.conf").read_text()


def test_debug_info_from_another_directory_is_a_miss(
    cached_daemon: Callable[..., tuple[Daemon, int]],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """-g records the client's directory (from the preprocessed source, hashed by ccache):
    the same source from another directory is another object, so it must not hit."""
    d, _ = cached_daemon()
    files = {"hello.c": HELLO_G}
    a, b = (_project(tmp_path, n, files) for n in ("a", "b"))
    want_a = _local(a, "-g", "-c", "hello.c")
    want_b = _local(b, "-g", "-c", "hello.c")
    assert want_a != want_b  # else this test could not tell a wrong hit from a right one

    _distcc(d, a, client_env, "-g", "-c", "hello.c", "-o", "hello.o")
    _distcc(d, b, client_env, "-g", "-c", "hello.c", "-o", "hello.o")
    assert [v for _, v in _wait_verdicts(d, 2)] == ["miss", "miss"], d.diagnostics()
    assert (a / "hello.o").read_bytes() == want_a
    assert (b / "hello.o").read_bytes() == want_b
    (a / "hello.o").unlink()
    _meshcc_gcc(d, a, client_env, "-g", "-c", "hello.c", "-o", "hello.o")
    assert [v for _, v in _wait_verdicts(d, 3)] == ["miss", "miss", "hit"], d.diagnostics()
    assert (a / "hello.o").read_bytes() == want_a


def test_other_options_miss_and_diagnostics_come_back(
    cached_daemon: Callable[..., tuple[Daemon, int]],
    cache_dir: Path,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, status = cached_daemon()
    p = _project(
        tmp_path, "p", {"hello.c": HELLO, "hello.h": HELLO_H, "warn.c": WARN, "bad.c": BAD}
    )
    _distcc(d, p, client_env, "-O0", "-c", "hello.c", "-o", "o0.o")
    _distcc(d, p, client_env, "-O2", "-c", "hello.c", "-o", "o2.o")
    assert (p / "o2.o").read_bytes() == _local(p, "-O2", "-c", "hello.c")
    # A warning is replayed from the cache: the second client sees it too.
    first = _distcc(d, p, client_env, "-Wall", "-c", "warn.c", "-o", "w1.o")
    second = _distcc(d, p, client_env, "-Wall", "-c", "warn.c", "-o", "w2.o")
    for out in (first, second):
        assert "unused variable" in out.stderr, out.stderr
    # A failed compile is not cached, and fails the same way each time.
    for _ in range(2):
        bad = _distcc(d, p, client_env, "-c", "bad.c", "-o", "bad.o", check=False)
        assert bad.returncode == 1 and "nope" in bad.stderr, bad.stderr
    verdicts = _wait_verdicts(d, 6)
    assert verdicts == [
        ("COMPILE_OK", "miss"),
        ("COMPILE_OK", "miss"),
        ("COMPILE_OK", "miss"),
        ("COMPILE_OK", "hit"),
        ("COMPILE_ERROR", "uncached"),
        ("COMPILE_ERROR", "uncached"),
    ], d.diagnostics()
    stats = _ccache_stats(cache_dir)
    assert stats["cache_miss"] == 3 and stats["compile_failed"] == 2, stats
    assert "ccache: 1 hits, 3 misses, 2 uncached since start" in _status_page(status)


def test_concurrent_jobs_are_counted_exactly(
    cached_daemon: Callable[..., tuple[Daemon, int]],
    cache_dir: Path,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Four jobs at once, twice: each job's verdict comes from its own ccache stats file,
    so the counts match ccache's even though the jobs overlap."""
    d, status = cached_daemon(jobs=4)
    files = {f"f{i}.c": f"int f{i}(int x) {{ return x * {i + 3}; }}\n" for i in range(4)}
    rounds = [_project(tmp_path, n, files) for n in ("one", "two")]
    env = dict(client_env, DISTCC_HOSTS=d.host_spec(), DISTCC_FALLBACK="0")
    for n, where in enumerate(rounds, 1):
        procs = [
            subprocess.Popen(
                ["distcc", "gcc", "-O2", "-c", name, "-o", name[:-2] + ".o"],
                cwd=where,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for name in files
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        _wait_verdicts(d, 4 * n)
    verdicts = [v for _, v in _verdicts(d)]
    assert sorted(verdicts[:4]) == ["miss"] * 4 and verdicts[4:] == ["hit"] * 4, d.diagnostics()
    for name in files:
        obj = name[:-2] + ".o"
        assert (rounds[1] / obj).read_bytes() == (rounds[0] / obj).read_bytes()
        assert (rounds[0] / obj).read_bytes() == _local(rounds[0], "-O2", "-c", name)
    stats = _ccache_stats(cache_dir)
    assert stats["cache_miss"] == 4 and stats["preprocessed_cache_hit"] == 4, stats
    assert "ccache: 4 hits, 4 misses, 0 uncached" in _status_page(status)


# ------------------------------------------------------------------ start-up and messages


def _daemon_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = loopback_daemon_argv(free_port(), *args)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env
    )


def _one_error(p: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, p.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--ccache", "/nonexistent/ccache"], 110, "/nonexistent/ccache is not an executable"),
        (["--ccache", GCC], 110, "is not ccache"),
        (["--ccache-size", "20G"], 101, "--ccache-dir needs --ccache"),
        (["--ccache", "--ccache-size", "lots"], 101, "not a cache size"),
    ],
)
def test_ccache_startup_mistakes(args: list[str], code: int, words: str, cache_dir: Path) -> None:
    p = _daemon_cmd(*args, "--ccache-dir", str(cache_dir))
    assert p.returncode == code, p.stderr
    assert words in p.stderr, p.stderr
    if "cache size" not in words:  # argparse's usage error has its own layout
        _one_error(p)


def test_no_ccache_on_path_exits_110(cache_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # an empty dir: no ccache (gcc is given)
    p = _daemon_cmd("--ccache", "--ccache-dir", str(cache_dir), "--compiler", GCC, env=env)
    assert p.returncode == 110, p.stderr
    assert "no ccache on PATH" in _one_error(p) and "--ccache /usr/bin/ccache" in p.stderr


def test_cache_dir_others_may_write_is_refused(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o777)
    os.chmod(cache_dir, 0o777)
    if os.geteuid() == 0:
        os.chown(cache_dir, pwd.getpwnam("nobody").pw_uid, -1)
    p = _daemon_cmd("--ccache", "--ccache-dir", str(cache_dir))
    assert p.returncode == 101, p.stderr
    assert "others may write the cache directory" in _one_error(p)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a directory another user owns")
def test_cache_dir_of_another_user_is_refused(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700)  # root's; the daemon runs as nobody
    p = _daemon_cmd("--ccache", "--ccache-dir", str(cache_dir))
    assert p.returncode == 101, p.stderr
    line = _one_error(p)
    assert "belongs to uid 0" in line and "chown" in line


def test_compiler_at_ccache_masquerade_says_what_it_is() -> None:
    if not os.path.islink(MASQUERADE_GCC):
        pytest.fail(f"{MASQUERADE_GCC} is missing (Debian's ccache package)", pytrace=False)
    p = _daemon_cmd("--compiler", MASQUERADE_GCC)
    assert p.returncode == 110, p.stderr
    line = _one_error(p)
    assert "ccache's masquerade link" in line and "fingerprint ccache" in line, line
    assert f"meshcc daemon --ccache --compiler {GCC}" in line, line
    assert "recurse" not in line


def test_discovery_skips_ccache_links_and_suggests_ccache(tmp_path: Path) -> None:
    """With /usr/lib/ccache first on PATH the daemon still offers the real gcc, and says
    how to get the cache."""
    if not os.path.isdir(os.path.dirname(MASQUERADE_GCC)):
        pytest.fail("/usr/lib/ccache is missing (Debian's ccache package)", pytrace=False)
    log = tmp_path / "d.log"
    env = dict(os.environ, PATH=f"/usr/lib/ccache:{os.path.dirname(GCC)}")
    argv = [
        sys.executable, "-m", "meshcc", "daemon", "--listen", LOOPBACK, "--no-discovery",
        "--port", str(free_port()), "--log-file", str(log), "--log-level", "info",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "daemon listening on" not in (text := log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
    assert "skipped ccache's masquerade links in /usr/lib/ccache" in text, text
    assert "`meshcc daemon --ccache` runs remote jobs through ccache" in text
    assert f"compiler {GCC}: gcc" in text, text
