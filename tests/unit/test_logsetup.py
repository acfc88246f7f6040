"""Where the daemon logs without --log-file: the journal, stderr or syslog, at distccd's levels
(a real daemon's start-up logging: integration/test_logsetup_daemon.py)."""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcc.daemon import logsetup

LEVELS = [  # (distccd level name, syslog priority meshcc sends for a record at that level)
    ("crit", 2),
    ("error", 3),
    ("warning", 4),
    ("notice", 5),
    ("info", 6),
    ("debug", 7),
]


def _emit_all() -> None:
    log = logging.getLogger("meshcc.test")
    for name, _ in LEVELS:
        log.log(logsetup.parse_level(name), "a %s line", name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    root = logging.getLogger("meshcc")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def _journal_env(f: object) -> dict[str, str]:
    st = os.fstat(f.fileno())  # type: ignore[attr-defined]
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "0" * 32}


def test_level_names_are_distccds() -> None:
    assert set(logsetup.LOG_LEVELS) == set(logsetup.SYSLOG_PRIORITIES)
    for name in (
        "emerg",
        "alert",
        "crit",
        "critical",
        "error",
        "err",
        "warning",
        "warn",
        "notice",
        "note",
        "info",
        "debug",
    ):
        assert name in logsetup.LOG_LEVELS
    for name, prio in LEVELS:
        assert logsetup.syslog_priority(logsetup.parse_level(name)) == prio
        assert logsetup.SYSLOG_PRIORITIES[name] == prio


def test_journal_stream_gets_priority_prefixes(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w+") as f:
        where = logsetup.configure_default(logging.DEBUG, stream=f, environ=_journal_env(f))
        assert where == "journal"
        _emit_all()
        logging.getLogger("meshcc.test").error("two\nlines")
        f.seek(0)
        lines = f.read().splitlines()
    assert lines[:6] == [
        "<2>CRITICAL: a crit line",
        "<3>ERROR: a error line",
        "<4>WARNING: a warning line",
        "<5>NOTICE: a notice line",
        "<6>INFO: a info line",
        "<7>DEBUG: a debug line",
    ]
    assert lines[6:] == ["<3>ERROR: two", "<3>lines"]


def test_journal_level_threshold(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w+") as f:
        logsetup.configure_default(
            logsetup.parse_level("notice"), stream=f, environ=_journal_env(f)
        )
        _emit_all()
        f.seek(0)
        assert [line[:3] for line in f.read().splitlines()] == ["<2>", "<3>", "<4>", "<5>"]


def test_journal_stream_of_another_file_is_not_the_journal(tmp_path: Path) -> None:
    """An inherited $JOURNAL_STREAM with stderr redirected to a file: no <N> in the file."""
    other = tmp_path / "other"
    other.write_text("")
    with open(other) as o, open(tmp_path / "stderr", "w+") as f:
        where = logsetup.configure_default(logging.INFO, stream=f, environ=_journal_env(o))
        assert where == "stderr"
        logging.getLogger("meshcc.test").log(logsetup.NOTICE, "hello")
        f.seek(0)
        assert f.read() == f"meshcc[{os.getpid()}] NOTICE: hello\n"


def test_syslog_when_stderr_is_dev_null(syslog_socket: tuple[str, socket.socket]) -> None:
    path, sock = syslog_socket
    with open(os.devnull, "w") as null:
        where = logsetup.configure_default(
            logging.DEBUG, stream=null, environ={}, syslog_address=path
        )
        assert where == "syslog"
        _emit_all()
    got = [sock.recv(4096) for _ in LEVELS]
    pid = os.getpid()
    for (name, prio), msg in zip(LEVELS, got, strict=True):
        # facility daemon (3) * 8 + priority; RFC 3164 tag meshcc[PID]
        assert msg.rstrip(b"\0").decode().startswith(f"<{3 * 8 + prio}>meshcc[{pid}]: ")
        assert msg.rstrip(b"\0").decode().endswith(f"a {name} line")


def test_syslog_missing_falls_back_to_stderr_with_one_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(logsetup, "_warned_no_syslog", False)
    monkeypatch.setattr(logsetup, "choose_destination", lambda *a, **k: "syslog")
    with open(tmp_path / "stderr", "w+") as f:
        for _ in range(2):  # the daemon configures twice (before and after opening the log)
            where = logsetup.configure_default(
                logging.INFO, stream=f, environ={}, syslog_address=str(tmp_path / "no-log")
            )
            assert where == "stderr"
        logging.getLogger("meshcc.test").log(logsetup.NOTICE, "still logged")
        f.seek(0)
        lines = f.read().splitlines()
    assert len(lines) == 2, lines
    assert "WARNING: cannot log to syslog at" in lines[0] and "no-log" in lines[0]
    assert lines[1].endswith("NOTICE: still logged")


def test_log_stderr_forces_stderr(syslog_socket: tuple[str, socket.socket], tmp_path: Path) -> None:
    path, sock = syslog_socket
    with open(os.devnull, "w") as null:
        where = logsetup.configure_default(
            logging.INFO, force_stderr=True, stream=null, environ={}, syslog_address=path
        )
    assert where == "stderr"
    sock.settimeout(0.2)
    logging.getLogger("meshcc.test").warning("not to syslog")
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_pipe_or_tty_stderr_stays_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        assert logsetup.choose_destination(f, {}) == "stderr"
    r, w = os.pipe()
    with os.fdopen(r) as rf, os.fdopen(w, "w") as wf:
        assert logsetup.choose_destination(wf, {}) == "stderr"
        del rf
    with open(os.devnull, "w") as null:
        assert logsetup.choose_destination(null, {}) == "syslog"
        assert logsetup.choose_destination(null, {}, force_stderr=True) == "stderr"
    assert logsetup.choose_destination(None, {}) == "syslog"


def test_daemon_options_and_cli() -> None:
    from meshcc.cli import main as cli
    from meshcc.daemon import settings as daemon

    ns = cli.build_parser().parse_args(["daemon", "--log-stderr"])
    assert daemon.DaemonOptions.from_namespace(ns).log_stderr is True
    ns = cli.build_parser().parse_args(["daemon"])
    opts = daemon.DaemonOptions.from_namespace(ns)
    assert opts.log_stderr is False and opts.log_file is None


def test_file_timestamps_match_loggings_own_across_seconds() -> None:
    """The log file's per-second cached timestamp is logging's default, record by record."""
    ours = logsetup._FileFormatter("%(asctime)s %(message)s")
    stock = logging.Formatter("%(asctime)s %(message)s")
    base = 1_780_000_000.0
    for created in (
        base + 0.001,
        base + 0.999,
        base + 1.0,
        base + 1.5,
        base + 0.2,
        base + 86400.75,
    ):
        record = logging.LogRecord("meshcc.x", logging.INFO, "", 0, "m", None, None)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        assert ours.format(record) == stock.format(record)


def test_records_skip_the_caller_lookup() -> None:
    """After configure(), records do not walk the stack for a file and line (no meshcc
    format prints them; it was a large part of a log line's cost in the daemon)."""
    logsetup.configure(logging.INFO, io.StringIO())
    record = logging.getLogger("meshcc.x").makeRecord(
        "meshcc.x", logging.INFO, "", 0, "m", (), None
    )
    assert logging._srcfile is None  # type: ignore[attr-defined]
    assert record.threadName is None and record.processName is None
