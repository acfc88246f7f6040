"""Logging for long-running meshcc commands, in distccd's file-logger style.

Lines look like ``meshcc[PID] LEVEL: message`` (a log file adds a timestamp in
front, since syslog is not there to add one). Level names are distccd's, so
``--log-level notice`` means what it means to a distccd user.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import TextIO

# `logging` is imported only when a log is configured: the CLI imports LOG_LEVELS for
# argparse, and `meshcc hosts` must start fast (logging + its imports cost ~6 ms).
NOTICE = 25
_CRITICAL, _ERROR, _WARNING, _INFO, _DEBUG = 50, 40, 30, 20, 10  # logging's values

LOG_LEVELS: dict[str, int] = {
    "emerg": _CRITICAL,
    "alert": _CRITICAL,
    "crit": _CRITICAL,
    "critical": _CRITICAL,
    "error": _ERROR,
    "err": _ERROR,
    "warning": _WARNING,
    "warn": _WARNING,
    "notice": NOTICE,
    "note": NOTICE,
    "info": _INFO,
    "debug": _DEBUG,
}

_STREAM_FORMAT = "meshcc[%(process)d] %(levelname)s: %(message)s"
_FILE_FORMAT = "%(asctime)s meshcc[%(process)d] %(levelname)s: %(message)s"


def parse_level(name: str) -> int:
    """A distccd level name to a logging level; ValueError lists the valid names."""
    try:
        return LOG_LEVELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {name!r}; use one of: {', '.join(LOG_LEVELS)}"
        ) from None


def open_log_file(path: str) -> TextIO:
    """Open (append, line-buffered) before privileges are dropped; OSError if impossible."""
    return open(path, "a", buffering=1, encoding="utf-8", errors="replace")


def configure(level: int, stream: TextIO | None = None, *, to_file: bool = False) -> None:
    """Send the ``meshcc`` loggers to ``stream`` (default stderr) at ``level``."""
    import logging

    logging.addLevelName(NOTICE, "NOTICE")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(_FILE_FORMAT if to_file else _STREAM_FORMAT))
    root = logging.getLogger("meshcc")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
