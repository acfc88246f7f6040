"""``meshcc hosts``: the DISTCC_HOSTS line of the live peers that match a compiler.

Asks the local daemon over the control socket (fast path: argparse + msgpack, no
zeroconf or asyncio). With no daemon it browses the network itself for
``--browse-time`` seconds (a browse-only Mesh: nothing is announced) and says so.

The line lists *remote* peers only, never this box: distcc already compiles its local
share (``localhost`` slots are implicit in distcc's default localslots), and listing
ourselves would make distcc send jobs over TCP to our own daemon.

Exit status: 0 when the line has at least one host; 1 when it is empty (stderr says
why) or on an error.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from meshcc.wire import control

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


def _connect(paths: list[str]) -> tuple[socket.socket, str] | None:
    for path in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(REPLY_TIMEOUT_S)
        try:
            s.connect(path)
        except OSError:
            s.close()
            continue
        return s, path
    return None


def ask_daemon(sock: socket.socket, request: dict[str, object]) -> dict[str, object]:
    """One request, one reply (HostsError on a closed socket or a bad reply)."""
    reader = control.MessageReader()
    try:
        sock.sendall(control.encode(request))
        while True:
            msg = reader.next_message()
            if msg is not None:
                return msg
            data = sock.recv(65536)
            if not data:
                raise HostsError("the daemon closed the connection without answering")
            reader.feed(data)
    except TimeoutError:
        raise HostsError(f"the daemon did not answer within {REPLY_TIMEOUT_S:g}s") from None
    except OSError as e:
        raise HostsError(f"talking to the daemon: {e.strerror or e}") from None
    except control.ControlError as e:
        raise HostsError(f"bad reply from the daemon: {e}") from None


def browse(ns: argparse.Namespace, cc: str, cc_path: str) -> dict[str, object]:
    """No daemon: browse for ``--browse-time`` seconds and judge what was seen."""
    import asyncio
    import logging

    from meshcc.compiler import toolchain
    from meshcc.compiler.fingerprints import ClientCompiler
    from meshcc.daemon import logsetup
    from meshcc.mesh.matching import hosts_line
    from meshcc.mesh.netif import InterfaceError
    from meshcc.mesh.service import Mesh, MeshConfig

    logsetup.configure(logging.WARNING)
    try:
        probe = toolchain.probe(cc_path)
    except toolchain.ToolchainError as e:
        raise HostsError(f"--cc {cc}: not a usable gcc: {e}") from None
    fp = ClientCompiler.from_probe(cc, os.path.realpath(cc_path), probe)

    async def run() -> dict[str, object]:
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
            st = mesh.status.to_dict()
        finally:
            await mesh.stop()
        st["peers"] = len(verdicts)
        return {
            "ok": True,
            "line": hosts_line(verdicts),
            "verdicts": [v.to_dict() for v in verdicts],
            "status": st,
            "compiler": fp.describe(),
            "note": None,
        }

    return asyncio.run(run())


# ---------------------------------------------------------------- output


def _toolchains(peer: dict[str, object]) -> str:
    """``gcc, g++ 12.2.0 x86_64-linux-gnu bu 2.40``: drivers grouped by fingerprint (a box's
    gcc, c89-gcc and c99-gcc are one gcc), in the order the peer announced them."""
    groups: dict[tuple[object, object, object], list[str]] = {}
    for t in peer.get("toolchains") or []:  # type: ignore[union-attr]
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
    hosts = [str((v.get("peer") or {}).get("host")) for v in verdicts]  # type: ignore[union-attr]
    names = []
    for v, host in zip(verdicts, hosts, strict=True):
        peer = v.get("peer") or {}
        node = str(peer.get("node_id") or "")  # type: ignore[union-attr]
        names.append(f"{host}#{node[:6]}" if hosts.count(host) > 1 and node else host)
    return names


def empty_reason(reply: dict[str, object]) -> str:
    """Why the line is empty, for stderr."""
    verdicts = reply.get("verdicts") or []
    status = reply.get("status") or {}
    n = len(verdicts)  # type: ignore[arg-type]
    if n == 0:
        if isinstance(status, dict) and status.get("discovery") is False:
            return f"no peers: discovery is off ({status.get('off_reason')})"
        return "no peers seen"
    which = "it is" if n == 1 else ("both" if n == 2 else "all")
    excluded = f"{which} excluded" if n != 1 else "it is excluded"
    return f"no matching peers: {n} seen, {excluded}; see --explain"


def print_explain(reply: dict[str, object], where: str, out: object = sys.stdout) -> None:
    from meshcc.mesh.matching import with_localhost

    st = reply.get("status") or {}
    assert isinstance(st, dict)
    disc = "on" if st.get("discovery") else f"off ({st.get('off_reason')})"
    ifaces = ", ".join(st.get("interfaces") or []) or "none"
    allowed = ", ".join(st.get("allowed") or []) or "nothing"
    lines = [
        f"source:    {where}",
        f"discovery: {disc}; interfaces: {ifaces}",
        f"allowed:   {allowed} ({st.get('allowed_source', '?')})",
        f"compiler:  {reply.get('compiler') or 'any (no compiler check)'}",
    ]
    rows = [("HOST", "ADDRESS", "TOOLCHAINS", "USE", "REASON")]
    verdicts = list(reply.get("verdicts") or [])  # type: ignore[call-overload]
    for v, name in zip(verdicts, _host_names(verdicts), strict=True):
        peer = v.get("peer") or {}
        addr = v.get("host_spec") or ", ".join(peer.get("addresses") or []) or "-"
        kind = "" if peer.get("kind") != "distcc" else " (distccd)"
        rows.append(
            (
                f"{name}{kind}",
                addr,
                _toolchains(peer),
                "in" if v.get("included") else "out",
                v.get("reason") or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        )
    if len(rows) == 1:
        lines.append("(no peers seen)")
    lines.append(f"DISTCC_HOSTS: {with_localhost(str(reply.get('line') or '')) or '(empty)'}")
    print("\n".join(lines), file=out)  # type: ignore[arg-type]


def run(ns: argparse.Namespace) -> int:
    from meshcc.mesh.matching import with_localhost

    try:
        cc_path = resolve_cc(ns.cc)
        paths = control.client_socket_paths()
        conn = _connect(paths)
        if conn is not None:
            sock, where = conn
            with sock:
                reply = ask_daemon(sock, control.hosts_request(ns.cc, cc_path))
            where = f"daemon on {where}"
        else:
            reply = browse(ns, ns.cc, cc_path)
            where = f"browsed the network for {ns.browse_time:g} s (no daemon)"
            print(
                f"meshcc hosts: no meshcc daemon on {' or '.join(paths)}; browsed the "
                f"network for {ns.browse_time:g} s",
                file=sys.stderr,
            )
    except HostsError as e:
        print(f"meshcc hosts: {e}", file=sys.stderr)
        return EXIT_EMPTY
    if reply.get("ok") is not True:
        print(
            f"meshcc hosts: {reply.get('error') or 'the daemon refused the request'}",
            file=sys.stderr,
        )
        return EXIT_EMPTY
    line = with_localhost(str(reply.get("line") or ""))
    if ns.json:
        import json

        reply = dict(reply, source=where, distcc_hosts=line)
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif ns.explain:
        print_explain(reply, where)
    else:
        print(line)
    if not line:
        print(f"meshcc hosts: {empty_reason(reply)}", file=sys.stderr)
        return EXIT_EMPTY
    return EXIT_OK
