"""``meshcc top``'s view: collecting a snapshot, rendering it, the curses screen.

The command line is :mod:`meshcc.cli.top` (kept light: ``meshcc --help`` builds every
command's parser). What the view shows and why:

No central server: everything comes from this box. The local daemon (over its control
socket, one ``hosts`` request per refresh, no compiler check) knows every peer it
discovered: cores, job slots, toolchains, liveness, and, where the daemons exchange live
load, each peer's running and waiting jobs, free slots and measured speed. This box's own
compiles come from distcc's state files (:mod:`meshcc.cli.distccstate`), which stock
``distcc`` and ``meshcc-gcc`` both write, so the view shows either, like distccmon-text.

Screen (curses from the standard library, so it works in any terminal and over SSH): a
header (this daemon, mesh size, total cores and slots, running and waiting), one row per
peer with this box first, then one row per local compile (pid, phase, file,
host[slot], age). ``q`` or Ctrl-C quits and restores the terminal; a resize redraws;
space refreshes at once. When stdout is not a terminal, or with ``--once`` or ``-n N``,
it prints plain-text snapshots instead (for scripts, logs and tests).

With no daemon it says so on the first line and still shows the local compiles.

Fields a daemon does not report (today: per-peer running/waiting/speed, before the live
load channel) are shown as ``-``. :func:`peer_load` and :func:`own_load` are the only
places that know where those fields live in the daemon's reply.

Rendering (:func:`render`) is a pure function of a :class:`Snapshot`; collecting one
(:func:`collect`) is the only I/O besides the screen.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass, field

from meshcc.cli import distccstate
from meshcc.wire import control

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import curses
    from collections.abc import Mapping, Sequence

    from meshcc.cli.distccstate import Compile

CONNECT_TIMEOUT_S = 1.0
REPLY_TIMEOUT_S = 3.0  # a hosts request without a compiler probes nothing: fast
EXIT_OK = 0
EXIT_ERROR = 1


# ---------------------------------------------------------------- the snapshot


@dataclass(frozen=True, slots=True)
class Load:
    """Live load of one box; None: not reported (shown as ``-``)."""

    running: int | None = None  # compiles running there now
    queued: int | None = None  # jobs waiting there for a slot
    free: int | None = None  # slots nobody holds
    speed: int | None = None  # bytes of preprocessed source per second per job
    held: int | None = None  # leases this box's clients hold there


@dataclass(frozen=True, slots=True)
class StateDir:
    """One DISTCC_DIR read for compiles, and what came of it."""

    path: str
    note: str  # "" when read; else why not ("absent", "Permission denied")
    count: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one screen shows, gathered at ``at`` (wall clock)."""

    at: float
    socket: str | None  # the daemon's control socket, None when none answered
    status: Mapping[str, object] | None  # the daemon's raw status map
    verdicts: Sequence[Mapping[str, object]]  # its raw per-peer verdicts
    daemon_error: str | None  # why there is no daemon data
    compiles: Sequence[Compile]
    dirs: Sequence[StateDir]
    cpus: int | None  # this box's cores
    first_seen: Mapping[int, float] = field(default_factory=dict)  # pid -> when seen first
    hostname: str = ""  # this box's name, for its row (the daemon reports its node id)


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(value: object) -> int:
    return _opt_int(value) or 0


def peer_load(verdict: Mapping[str, object]) -> Load:
    """The live-load fields of one peer's verdict. The daemon's live load channel puts a
    ``load`` map (PeerLoadInfo: running, queued, free, speed, held) beside each verdict;
    a daemon without it gives none, and only the free slots a peer announced in its TXT
    record (``peer.free``) are known."""
    load = verdict.get("load")
    if isinstance(load, dict):
        return Load(
            running=_opt_int(load.get("running")),
            queued=_opt_int(load.get("queued")),
            free=_opt_int(load.get("free")),
            speed=_opt_int(load.get("speed")) or None,  # 0: not measured yet
            held=_opt_int(load.get("held")),
        )
    return Load(free=_opt_int(control.verdict_peer(verdict).get("free")))


def own_load(status: Mapping[str, object]) -> Load:
    """This box's load from the daemon's status map: compiles its server runs, and (with
    the live load channel) its free slots and measured speed."""
    return Load(
        running=_opt_int(status.get("running")),
        free=_opt_int(status.get("free")) if "loads" in status else None,
        speed=_opt_int(status.get("speed")) or None,
    )


# ---------------------------------------------------------------- collecting


def ask_daemon(
    environ: Mapping[str, str],
) -> tuple[str | None, dict[str, object] | None, list[dict[str, object]], str | None]:
    """(socket, raw status, raw verdicts, error) from the local daemon's ``hosts`` reply
    with no compiler (every peer, judged on liveness and subnets only)."""
    from meshcc.transport import control_client

    try:
        conn = control_client.connect(environ, CONNECT_TIMEOUT_S)
    except control_client.NoDaemon as e:
        return None, None, [], f"no meshcc daemon answers ({e})"
    except control.ControlError as e:
        return None, None, [], str(e)
    with conn:
        try:
            raw = conn.request(control.HostsRequest(None, None).to_message(), REPLY_TIMEOUT_S)
            reply = control.decode_hosts_reply(raw)
        except control.ControlError as e:
            return conn.path, None, [], f"bad reply from the daemon on {conn.path}: {e}"
    if isinstance(reply, control.ErrorReply):
        return conn.path, None, [], f"the daemon on {conn.path} refused: {reply.error}"
    status = raw.get("status")
    return conn.path, status if isinstance(status, dict) else {}, list(reply.verdicts), None


def read_compiles(dirs: Sequence[str]) -> tuple[list[Compile], list[StateDir]]:
    compiles: list[Compile] = []
    seen: list[StateDir] = []
    for top in dirs:
        try:
            found = distccstate.read_dir(top)
        except FileNotFoundError:
            seen.append(StateDir(top, "absent"))
            continue
        except OSError as e:
            seen.append(StateDir(top, e.strerror or str(e)))
            continue
        seen.append(StateDir(top, "", len(found)))
        compiles += found
    compiles.sort(key=lambda c: (c.host, c.slot, c.pid))
    return compiles, seen


def collect(
    environ: Mapping[str, str], dirs: Sequence[str], first_seen: dict[int, float]
) -> Snapshot:
    """One snapshot; ``first_seen`` (pid -> wall time) is updated across refreshes so a
    compile's age counts from when it was first seen, not from its last phase change."""
    path, status, verdicts, error = ask_daemon(environ)
    compiles, seen = read_compiles(dirs)
    now = time.time()
    live = {c.pid for c in compiles}
    for pid in list(first_seen):
        if pid not in live:
            del first_seen[pid]
    for c in compiles:
        first_seen.setdefault(c.pid, min(now, c.mtime))
    return Snapshot(
        at=now,
        socket=path,
        status=status,
        verdicts=verdicts,
        daemon_error=error,
        compiles=compiles,
        dirs=seen,
        cpus=os.cpu_count(),
        first_seen=dict(first_seen),
        hostname=socket.gethostname(),
    )


# ---------------------------------------------------------------- rendering

# A rendered line and its role: "title", "head" (a table header), "warn" or "".
Line = tuple[str, str]

PEER_COLUMNS = (
    ("HOST", 18, "<"),
    ("ADDRESS", 21, "<"),
    ("CPUS", 4, ">"),
    ("JOBS", 4, ">"),
    ("RUN", 4, ">"),
    ("WAIT", 4, ">"),
    ("FREE", 4, ">"),
    ("SPEED", 7, ">"),
    ("HELD", 4, ">"),
    ("STATE", 7, "<"),
    ("TOOLCHAINS", 0, "<"),
)
COMPILE_COLUMNS = (
    ("PID", 7, ">"),
    ("PHASE", 10, "<"),
    ("FILE", 30, "<"),
    ("HOST[SLOT]", 26, "<"),
    ("AGE", 6, ">"),
)


def _row(cells: Sequence[str], columns: Sequence[tuple[str, int, str]]) -> str:
    out = []
    for cell, (_name, width, align) in zip(cells, columns, strict=True):
        text = cell[: width - 1] + "~" if width and len(cell) > width else cell
        out.append(text.rjust(width) if align == ">" else text.ljust(width))
    return "  ".join(out).rstrip()


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def human_rate(value: int | None) -> str:
    """Bytes per second, short: ``850B/s``, ``12K/s``, ``3.4M/s``; ``-`` when unknown."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G"):
        if amount < 1000 or unit == "G":
            shown = f"{amount:.1f}" if amount < 10 and unit != "B" else f"{amount:.0f}"
            return f"{shown}{unit}/s"
        amount /= 1024
    return "-"  # pragma: no cover (the loop always returns)


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def toolchains_short(peer: Mapping[str, object]) -> str:
    """``gcc,g++ 12.2.0 x86_64-linux-gnu``: drivers grouped by version and target, in the
    order the peer announced them; ``-`` when it offers none."""
    groups: dict[tuple[str, str], list[str]] = {}
    toolchains = peer.get("toolchains")
    for t in toolchains if isinstance(toolchains, list) else []:
        if not isinstance(t, dict):
            continue
        key = (str(t.get("version") or "?"), str(t.get("target") or "?"))
        drivers = groups.setdefault(key, [])
        driver = str(t.get("driver") or "?")
        if driver not in drivers:
            drivers.append(driver)
    text = "; ".join(f"{','.join(d)} {v} {t}" for (v, t), d in groups.items())
    return distccstate.printable(text) or "-"


def _peer_address(verdict: Mapping[str, object], peer: Mapping[str, object]) -> str:
    address = verdict.get("address")
    port = _opt_int(peer.get("port"))
    if not isinstance(address, str) or not address:
        addresses = peer.get("addresses")
        address = str(addresses[0]) if isinstance(addresses, list) and addresses else ""
    if not address:
        return "-"
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host


def _peer_state(verdict: Mapping[str, object], peer: Mapping[str, object]) -> str:
    """Liveness for a peer the mesh would use; ``out`` when it is excluded (the reason is
    listed under the table)."""
    liveness = str(peer.get("liveness") or "?")
    if not verdict.get("included") and liveness == "up":
        return "out"
    return liveness


def _sum(values: Sequence[int | None]) -> str:
    """A total of known values; ``+?`` when some are unknown, ``-`` when all are."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{sum(known)}+?" if len(known) < len(values) else str(sum(known))


def render(snap: Snapshot) -> list[Line]:
    """The screen for ``snap``, line by line, untruncated (the screen clips)."""
    lines: list[Line] = []
    clock = time.strftime("%H:%M:%S", time.localtime(snap.at))
    st = snap.status
    if st is None:
        lines.append((f"meshcc top - {clock} - {snap.daemon_error or 'no daemon'}", "warn"))
        lines.append(("only this box's compiles are shown (start one with `meshcc daemon`)", ""))
    else:
        node = distccstate.printable(str(st.get("node") or "?"))
        version = distccstate.printable(str(st.get("version") or "?"))
        lines.append(
            (f"meshcc top - {clock} - daemon {node} (meshcc {version}) on {snap.socket}", "title")
        )
        rows, totals = _peer_rows(snap, st)
        lines.append((totals, ""))
        if st.get("discovery") is True:
            ifaces = st.get("interfaces")
            names = ", ".join(map(str, ifaces)) if isinstance(ifaces, list) and ifaces else "?"
            disc = f"discovery on ({distccstate.printable(names)})"
        else:
            disc = f"discovery off ({distccstate.printable(str(st.get('off_reason') or '?'))})"
        lines.append(
            (
                f"this box: {_int(st.get('jobs'))} slots, {_int(st.get('running'))} compiling "
                f"for the mesh; local clients hold {_int(st.get('leases'))} leases, "
                f"{_int(st.get('queued'))} waiting; {disc}",
                "",
            )
        )
        lines.append(("", ""))
        lines.append((_row([c[0] for c in PEER_COLUMNS], PEER_COLUMNS), "head"))
        lines += [(r, "") for r in rows]
        for verdict in snap.verdicts:
            if not verdict.get("included"):
                peer = control.verdict_peer(verdict)
                name = distccstate.printable(str(peer.get("host") or "?"))
                why = distccstate.printable(str(verdict.get("reason") or "?"))
                lines.append((f"  {name} not used: {why}", ""))
    lines.append(("", ""))
    n = len(snap.compiles)
    lines.append((f"this box's compiles: {n}" + _dirs_note(snap.dirs), ""))
    if snap.compiles:
        lines.append((_row([c[0] for c in COMPILE_COLUMNS], COMPILE_COLUMNS), "head"))
        for c in snap.compiles:
            since = min(snap.first_seen.get(c.pid, c.mtime), c.mtime)
            cells = (str(c.pid), c.phase_name, c.file or "-", f"{c.host or '-'}[{c.slot}]")
            lines.append((_row((*cells, human_age(snap.at - since)), COMPILE_COLUMNS), ""))
    return lines


def _dirs_note(dirs: Sequence[StateDir]) -> str:
    parts = [
        f"{d.path}" if not d.note else f"{d.path} ({d.note})"
        for d in dirs
        if d.note in ("", "Permission denied") or d is dirs[0]
    ]
    return f"  [state: {', '.join(parts)}]" if parts else ""


def _names(snap: Snapshot, st: Mapping[str, object]) -> list[str]:
    """Host names for this box and each peer, with the node id's start where a name repeats
    (boxes cloned from one image, containers, namespaces: one hostname, distinct peers)."""
    rows = [(snap.hostname or "this box", str(st.get("node") or ""))]
    for verdict in snap.verdicts:
        peer = control.verdict_peer(verdict)
        rows.append((str(peer.get("host") or "?"), str(peer.get("node_id") or "")))
    hosts = [host for host, _node in rows]
    return [
        distccstate.printable(f"{host}#{node[:6]}" if hosts.count(host) > 1 and node else host)
        for host, node in rows
    ]


def _peer_rows(snap: Snapshot, st: Mapping[str, object]) -> tuple[list[str], str]:
    """The peer table's rows (this box first) and the mesh totals line."""
    own = own_load(st)
    names = _names(snap, st)
    addresses = st.get("addresses")
    port = _int(st.get("port"))
    # announced addresses only mean something with discovery on; else just the port
    first = (
        str(addresses[0])
        if st.get("discovery") is True and isinstance(addresses, list) and addresses
        else ""
    )
    own_addr = (f"[{first}]" if ":" in first else first) + (f":{port}" if port else "")
    rows = [
        _row(
            (
                names[0],
                distccstate.printable(own_addr) or "-",
                _num(snap.cpus),
                _num(_opt_int(st.get("jobs"))),
                _num(own.running),
                _num(own.queued),
                _num(own.free),
                human_rate(own.speed),
                "-",
                "here",
                "-",
            ),
            PEER_COLUMNS,
        )
    ]
    cores: list[int | None] = [snap.cpus]
    slots: list[int | None] = [_opt_int(st.get("jobs"))]
    running: list[int | None] = [own.running]
    waiting: list[int | None] = [_opt_int(st.get("queued"))]
    up = 0
    for verdict, name in zip(snap.verdicts, names[1:], strict=True):
        peer = control.verdict_peer(verdict)
        load = peer_load(verdict)
        cpus, jobs = _opt_int(peer.get("cpus")), _opt_int(peer.get("jobs"))
        state = _peer_state(verdict, peer)
        if state == "up":  # counted: reachable and usable (not "out")
            up += 1
            cores.append(cpus)
            slots.append(jobs)
            running.append(load.running)
            waiting.append(load.queued)
        kind = " (distccd)" if peer.get("kind") == "distcc" else ""
        rows.append(
            _row(
                (
                    name + kind,
                    distccstate.printable(_peer_address(verdict, peer)),
                    _num(cpus),
                    _num(jobs),
                    _num(load.running),
                    _num(load.queued),
                    _num(load.free),
                    human_rate(load.speed),
                    _num(load.held),
                    state,
                    toolchains_short(peer),
                ),
                PEER_COLUMNS,
            )
        )
    n = len(snap.verdicts)
    totals = (
        f"mesh: this box + {n} peer{'s' if n != 1 else ''} ({up} up); "
        f"{_sum(cores)} cores, {_sum(slots)} slots; "
        f"running {_sum(running)}, waiting {_sum(waiting)}"
    )
    return rows, totals


def render_text(snap: Snapshot) -> str:
    """The plain-text form of one snapshot."""
    return "\n".join(text for text, _role in render(snap)) + "\n"


# ---------------------------------------------------------------- the screen


def _draw(stdscr: curses.window, lines: Sequence[Line]) -> None:
    import curses

    height, width = stdscr.getmaxyx()
    attrs = {"title": curses.A_BOLD, "head": curses.A_REVERSE, "warn": curses.A_BOLD, "": 0}
    encoding = stdscr.encoding or "utf-8"
    stdscr.erase()
    for y, (line, role) in enumerate(lines[:height]):
        text = line.encode(encoding, "replace").decode(encoding)
        if role == "head":
            text = text.ljust(width)
        try:
            # width - 1: writing the last cell of the last line moves the cursor off-screen
            stdscr.addnstr(y, 0, text, max(0, width - 1), attrs[role])
        except curses.error:
            pass
    if len(lines) > height > 0:
        try:
            more = f"... {len(lines) - height + 1} more lines (a taller window shows them)"
            stdscr.addnstr(height - 1, 0, more.ljust(width), max(0, width - 1))
        except curses.error:
            pass
    stdscr.refresh()


def _screen(stdscr: curses.window, ns: argparse.Namespace, dirs: Sequence[str]) -> None:
    import curses

    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal without an invisible cursor
    first_seen: dict[int, float] = {}
    snap = collect(os.environ, dirs, first_seen)
    next_at = time.monotonic() + ns.delay
    while True:
        _draw(stdscr, render(snap))
        stdscr.timeout(max(0, int((next_at - time.monotonic()) * 1000)))
        key = stdscr.getch()
        if key in (ord("q"), ord("Q"), 3, 4):  # q, Ctrl-C (raw), Ctrl-D
            return
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            continue  # redraw the same snapshot at the new size
        if key == -1 or key == ord(" ") or time.monotonic() >= next_at:
            snap = collect(os.environ, dirs, first_seen)
            next_at = time.monotonic() + ns.delay


class _Terminate(Exception):
    """SIGTERM or SIGHUP: unwind through curses.wrapper so the terminal is restored."""


def _on_signal(signum: int, frame: object) -> None:
    raise _Terminate


def run(ns: argparse.Namespace) -> int:
    dirs = ns.distcc_dir or distccstate.default_dirs(os.environ)
    if ns.once or ns.iterations is not None or not sys.stdout.isatty():
        return _plain(ns, dirs)
    import curses
    import locale
    import signal

    locale.setlocale(locale.LC_ALL, "")  # curses draws UTF-8 only with the user's locale
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        curses.wrapper(_screen, ns, dirs)
    except (KeyboardInterrupt, _Terminate):
        pass
    except curses.error as e:
        print(
            f"meshcc top: cannot drive this terminal (TERM={os.environ.get('TERM', '')}): "
            f"{e}; use --once for plain text",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _plain(ns: argparse.Namespace, dirs: Sequence[str]) -> int:
    count = 1 if ns.once else (ns.iterations or 1)
    first_seen: dict[int, float] = {}
    try:
        for i in range(count):
            if i:
                time.sleep(ns.delay)
                sys.stdout.write("\n")
            sys.stdout.write(render_text(collect(os.environ, dirs, first_seen)))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `meshcc top -n 100 | head`
        try:
            # further writes (the interpreter's exit flush) go nowhere, not to a traceback
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    return EXIT_OK
