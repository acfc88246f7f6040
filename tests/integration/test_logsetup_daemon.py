"""The daemon's start-up logging, seen from outside: `meshcc daemon` under systemd's journal
and with --log-file (the logging set-up itself: unit/test_logsetup.py)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from conftest import loopback_daemon_argv


def _journal_env(f: object) -> dict[str, str]:
    st = os.fstat(f.fileno())  # type: ignore[attr-defined]
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "0" * 32}


def _run_daemon(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    """A daemon that fails at once (port taken), so its start-up logging is observable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        argv = loopback_daemon_argv(s.getsockname()[1], *args)
        return subprocess.run(
            argv, check=False, text=True, timeout=60, stdin=subprocess.DEVNULL, **kw
        )


def test_daemon_under_journal_writes_prefixed_lines(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        env = dict(os.environ, **_journal_env(f))
        p = _run_daemon([], stdout=subprocess.DEVNULL, stderr=f, env=env)
    assert p.returncode == 102
    lines = err.read_text().splitlines()
    assert any(line.startswith("<3>ERROR: cannot listen") for line in lines), lines


def test_daemon_log_file_unchanged(tmp_path: Path) -> None:
    logf = tmp_path / "log"
    env = dict(os.environ, JOURNAL_STREAM="1:1")
    p = _run_daemon(["--log-file", str(logf)], capture_output=True, env=env)
    assert p.returncode == 102
    text = logf.read_text()
    assert " ERROR: cannot listen" in text and "<3>" not in text
    assert text.split(" meshcc[")[0][:4].isdigit()  # timestamped, as before
    assert "cannot listen" in p.stderr  # and whoever started us still hears about it
