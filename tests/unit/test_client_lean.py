"""Values the compile client keeps to itself, so that its hot path imports less, must
equal those of the modules it no longer imports there; and the moved parsers still say no."""

import math
from pathlib import Path

import pytest

from meshcc.client import decisions
from meshcc.client import outcome as client_outcome
from meshcc.transport import client as transport_client
from meshcc.wire import outcome as wire_outcome


def test_stats_socket_suffix_is_the_codecs() -> None:
    assert client_outcome.STATS_SUFFIX == wire_outcome.SUFFIX
    assert "/x/control.sock" + client_outcome.STATS_SUFFIX == wire_outcome.report_socket_path(
        "/x/control.sock"
    )


def test_no_cache_marker_suffix_is_the_protocols() -> None:
    from meshcc.client import wrapper
    from meshcc.wire import control

    assert wrapper.NO_CACHE_SUFFIX == control.NO_CACHE_SUFFIX


def test_io_timeout_default_is_the_transports() -> None:
    assert decisions.DEFAULT_IO_TIMEOUT == transport_client.DEFAULT_IO_TIMEOUT
    assert decisions.parse_io_timeout(None) == decisions.DEFAULT_IO_TIMEOUT
    assert decisions.parse_io_timeout("") == decisions.DEFAULT_IO_TIMEOUT
    assert decisions.parse_io_timeout("2.5") == 2.5


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "abc", str(math.inf)])
def test_io_timeout_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="DISTCC_IO_TIMEOUT"):
        decisions.parse_io_timeout(bad)


def test_which_agrees_with_hostos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper's own PATH search (no ``os`` import) finds what hostos.which finds."""
    from meshcc import hostos
    from meshcc.client import wrapper

    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    (a / "cc1").write_text("")  # not executable
    (a / "cc2").mkdir()  # a directory
    (b / "cc1").write_text("")
    (b / "cc1").chmod(0o755)
    (c / "cc2").write_text("")
    (c / "cc2").chmod(0o755)
    monkeypatch.chdir(c)
    for path in (f"{a}:{b}:{c}", f"{a}::{b}", f"{b}", "", f"{a}"):
        for name in ("cc1", "cc2", "missing", "/bin/sh", "rel/x"):
            assert wrapper.which(name, path) == hostos.which(name, path), (name, path)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:3632", "[::1]:3632", "peer.lan:3632", "", "h\tx", "h\nx", "é:1", "\x01", "x" * 129],
)
def test_remote_record_is_the_codecs(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client builds the common ``remote`` record itself (no codec import): the bytes
    the daemon receives are the codec's, whatever the host name."""
    import socket

    control = tmp_path / "control.sock"
    monkeypatch.setenv("MESHCC_SOCKET", str(control))
    monkeypatch.delenv("MESHCC_STATS", raising=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as daemon:
        daemon.bind(str(control) + client_outcome.STATS_SUFFIX)
        daemon.settimeout(5)
        client_outcome.report("remote", host)
        assert daemon.recv(4096) == wire_outcome.encode("remote", host)
