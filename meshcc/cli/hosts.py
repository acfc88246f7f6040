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
    rows = [("HOST", "ADDRESS", "TOOLCHAINS", "USE", "REASON")]
    verdicts = list(reply.verdicts)
    for v, name in zip(verdicts, _host_names(verdicts), strict=True):
        peer = control.verdict_peer(v)
        addresses = peer.get("addresses")
        addr = str(v.get("host_spec") or "") or (
            ", ".join(map(str, addresses)) if isinstance(addresses, list) else ""
        )
        kind = "" if peer.get("kind") != "distcc" else " (distccd)"
        rows.append(
            (
                f"{name}{kind}",
                addr or "-",
                _toolchains(peer),
                "in" if v.get("included") else "out",
                str(v.get("reason") or ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        )
    if len(rows) == 1:
        lines.append("(no peers seen)")
    lines.append(f"DISTCC_HOSTS: {with_localhost(reply.line) or '(empty)'}")
    print("\n".join(lines), file=out)


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
