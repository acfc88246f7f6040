"""``meshcc daemon``: the compile server, the mesh and the control socket in one process.

Start-up order follows distccd: open the log, bind the compile port and the control
socket, and import everything while still root; drop to the service user; then probe
compilers as that user (the daemon only ever runs what it probed) and start the mesh.
Misconfiguration ends with one clear line and distccd's exit codes (102 bind failed,
110 a ``--compiler`` that cannot be used), never a traceback.

A box with no compiler at all (a LiveCD before the stage3's gcc exists) is a *mesh-only*
node rather than an error: it keeps discovery, the control socket (leases for a client's
own compiler, e.g. a chroot's gcc, fingerprinted on request), ``--write-hosts`` and the
status port with ``meshcc.pyz``, but opens no compile port and announces no compile
service (no ``_distcc._tcp`` record; its ``_meshcc._tcp`` record lists no toolchain, so
meshcc peers show it as "offers no compilers" and never list it). Its leases work as on
any node: matching peers first, then this box's own share (``localhost/2``), which the
client compiles with its own compiler, on this box's cores: the daemon runs nothing. Only
discovery finding nothing makes a node mesh-only: ``--compiler`` naming something
unusable stays fatal, and so does a node with nothing to offer (no control socket, no
status port, no ``--write-hosts``: e.g. ``--listen 127.0.0.1`` alone).

Allowed subnets: ``--allow`` if given, else the subnets of the interfaces the mesh runs
on (``mesh.status.allowed``); the same networks guard the peer table and the compile
server, which also always accepts loopback (this box's own clients).

A daemon listening on loopback only (``--listen 127.0.0.1``: tests, benchmarks) has no
discovery (nobody could reach it) and opens a control socket only when ``--socket`` or
``$MESHCC_SOCKET`` names one, so it never takes over the box's default socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import resource
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO

from meshcc import __version__, hostos
from meshcc.asyncwait import wait_set
from meshcc.cache.store import DiskStore
from meshcc.compiler.fingerprints import FingerprintCache, FingerprintError
from meshcc.compiler.hostspec import with_localhost
from meshcc.compiler.toolchain import ToolchainError, ToolchainRegistry
from meshcc.daemon import ccache, logsetup, outcomes, resultcache
from meshcc.daemon.hostsfile import HostsFile
from meshcc.daemon.settings import DaemonOptions
from meshcc.defaults import STATUS_PORT
from meshcc.exitcodes import (
    EXIT_BIND_FAILED,
    EXIT_COMPILER_MISSING,
    EXIT_DISTCC_FAILED,
    EXIT_SETUID_FAILED,
)
from meshcc.loglevels import NOTICE
from meshcc.mesh.matching import hosts_line
from meshcc.supervisor import supervise
from meshcc.transport.addresses import LOOPBACK_NETWORKS, IPNetwork
from meshcc.transport.server import CompileServer, ServerConfig, bind_listener
from meshcc.wire import control
from meshcc.wire.outcome import report_socket_path

if TYPE_CHECKING:
    from meshcc.compiler.fingerprints import ClientCompiler
    from meshcc.daemon.control_server import ControlServer
    from meshcc.mesh.service import Mesh

log = logging.getLogger("meshcc.daemon")

EXIT_OK = 0


class _Fatal(Exception):
    """A start-up failure: one line for the user, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def default_allowed_networks() -> list[IPNetwork]:
    """Loopback plus the subnets of this machine's own non-loopback interface addresses
    (a link-local one scoped to its interface: ``fe80::%eth0/64``, see netif.networks_of)."""
    from meshcc.mesh import netif

    nets: list[IPNetwork] = list(LOOPBACK_NETWORKS)
    try:
        interfaces = netif.list_interfaces()
    except Exception as e:  # noqa: BLE001 - a broken netlink or missing module must not stop us
        log.warning("cannot list network interfaces (%s); allowing loopback only", e)
        return nets
    for net in netif.networks_of(i for i in interfaces if not i.loopback):
        if not net.network_address.is_loopback and net not in nets:
            nets.append(net)
    return nets


def _drop_privileges(
    requested: str | None, before: Callable[[int, int], None] | None = None
) -> str | None:
    """When root, switch to the service user; returns a line to log (None if nothing to say).
    ``before(uid, gid)`` runs as root just before the switch (to hand that user a dir)."""
    if os.geteuid() != 0:
        if requested:
            return f"not started as root, so --user {requested} is ignored"
        return None
    import pwd

    if requested is not None:
        name = requested
    else:
        try:
            pwd.getpwnam("meshcc")
            name = "meshcc"
        except KeyError:
            name = "nobody"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise _Fatal(f"--user {name}: no such user", EXIT_SETUID_FAILED) from None
    if pw.pw_uid == 0:
        return f"running as root because --user {name} was given; compilers run as root too"
    if before is not None:
        before(pw.pw_uid, pw.pw_gid)
    try:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        raise _Fatal(
            f"cannot switch to user {name}: {e.strerror or e}", EXIT_SETUID_FAILED
        ) from None
    _no_new_privs()
    default = " (default)" if requested is None else ""
    return f"dropped root privileges: running as user {name}{default} (uid {pw.pw_uid})"


# Standard-library modules that daemon-side code imports inside functions.
_LAZY_STDLIB = (
    "asyncio.subprocess",
    "concurrent.futures.thread",
    "ctypes",
    "encodings.idna",  # host names
    "json",
    "logging.handlers",
    "pwd",
    "re",
    "shlex",
    "struct",
)
# Programs of their own, never run inside the daemon.
_NOT_DAEMON = ("meshcc.client", "meshcc.cli", "meshcc.__main__")


def daemon_modules() -> list[str]:
    """Every meshcc module the daemon may import: all of the package but the other programs
    (listed from the installation, so a module added later is preloaded too)."""
    import pkgutil

    import meshcc

    names = [m.name for m in pkgutil.walk_packages(meshcc.__path__, "meshcc.")]
    return sorted(n for n in names if not n.startswith(_NOT_DAEMON))


def _preload() -> None:
    """Import now whatever the daemon imports lazily: after the drop to an unprivileged user
    the installation may be unreadable (a checkout or meshcc.pyz under /root, mode 0700),
    and a lazy import would then fail in the middle of a job or kill a background task.
    Every daemon-side meshcc module is imported, whatever imports it. Each codec is run once
    to load its backend."""
    for name in _LAZY_STDLIB:
        importlib.import_module(name)
    for name in daemon_modules():
        if name == "meshcc.mesh.discovery":
            continue  # below: zeroconf may be missing or broken, and that is not fatal
        importlib.import_module(name)
    try:
        importlib.import_module("ifaddr")
        importlib.import_module("meshcc.mesh.discovery")  # imports zeroconf, zeroconf.asyncio
    except Exception as e:  # noqa: BLE001 - compiles are still served; the mesh says it is off
        log.warning("cannot import the mDNS modules: %s", e)

    from meshcc import compression

    for codec in compression.Codec.ALL:
        if codec == compression.Codec.NONE or not compression.available(codec):
            continue
        try:
            sample = compression.compress(codec, b"meshcc warm-up " * 64)
            compression.decompress(codec, sample, 1 << 16)
        except Exception as e:  # noqa: BLE001 - a broken codec must not stop us; jobs say why
            log.warning("compression %s does not work: %s", codec, e)


def _no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS, as distccd does: setuid binaries cannot regain root."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS


def _check_tmpdir() -> str:
    """The job temp dir parent must be writable by the (possibly dropped) user."""
    tempfile.tempdir = None  # decide as the user we run as now, not as root
    try:
        parent = tempfile.gettempdir()
    except FileNotFoundError:  # no candidate ($TMPDIR, /tmp, /var/tmp, /usr/tmp, cwd) works
        raise _Fatal(
            f"cannot create job directories as uid {os.geteuid()}: none of $TMPDIR, /tmp, "
            "/var/tmp, /usr/tmp or the current directory is writable by it; set TMPDIR to "
            "a directory it can write, or choose another --user",
            EXIT_DISTCC_FAILED,
        ) from None
    wanted = os.environ.get("TMPDIR")
    if wanted and os.path.realpath(wanted) != os.path.realpath(parent):
        log.warning(
            "TMPDIR %s is not usable by uid %d; job directories go to %s instead",
            wanted,
            os.geteuid(),
            parent,
        )
    try:
        probe = tempfile.mkdtemp(prefix="meshccd_check_", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise _Fatal(
            f"cannot create job directories in {parent} as uid {os.geteuid()}: "
            f"{e.strerror or e}; set TMPDIR or --user",
            EXIT_DISTCC_FAILED,
        ) from None
    return parent


def _describe_listener(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6 and host == "::":
        with contextlib.suppress(OSError):
            if not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                return f"all addresses (IPv4 and IPv6) port {port}"
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


@dataclass(slots=True)
class _Prepared:
    """What :func:`_setup` made while root, for :func:`_serve`."""

    sock: socket.socket | None  # None: a mesh-only node (no compiler), no compile port
    registry: ToolchainRegistry
    config: ServerConfig
    jobs: int
    control_sock: socket.socket | None
    control_path: str | None
    hosts_file: HostsFile | None
    status_sock: socket.socket | None = None
    pyz: bytes | None = None
    pyz_error: str = ""
    report_sock: socket.socket | None = None  # compile clients' outcomes (meshcc stats)
    result_store: DiskStore | None = None  # the result cache's store (meshcc.cache)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.report_sock is not None:
            self.report_sock.close()
        if self.hosts_file is not None:
            self.hosts_file.close()
        if self.status_sock is not None:
            self.status_sock.close()
        if self.control_sock is not None:
            self.control_sock.close()


def _open_control(opts: DaemonOptions) -> tuple[socket.socket | None, str | None]:
    """The control socket (before the privilege drop); (None, None) when there is none."""
    from meshcc.transport.control_socket import (
        ControlSocketError,
        mark_no_cache,
        open_control_socket,
    )

    explicit = opts.socket or os.environ.get("MESHCC_SOCKET")
    if opts.loopback_only() and not explicit:
        log.log(
            NOTICE,
            "no control socket: listening on loopback only (pass --socket PATH to open one)",
        )
        return None, None
    path = control.daemon_socket_path(opts.socket)
    try:
        sock = open_control_socket(path)
    except ControlSocketError as e:
        if explicit:
            raise _Fatal(f"control socket: {e}", EXIT_DISTCC_FAILED) from None
        log.warning(
            "no control socket (%s); compiles are still served, but local clients "
            "and `meshcc hosts` cannot reach this daemon",
            e,
        )
        return None, None
    trouble = mark_no_cache(path, resultcache.off_reason(opts))
    if trouble:  # clients then ask, and hear "off": slower, not wrong
        log.warning("cannot say beside the control socket that no cache is kept: %s", trouble)
    return sock, path


def _open_status(opts: DaemonOptions) -> socket.socket | None:
    """The status port's socket (bound while root), or None when it is off. A port busy
    by default is a warning (compiles matter more); one asked for explicitly is fatal."""
    port = opts.status_port
    if port is None:
        port = 0 if opts.loopback_only() else STATUS_PORT
    if port == 0:
        return None
    if port == opts.port:
        raise _Fatal(
            f"--status-port {port} is the compile port; pick another (default "
            f"{STATUS_PORT}) or 0 for none",
            EXIT_BIND_FAILED,
        )
    try:
        return bind_listener(opts.listen, port, listen=False)
    except OSError as e:
        where = f"{opts.listen or 'all addresses'} port {port}"
        if opts.status_port is not None:
            raise _Fatal(
                f"cannot listen on {where} (--status-port): {e.strerror or e}", EXIT_BIND_FAILED
            ) from None
        log.warning(
            "no status port: cannot listen on %s (%s); meshcc.pyz is not served "
            "(--status-port N to pick another, 0 to silence this)",
            where,
            e.strerror or e,
        )
        return None


def _build_pyz() -> tuple[bytes | None, str]:
    """meshcc.pyz for the status port, made once while still root (the installation may
    be unreadable after the drop): (bytes, "") or (None, why not)."""
    from meshcc.daemon import zipapp

    try:
        data, source = zipapp.artefact()
    except (zipapp.ZipappError, OSError) as e:
        log.warning("meshcc.pyz is not served: %s", e)
        return None, str(e)
    log.info(
        "meshcc.pyz: %d bytes, sha256 %s (%s)",
        len(data),
        zipapp.sha256_line(data).split()[0],
        source,
    )
    return data, ""


FD_LIMIT_WANTED = 65536  # descriptors: connections, probes, job pipes, log, sockets


def raise_fd_limit(wanted: int = FD_LIMIT_WANTED) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (up to ``wanted``): (old, new).

    systemd and most shells start services with a soft limit of 1024, which a busy LAN
    (many clients, each with a connection per job, plus the peer probes) exhausts; an
    exhausted limit fails good compiles with EMFILE. Any process may raise its soft limit
    up to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


def _setup(opts: DaemonOptions) -> _Prepared:
    level = logsetup.parse_level(opts.log_level)
    stream: TextIO | None = None
    if opts.log_file:
        try:
            stream = logsetup.open_log_file(opts.log_file)
        except OSError as e:
            raise _Fatal(
                f"cannot open log file {opts.log_file}: {e.strerror or e}", EXIT_DISTCC_FAILED
            ) from None
    if stream is not None:
        logsetup.configure(level, stream, to_file=True)
    else:  # the journal, stderr or syslog, as suits how we were started
        logsetup.configure_default(level, force_stderr=opts.log_stderr)

    old_fds, fds = raise_fd_limit()
    if fds != old_fds:
        log.info("raised the open-file limit from %d to %d", old_fds, fds)
    elif fds < 4096:
        log.warning(
            "open-file limit is %d (hard limit); set LimitNOFILE=65536 (systemd) or "
            "ulimit -n 65536 for a daemon that serves a whole LAN",
            fds,
        )

    try:
        sock = bind_listener(opts.listen, opts.port, listen=False)
    except OSError as e:
        where = f"{opts.listen or 'all addresses'} port {opts.port}"
        raise _Fatal(f"cannot listen on {where}: {e.strerror or e}", EXIT_BIND_FAILED) from None

    control_sock: socket.socket | None = None
    status_sock: socket.socket | None = None
    report_sock: socket.socket | None = None
    try:
        status_sock = _open_status(opts)
        pyz, pyz_error = _build_pyz() if status_sock is not None else (None, "")
        control_sock, control_path = _open_control(opts)
        if control_path is not None:
            report_sock = outcomes.open_report_socket(control_path)
        hosts_file: HostsFile | None = None
        if opts.write_hosts:
            hosts_file = HostsFile(opts.write_hosts)
            try:
                hosts_file.prepare()
            except OSError as e:
                raise _Fatal(
                    f"--write-hosts {opts.write_hosts}: {e.strerror or e}", EXIT_DISTCC_FAILED
                ) from None
        if opts.nice:
            with contextlib.suppress(OSError):
                os.nice(opts.nice)
        _preload()
        cache = None
        if opts.ccache or opts.ccache_dir or opts.ccache_size:
            cache = ccache.CcacheSetup(opts)
        claim = resultcache.chain(cache.claim if cache else None, resultcache.claim(opts))
        note = _drop_privileges(opts.user, claim)
        if note:
            log.log(logging.INFO if note.startswith("dropped") else logging.WARNING, "%s", note)
        tmp_parent = _check_tmpdir()

        try:
            registry = ToolchainRegistry.offered(opts.compilers)
        except ToolchainError as e:
            raise _Fatal(str(e), EXIT_COMPILER_MISSING) from None
        for skipped in registry.skipped:
            log.info("not offering %s: %s", skipped.path, skipped.reason)
        hint = ccache.discovery_hint(registry.skipped, cache is not None)
        if hint:
            log.log(NOTICE, "%s", hint)

        def prepared(
            compile_sock: socket.socket | None,
            config: ServerConfig,
            jobs: int,
            result_store: DiskStore | None = None,
        ) -> _Prepared:
            """The one place the set-up's shared parts go in; only the compile side varies
            between a compiling daemon and a mesh-only node."""
            return _Prepared(
                sock=compile_sock,
                registry=registry,
                config=config,
                jobs=jobs,
                control_sock=control_sock,
                control_path=control_path,
                hosts_file=hosts_file,
                status_sock=status_sock,
                pyz=pyz,
                pyz_error=pyz_error,
                report_sock=report_sock,
                result_store=result_store,
            )

        if not registry.toolchains:
            # Only discovery gets here (--compiler raised above): a mesh-only node, unless
            # it would have nothing at all to offer.
            if control_sock is None and status_sock is None and hosts_file is None:
                raise _Fatal(
                    "no compilers found: no gcc, g++, cc or c++ on PATH "
                    f"({os.environ.get('PATH', '')}), and with no control socket, status "
                    "port or --write-hosts a mesh-only node has nothing to offer; install "
                    "gcc or use --compiler PATH",
                    EXIT_COMPILER_MISSING,
                )
            sock.close()
            log.log(
                NOTICE,
                "meshcc %s daemon: mesh-only node, offering no compiles: no gcc, g++, cc "
                "or c++ on PATH (%s). Discovery, the control socket (leases for local "
                "clients' own compilers), --write-hosts and the status port still work; "
                "port %d stays closed and no compile service is announced. Install gcc "
                "and restart, or pass --compiler PATH, to offer compiles.",
                __version__,
                os.environ.get("PATH", ""),
                opts.port,
            )
            return prepared(None, ServerConfig(allowed=LOOPBACK_NETWORKS, jobs=0), 0)

        jobs = opts.jobs or hostos.default_jobs()
        config = ServerConfig(
            allowed=LOOPBACK_NETWORKS,  # widened in _serve once the mesh chose interfaces
            jobs=jobs,
            io_timeout=opts.io_timeout or 300.0,
            job_lifetime=opts.job_lifetime,
            ccache=cache.ready() if cache else None,
        )
        result_store = resultcache.open_store(opts)
        log.log(
            NOTICE,
            "meshcc %s daemon listening on %s",
            __version__,
            _describe_listener(sock),
        )
        for tc in registry.toolchains:
            log.log(
                NOTICE,
                "compiler %s: gcc %s, target %s, binutils %s (names: %s)",
                tc.path,
                tc.version,
                tc.target,
                tc.binutils or "unknown",
                ", ".join(tc.names),
            )
        lifetime = f"{opts.job_lifetime:g}s" if opts.job_lifetime else "unlimited"
        log.log(
            NOTICE,
            "allowing up to %d concurrent jobs (job lifetime %s), job directories in %s",
            jobs,
            lifetime,
            tmp_parent,
        )
        from meshcc import compression

        if not compression.available(compression.Codec.LZO):
            log.log(NOTICE, "LZO unavailable (no lzallright): serving distcc protocol 1 only")
        return prepared(sock, config, jobs, result_store)
    except BaseException:
        sock.close()  # closing twice (mesh-only, then a failure) is harmless
        if status_sock is not None:
            status_sock.close()
        if control_sock is not None:
            control_sock.close()
        if report_sock is not None:
            report_sock.close()
        raise


def _server_allowed(
    opts: DaemonOptions, mesh_allowed: Sequence[IPNetwork]
) -> tuple[list[IPNetwork], str]:
    """The compile server's access list and where it came from.

    ``--allow`` replaces the default exactly (as distccd's). The default is loopback plus
    the mesh's networks (the subnets of the interfaces it runs on), else every
    interface's subnet; a daemon listening on loopback only allows loopback only.
    """
    if opts.allow:
        return list(opts.allow), "--allow"
    nets: list[IPNetwork] = list(LOOPBACK_NETWORKS)
    if opts.loopback_only():
        return nets, "default"
    chosen, source = list(mesh_allowed), "interfaces"
    if not chosen:
        chosen, source = default_allowed_networks(), "default"
    for n in chosen:
        if n not in nets:
            nets.append(n)
    return nets, source


async def _serve(prep: _Prepared, opts: DaemonOptions) -> int:
    from meshcc.daemon.control_server import ControlLimits, ControlServer
    from meshcc.daemon.metrics import ProbeStats, Telemetry
    from meshcc.mesh.liveness import peer_probe
    from meshcc.mesh.netif import InterfaceError
    from meshcc.mesh.service import Mesh, MeshConfig

    disabled: str | None = None
    if opts.loopback_only():
        disabled = f"listening on {opts.listen} only (loopback)"
    elif not opts.discovery:
        disabled = "--no-discovery"
    mesh = Mesh(
        MeshConfig(
            interfaces=opts.interfaces,
            allow=opts.allow,
            accept_unverified=opts.accept_unverified,
            disabled=disabled,
            extra_caps=resultcache.caps(prep.result_store, prep.sock, prep.status_sock),
            status_port=prep.status_sock.getsockname()[1] if prep.status_sock else None,
        ),
        prep.registry.toolchains,
        opts.port,
        prep.jobs,
        probe=(probes := ProbeStats()).wrap(peer_probe),  # per-peer RTT and failures
    )
    try:
        await mesh.start()
    except InterfaceError as e:
        log.error("%s", e)
        return EXIT_DISTCC_FAILED
    st = mesh.status
    if not st.discovery and disabled is not None:
        log.log(NOTICE, "discovery is off: %s", disabled)
    allowed, source = _server_allowed(opts, st.allowed)
    config = dataclasses.replace(prep.config, allowed=tuple(allowed))
    log.log(
        NOTICE,
        "allowing %s from (%s): %s",
        "clients" if prep.sock is not None else "status-port clients",
        source,
        ", ".join(str(n) for n in allowed),
    )

    server: CompileServer | None = None
    if prep.sock is not None:
        server = CompileServer(prep.registry, config)
        if prep.result_store is not None:
            server.result_cache = resultcache.make_cache(
                prep.result_store, mesh, prep.registry.toolchains, opts.cache_lookup_timeout
            )
        await server.start(prep.sock)
    stopped = asyncio.Event()  # a mesh-only node has no server to wait for

    def status() -> control.StatusReply:
        figures: control.DaemonFigures = {
            "version": __version__,
            "peers": len(mesh.snapshot()),
            "jobs": prep.jobs,
            "running": server.running_compiles if server is not None else 0,
            "port": opts.port,
            "socket": prep.control_path,
            "leases": control_server.broker.held,
            "queued": len(control_server.broker.waiters),
            "slots_held": server.slots_held if server is not None else 0,
            "slot_waiting": server.waiting_for_slot if server is not None else 0,
        }
        figures.update(_load_status(mesh))
        return mesh.status.reply(node=mesh.status.node_id or socket.gethostname(), **figures)

    control_server = ControlServer(
        mesh,
        status,
        path=prep.control_path or "",
        limits=ControlLimits.for_fd_limit(hostos.open_files_limit()),
        load=mesh.load,
        on_demand=mesh.load_channel.demand_changed if mesh.load_channel is not None else None,
    )
    control_server.broker.follow_changes(mesh.on_change)  # verdicts kept until a change
    if prep.result_store is not None:  # direct mode's manifests (meshcc.cache.direct)
        from meshcc.cache.direct import DirectCache

        results = server.result_cache if server is not None else None
        control_server.direct = DirectCache(
            prep.result_store, results=results, toolchains=prep.registry.toolchains
        )
        if results is not None:  # its figures are reported with the result cache's
            results.direct = control_server.direct
    _wire_load(mesh, server, control_server)
    counts = outcomes.OutcomeCounts()
    receiver = None
    if prep.report_sock is not None and prep.control_path is not None:
        receiver = outcomes.OutcomeReceiver(
            counts, prep.report_sock, report_socket_path(prep.control_path)
        )
        receiver.start()
    telemetry = Telemetry(
        status,
        server=server,
        ccache=server is not None and server.config.ccache is not None,
        peers=mesh.snapshot,
        toolchains=prep.registry.toolchains,
        probes=probes,
        outcomes=counts if receiver is not None else None,
    )
    status_server = None
    if prep.status_sock is not None:
        from meshcc.daemon.status_http import StatusServer

        status_server = StatusServer(
            prep.pyz,
            status,
            allowed,
            pyz_error=prep.pyz_error,
            cache_line=server.cache_line if server is not None else None,
            telemetry=telemetry,
            result_cache=server.result_cache if server is not None else None,
            direct=control_server.direct,
        )
        await status_server.start(prep.status_sock)
        log.log(
            NOTICE,
            "status port %s: GET / /status.json /metrics /meshcc.pyz /meshcc.pyz.sha256 /bootstrap",
            _describe_listener(prep.status_sock),
        )
    if prep.control_sock is not None:
        await control_server.start(prep.control_sock)
        log.log(NOTICE, "control socket %s", prep.control_path)
    failed: list[str] = []

    def on_fatal(why: str) -> None:
        failed.append(why)
        if server is not None:
            server.abort()
        stopped.set()

    tasks: list[asyncio.Task[None]] = []
    if server is not None:
        compile_server = server
        tasks.append(
            supervise(
                "meshcc-load", lambda: _report_load(mesh, compile_server), log, on_fatal=on_fatal
            )
        )
    if st.discovery:
        tasks.append(
            supervise(
                "meshcc-watch",
                lambda: _watch_default_cc(mesh, control_server.fingerprints, prep.hosts_file),
                log,
                on_fatal=on_fatal,
            )
        )
    elif prep.hosts_file is not None:
        _write_hosts(prep.hosts_file, "", None)

    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if server is None:
            log.log(NOTICE, "%s received: stopping", name)
            stopped.set()
        elif signals_seen == 1:
            log.log(
                NOTICE,
                "%s received: no new connections; waiting for %d connection(s) to finish "
                "(send it again to abort them)",
                name,
                server.active_connections,
            )
            server.request_stop()
        else:
            log.warning(
                "%s received again: aborting %d connection(s)", name, server.active_connections
            )
            server.abort()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        if server is not None:
            await server.serve_until_stopped()
        else:
            await stopped.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await control_server.stop()
        if server is not None and server.result_cache is not None:
            await server.result_cache.close()
        if receiver is not None:
            receiver.stop()
        if status_server is not None:
            await status_server.stop()
        await mesh.stop()
    if failed:
        log.critical("daemon stopped: %s", failed[0])
        return EXIT_DISTCC_FAILED
    log.log(NOTICE, "daemon stopped")
    return EXIT_OK


def _load_status(mesh: Mesh) -> control.DaemonFigures:
    """The status reply's live-load fields (empty without the channel)."""
    book = mesh.load
    if book is None:
        return {}
    return {
        "free": book.free(),
        "speed": book.speed,
        "leased": book.leased(),
        "loads": mesh.load_infos(),
    }


def _wire_load(mesh: Mesh, server: CompileServer | None, control_server: ControlServer) -> None:
    """Connect the live-load channel: this box's figures in, peers' records to the broker."""
    channel = mesh.load_channel
    if channel is None:
        return
    from meshcc.mesh.load import SpeedMeter

    meter = SpeedMeter()
    broker = control_server.broker

    def figures() -> tuple[int, int, int]:
        # The server's exact counts (slots taken, requests queued for one); the broker's
        # waiting leases go out with them (LoadBook.lease_waiting).
        if server is None:
            return 0, 0, 0
        speed = meter.update(server.compiled_bytes, server.compile_seconds)
        return server.slots_held, server.waiting_for_slot, speed

    mesh.set_load_figures(figures)
    channel.on_update = broker.on_load
    if server is not None:
        server.on_slots = channel.slots_changed  # peers hear at once if it moves their shares


class _LoadSink(Protocol):
    """Where the daemon reports its running jobs (:meth:`meshcc.mesh.service.Mesh.set_load`)."""

    def set_load(self, busy_jobs: int) -> None: ...


async def _report_load(mesh: _LoadSink, server: CompileServer) -> None:
    """Feed the running-job count to the mesh (it republishes free slots rarely)."""
    while True:
        mesh.set_load(server.running_compiles)
        await asyncio.sleep(5.0)


def _write_hosts(hosts_file: HostsFile, line: str, compiler: str | None) -> None:
    try:
        if hosts_file.update(line, compiler):
            log.info("--write-hosts %s: %s", hosts_file.path, line or "(no peers)")
    except OSError as e:
        log.warning("--write-hosts %s: %s", hosts_file.path, e.strerror or e)


# How long the watch below waits for a change before it judges again anyway: verdicts
# also change with time alone (a back-off ends, a stock distccd is re-admitted), and
# --write-hosts' order with the probes' round trips, which the mesh does not signal.
# Judging every peer twice a second was a sixth of an idle daemon's CPU, for log lines
# that change only with the table.
WATCH_BACKSTOP_S = 5.0
WATCH_HOSTS_FILE_S = 0.5


async def _watch_default_cc(
    mesh: Mesh, fingerprints: FingerprintCache, hosts_file: HostsFile | None
) -> None:
    """Judge the peers for the local ``cc`` when the mesh changes: log who is in or out and
    why (once per change), and keep ``--write-hosts`` current (and in the mesh's order)."""

    fp = None
    found = hostos.which("cc")
    path = os.path.abspath(found) if found is not None else None
    if path is None:
        log.warning("no `cc` on PATH: peers are listed without a compiler check")
    else:
        try:
            fp = await fingerprints.get("cc", path)
        except FingerprintError as e:
            log.warning("%s; peers are listed without a compiler check", e)
    compiler = fp.describe() if fp is not None else None
    changed = asyncio.Event()
    unsubscribe = mesh.on_change(changed.set)  # (a restarted watch subscribes anew)
    backstop = WATCH_BACKSTOP_S if hosts_file is None else WATCH_HOSTS_FILE_S
    try:
        await _watch_loop(mesh, fp, compiler, hosts_file, changed, backstop)
    finally:
        unsubscribe()


async def _watch_loop(
    mesh: Mesh,
    fp: ClientCompiler | None,
    compiler: str | None,
    hosts_file: HostsFile | None,
    changed: asyncio.Event,
    backstop: float,
) -> None:
    """The watch itself: judge, log what changed, write the hosts file, wait."""
    seen: dict[str, tuple[bool, str]] = {}
    while True:
        changed.clear()
        verdicts = mesh.explain(fp)
        current: dict[str, tuple[bool, str]] = {}
        for v in verdicts:
            r = v.peer.record
            # The reason of an included peer carries its free slots: not a change.
            state = (v.included, "" if v.included else v.reason)
            current[r.key] = state
            if seen.get(r.key) != state:
                where = v.address or ", ".join(r.addresses) or "?"
                if v.included:
                    log.info("peer %s (%s) is in for %s", r.host, where, compiler or "any cc")
                else:
                    log.info(
                        "peer %s (%s) is excluded%s: %s",
                        r.host,
                        where,
                        f" for {fp.name}" if fp else "",
                        v.reason,
                    )
        for key in seen.keys() - current.keys():
            log.info("peer %s is gone", key)
        seen = current
        if hosts_file is not None:
            _write_hosts(hosts_file, with_localhost(hosts_line(verdicts)), compiler)
        await wait_set(changed, backstop)


def run(opts: DaemonOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code (0, or distccd's failure codes)."""
    logsetup.configure(logsetup.parse_level(opts.log_level))  # stderr until the log opens
    try:
        prep = _setup(opts)
    except (_Fatal, ccache.CcacheError) as e:
        log.error("%s", e)
        handlers = logging.getLogger("meshcc").handlers
        if handlers and getattr(handlers[0], "stream", sys.stderr) is not sys.stderr:
            print(f"meshcc daemon: error: {e}", file=sys.stderr)  # tell whoever started us
        return e.code
    code = EXIT_OK
    try:
        code = asyncio.run(_serve(prep, opts))
    except KeyboardInterrupt:
        pass
    finally:
        prep.close()
    return code
