"""``meshcc top``: a live terminal view of the whole mesh and of this box's compiles.

This module is the command line only, and imports nothing heavy: every ``meshcc``
command's parser is built on each run (``meshcc hosts`` must stay quick). The view itself
(snapshots from the daemon and distcc's state files, rendering, curses) is
:mod:`meshcc.cli.topview`, imported when the command runs.
"""

from __future__ import annotations

import argparse

# ---------------------------------------------------------------- command line


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("the delay must be between 0.1 and 3600 seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-d",
        "--delay",
        type=_delay,
        default=1.0,
        metavar="SECS",
        help="refresh every SECS seconds (default 1)",
    )
    p.add_argument(
        "-n",
        "--iterations",
        type=_count,
        metavar="N",
        help="print N plain-text snapshots, --delay apart, then exit (no full screen)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print one plain-text snapshot and exit (also what happens when stdout is "
        "not a terminal)",
    )
    p.add_argument(
        "--distcc-dir",
        metavar="DIR",
        action="append",
        default=[],
        help="read compiles from DIR/state (repeatable); default: $DISTCC_DIR or "
        "~/.distcc, and Portage's ${PORTAGE_TMPDIR:-/var/tmp}/portage/.distcc",
    )


def run(ns: argparse.Namespace) -> int:
    from meshcc.cli import topview

    return topview.run(ns)
