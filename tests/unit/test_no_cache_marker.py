"""The marker a daemon without a result cache leaves beside its control socket, so that its
compile clients skip direct mode's lookup (meshcc.transport.control_socket.mark_no_cache,
meshcc.daemon.resultcache.off_reason, meshcc.client.wrapper._keeps_no_cache)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshcc.client import wrapper
from meshcc.daemon import resultcache
from meshcc.daemon.settings import DaemonOptions
from meshcc.transport.control_socket import mark_no_cache
from meshcc.wire import control


@pytest.mark.parametrize(
    ("opts", "reason"),
    [
        (DaemonOptions(), None),
        (DaemonOptions(cache=False), "--no-cache"),
        (DaemonOptions(ccache="ccache"), "--ccache caches this box's jobs"),
        (DaemonOptions(ccache_size="1G"), "--ccache caches this box's jobs"),
        (DaemonOptions(ccache="ccache", cache_dir="/var/cache/x"), None),
    ],
)
def test_off_reason_follows_the_options(opts: DaemonOptions, reason: str | None) -> None:
    assert resultcache.off_reason(opts) == reason
    # the service user is given a cache directory exactly when a cache is asked for
    assert (resultcache.claim(opts) is None) == (reason is not None)


def test_marker_is_written_readable_and_seen_by_the_client(tmp_path: Path) -> None:
    sock = str(tmp_path / "control.sock")
    old = os.umask(0o077)
    try:
        assert mark_no_cache(sock, "--no-cache") is None
    finally:
        os.umask(old)
    marker = Path(sock + control.NO_CACHE_SUFFIX)
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644  # every local user's client reads it
    assert "keeps no result cache: --no-cache" in marker.read_text()
    assert wrapper._keeps_no_cache(sock)

    assert mark_no_cache(sock, None) is None
    assert not marker.exists()
    assert not wrapper._keeps_no_cache(sock)
    assert mark_no_cache(sock, None) is None  # nothing to remove is no trouble


def test_marker_never_follows_a_planted_link(tmp_path: Path) -> None:
    """A link at the marker's name is refused, not written through (the daemon may still
    be root there), and the trouble is said for the log."""
    sock = str(tmp_path / "control.sock")
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    os.symlink(target, sock + control.NO_CACHE_SUFFIX)
    trouble = mark_no_cache(sock, "--no-cache")
    assert trouble is not None and control.NO_CACHE_SUFFIX in trouble
    assert target.read_text() == "precious\n"
