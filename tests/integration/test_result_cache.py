"""The result cache (meshcc.cache) in a real daemon, with real gcc, stock distcc 3.4 and
meshcc-gcc, on loopback.

What must hold: a repeated job, from any client, is answered from the cache with the
object and the warnings exactly as the first compile gave them (and as a local gcc
gives them); a corrupted entry is detected, logged once and compiled again; jobs whose
output is not reproducible (-flto without -frandom-seed) and jobs whose client asked for
no cache are never stored; failures are not stored; the cache survives a restart; the
summary lines, the status page, /metrics and the peer GET/PUT endpoints agree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import LOOPBACK, Daemon, free_port, run
from meshcc.cache.store import Entry

GCC = shutil.which("gcc") or "/usr/bin/gcc"
WARN = '#include "w.h"\nint f(int x) { int unused; return x * FACTOR; }\n'
WARN_H = "#define FACTOR 3\n"
BAD = "int f(void) { return nope; }\n"
_SUMMARY = re.compile(r"client: \S+ (?P<result>[A-Z_]+) .* rcache:(?P<rcache>[\w-]+)")


@pytest.fixture
def cache_root() -> Iterator[Path]:
    """A 0755 parent the dropped daemon user can traverse; the daemon makes results/."""
    parent = Path(tempfile.mkdtemp(prefix="meshcc-rcache-test-"))
    os.chmod(parent, 0o755)
    yield parent / "results"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def start(
    meshcc_daemon: Callable[..., Daemon], cache_root: Path
) -> Callable[..., tuple[Daemon, int]]:
    def go(*extra: str) -> tuple[Daemon, int]:
        status = free_port()
        d = meshcc_daemon(
            "--cache-dir", str(cache_root), "--status-port", str(status), *extra, jobs=2
        )
        return d, status

    return go


def _verdicts(d: Daemon, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        out = [
            (m["result"], m["rcache"])
            for line in d.log_text().splitlines()
            if (m := _SUMMARY.search(line))
        ]
        if len(out) >= count or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def _client(
    kind: str, d: Daemon, cwd: Path, env: dict[str, str], *args: str, check: bool = True
) -> tuple[int, str]:
    env = dict(env, DISTCC_HOSTS=d.host_spec(), DISTCC_FALLBACK="0", DISTCC_SKIP_LOCAL_RETRY="1")
    argv = ["distcc", "gcc", *args] if kind == "distcc" else ["meshcc-gcc", *args]
    p = run(argv, cwd=cwd, env=env, check=check)
    return p.returncode, p.stderr


def _project(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "w.c").write_text(WARN)
    (d / "w.h").write_text(WARN_H)
    (d / "bad.c").write_text(BAD)
    return d


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_repeat_is_a_hit_with_the_same_object_and_warnings(
    start: Callable[..., tuple[Daemon, int]],
    cache_root: Path,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, status = start()
    a, b, c = (_project(tmp_path, n) for n in "abc")
    # -Wunused-macros: meshcc-gcc preprocesses fully (as distcc does), not -fdirectives-only,
    # so both clients send the same body and share a key.
    args = ("-O2", "-Wall", "-Wunused-macros", "-c", "w.c", "-o", "w.o")
    run([GCC, *args[:-1], "local.o"], cwd=a)
    want = (a / "local.o").read_bytes()

    _, err1 = _client("distcc", d, a, client_env, *args)
    assert "unused" in err1
    assert _verdicts(d, 1) == [("COMPILE_OK", "miss")], d.diagnostics()
    _, err2 = _client("meshcc", d, b, client_env, *args)  # another client, another dir
    _, err3 = _client("distcc", d, c, client_env, *args)
    assert _verdicts(d, 3) == [
        ("COMPILE_OK", "miss"),
        ("COMPILE_OK", "hit"),
        ("COMPILE_OK", "hit"),
    ], d.diagnostics()
    for where in (a, b, c):
        assert (where / "w.o").read_bytes() == want, where
    assert err1 == err3  # the same client: byte-identical stderr, warning included
    assert "unused" in err2

    # Failures are not stored: the same error twice compiles twice.
    for _ in range(2):
        rc, err = _client("distcc", d, a, client_env, "-c", "bad.c", check=False)
        assert rc != 0 and "nope" in err
    assert _verdicts(d, 5)[3:] == [("COMPILE_ERROR", "miss")] * 2

    page = _get(f"http://{LOOPBACK}:{status}/")[1].decode()
    assert "result cache: 2 hits, 0 from home peers, 3 misses" in page, page
    metrics = _get(f"http://{LOOPBACK}:{status}/metrics")[1].decode()
    assert 'meshcc_result_cache_jobs_total{result="hit"} 2' in metrics, metrics
    assert "meshcc_result_cache_entries 1" in metrics

    # The peers' endpoint: GET the entry by key, checked like a local read.
    files = list((cache_root / "v1").glob("*/*"))
    assert len(files) == 1
    key = files[0].name
    code, blob = _get(f"http://{LOOPBACK}:{status}/cache/{key}")
    assert code == 200 and Entry.decode(key, blob).obj == want
    assert _get(f"http://{LOOPBACK}:{status}/cache/{'0' * 64}")[0] == 404
    assert _get(f"http://{LOOPBACK}:{status}/cache/../../etc/passwd")[0] == 404


def test_corrupt_entry_is_detected_and_compiled_again(
    start: Callable[..., tuple[Daemon, int]],
    cache_root: Path,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, _ = start()
    a = _project(tmp_path, "a")
    args = ("-O2", "-c", "w.c", "-o", "w.o")
    _client("distcc", d, a, client_env, *args)
    want = (a / "w.o").read_bytes()
    (entry,) = (cache_root / "v1").glob("*/*")
    data = bytearray(entry.read_bytes())
    data[-10] ^= 0x55  # a bit flip inside the object
    entry.write_bytes(bytes(data))
    (a / "w.o").unlink()
    _client("distcc", d, a, client_env, *args)
    assert _verdicts(d, 2) == [("COMPILE_OK", "miss"), ("COMPILE_OK", "miss")], d.diagnostics()
    assert (a / "w.o").read_bytes() == want
    assert d.log_text().count("discarding corrupt entry") == 1
    _client("distcc", d, a, client_env, *args)  # stored again, whole
    assert _verdicts(d, 3)[2] == ("COMPILE_OK", "hit")


def test_unreproducible_and_opted_out_jobs_are_not_cached(
    start: Callable[..., tuple[Daemon, int]],
    cache_root: Path,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, _ = start()
    a = _project(tmp_path, "a")
    lto = ("-O2", "-flto", "-c", "w.c", "-o", "w.o")
    # meshcc-gcc: stock distcc 3.4 keeps every -flto job local.
    _client("meshcc", d, a, client_env, *lto)
    first = (a / "w.o").read_bytes()
    _client("meshcc", d, a, client_env, *lto)
    # Why it must not be cached: gcc itself gives another object each time.
    assert (a / "w.o").read_bytes() != first
    assert _verdicts(d, 2) == [("COMPILE_OK", "off")] * 2, d.diagnostics()

    seeded = ("-O2", "-flto", "-frandom-seed=w.o", "-c", "w.c", "-o", "w.o")
    _client("meshcc", d, a, client_env, *seeded)
    first = (a / "w.o").read_bytes()
    _client("meshcc", d, a, client_env, *seeded)
    assert (a / "w.o").read_bytes() == first
    assert _verdicts(d, 4)[2:] == [("COMPILE_OK", "miss"), ("COMPILE_OK", "hit")]

    # MESHCC_CACHE=0: meshcc-gcc sends NO_CACHE_ARG (stock distcc strips every -D it is
    # given, so it cannot ask; gcc ignores -D on preprocessed input, so stock distccd can).
    off = dict(client_env, MESHCC_CACHE="0")
    for _ in range(2):
        _client("meshcc", d, a, off, "-O1", "-c", "w.c", "-o", "w.o")
    assert _verdicts(d, 6)[4:] == [("COMPILE_OK", "off")] * 2
    assert len(list((cache_root / "v1").glob("*/*"))) == 1  # only the seeded LTO job


def test_cache_survives_a_restart_and_no_cache_turns_it_off(
    start: Callable[..., tuple[Daemon, int]],
    meshcc_daemon: Callable[..., Daemon],
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, _ = start()
    a = _project(tmp_path, "a")
    args = ("-O2", "-Wunused-macros", "-c", "w.c", "-o", "w.o")  # full preprocessing (above)
    _client("distcc", d, a, client_env, *args)
    assert _verdicts(d, 1) == [("COMPILE_OK", "miss")]
    d.stop()
    d2, _ = start()
    _client("meshcc", d2, a, client_env, *args)
    assert _verdicts(d2, 1) == [("COMPILE_OK", "hit")], d2.diagnostics()
    off = meshcc_daemon("--no-cache")
    _client("distcc", off, a, client_env, *args)
    time.sleep(0.3)
    assert "rcache:" not in off.log_text() and "COMPILE_OK" in off.log_text()


def test_meshcc_cache_stats_and_clear(
    start: Callable[..., tuple[Daemon, int]],
    cache_root: Path,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    d, status = start()
    a = _project(tmp_path, "a")
    args = ("-O2", "-c", "w.c", "-o", "w.o")
    _client("distcc", d, a, client_env, *args)
    _client("distcc", d, a, client_env, *args)
    assert _verdicts(d, 2) == [("COMPILE_OK", "miss"), ("COMPILE_OK", "hit")]
    cli = ["meshcc", "cache", "--cache-dir", str(cache_root), "--status-port", str(status)]
    out = run([*cli, "stats"], env=client_env).stdout
    assert f"result cache {cache_root}: 1 entries" in out, out
    assert "1 hits, 0 from home peers, 1 misses, 0 uncacheable; 1 stored" in out, out
    snap = json.loads(run([*cli, "stats", "--json"], env=client_env).stdout)
    assert snap["entries"] == 1 and snap["daemon"]["hit"] == 1 and snap["bytes"] > 0
    out = run([*cli, "clear"], env=client_env).stdout
    assert "removed 1 entries" in out, out
    assert not list((cache_root / "v1").glob("*/*"))
    _client("distcc", d, a, client_env, *args)  # the daemon finds its entry gone: compiles
    assert _verdicts(d, 3)[2] == ("COMPILE_OK", "miss"), d.diagnostics()
    _client("distcc", d, a, client_env, *args)
    assert _verdicts(d, 4)[3] == ("COMPILE_OK", "hit")
