"""``meshcc hosts``: the DISTCC_HOSTS line of the live peers that match a compiler.

Asks the local daemon over the control socket (fast path: argparse and the control
client, no zeroconf, asyncio or logging). With no daemon it browses the network itself for
``--browse-time`` seconds (a browse-only Mesh: nothing is announced) and says so.

The line lists *remote* peers only, never this box: distcc already compiles its local
share (``localhost`` slots are implicit in distcc's default localslots), and listing
ourselves would make distcc send jobs over TCP to our own daemon.

On a box with no ``cc`` at all (a LiveCD: its daemon is a mesh-only node) the default
``--cc cc`` cannot be checked: the peers are listed without a compiler check, and stderr
says so. A ``--cc`` given by name or path that does not exist is still an error.

``--explain`` shows, beside each peer's verdict, its live load as the daemon's load
channel knows it (free slots of its jobs, compiles running and waiting there, measured
speed, and the share of its slots promised to this box's clients, with how many of them
are held), and this box's own figures: what the lease broker weighs, so a user sees why
a peer gets the jobs it gets. A peer without live figures (a stock distccd, an older
meshcc, silent for the stale time, or no daemon here) shows its mDNS hint instead.

Exit status: 0 when the line has at least one host; 1 when it is empty (stderr says
why) or on an error.
"""

from __future__ import annotations

import argparse
import os
import sys

from meshcc.wire import control

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import TextIO

EXIT_OK = 0
EXIT_EMPTY = 1
REPLY_TIMEOUT_S = 30.0  # the first request for a compiler probes it (a few gcc runs)


class HostsError(Exception):
    """A one-line reason for the user."""


def resolve_cc(cc: str) -> str:
    """``--cc`` as the user would invoke it: a path, or a name looked up on PATH."""
    if "/" in cc:
        path = os.path.abspath(cc)
        if not os.path.isfile(path):
            raise HostsError(f"--cc {cc}: no such file")
        return path
    from meshcc import hostos

    found = hostos.which(cc)
    if found is not None:
        return os.path.abspath(found)
    raise HostsError(f"--cc {cc}: not found on PATH")


def ask_daemon(cc: str | None, cc_path: str | None) -> tuple[control.HostsReply, str] | None:
    """The local daemon's hosts reply for ``cc`` and the socket it came from; None when no
    daemon answers (HostsError when one answers badly or refuses)."""
    from meshcc.transport import control_client

    try:
        conn = control_client.connect(os.environ)
    except control_client.NoDaemon:
        return None
    except control.ControlError as e:
        raise HostsError(str(e)) from None
    with conn:
        try:
            reply = conn.hosts(cc, cc_path, REPLY_TIMEOUT_S)
        except control.ControlError as e:
            raise HostsError(f"bad reply from the daemon on {conn.path}: {e}") from None
    if isinstance(reply, control.ErrorReply):
        raise HostsError(f"the daemon on {conn.path} refused: {reply.error}")
    return reply, conn.path


DEFAULT_CC = "cc"  # the --cc default (cli/main.py)


def browse(ns: argparse.Namespace, cc: str, cc_path: str | None) -> control.HostsReply:
    """No daemon: browse for ``--browse-time`` seconds and judge what was seen
    (``cc_path`` None: no compiler check)."""
    import asyncio
    import logging

    from meshcc.compiler import toolchain
    from meshcc.compiler.fingerprints import ClientCompiler
    from meshcc.daemon import logsetup
    from meshcc.mesh.matching import hosts_line
    from meshcc.mesh.netif import InterfaceError
    from meshcc.mesh.service import Mesh, MeshConfig

    logsetup.configure(logging.WARNING)
    fp: ClientCompiler | None = None
    if cc_path is not None:
        try:
            probe = toolchain.probe(cc_path)
        except toolchain.ToolchainError as e:
            raise HostsError(f"--cc {cc}: not a usable gcc: {e}") from None
        fp = ClientCompiler.from_probe(cc, os.path.realpath(cc_path), probe)

    async def run() -> control.HostsReply:
        mesh = Mesh(
            MeshConfig(
                interfaces=tuple(ns.interface),
                allow=tuple(ns.allow),
                accept_unverified=ns.accept_unverified,
                announce=False,
            ),
            [],
            port=0,
            jobs=0,
        )
        try:
            await mesh.start()
        except InterfaceError as e:
            raise HostsError(str(e)) from None
        try:
            if mesh.status.discovery:
                await asyncio.sleep(ns.browse_time)
            verdicts = mesh.explain(fp)
            st = mesh.status
        finally:
            await mesh.stop()
        status = st.reply(peers=len(verdicts))
        return control.HostsReply(
            hosts_line(verdicts),
            [v.to_dict() for v in verdicts],
            status,
            fp.describe() if fp is not None else None,
        )

    return asyncio.run(run())


# ---------------------------------------------------------------- output


def _toolchains(peer: dict[str, object]) -> str:
    """``gcc, g++ 12.2.0 x86_64-linux-gnu bu 2.40``: drivers grouped by fingerprint (a box's
    gcc, c89-gcc and c99-gcc are one gcc), in the order the peer announced them."""
    groups: dict[tuple[object, object, object], list[str]] = {}
    toolchains = peer.get("toolchains")
    for t in toolchains if isinstance(toolchains, list) else []:
        if not isinstance(t, dict):
            continue
        drivers = groups.setdefault((t.get("version"), t.get("target"), t.get("binutils")), [])
        if t.get("driver") not in drivers:
            drivers.append(str(t.get("driver")))
    return (
        "; ".join(
            f"{', '.join(drivers)} {version} {target} bu {binutils or '?'}"
            for (version, target, binutils), drivers in groups.items()
        )
        or "-"
    )


def _host_names(verdicts: list[dict[str, object]]) -> list[str]:
    """Each peer's host name, with its node id when several peers share the name (boxes
    cloned from one image keep the hostname but are distinct peers)."""
    hosts = [str(control.verdict_peer(v).get("host")) for v in verdicts]
    names = []
    for v, host in zip(verdicts, hosts, strict=True):
        node = str(control.verdict_peer(v).get("node_id") or "")
        names.append(f"{host}#{node[:6]}" if hosts.count(host) > 1 and node else host)
    return names


def rate(bytes_per_s: int) -> str:
    """A measured speed for a table cell: ``850 kB/s``, ``1.2 MB/s``; ``?`` when the
    peer has not measured one yet (no compile since it started)."""
    if bytes_per_s <= 0:
        return "?"
    if bytes_per_s < 1000:
        return f"{bytes_per_s} B/s"
    if bytes_per_s < 999_500:  # what rounds to 1000 kB/s reads better as 1.0 MB/s
        return f"{bytes_per_s / 1000:.0f} kB/s"
    return f"{bytes_per_s / 1_000_000:.1f} MB/s"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def peer_load(
    verdict: dict[str, object], status: control.StatusReply
) -> control.PeerLoadInfo | None:
    """The peer's live load: the daemon's copy in the verdict, else the status reply's
    list (by peer key); None when the daemon has no fresh record of it."""
    live = verdict.get("load")
    if isinstance(live, dict):
        return control.PeerLoadInfo.from_message(live)
    key = control.verdict_peer(verdict).get("key")
    return next((info for info in status.loads if key and info.key == key), None)


def load_cells(
    verdict: dict[str, object], status: control.StatusReply
) -> tuple[str, str, str, str, str]:
    """(FREE, RUN, WAIT, SPEED, SHARE) of one row. FREE is ``free/jobs``; SHARE is
    ``held/promised``: this box's clients hold ``held`` of the slots the peer promised
    them. Without live figures: the ``free`` its mDNS record announced (``~``: a hint
    republished at most every 30 s), or its job limit, and ``-`` for the rest."""
    info = peer_load(verdict, status)
    if info is not None:
        return (
            f"{info.free}/{info.jobs}",
            str(info.running),
            str(info.queued),
            rate(info.speed),
            f"{info.held}/{info.share}",
        )
    peer = control.verdict_peer(verdict)
    limit = _int(peer.get("limit")) or _int(peer.get("jobs"))
    free = _int(peer.get("free"))
    hint = f"~{free if free is not None else limit}/{limit}" if limit is not None else "-"
    return hint, "-", "-", "-", "-"


def this_box(status: control.StatusReply) -> str | None:
    """This box's own line (the broker counts it as one more peer); None without a
    daemon's figures."""
    if status.free is None:
        if not status.jobs:
            return None
        return (
            f"{status.jobs} jobs, {status.running} running (no live-load channel: "
            "discovery off); its clients hold "
            f"{status.leases} lease{'s' if status.leases != 1 else ''}, {status.queued} waiting"
        )
    return (
        f"{status.free}/{status.jobs} free, {status.running} running, "
        f"{status.slot_waiting} waiting, {rate(status.speed)} per job; its clients hold "
        f"{status.leases} lease{'s' if status.leases != 1 else ''}, {status.queued} waiting"
    )


def empty_reason(reply: control.HostsReply) -> str:
    """Why the line is empty, for stderr."""
    n = len(reply.verdicts)
    if n == 0:
        if not reply.status.discovery and reply.status.off_reason:
            return f"no peers: discovery is off ({reply.status.off_reason})"
        return "no peers seen"
    which = "it is" if n == 1 else ("both" if n == 2 else "all")
    excluded = f"{which} excluded" if n != 1 else "it is excluded"
    return f"no matching peers: {n} seen, {excluded}; see --explain"


def print_explain(reply: control.HostsReply, where: str, out: TextIO = sys.stdout) -> None:
    from meshcc.compiler.hostspec import with_localhost

    st = reply.status
    disc = "on" if st.discovery else f"off ({st.off_reason})"
    lines = [
        f"source:    {where}",
        f"discovery: {disc}; interfaces: {', '.join(st.interfaces) or 'none'}",
        f"allowed:   {', '.join(st.allowed) or 'nothing'} ({st.allowed_source or '?'})",
        f"compiler:  {reply.compiler or 'any (no compiler check)'}",
    ]
    mine = this_box(st)
    if mine is not None:
        lines.append(f"this box:  {mine}")
    rows: list[tuple[str, ...]] = [
        ("HOST", "ADDRESS", "TOOLCHAINS", "USE", "FREE", "RUN", "WAIT", "SPEED", "SHARE", "REASON")
    ]
    verdicts = list(reply.verdicts)
    live = 0
    for v, name in zip(verdicts, _host_names(verdicts), strict=True):
        peer = control.verdict_peer(v)
        addresses = peer.get("addresses")
        addr = str(v.get("host_spec") or "") or (
            ", ".join(map(str, addresses)) if isinstance(addresses, list) else ""
        )
        kind = "" if peer.get("kind") != "distcc" else " (distccd)"
        cells = load_cells(v, st)
        live += cells[1] != "-"
        rows.append(
            (
                f"{name}{kind}",
                addr or "-",
                _toolchains(peer),
                "in" if v.get("included") else "out",
                *cells,
                str(v.get("reason") or ""),
            )
        )
    last = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(last)]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:last], widths, strict=True)) + "  " + r[last]
        )
    if len(rows) == 1:
        lines.append("(no peers seen)")
    lines.append(f"DISTCC_HOSTS: {with_localhost(reply.line) or '(empty)'}")
    if len(rows) > 1:
        lines += _legend(live, len(rows) - 1, st)
    print("\n".join(lines), file=out)


def _legend(live: int, peers: int, status: control.StatusReply) -> list[str]:
    """How to read the load columns and the order, under the table."""
    out = [
        "load:      FREE free/jobs, RUN compiles running, WAIT jobs waiting there, SPEED "
        "measured per job; SHARE held/promised: its slots this box's clients hold / may hold",
    ]
    if live < peers:
        source = (
            "no daemon here"
            if status.free is None and not status.jobs
            else "stock distccd, an older meshcc, or silent for 2 s"
        )
        out.append(
            f"           ~N/J: no live load ({source}): the free slots its mDNS record "
            "announced (republished at most every 30 s)"
        )
    out += [
        "order:     the line ranks peers by fewest recent failures, most free slots "
        "(announced), most jobs, lowest probe RTT;",
        "           meshcc-gcc's leases weigh the live load: of two candidates drawn by "
        "free share x speed (this box one of them), the faster",
    ]
    return out


def run(ns: argparse.Namespace) -> int:
    from meshcc.compiler.hostspec import with_localhost

    try:
        cc: str | None = ns.cc
        cc_path: str | None
        try:
            cc_path = resolve_cc(ns.cc)
        except HostsError:
            if ns.cc != DEFAULT_CC:
                raise
            cc = cc_path = None
            print(
                f"meshcc hosts: no `{DEFAULT_CC}` on PATH (a box without a compiler): peers "
                "are listed without a compiler check; pass --cc PATH to check one",
                file=sys.stderr,
            )
        asked = ask_daemon(cc, cc_path)
        if asked is not None:
            reply, path = asked
            where = f"daemon on {path}"
        else:
            reply = browse(ns, ns.cc, cc_path)
            where = f"browsed the network for {ns.browse_time:g} s (no daemon)"
            paths = " or ".join(control.client_socket_paths())
            print(
                f"meshcc hosts: no meshcc daemon on {paths}; browsed the network for "
                f"{ns.browse_time:g} s",
                file=sys.stderr,
            )
    except HostsError as e:
        print(f"meshcc hosts: {e}", file=sys.stderr)
        return EXIT_EMPTY
    line = with_localhost(reply.line)
    if ns.json:
        import json

        data = dict(reply.to_message(), source=where, distcc_hosts=line)
        print(json.dumps(data, indent=2, sort_keys=True))
    elif ns.explain:
        print_explain(reply, where)
    else:
        print(line)
    if not line:
        print(f"meshcc hosts: {empty_reason(reply)}", file=sys.stderr)
        return EXIT_EMPTY
    return EXIT_OK
