"""--ccache in the service files: the systemd unit hands the daemon a writable cache dir
under ProtectSystem=strict, and OpenRC's start_pre creates the same dir for user meshcc
(systemd-analyze verify of the unit as a whole: test_packaging_tools.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from meshcc.daemon import ccache

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "meshcc.service"
INITD = ROOT / "packaging" / "gentoo" / "dev-util" / "meshcc" / "files" / "meshcc.initd"
RUN = "--directory --owner meshcc:meshcc --mode 0755 /run/meshcc"


def test_unit_gives_the_daemon_its_cache_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [x.strip() for x in UNIT.read_text().splitlines()]
    assert "CacheDirectory=meshcc" in lines and "CacheDirectoryMode=0700" in lines
    assert "ProtectSystem=strict" in lines  # hence CacheDirectory=, which stays writable
    # What systemd then sets is where the daemon (user meshcc, not root) puts the cache.
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/meshcc")
    assert ccache.default_dir(65534) == "/var/cache/meshcc/ccache"


def _start_pre(tmp_path: Path, opts: str) -> list[str]:
    """Run start_pre with checkpath stubbed; the checkpath calls it made."""
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    script = f'checkpath() {{ echo "$*" >> {calls}; }}\n. {INITD}\nstart_pre\n'
    env = dict(os.environ, MESHCC_OPTS=opts, RC_SVCNAME="meshcc")
    env.pop("CACHE_DIRECTORY", None)
    p = subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert p.returncode == 0, p.stderr
    return calls.read_text().splitlines()


def test_openrc_start_pre_makes_the_cache_dir_for_meshcc(tmp_path: Path) -> None:
    assert _start_pre(tmp_path, "--jobs 4 --ccache --ccache-size 20G") == [
        RUN,
        "--directory --owner meshcc:meshcc --mode 0700 /var/cache/meshcc",
        "--directory --owner meshcc:meshcc --mode 0700 /var/cache/meshcc/ccache",
    ]
    assert _start_pre(tmp_path, "--ccache=/usr/bin/ccache --ccache-dir /srv/cc") == [
        RUN,
        "--directory --owner meshcc:meshcc --mode 0700 /srv/cc",
    ]
    assert _start_pre(tmp_path, "--ccache --ccache-dir=/srv/cc2") == [
        RUN,
        "--directory --owner meshcc:meshcc --mode 0700 /srv/cc2",
    ]
    assert _start_pre(tmp_path, "--jobs 4") == [RUN]  # no --ccache: nothing more
