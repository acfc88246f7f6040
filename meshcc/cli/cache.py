"""``meshcc cache stats|clear``: this box's result cache (meshcc.cache).

``stats`` reads the cache directory (entries, bytes on disk) and, when the local daemon's
status port answers, its counters since it started (hits, hits from home peers, misses,
uncacheable jobs, evictions, corrupt entries discarded). ``clear`` removes every entry
(root or the daemon's user); a running daemon then finds its entries gone and compiles
them again, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from meshcc.defaults import STATUS_PORT

__all__ = ["add_arguments", "daemon_figures", "render_figures", "run"]

TIMEOUT = 2.0
_MAX_REPLY = 4 * 1024 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("stats", "clear"), help="show the figures, or empty it")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the cache directory (default: the daemon's: $CACHE_DIRECTORY/results, "
        "/var/cache/meshcc/results as root, else ~/.cache/meshcc/results)",
    )
    p.add_argument(
        "--status-port",
        type=int,
        default=STATUS_PORT,
        metavar="PORT",
        help=f"the local daemon's status port, for its counters (default {STATUS_PORT})",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def daemon_figures(port: int = STATUS_PORT) -> dict[str, Any] | None:
    """The local daemon's result cache counters (its /status.json), or None."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=TIMEOUT) as r:
            data = json.loads(r.read(_MAX_REPLY))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    figures = data.get("result_cache") if isinstance(data, dict) else None
    return figures if isinstance(figures, dict) else None


def render_figures(f: dict[str, Any]) -> str:
    """One line of a daemon's counters (shared with ``meshcc stats``)."""
    return (
        f"result cache (this box's daemon, since it started): {f.get('hit', 0)} hits, "
        f"{f.get('remote_hit', 0)} from home peers, {f.get('miss', 0)} misses, "
        f"{f.get('off', 0)} uncacheable; {f.get('stored', 0)} stored, "
        f"{f.get('received', 0)} received from peers, {f.get('evicted', 0)} evicted, "
        f"{f.get('corrupt', 0)} corrupt discarded"
    ) + (
        f"\ndirect mode (no preprocessor): {f.get('direct_hit', 0)} hits, "
        f"{f.get('direct_miss', 0)} misses, {f.get('direct_stored', 0)} stored; "
        f"{f.get('direct_mesh_hit', 0)} records from home peers, "
        f"{f.get('direct_mesh_pushed', 0)} pushed to them, "
        f"{f.get('direct_mesh_received', 0)} received from peers"
        if "direct_hit" in f
        else ""
    )


def _scan(root: str) -> tuple[int, int]:
    """(entries, bytes) under the cache directory, read without opening the store."""
    entries = size = 0
    top = os.path.join(root, "v1")
    try:
        subs = list(os.scandir(top))
    except FileNotFoundError:
        return 0, 0
    for sub in subs:
        if not sub.is_dir(follow_symlinks=False):
            continue
        for e in os.scandir(sub.path):
            if len(e.name) == 64 and e.is_file(follow_symlinks=False):
                entries += 1
                size += e.stat(follow_symlinks=False).st_size
    return entries, size


def run(ns: argparse.Namespace) -> int:
    # Here, not at the top: every `meshcc` command builds this module's parser, and
    # `meshcc hosts` must not import logging or dataclasses (the store does).
    from meshcc.cache.store import DiskStore, default_dir

    root = ns.cache_dir or default_dir()
    if ns.action == "clear":
        store = DiskStore(root)
        try:
            n = _scan(root)[0]
            store.clear()
        except OSError as e:
            print(f"meshcc cache: cannot clear {root}: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"meshcc cache: removed {n} entries from {root}")
        return 0
    try:
        entries, size = _scan(root)
    except OSError as e:
        print(f"meshcc cache: cannot read {root}: {e.strerror or e}", file=sys.stderr)
        return 1
    figures = daemon_figures(ns.status_port)
    if ns.json:
        print(json.dumps({"dir": root, "entries": entries, "bytes": size, "daemon": figures}))
        return 0
    print(f"result cache {root}: {entries} entries, {size / 1024**2:.1f} MiB")
    if entries:
        print(f"  {size / entries / 1024:.1f} KiB per entry on average")
    if figures is not None:
        print(render_figures(figures))
        print(
            f"  limit {figures.get('limit_bytes', 0) / 1024**2:.0f} MiB; the daemon holds "
            f"{figures.get('entries', 0)} entries, {figures.get('bytes', 0) / 1024**2:.1f} MiB"
        )
    else:
        print(f"  (no daemon answered on 127.0.0.1:{ns.status_port} for its counters)")
    return 0
