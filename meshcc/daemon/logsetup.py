"""Logging for long-running meshcc commands, in distccd's file-logger style.

Lines look like ``meshcc[PID] LEVEL: message`` (a log file adds a timestamp in
front, since syslog is not there to add one). Level names are distccd's, so
``--log-level notice`` means what it means to a distccd user.

Where the daemon logs without ``--log-file`` (:func:`configure_default`), so that a
service's log lands where the service manager keeps logs:

- stderr is systemd's journal stream (``$JOURNAL_STREAM`` names stderr's device and
  inode): stderr, each line prefixed ``<N>`` with its syslog priority (the sd-daemon
  convention), no timestamp or pid, since journald records them;
- stderr is open on anything but ``/dev/null`` (a terminal, a pipe, a file: someone is
  reading it), or ``--log-stderr``: stderr, as before;
- otherwise (OpenRC's ``start-stop-daemon --background``, which points stdio at
  ``/dev/null``, or stderr closed): syslog through ``/dev/log``, facility daemon, ident
  ``meshcc``, as distccd logs by default; stderr with a one-time warning if there is no
  syslog socket.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time

from meshcc.loglevels import NOTICE  # imports logging and registers the NOTICE level

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import socket
    from collections.abc import Mapping
    from typing import ClassVar, TextIO

__all__ = [
    "LOG_DAEMON",
    "LOG_LEVELS",
    "NOTICE",
    "SYSLOG_ADDRESS",
    "SYSLOG_PRIORITIES",
    "choose_destination",
    "configure",
    "configure_default",
    "open_log_file",
    "parse_level",
    "syslog_priority",
]

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
_JOURNAL_FORMAT = "%(levelname)s: %(message)s"  # after the <N> prefix; journald adds the rest
_SYSLOG_FORMAT = "meshcc[%(process)d]: %(levelname)s: %(message)s"  # RFC 3164 tag, then text

SYSLOG_ADDRESS = "/dev/log"
LOG_DAEMON = 3  # syslog facility "daemon", as distccd uses

# Syslog priorities, the scale distccd's level names come from (<syslog.h>).
SYSLOG_PRIORITIES: dict[str, int] = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "critical": 2,
    "error": 3,
    "err": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "note": 5,
    "info": 6,
    "debug": 7,
}


def syslog_priority(levelno: int) -> int:
    """A logging level to the syslog priority journald and syslogd record (0-7)."""
    if levelno >= _CRITICAL:
        return 2  # crit: meshcc logs nothing above it; emerg/alert are for the kernel
    if levelno >= _ERROR:
        return 3
    if levelno >= _WARNING:
        return 4
    if levelno >= NOTICE:
        return 5
    if levelno >= _INFO:
        return 6
    return 7


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


class _FileFormatter(logging.Formatter):
    """logging's default timestamp (``2026-01-31 12:00:00,123``), with the date and time
    formatted once per second rather than per record (a localtime and a strftime each)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def configure(level: int, stream: TextIO | None = None, *, to_file: bool = False) -> None:
    """Send the ``meshcc`` loggers to ``stream`` (default stderr) at ``level``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        _FileFormatter(_FILE_FORMAT) if to_file else logging.Formatter(_STREAM_FORMAT)
    )
    _install(handler, level)


def _lean_records() -> None:
    """Skip what every log record would collect and no meshcc format prints: the caller's
    file and line (a walk up the stack per record), the thread and the multiprocessing
    process name. The logging HOWTO's "Optimization" section names these switches. The
    daemon logs a few lines per compile job at info level: this is most of their cost."""
    logging._srcfile = None  # no findCaller(): no %(pathname)s/%(lineno)d in our formats
    logging.logThreads = False
    logging.logMultiprocessing = False


def _install(handler: logging.Handler, level: int) -> None:
    _lean_records()
    root = logging.getLogger("meshcc")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def _is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """``$JOURNAL_STREAM`` (``DEV:INODE``) names this stream: systemd connected it to journald.

    Checking the inode (as sd-daemon(3) advises) keeps a child whose stderr was redirected
    from writing ``<N>`` prefixes into a file."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


def _is_discarded(stream: TextIO | None) -> bool:
    """Nobody reads this stream: it is missing, closed, or ``/dev/null``."""
    if stream is None:
        return True
    try:
        st = os.fstat(stream.fileno())
        null = os.stat(os.devnull)
    except (ValueError, OSError, AttributeError):
        return not hasattr(stream, "write")  # an in-memory stream (tests) is read
    return (st.st_rdev, st.st_mode) == (null.st_rdev, null.st_mode)


def choose_destination(
    stream: TextIO | None, environ: Mapping[str, str], *, force_stderr: bool = False
) -> str:
    """Where the default log goes: ``journal``, ``stderr`` or ``syslog`` (see the module doc)."""
    if stream is not None and _is_journal_stream(stream, environ):
        return "journal"
    if force_stderr or not _is_discarded(stream):
        return "stderr"
    return "syslog"


class _JournalFormatter(logging.Formatter):
    """``<N>`` + the line: journald takes N as the priority (sd-daemon(3))."""

    def __init__(self) -> None:
        super().__init__(_JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        # one prefix per line, so a multi-line message (a traceback) keeps its priority
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def _syslog_handler(address: str | tuple[str, int]) -> logging.Handler:
    """A SysLogHandler, facility daemon, that sends NOTICE as notice (the stdlib would say
    warning); OSError when the socket is not there."""
    import logging.handlers

    class NoticeSysLogHandler(logging.handlers.SysLogHandler):
        priority_map: ClassVar[dict[str, str]] = {
            **logging.handlers.SysLogHandler.priority_map,
            "NOTICE": "notice",
        }

    handler = NoticeSysLogHandler(address=address, facility=LOG_DAEMON)
    # typeshed does not declare the handler's socket attribute (None after a failed connect)
    sock: socket.socket | None = getattr(handler, "socket", None)
    if isinstance(address, str) and (sock is None or sock.fileno() < 0):
        handler.close()  # some Pythons swallow the connect error: find out what it was
        os.stat(address)  # OSError (ENOENT) when there is no syslog socket at all
        raise OSError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
    return handler


_warned_no_syslog = False


def configure_default(
    level: int,
    *,
    force_stderr: bool = False,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    syslog_address: str | tuple[str, int] | None = None,
) -> str:
    """Log where a service's log belongs (no ``--log-file``); returns the destination used:
    ``journal``, ``stderr`` or ``syslog`` (``stderr`` also when syslog is unreachable)."""
    global _warned_no_syslog
    logging.addLevelName(NOTICE, "NOTICE")
    out = sys.stderr if stream is None else stream
    where = choose_destination(
        out, os.environ if environ is None else environ, force_stderr=force_stderr
    )
    if where == "journal":
        handler: logging.Handler = logging.StreamHandler(out)
        handler.setFormatter(_JournalFormatter())
        _install(handler, level)
        return where
    if where == "syslog":
        address = SYSLOG_ADDRESS if syslog_address is None else syslog_address
        try:
            handler = _syslog_handler(address)
        except OSError as e:
            configure(level, out)
            if not _warned_no_syslog:
                _warned_no_syslog = True
                logging.getLogger("meshcc.log").warning(
                    "cannot log to syslog at %s (%s): logging to stderr", address, e.strerror or e
                )
            return "stderr"
        handler.setFormatter(logging.Formatter(_SYSLOG_FORMAT))
        _install(handler, level)
        return where
    configure(level, out)
    return "stderr"
