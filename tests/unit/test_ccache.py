"""--ccache's pure parts: the per-job verdict from ccache's stats_log, the summary line, the
size option, the default cache dir, the start-up checks of the cache dir, and what the
toolchain layer says about ccache's masquerade links (real ccache runs:
integration/test_server_ccache.py)."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from meshcc.compiler.toolchain import Skipped, find_compilers, masquerade_reason
from meshcc.daemon import ccache
from meshcc.daemon.options import cache_size
from meshcc.daemon.settings import DaemonOptions
from meshcc.transport.server import JobResult, JobSummary, ccache_verdict

# What ccache 4.7 writes to stats_log for one run (header line: the input file).
MISS = "# hello.i\ncache_miss\ndirect_cache_miss\nlocal_storage_miss\npreprocessed_cache_miss\n"
HIT = "# hello.i\ndirect_cache_miss\nlocal_storage_hit\npreprocessed_cache_hit\n"
FAILED = "# bad.i\ncompile_failed\ndirect_cache_miss\npreprocessed_cache_miss\n"


@pytest.mark.parametrize(
    ("log", "verdict"),
    [
        (MISS, "miss"),
        (HIT, "hit"),
        ("# x.i\ndirect_cache_hit\n", "hit"),
        (FAILED, "uncached"),
        ("# x.i\nunsupported_compiler_option\n", "uncached"),
        ("", "uncached"),  # ccache died before counting
        ("# cache_miss.i\ncompile_failed\n", "uncached"),  # the header names a file, no counter
    ],
)
def test_verdict_from_stats_log(log: str, verdict: str) -> None:
    assert ccache_verdict(log) == verdict


def test_summary_line_keeps_distccd_layout_and_ends_with_the_cache_word() -> None:
    s = JobSummary("127.0.0.1:4000", JobResult.COMPILE_OK, time_ms=3, compiler="gcc", source="a.c")
    plain = "client: 127.0.0.1:4000 COMPILE_OK exit:0 sig:0 core:0 ret:0 time:3ms gcc a.c"
    assert s.line() == plain
    s.cache = "hit"
    assert s.line() == plain + " cache:hit"


@pytest.mark.parametrize("good", ["5G", "500M", "2Ti", "1.5G", "0", "64k", "10"])
def test_cache_size_accepts_ccache_sizes(good: str) -> None:
    assert cache_size(good) == good


@pytest.mark.parametrize("bad", ["", "lots", "5 G", "-1G", "5GB", "G", "1e9"])
def test_cache_size_refuses_others(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a cache size"):
        cache_size(bad)


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/meshcc:/var/cache/other")
    assert ccache.default_dir(0) == "/var/cache/meshcc/ccache"  # systemd's first entry
    monkeypatch.delenv("CACHE_DIRECTORY")
    assert ccache.default_dir(0) == "/var/cache/meshcc/ccache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ccache.default_dir(1000) == str(tmp_path / "meshcc" / "ccache")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored, as XDG says
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ccache.default_dir(1000) == str(tmp_path / ".cache" / "meshcc" / "ccache")


def test_dir_and_size_need_ccache() -> None:
    with pytest.raises(ccache.CcacheError, match="--ccache-size needs --ccache") as e:
        ccache.CcacheSetup(DaemonOptions(ccache_size="1G"))
    assert e.value.code == 101


def test_cache_dir_checks(tmp_path: Path) -> None:
    """Made 0700 when missing; one others may write is refused (its objects go to clients)."""
    d = tmp_path / "cache"
    setup = ccache.CcacheSetup(DaemonOptions(ccache="ccache", ccache_dir=str(d)))
    setup._own_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    os.chmod(d, 0o770)
    with pytest.raises(ccache.CcacheError, match=r"others may write .* chmod 0700"):
        setup._own_dir()
    os.chmod(d, 0o755)  # readable is fine: the objects are the clients' own code
    setup._own_dir()


def test_ccache_link_is_named_for_what_it_is(tmp_path: Path) -> None:
    """A ccache masquerade does not recurse (ccache skips its own directory): the reason to
    refuse it is that the daemon would fingerprint ccache, and the fix is --ccache."""
    real = tmp_path / "bin" / "ccache"
    real.parent.mkdir()
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    masq = tmp_path / "lib" / "ccache"
    masq.mkdir(parents=True)
    os.symlink(real, masq / "gcc")
    reason = masquerade_reason(str(masq / "gcc"))
    assert reason is not None
    assert "ccache's masquerade link" in reason and "--ccache" in reason
    assert "recurse" not in reason
    distcc = tmp_path / "distcc"
    distcc.write_text("#!/bin/sh\n")
    os.symlink(distcc, tmp_path / "gcc")
    assert "recurse" in (masquerade_reason(str(tmp_path / "gcc")) or "")


def test_discovery_hint(tmp_path: Path) -> None:
    real = tmp_path / "ccache"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    masq = tmp_path / "masq"
    masq.mkdir()
    os.symlink(real, masq / "gcc")
    _, skipped = find_compilers(str(masq))
    hint = ccache.discovery_hint(tuple(skipped), enabled=False)
    assert hint is not None and str(masq) in hint and "meshcc daemon --ccache" in hint
    assert ccache.discovery_hint(tuple(skipped), enabled=True) is None
    other = (Skipped("/usr/lib/distcc/gcc", "it is in a distcc masquerade directory"),)
    assert ccache.discovery_hint(other, enabled=False) is None
