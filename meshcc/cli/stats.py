"""``meshcc stats``: how this box's compiles ended, and why a build did not distribute.

Asks the local daemon over its outcome socket (:mod:`meshcc.wire.outcome`, beside the
control socket) for the counts the compile clients reported: remote (per host), local by
choice (per reason), fallback, refused, busy (each with its reason), failed, cpp_error.
The counts are the daemon's, since it started or since the last ``--reset`` (root or the
daemon's user), for every local user's compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from meshcc.wire import control
from meshcc.wire import outcome as wire

TIMEOUT = 5.0
_MAX_REPLY = 1024 * 1024
_TITLES = {
    "remote": "remote (compiled by a peer)",
    "local": "local by choice (not distributable)",
    "fallback": "fallback (distributable, compiled here)",
    "refused": "refused by a peer (compiled here)",
    "share": "this box's share (granted by the daemon)",
    "busy": "busy (a full peer said BUSY: compiled here)",
    "failed": "failed (not compiled: DISTCC_FALLBACK=0)",
    "cpp_error": "preprocessor error (an error in the code)",
}


class StatsError(Exception):
    """No daemon answered, or it refused; ``str(e)`` is the message for the user."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--reset",
        action="store_true",
        help="zero the counts (root or the daemon's user; the daemon keeps them in memory "
        "since it started)",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="the daemon's control socket (default: $MESHCC_SOCKET, /run/meshcc, per-user)",
    )


def ask(message: bytes, control_path: str | None = None) -> dict[str, Any]:
    """Send ``message`` (QUERY or RESET) to the first daemon's outcome socket found; its
    JSON reply. StatsError if none answers."""
    paths = [control_path] if control_path else control.client_socket_paths()
    tried = []
    for ctl in paths:
        path = wire.report_socket_path(ctl)
        try:
            os.stat(path)
        except OSError as e:
            tried.append(f"{path}: {e.strerror or e}")
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind("")  # an abstract auto-bound address, so the daemon can answer
            sock.settimeout(TIMEOUT)
            sock.sendto(message, path)
            data = sock.recv(_MAX_REPLY)
        except TimeoutError:
            tried.append(f"{path}: no answer within {TIMEOUT:g}s")
            continue
        except OSError as e:
            tried.append(f"{path}: {e.strerror or e}")
            continue
        finally:
            sock.close()
        try:
            reply = json.loads(data)
        except ValueError:
            raise StatsError(f"{path}: not a meshcc daemon's answer") from None
        if not isinstance(reply, dict):
            raise StatsError(f"{path}: not a meshcc daemon's answer")
        if not reply.get("ok"):
            raise StatsError(f"{path}: {reply.get('error', 'refused')}")
        return reply
    raise StatsError(
        "no meshcc daemon answered (" + "; ".join(tried) + "); start `meshcc daemon`, "
        "or pass --socket PATH"
    )


def render(snap: dict[str, Any]) -> str:
    """The human-readable report of a counts snapshot."""
    totals: dict[str, int] = snap.get("totals", {})
    entries: list[dict[str, Any]] = snap.get("entries", [])
    since = snap.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    total = sum(totals.values())
    lines = [f"compiles on this box since {when}: {total}"]
    for outcome in wire.OUTCOMES:
        n = totals.get(outcome, 0)
        share = f" ({100 * n / total:.0f}%)" if total and n else ""
        lines.append(f"  {n:>7}  {_TITLES[outcome]}{share}")
        groups: dict[str, int] = {}
        for e in entries:
            if e.get("outcome") != outcome:
                continue
            host, reason = e.get("host", ""), e.get("reason", "")
            if outcome == "remote":
                key = f"{host}" + (f": {reason}" if reason else "")
            else:
                key = f"{host}: {reason}" if host and reason else reason or host or "(no reason)"
            groups[key] = groups.get(key, 0) + int(e.get("count", 0))
        for key, count in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {count:>7}    {key}")
    remote = totals.get("remote", 0)
    distributable = total - totals.get("local", 0) - totals.get("cpp_error", 0)
    if distributable > 0:
        in_share = totals.get("share", 0)
        lines.append(
            f"distributed {remote} of {distributable} distributable compiles "
            f"({100 * remote / distributable:.0f}%)"
            + (f"; {in_share} ran in this box's own share of the mesh" if in_share else "")
        )
    attempts = snap.get("failed_attempts") or []
    if attempts:
        lines.append("failed attempts by host (a compile may then have succeeded elsewhere):")
        for a in attempts:
            lines.append(f"  {a.get('count', 0):>7}  {a.get('host', '?')} ({a.get('kind', '?')})")
    dropped = snap.get("dropped") or {}
    if dropped:
        text = ", ".join(f"{k} {v}" for k, v in dropped.items())
        lines.append(f"reports dropped by the daemon: {text}")
    return "\n".join(lines)


def run(ns: argparse.Namespace) -> int:
    try:
        if ns.reset:
            ask(wire.RESET, ns.socket)
            print("meshcc stats: counts reset")
            return 0
        snap = ask(wire.QUERY, ns.socket)
    except StatsError as e:
        print(f"meshcc stats: {e}", file=sys.stderr)
        return 1
    snap.pop("ok", None)
    from meshcc.cli.cache import daemon_figures, render_figures

    cache = daemon_figures()  # the daemon's result cache, from its status port (or None)
    if ns.json:
        print(json.dumps(dict(snap, result_cache=cache), indent=1))
    else:
        print(render(snap))
        if cache is not None:
            print(render_figures(cache))
    return 0
