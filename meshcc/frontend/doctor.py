"""Placeholder: this command is being written (issue 4)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER)


def run(ns: argparse.Namespace) -> int:
    print("meshcc: this command is not available yet", file=sys.stderr)
    return 2
