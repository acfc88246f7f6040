"""``meshcc doctor``: the checks a person runs when nothing is distributed, with a fix each.

Every check prints one line, ``[ OK ]``, ``[WARN]`` or ``[FAIL]`` plus what was found,
and when it is not OK the fix on an indented line below. The checks, in order:

* the environment that overrides the mesh (``DISTCC_HOSTS``, ``DISTCC_FALLBACK=0``) and
  every host list a client could read (bad host specs are fatal for distcc);
* the local daemon on its control socket (the paths the compile client tries);
* discovery: on or off and why, the interfaces used, interface warnings;
* the compiler (``--cc``, else argv[0] of the command after ``--``, else ``cc``): on PATH,
  a gcc the mesh can fingerprint, behind a ccache/distcc masquerade;
* the compile client: ``meshcc-gcc`` the C launcher (compiles start in a warm process) or
  the Python one, and what here makes compiles start the slow way; LZO by liblzo2 or the
  slower fallback;
* peers seen, how many match the compiler, and every excluded peer with its reason;
* with a command after ``--``: would it be distributed, and if not, why;
* ``/etc/distcc/hosts`` and Portage's ``make.conf`` against the live mesh.

Without a daemon it browses the network briefly itself (as ``meshcc hosts`` does, same
code) unless ``--no-browse``. Exit status 0 when nothing FAILs, 1 otherwise.

Module-level imports stay light: the CLI builds every subcommand's parser on each run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from meshcc.wire import control

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from meshcc.transport.control_client import Control

OK, WARN, FAIL = "OK", "WARN", "FAIL"
_TAG = {OK: "[ OK ]", WARN: "[WARN]", FAIL: "[FAIL]"}
SYSTEM_HOSTS_FILE = "/etc/distcc/hosts"
PORTAGE_MAKE_CONF = "/etc/portage/make.conf"
REPLY_TIMEOUT_S = 30.0  # the first hosts request for a compiler probes it
_WRAPPER_COMMANDS = frozenset({"meshcc", "distcc", "ccache", "sccache", "icecc"})


class Check:
    """One verdict: what was checked, what was found, and the fix when not OK.

    (Plain classes here: dataclasses costs milliseconds to import, and every CLI command
    imports this module to build its parser.)"""

    def __init__(
        self,
        name: str,
        status: str,
        found: str,
        fix: str = "",
        details: dict[str, object] | None = None,
    ) -> None:
        self.name = name
        self.status = status
        self.found = found
        self.fix = fix
        self.details = details or {}

    def __repr__(self) -> str:
        return f"Check({self.name!r}, {self.status!r}, {self.found!r})"

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"check": self.name, "status": self.status, "found": self.found}
        if self.fix:
            d["fix"] = self.fix
        if self.details:
            d["details"] = self.details
        return d

    def render(self) -> str:
        line = f"{_TAG[self.status]} {self.name}: {self.found}"
        if self.fix and self.status != OK:
            line += f"\n       fix: {self.fix}"
        return line


class Report:
    """The checks in order; FAIL anywhere means exit status 1."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, status: str, found: str, fix: str = "", **details: object) -> Check:
        c = Check(name, status, found, fix, dict(details))
        self.checks.append(c)
        return c

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def render(self) -> str:
        fails = sum(c.status == FAIL for c in self.checks)
        warns = sum(c.status == WARN for c in self.checks)
        summary = (
            "all checks passed"
            if not fails and not warns
            else f"{fails} failed, {warns} warning{'s' * (warns != 1)}"
        )
        return "\n".join([c.render() for c in self.checks] + [f"meshcc doctor: {summary}"])

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cc",
        metavar="COMPILER",
        help="check this compiler, as you invoke it (default: the command's compiler, else cc)",
    )
    from meshcc.cli.main import add_browse_options

    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_browse_options(parser)
    parser.add_argument(
        "--no-browse",
        action="store_true",
        help="without a local daemon, do not browse the network (skip the peer checks)",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND",
        help="a compile command to judge, e.g. `-- gcc -c x.c`: would it be distributed?",
    )


def run(ns: argparse.Namespace) -> int:
    command = list(ns.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    report = diagnose(
        os.environ,
        cc=ns.cc,
        command=command,
        browse_time=ns.browse_time,
        browse=not ns.no_browse,
        interfaces=tuple(ns.interface),
    )
    if ns.json:
        import json

        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.render())
    return 0 if report.ok else 1


# ---------------------------------------------------------------- the checks


def _strip_wrappers(command: Sequence[str]) -> list[str]:
    """``meshcc gcc -c x.c`` / ``distcc gcc …`` -> ``gcc -c x.c`` (the compiler is argv[0])."""
    cmd = list(command)
    while len(cmd) > 1 and os.path.basename(cmd[0]) in _WRAPPER_COMMANDS:
        cmd = cmd[1:]
    return cmd


def diagnose(
    env: Mapping[str, str],
    cc: str | None = None,
    command: Sequence[str] = (),
    browse_time: float = 2.5,
    browse: bool = True,
    interfaces: tuple[str, ...] = (),
    system_hosts: str = SYSTEM_HOSTS_FILE,
    make_conf: str = PORTAGE_MAKE_CONF,
) -> Report:
    """Run every check it can; never raises for a broken setup (that is what it reports)."""
    report = Report()
    cmd = _strip_wrappers(command)
    cc = cc or (cmd[0] if cmd else "cc")

    mesh = check_daemon(report, env)
    check_environment(report, env, system_hosts)
    cc_path, probed = check_compiler(report, cc, env)
    check_compile_client(report, env)
    check_lzo(report)
    reply: control.HostsReply | None = None
    source = ""
    if mesh is not None:
        reply = _daemon_hosts(report, mesh, cc, cc_path)
        source = f"daemon on {mesh.path}"
    elif browse and probed:
        reply = _browse(report, cc, cc_path, browse_time, interfaces)
        source = f"browsed for {browse_time:g} s (no daemon)"
    elif not probed:
        report.add(
            "peers",
            WARN,
            "skipped: no usable compiler to match peers against",
            "fix the compiler check above",
        )
    else:
        report.add(
            "peers",
            WARN,
            "skipped: no daemon and --no-browse",
            "start `meshcc daemon`, or rerun without --no-browse",
        )
    if reply is not None:
        check_discovery(report, reply.status)
        check_peers(report, reply, source, cc)
    if cmd:
        check_command(report, cmd, env, reply)
    check_hosts_file(report, system_hosts, reply)
    check_portage(report, make_conf, reply, system_hosts)
    return report


def check_environment(report: Report, env: Mapping[str, str], system_hosts: str) -> None:
    """(g) What overrides the mesh, and host lists a compile would fail to parse."""
    from meshcc.compiler import hostspec

    hosts = env.get("DISTCC_HOSTS")
    if hosts is not None:
        try:
            parsed = hostspec.parse_hosts(hosts, "DISTCC_HOSTS")
        except hostspec.HostSpecError as e:
            report.add(
                "DISTCC_HOSTS",
                FAIL,
                f"set to {hosts!r}, which does not parse: {e}",
                "correct it (grammar: host[:port][/limit][,lzo], [IPv6], localhost/N) "
                "or `unset DISTCC_HOSTS` to use the mesh",
            )
        else:
            report.add(
                "DISTCC_HOSTS",
                WARN,
                f"set ({len(parsed.hosts)} host(s): {hosts.strip() or '(empty)'}); it wins "
                "over the mesh: compiles go to these hosts only",
                "`unset DISTCC_HOSTS` to use the live mesh, or "
                'DISTCC_HOSTS="$(meshcc hosts)" to pin the mesh\'s current peers',
                value=hosts,
            )
    else:
        report.add("DISTCC_HOSTS", OK, "not set: the local daemon's mesh decides")
    if env.get("DISTCC_FALLBACK") == "0":
        report.add(
            "DISTCC_FALLBACK",
            WARN,
            "=0: a compile with no usable host fails (exit 116) instead of running locally",
            "unset DISTCC_FALLBACK unless you want that",
        )
    top = env.get("DISTCC_DIR") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".distcc"
    )
    for path in (os.path.join(top, "hosts"), system_hosts):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            report.add(
                f"host file {path}",
                WARN,
                f"unreadable: {e.strerror}",
                f"fix its permissions (chmod a+r {path})",
            )
            continue
        if not any(ln.split("#", 1)[0].strip() for ln in text.splitlines()):
            continue  # empty (e.g. --write-hosts with no peers yet): distcc says "no hosts"
        try:
            hostspec.parse_hosts(text, path)
        except hostspec.HostSpecError as e:
            report.add(
                f"host file {path}",
                FAIL,
                f"does not parse: {e}",
                f"correct {path} (distcc grammar) or let `meshcc daemon --write-hosts "
                f"{path}` maintain it",
            )


class _Daemon:
    def __init__(self, path: str, status: control.StatusReply, conn: Control) -> None:
        self.path = path
        self.status = status
        self.conn = conn


def check_daemon(report: Report, env: Mapping[str, str]) -> _Daemon | None:
    """(a) The local daemon, found where the compile client looks for it."""
    from meshcc.transport import control_client

    paths = control.client_socket_paths(env=env)
    try:
        conn = control_client.connect(env)
    except control_client.NoDaemon as e:
        report.add(
            "daemon",
            FAIL,
            f"no meshcc daemon answers ({e}); compiles use "
            "DISTCC_HOSTS or the distcc host files, if any",
            "start it: `meshcc daemon` (as root it listens on /run/meshcc/control.sock; "
            "with systemd: `systemctl enable --now meshcc`), or set MESHCC_SOCKET to "
            "its --socket",
            paths=paths,
        )
        return None
    except control_client.ControlError as e:
        report.add("daemon", FAIL, str(e), "restart the daemon (`meshcc daemon`)", paths=paths)
        return None
    try:
        status = conn.status(REPLY_TIMEOUT_S)
    except control_client.ControlError as e:
        conn.close()
        report.add("daemon", FAIL, f"{conn.path}: {e}", "restart the daemon (`meshcc daemon`)")
        return None
    if isinstance(status, control.ErrorReply):
        conn.close()
        report.add(
            "daemon",
            FAIL,
            f"{conn.path}: refused the status request: {status.error}",
            "upgrade meshcc so client and daemon match",
        )
        return None
    report.add(
        "daemon",
        OK,
        f"meshcc {status.version or '?'} on {conn.path}, "
        + (
            f"{status.jobs} job slots, {status.running} compiles running"
            if status.jobs
            else "a mesh-only node (no compiler here: it finds peers and grants leases, "
            "and compiles nothing itself)"
        ),
        socket=conn.path,
    )
    return _Daemon(conn.path, status, conn)


def _daemon_hosts(
    report: Report, d: _Daemon, cc: str, cc_path: str | None
) -> control.HostsReply | None:
    conn = d.conn
    try:
        reply = conn.hosts(cc if cc_path else None, cc_path, REPLY_TIMEOUT_S)
    except control.ControlError as e:
        report.add(
            "peers",
            FAIL,
            f"asking the daemon for peers: {e}",
            "restart the daemon (`meshcc daemon`)",
        )
        return None
    finally:
        conn.close()
    if isinstance(reply, control.ErrorReply):
        report.add(
            "peers",
            FAIL,
            f"the daemon refused: {reply.error}",
            "check the compiler with --cc",
        )
        return None
    return reply


def _browse(
    report: Report, cc: str, cc_path: str | None, seconds: float, interfaces: tuple[str, ...]
) -> control.HostsReply | None:
    """No daemon: what a browse of ``seconds`` sees (meshcc hosts' code)."""
    from meshcc.cli import hosts as hosts_cmd

    ns = argparse.Namespace(
        interface=list(interfaces), allow=[], accept_unverified=False, browse_time=seconds
    )
    try:
        reply = hosts_cmd.browse(ns, cc, cc_path or cc)
    except hosts_cmd.HostsError as e:
        report.add(
            "discovery",
            FAIL,
            f"browsing without a daemon: {e}",
            "choose an interface with --interface NAME",
        )
        return None
    except OSError as e:
        report.add(
            "discovery",
            FAIL,
            f"browsing without a daemon: {e}",
            "check the network; choose an interface with --interface NAME",
        )
        return None
    return reply


def check_discovery(report: Report, st: control.StatusReply) -> None:
    """(b) Discovery on? On which interfaces? Why off?"""
    ifaces = ", ".join(st.interfaces) or "none"
    allowed = ", ".join(st.allowed) or "nothing"
    if st.discovery:
        report.add(
            "discovery",
            OK,
            f"on; interfaces: {ifaces}; allowed subnets: {allowed} ({st.allowed_source or '?'})",
        )
    else:
        why = st.off_reason or "unknown reason"
        fix = (
            "remove --no-discovery from the daemon's command line"
            if "no-discovery" in str(why)
            else "restart the daemon with `--interface NAME` (a LAN interface that is up, "
            "has an IPv4 or IPv6 address and MULTICAST; see `ip -br link`)"
        )
        report.add("discovery", FAIL, f"off: {why}", fix)
    for w in st.warnings:
        report.add(
            "discovery",
            WARN,
            str(w),
            "pick the LAN interface with `meshcc daemon --interface NAME`",
        )


def _addresses(v: Mapping[str, object]) -> list[str]:
    addrs = control.verdict_peer(v).get("addresses")
    return [str(a) for a in addrs] if isinstance(addrs, list) else []


def _limit(v: Mapping[str, object]) -> int:
    limit = control.verdict_peer(v).get("limit")
    return limit if isinstance(limit, int) else 0


def _peer_label(v: Mapping[str, object]) -> str:
    peer = control.verdict_peer(v)
    addrs = _addresses(v)
    addr = v.get("host_spec") or (addrs[0] if addrs else "no address")
    kind = " (stock distccd)" if peer.get("kind") == "distcc" else ""
    return f"{peer.get('host', '?')}{kind} at {addr}"


def exclusion_fix(reason: str, label: str) -> str:
    """The fix for one matching.judge() reason (its wording is the contract)."""
    if "outside allowed" in reason:
        return (
            "if that peer is yours, allow its subnet on both sides: `meshcc daemon "
            "--allow CIDR` here and on the peer"
        )
    if "--accept-unverified" in reason:
        return (
            "run meshcc daemon on that box (it announces its binutils), or accept it "
            "unverified: `meshcc daemon --accept-unverified`"
        )
    if "≠" in reason and "binutils" in reason:
        return "install the same binutils version on both boxes (objects could differ)"
    if "≠" in reason:
        return (
            "install the same gcc version on both boxes, or compile with a compiler both "
            "offer (`meshcc hosts --explain --cc gcc-N` shows what each offers)"
        )
    if reason.startswith(("no compiler for target", "no gcc for", "no g++ for")):
        return (
            "install a compiler for this target on the peer (its daemon offers every gcc on PATH)"
        )
    if "announces no compiler" in reason:
        return "install gcc on the peer, or start its daemon with --compiler PATH"
    if reason.startswith("not responding"):
        return (
            f"check that the daemon on {label} runs and that TCP port 3632 is open in its "
            "firewall (`nc -zv ADDRESS 3632` from here)"
        )
    if reason.startswith("announced, reachability"):
        return "just seen: rerun in a few seconds"
    if reason.startswith("backed off"):
        return "compiles failed there; see that peer's daemon log; it is retried automatically"
    return "see `meshcc hosts --explain`"


def check_peers(report: Report, reply: control.HostsReply, source: str, cc: str) -> None:
    """(c)+(d) Peers seen, how many take this compiler, each excluded one and why."""
    verdicts = reply.verdicts
    inc = reply.included
    exc = [v for v in verdicts if not v.get("included")]
    compiler = reply.compiler or cc
    if not verdicts:
        report.add(
            "peers",
            WARN,
            f"no peers seen ({source})",
            "start `meshcc daemon` on the other boxes of this LAN; mDNS needs UDP 5353 "
            "multicast between them and compiles TCP 3632",
        )
    elif not inc:
        report.add(
            "peers",
            FAIL,
            f"{len(verdicts)} seen, none can take {compiler} compiles "
            f"({source}): every compile runs here",
            "see the excluded peers below",
        )
    else:
        slots = sum(_limit(v) for v in inc)
        report.add(
            "peers",
            OK,
            f"{len(verdicts)} seen ({source}), {len(inc)} usable for "
            f"{compiler} ({slots} job slots): {reply.line}",
            line=reply.line,
            included=len(inc),
            seen=len(verdicts),
        )
    if reply.note:
        report.add(
            "compiler",
            WARN,
            f"the daemon could not fingerprint {cc}: {reply.note}; "
            "peers were judged on liveness and subnets only",
            "check the compiler with `meshcc doctor --cc PATH`",
        )
    for v in exc:
        label = _peer_label(v)
        reason = str(v.get("reason") or "no reason given")
        report.add(
            "excluded peer",
            WARN,
            f"{label}: {reason}",
            exclusion_fix(reason, label),
            peer=label,
            reason=reason,
        )
    for v in inc:
        if v.get("unverified"):
            report.add(
                "peer",
                WARN,
                f"{_peer_label(v)} is used unverified: {v.get('reason')}",
                "run meshcc daemon on it so its binutils are checked",
            )


def _which(name: str, env: Mapping[str, str]) -> str | None:
    from meshcc import hostos

    found = hostos.which(name, env.get("PATH", os.defpath))
    return os.path.abspath(found) if found is not None and os.path.isfile(found) else None


def check_compiler(report: Report, cc: str, env: Mapping[str, str]) -> tuple[str | None, bool]:
    """(e)+(i) The compiler: on PATH, behind a masquerade, a gcc the mesh can fingerprint.

    Returns (path to fingerprint, probe succeeded)."""
    from meshcc.compiler import toolchain

    path = _which(cc, env)
    if path is None:
        report.add(
            "compiler",
            FAIL,
            f"{cc}: not found" + ("" if "/" in cc else " on PATH"),
            f"install it or give its path (--cc /usr/bin/{os.path.basename(cc)}; on a LiveCD, "
            f"the chroot's: --cc /mnt/gentoo/usr/bin/{os.path.basename(cc)}, or check the "
            "stage3 with meshcc setup portage --root /mnt/gentoo --dry-run)",
        )
        return None, False
    real = path
    masq = toolchain.masquerade_reason(path)
    if masq is not None:
        found, _ = toolchain.find_compilers(env.get("PATH", os.defpath))
        real = dict(found).get(os.path.basename(cc)) or path
        _check_masquerade(report, cc, path, masq, env)
    try:
        p = toolchain.probe(real)
    except toolchain.ToolchainError as e:
        report.add(
            "compiler",
            FAIL,
            f"{cc} ({real}) is not a gcc the mesh can match: {e}; its compiles run locally",
            "use gcc/g++ (clang is not distributed yet)",
        )
        return real, False
    if p.binutils is None:
        report.add(
            "compiler",
            WARN,
            f"{cc} ({real}): gcc {p.version}, {p.target}, binutils unknown (no `as` found)",
            "install binutils; otherwise peers are used only with --accept-unverified",
        )
    else:
        report.add(
            "compiler",
            OK,
            f"{cc} ({real}): gcc {p.version}, {p.target}, binutils {p.binutils}",
            path=real,
            version=p.version,
            target=p.target,
            binutils=p.binutils,
        )
    return real, True


CLIENT = "meshcc-gcc"
_ELF = b"\x7fELF"


def check_compile_client(
    report: Report,
    env: Mapping[str, str],
    uid: int | None = None,
    cpu_limited: bool | None = None,
) -> None:
    """How a compile starts: the C launcher handing it to a warm per-user zygote, or a
    Python interpreter per compile (~9 ms of CPU each, twice distcc's whole client), and
    what on this box sends compiles the slow way. ``uid`` and ``cpu_limited``: this
    process's, unless given (tests)."""
    path = _which(CLIENT, env)
    if path is None:
        report.add(
            "compile client",
            WARN,
            f"{CLIENT} is not on PATH",
            "add the directory install.sh installed it to (it prints it) to PATH",
        )
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        report.add("compile client", WARN, f"{path}: cannot read it: {e.strerror or e}")
        return
    if head != _ELF:
        report.add(
            "compile client",
            WARN,
            f"{path} is the Python launcher: every compile starts an interpreter "
            "(~9 ms of CPU per job)",
            "install a C compiler (cc) and rerun ./install.sh: it builds the C launcher, which "
            "hands each compile to a warm per-user process (~1 ms)",
            path=path,
            launcher="python",
        )
        return
    if uid is None:
        uid = os.getuid()
    if cpu_limited is None:
        import resource

        cpu_limited = resource.getrlimit(resource.RLIMIT_CPU)[0] != resource.RLIM_INFINITY
    # The launcher's own tests before it uses the zygote (try_zygote, make_key and
    # socket_dir in packaging/launcher/meshcc-launcher.c), the common ones.
    slow = []
    if uid == 0:
        slow.append(("you are root", "build as a regular user"))
    if env.get("MESHCC_ZYGOTE") == "0":
        slow.append(("MESHCC_ZYGOTE=0 is set", "unset MESHCC_ZYGOTE"))
    if cpu_limited:
        slow.append(("a CPU-time limit is set (ulimit -t)", "lift it for builds"))
    if "LD_PRELOAD" in env or "SANDBOX_ACTIVE" in env or env.get("SANDBOX_ON") == "1":
        # Portage's sandbox (FEATURES=sandbox, usersandbox: the defaults) is one: a job
        # handed to a process outside it would escape it.
        slow.append(("a preload sandbox or LD_PRELOAD is set (by design)", ""))
    if len(os.getgroups()) > 64:
        slow.append(("more than 64 supplementary groups", "drop some groups for builds"))
    unsafe = _unsafe_socket_dir(env, uid)
    if unsafe is not None:
        slow.append(unsafe)
    if slow:
        report.add(
            "compile client",
            WARN,
            f"{path} is the C launcher, but here compiles start the Python launcher: "
            + "; ".join(why for why, _ in slow),
            "; ".join(fix for _, fix in slow if fix),
            path=path,
            launcher="c",
            zygote=False,
        )
        return
    report.add(
        "compile client",
        OK,
        f"{path} is the C launcher: compiles start in a warm per-user process",
        path=path,
        launcher="c",
        zygote=True,
    )


def _unsafe_socket_dir(env: Mapping[str, str], uid: int) -> tuple[str, str] | None:
    """The zygote's socket directory, as the launcher picks it, when it exists but is not
    a directory of ours closed to others (the launcher then never hands a job through it)."""
    import stat

    xdg = env.get("XDG_RUNTIME_DIR", "")
    directory = f"/tmp/meshcc-{uid}"
    if xdg.startswith("/") and len(xdg) < 64:
        try:
            st = os.lstat(xdg)
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                directory = f"{xdg}/meshcc"
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None  # the first compile makes it
    except OSError as e:
        return f"its socket directory {directory}: {e.strerror or e}", "check that path"
    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077:
        return None
    return (
        f"its socket directory {directory} is not a directory of yours closed to others",
        f"remove {directory} (as root if it is not yours): the next compile makes it 0700",
    )


def check_lzo(report: Report) -> None:
    """LZO, the body codec of `,lzo` hosts and of every stock distcc peer, both ways: by
    the system's liblzo2 (distcc's algorithm, ~0.3 ms per 100 KB of source) or by the
    bundled fallback, ~8-13x slower to compress (a cost on every such job)."""
    from meshcc import compression

    backend = compression.lzo_backend()
    if backend == "liblzo2":
        report.add("LZO", OK, "by the system's liblzo2, as distcc", backend=backend)
    elif backend == "lzallright":
        report.add(
            "LZO",
            WARN,
            "no usable liblzo2: `,lzo` hosts and stock distcc peers compress with "
            "lzallright, ~8-13x slower (~2.6 ms per 112 KB of source, each way)",
            "install it: apt install liblzo2-2 (Debian, Ubuntu), emerge dev-libs/lzo (Gentoo); "
            "a running daemon uses it once restarted",
            backend=backend,
        )
    else:
        report.add(
            "LZO",
            WARN,
            "no LZO here (lzallright is missing, as in meshcc.pyz): `,lzo` hosts are sent "
            "uncompressed (distcc protocol 1), and a daemon here serves protocol 1 only",
            "install meshcc with install.sh for LZO",
            backend=None,
        )


def _check_masquerade(report: Report, cc: str, path: str, why: str, env: Mapping[str, str]) -> None:
    """(i) ccache/distcc/meshcc in front of the compiler on PATH."""
    if "ccache" in why:
        prefix = env.get("CCACHE_PREFIX", "")
        if "meshcc" in prefix or "distcc" in prefix:
            report.add(
                "masquerade", OK, f"{cc} is ccache ({path}); misses go to CCACHE_PREFIX={prefix}"
            )
        else:
            report.add(
                "masquerade",
                WARN,
                f"{cc} on PATH is ccache ({path}) and CCACHE_PREFIX "
                "is not meshcc: cache misses compile locally",
                "export CCACHE_PREFIX=meshcc",
            )
    elif "distcc" in why:
        report.add(
            "masquerade",
            WARN,
            f"{cc} on PATH is stock distcc ({path}): it reads "
            "DISTCC_HOSTS or the host files, never the meshcc daemon",
            "keep /etc/distcc/hosts current with `meshcc daemon --write-hosts "
            "/etc/distcc/hosts`, or put a meshcc masquerade directory first on PATH "
            "(`meshcc setup masquerade DIR`)",
        )
    else:
        report.add("masquerade", OK, f"{cc} on PATH is meshcc ({path}): {why}")


def check_command(
    report: Report, cmd: Sequence[str], env: Mapping[str, str], reply: control.HostsReply | None
) -> None:
    """(f) Would this command line be distributed, and where; if not, why."""
    from meshcc.compiler import args, native

    job = native.analyse(cmd[0], list(cmd), env) if cmd else args.analyse([])
    shown = " ".join(cmd)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    if not job.distributable:
        fix = "nothing to fix: this job must run locally by design"
        if "records the options" in job.reason:
            # Not "use -march=<name>": that builds different code (see meshcc.compiler.native).
            fix = (
                "nothing to fix: it stays local so the object is byte-identical; an explicit "
                "-mtune=… beside -march=native distributes it (native then adds no --param) "
                "but tunes differently"
            )
        report.add(
            "command",
            WARN,
            f"`{shown}` runs locally: {job.reason}",
            fix,
            distributable=False,
            reason=job.reason,
        )
        return
    if env.get("DISTCC_HOSTS") is not None:
        where = f"one of DISTCC_HOSTS ({env['DISTCC_HOSTS'].strip()})"
    elif reply is not None and reply.line:
        where = f"a peer leased from the mesh ({reply.line})"
    else:
        report.add(
            "command",
            WARN,
            f"`{shown}` is distributable, but no host can take it: it runs locally",
            "see the daemon and peer checks above",
            distributable=True,
        )
        return
    resolved = ""
    if any(a in native.NATIVE for a in cmd):
        march = next((a for a in job.argv if a.startswith(("-march=", "-mtune="))), "")
        resolved = (
            f" (meshcc sends {march} and the other options this CPU's native means, "
            "the exact list the local gcc gives cc1)"
        )
    report.add(
        "command",
        OK,
        f"`{shown}` is distributable: it goes to {where}{resolved}",
        distributable=True,
    )


def _hosts_in(text: str) -> list[str]:
    """Host names/addresses of a distcc host list (best effort, for comparison)."""
    from meshcc.compiler import hostspec

    try:
        hl = hostspec.parse_hosts(text, "file")
    except hostspec.HostSpecError:
        return []
    return [h.host for h in hl.hosts if h.kind == "tcp"]


def _mesh_addresses(reply: control.HostsReply) -> tuple[set[str], set[str]]:
    """(addresses of included peers, every address any peer announced)."""
    inc: set[str] = set()
    seen: set[str] = set()
    for v in reply.verdicts:
        addrs = {a.split("%")[0] for a in _addresses(v)}
        seen |= addrs
        if v.get("included"):
            inc |= addrs
    return inc, seen


def check_hosts_file(report: Report, path: str, reply: control.HostsReply | None) -> None:
    """(h) /etc/distcc/hosts (read by stock distcc and Portage) against the live mesh."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return
    generated = text.startswith("# Generated by meshcc")
    listed = _hosts_in(text)
    if reply is None:
        report.add(
            f"{path}",
            OK,
            f"lists {len(listed)} host(s)"
            + (", kept by meshcc daemon --write-hosts" if generated else ""),
        )
        return
    inc, seen = _mesh_addresses(reply)
    stale = [h for h in listed if h not in inc and h not in ("localhost", "127.0.0.1")]
    missing = sorted(inc - set(listed))
    fix = (
        f"`meshcc daemon --write-hosts {path}` keeps it following the mesh"
        if not generated
        else "the daemon rewrites it as peers come and go; is it the daemon's --write-hosts file?"
    )
    if stale:
        unknown = [h for h in stale if h not in seen]
        report.add(
            path,
            WARN,
            f"lists {', '.join(stale)}, not usable in the mesh now"
            + (f" ({', '.join(unknown)} not seen at all)" if unknown else ""),
            fix,
        )
    elif missing:
        report.add(path, WARN, f"lacks usable mesh peers {', '.join(missing)}", fix)
    else:
        report.add(path, OK, f"lists {len(listed)} host(s), consistent with the mesh")


def _read_make_conf(path: str) -> str | None:
    """make.conf may be a file or a directory of files (Portage reads them in order)."""
    try:
        if os.path.isdir(path):
            parts = []
            for name in sorted(os.listdir(path)):
                with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
                    parts.append(f.read())
            return "\n".join(parts)
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _assignments(text: str, key: str) -> list[str]:
    import re
    import shlex

    out = []
    for m in re.finditer(rf"^\s*(?:export\s+)?{key}=(.*)$", text, re.MULTILINE):
        try:
            words = shlex.split(m.group(1), comments=True)
        except ValueError:
            words = m.group(1).split()
        out.append(" ".join(words))
    return out


def check_portage(
    report: Report, path: str, reply: control.HostsReply | None, hosts_file: str
) -> None:
    """(h) Portage: FEATURES=distcc and a MAKEOPTS -j that uses the mesh (if make.conf exists)."""
    import re

    text = _read_make_conf(path)
    if text is None:
        return
    features: set[str] = set()
    for value in _assignments(text, "FEATURES"):  # incremental, as Portage stacks them
        for tok in value.split():
            if tok.startswith("-"):
                features.discard(tok[1:])
            elif not tok.startswith("$"):
                features.add(tok)
    if "distcc" not in features:
        report.add(
            "portage",
            WARN,
            f"{path}: FEATURES lacks distcc: emerge compiles locally",
            f'add FEATURES="distcc" to {path} (or run `meshcc setup portage`)',
        )
        return
    from meshcc.cli.portage import native_flags

    natives = native_flags(text)
    if natives:
        # Not "use -march=<name>": that builds different code than native does.
        report.add(
            "portage",
            WARN,
            f"{path}: {', '.join(natives)}: FEATURES=distcc runs stock distcc, which "
            "compiles every -march=native job locally",
            "meshcc's own client (meshcc-gcc, a `meshcc setup masquerade` directory) "
            "resolves -march=native and distributes those compiles byte-identically; "
            "Portage's distcc cannot, so keep native and accept local compiles under emerge",
        )
    if not os.path.exists(hosts_file):
        report.add(
            "portage",
            WARN,
            f"{path}: FEATURES=distcc but {hosts_file} does not exist: "
            "Portage's distcc has no hosts",
            f"`meshcc daemon --write-hosts {hosts_file}`",
        )
    makeopts = " ".join(_assignments(text, "MAKEOPTS"))
    m = re.search(r"(?:-j\s*|--jobs[= ]\s*)(\d+)", makeopts)
    if reply is None:
        report.add("portage", OK, f"{path}: FEATURES has distcc; MAKEOPTS={makeopts or '(unset)'}")
        return
    from meshcc import hostos

    local = hostos.cpu_count()
    remote = sum(_limit(v) for v in reply.included)
    total = local + remote
    if m is None:
        report.add(
            "portage",
            WARN,
            f"{path}: MAKEOPTS has no -j: one job at a time, the mesh idles",
            f'MAKEOPTS="-j{total} -l{local}" (local CPUs + mesh slots)',
        )
    elif remote and int(m.group(1)) < (total + 1) // 2:
        report.add(
            "portage",
            WARN,
            f"{path}: MAKEOPTS -j{m.group(1)} uses little of the "
            f"{total} slots ({local} local CPUs + {remote} mesh slots)",
            f'MAKEOPTS="-j{total} -l{local}"',
        )
    else:
        report.add(
            "portage",
            OK,
            f"{path}: FEATURES has distcc, MAKEOPTS -j{m.group(1)} "
            f"({local} local CPUs + {remote} mesh slots)",
        )
