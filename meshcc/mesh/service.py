"""The ``Mesh`` service the daemon owns: announce, browse, track, judge.

API (all in the daemon's event loop)::

    mesh = Mesh(MeshConfig(interfaces=("eth0",), allow=(), accept_unverified=False),
                toolchains=registry.toolchains, port=3632, jobs=8)
    await mesh.start()        # InterfaceError for a bad --interface; never fails otherwise:
                              # with no usable interface (or mDNS unavailable) discovery is
                              # off, said once in the log, and the daemon keeps serving
    mesh.status               # MeshStatus: discovery on/off and why, node id, interfaces,
                              # allowed networks (use for the server's access list too)
    mesh.snapshot()           # [PeerState]: every known peer, live or not
    mesh.explain(fp)          # [Verdict]: every peer in/out for ClientCompiler fp, with the
                              # reason; included first, best first (fp None: no compiler check)
    mesh.hosts_line(fp)       # "10.0.0.2:3632/8,lzo [fd00::3]:3632/4,lzo" (distcc grammar)
    mesh.report_job_result("10.0.0.2:3632", ok=False)           # lease outcome; by key or
    mesh.report_job_result(key, ok=False, connect_failed=True)  # host spec; False if unknown
    mesh.set_load(busy_jobs)  # optional: republish free slots (≥ 30 s apart, big changes only)
    mesh.load                 # LoadBook | None: peers' live load and the shares promised
    mesh.load_channel         # LoadChannel | None: its UDP side (poke() after a change)
    mesh.set_load_figures(fn) # fn() -> (running, queued, speed) of this box, for the channel
    await mesh.stop()         # goodbyes (peers drop us in ms), sockets closed

Allowed subnets: ``--allow`` replaces the default, which is the subnets of the interfaces
the mesh runs on. The same networks should guard the compile server (plus loopback, for
the box's own clients); ``mesh.status.allowed`` is what to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from meshcc import __version__, hostos
from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.loglevels import NOTICE
from meshcc.mesh import netif
from meshcc.mesh.liveness import LivenessLoop, ProbeFn, peer_probe
from meshcc.mesh.load import LoadBook, LoadTimings, RemotePeer
from meshcc.mesh.matching import MatchPolicy, Verdict, hosts_line, judge_all, pick_address
from meshcc.mesh.netif import Interface, Selection
from meshcc.mesh.peers import Liveness, LivenessTimings, PeerState, PeerTable
from meshcc.mesh.records import (
    MESHCC_TYPE,
    DistccId,
    LocalNode,
    PeerKind,
    PeerRecord,
    RecordError,
    ToolchainInfo,
    build_distcc_services,
    build_meshcc_service,
    instance_label,
    node_id,
    parse_distcc,
    parse_meshcc,
    random_node_id,
)
from meshcc.supervisor import supervise
from meshcc.transport.addresses import IPNetwork
from meshcc.wire.control import PeerLoadInfo, StatusReply

if TYPE_CHECKING:
    from typing import Unpack

    from meshcc.compiler.toolchain import Toolchain
    from meshcc.mesh.discovery import Discovery, DiscoveryEvent
    from meshcc.mesh.loadnet import LoadChannel
    from meshcc.wire.control import DaemonFigures

__all__ = ["Mesh", "MeshConfig", "MeshStatus", "probe_default_cc"]

log = logging.getLogger("meshcc.mesh")


class _Probe(enum.Enum):
    PROBE = "probe"


_PROBE: Final = _Probe.PROBE  # Mesh(distcc_id=...) default: run `cc -dumpversion/-dumpmachine`


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The mesh's options (``meshcc daemon`` flags)."""

    interfaces: tuple[str, ...] = ()  # --interface (repeatable); () = default selection
    allow: tuple[IPNetwork, ...] = ()  # --allow; () = subnets of the chosen interfaces
    accept_unverified: bool = False  # --accept-unverified: use stock distccd peers
    hostname: str | None = None  # announced host name; None = socket.gethostname()
    timings: LivenessTimings = field(default_factory=LivenessTimings)
    resolve_timeout_s: float = 1.5
    republish_min_interval_s: float = 30.0
    default_cc: str = "cc"  # described by the _distcc._tcp record, as distccd does
    announce: bool = True  # False: browse only (``meshcc hosts`` without a daemon)
    disabled: str | None = None  # discovery off for this reason (interfaces still chosen)
    live_load: bool = True  # the live-load channel (load.py), when the caps allow it
    extra_caps: frozenset[str] = frozenset()  # announced too ("rcache": meshcc.cache)
    status_port: int | None = None  # announced as ``sport``; None: the daemon has none
    load_timings: LoadTimings = field(default_factory=LoadTimings)


@dataclass(frozen=True, slots=True)
class MeshStatus:
    """What the mesh is doing, for logs, ``meshcc hosts --explain`` and the control socket."""

    discovery: bool
    off_reason: str | None
    node_id: str | None
    instance: str | None
    interfaces: tuple[str, ...]
    addresses: tuple[str, ...]
    allowed: tuple[IPNetwork, ...]
    allowed_source: str  # "--allow" or "interfaces"
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "discovery": self.discovery,
            "off_reason": self.off_reason,
            "node_id": self.node_id,
            "instance": self.instance,
            "interfaces": list(self.interfaces),
            "addresses": list(self.addresses),
            "allowed": [str(n) for n in self.allowed],
            "allowed_source": self.allowed_source,
            "warnings": list(self.warnings),
        }

    def reply(self, *, node: str | None = None, **daemon: Unpack[DaemonFigures]) -> StatusReply:
        """This status as the control protocol's status reply, with what only the daemon
        knows (version, job slots, leases); ``node`` defaults to the node id."""
        return StatusReply(
            node=node if node is not None else self.node_id or "",
            discovery=self.discovery,
            off_reason=self.off_reason,
            interfaces=self.interfaces,
            addresses=self.addresses,
            allowed=[str(n) for n in self.allowed],
            allowed_source=self.allowed_source,
            warnings=self.warnings,
            **daemon,
        )


async def probe_default_cc(cc: str = "cc", timeout_s: float = 10.0) -> DistccId | None:
    """First words of ``cc -dumpmachine`` / ``cc -dumpversion``, as distccd announces them."""
    env = dict(os.environ, LC_ALL="C")

    async def first_word(flag: str) -> str | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                cc,
                flag,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except OSError:
            return None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return None
        words = out.decode("utf-8", "replace").split()
        return words[0] if proc.returncode == 0 and words else None

    machine, version = await asyncio.gather(first_word("-dumpmachine"), first_word("-dumpversion"))
    return DistccId(machine, version) if machine and version else None


def _endpoint(address: str, port: int) -> str:
    """``10.0.0.2:3632`` or ``[fd00::2]:3632`` for logs."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _default_caps() -> frozenset[str]:
    from meshcc import compression

    # Only what the compile server speaks (peers trust every capability announced):
    # ERRM refusals, the PING/PONG liveness probe (peers then probe us with it), and the
    # SLOT/BUSY job slot reservation (meshcc clients then get BUSY at once when we are full).
    caps = {"busy", "errm", "ping"}
    if compression.available(compression.Codec.LZO):
        caps.add("lzo")
    caps.update(compression.announced())  # zstd, lz4: CODC bodies (wire.codecs); zref
    return frozenset(caps)


def _default_protocols() -> tuple[int, ...]:
    """distcc protocol 2 is LZO-compressed: without lzallright (meshcc.pyz) serve 1 only,
    so peers list this daemon without ``,lzo``."""
    from meshcc import compression

    return (1, 2) if compression.available(compression.Codec.LZO) else (1,)


class Mesh:
    """Announcement + peer table + liveness for one daemon (see the module docstring)."""

    def __init__(
        self,
        config: MeshConfig,
        toolchains: Iterable[ToolchainInfo | Toolchain],
        port: int,
        jobs: int,
        *,
        cpus: int | None = None,
        protocols: tuple[int, ...] | None = None,
        caps: frozenset[str] | None = None,
        distcc_id: DistccId | _Probe | None = _PROBE,
        node_id: str | None = None,
        probe: ProbeFn = peer_probe,
        list_interfaces: Callable[[], Sequence[Interface]] = netif.list_interfaces,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.port = port
        self.jobs = jobs
        self.cpus = cpus or hostos.cpu_count()
        toolchains = tuple(toolchains)
        self.toolchains = tuple(
            t if isinstance(t, ToolchainInfo) else ToolchainInfo.from_toolchain(t)
            for t in toolchains
        )
        # The _distcc._tcp record describes the compiler a stock client's job names (its
        # `cc`): the one this daemon offers under that name, probed by its own path.
        self._distcc_cc: str | None = next(
            (
                t.path if not isinstance(t, ToolchainInfo) else config.default_cc
                for t in toolchains
                if config.default_cc in t.names
            ),
            None,
        )
        self.protocols = protocols
        self.caps = caps
        self._distcc_id = distcc_id
        self._node_id = node_id
        self._probe = probe
        self._list_interfaces = list_interfaces
        self._policy = MatchPolicy(config.allow, accept_unverified=config.accept_unverified)
        self.table = PeerTable(
            config.timings,
            clock=clock,
            wallclock=wallclock,
            address_for=lambda r: pick_address(r, self._policy),
        )
        self._status = MeshStatus(
            False,
            "not started",
            None,
            None,
            (),
            (),
            config.allow,
            "--allow" if config.allow else "interfaces",
        )
        self._node: LocalNode | None = None
        self._discovery: Discovery | None = None  # imported lazily: it imports zeroconf
        self._loop: LivenessLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._own_names: set[str] = set()
        self._names: dict[tuple[str, str], str] = {}  # (type, instance) -> table key
        self._unreadable: dict[str, str] = {}  # instance -> why its record was ignored
        self._busy: int | None = None
        self._published_free: int | None = None
        self.load: LoadBook | None = None
        self.load_channel: LoadChannel | None = None
        self._load_figures: Callable[[], tuple[int, int, int]] | None = None
        # _load_peers' last answer, and the table version and policy it was built from
        self._load_peers_of: tuple[int, object] | None = None
        self._load_peers_list: list[RemotePeer] = []
        self._change_callbacks: list[Callable[[], None]] = []

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Choose interfaces, announce, browse, probe. See the module docstring."""
        interfaces = list(self._list_interfaces())
        selection: Selection = netif.select_interfaces(interfaces, self.config.interfaces)
        warnings = list(selection.warnings)
        for w in warnings:
            log.warning("%s", w)
        allowed = self.config.allow or netif.networks_of(selection.chosen)
        own: set[tuple[str, int]] = set()
        for iface in interfaces:
            own.update((str(i.ip), self.port) for i in iface.ipv4)
            own.update((str(i.ip).split("%")[0], self.port) for i in iface.ipv6)
        self._policy = MatchPolicy(allowed, frozenset(own), self.config.accept_unverified)
        hostname = self.config.hostname or socket.gethostname()
        nid = self._node_id
        if nid is None:
            macs, machine_id, _ = netif.identity_material(selection.chosen)
            nid = node_id(macs, self.port, machine_id, hostname) if macs else random_node_id()
        addresses = tuple(selection.announce_addresses)  # IPv4, then IPv6 (netif.py)
        mdns_interfaces = selection.mdns_interfaces
        dialable = netif.dialable(interfaces)  # peers' addresses of families we have

        def status(on: bool, why: str | None, instance: str | None = None) -> MeshStatus:
            return MeshStatus(
                on,
                why,
                nid,
                instance,
                tuple(i.name for i in selection.chosen),
                addresses,
                allowed,
                "--allow" if self.config.allow else "interfaces",
                tuple(warnings),
            )

        off_reason = self.config.disabled or selection.off_reason
        if off_reason is not None:
            self._status = status(False, off_reason)
            if self.config.announce:
                log.warning("discovery is off: %s; %s", off_reason, self._still())
            return

        if not self.config.announce:
            await self._start_browsing(addresses, mdns_interfaces, status, dialable)
            return
        distcc_id = self._distcc_id
        publish_distcc = True
        if not self.toolchains:
            # A mesh-only node (no gcc): it announces _meshcc._tcp with no toolchain, so
            # meshcc peers see it and say why it is no host, and no _distcc._tcp record,
            # which stock `distcc +zeroconf` would take as a compile server.
            publish_distcc, distcc_id = False, None
            warnings.append(
                "this daemon offers no compilers (mesh-only): no _distcc._tcp record; peers "
                "see it but never list it as a compile host"
            )
            log.log(NOTICE, "%s", warnings[-1])
        elif distcc_id is _PROBE and self._distcc_cc is None:
            publish_distcc, distcc_id = False, None
            warnings.append(
                f"this daemon offers no `{self.config.default_cc}`, the compiler stock distcc "
                "clients name: no _distcc._tcp record is published (meshcc clients and "
                "`meshcc hosts` still find it)"
            )
            log.warning("%s", warnings[-1])
        elif distcc_id is _PROBE:
            assert self._distcc_cc is not None
            distcc_id = await probe_default_cc(self._distcc_cc)
            if distcc_id is None:
                warnings.append(
                    f"`{self._distcc_cc} -dumpversion/-dumpmachine` failed: the "
                    "_distcc._tcp record has no subtype, so `distcc +zeroconf` clients will "
                    "not list this daemon"
                )
                log.warning("%s", warnings[-1])
        caps = (self.caps if self.caps is not None else _default_caps()) | self.config.extra_caps
        load_sock = self._bind_load(caps)
        # Peers send records to whoever announces "load": only when the socket is there.
        caps = caps | {"load"} if load_sock is not None else caps - {"load"}
        self._node = LocalNode(
            node_id=nid,
            hostname=hostname,
            port=self.port,
            cpus=self.cpus,
            jobs=self.jobs,
            toolchains=self.toolchains,
            meshcc_version=__version__,
            protocols=self.protocols if self.protocols is not None else _default_protocols(),
            caps=caps,
            distcc_id=distcc_id,
            status_port=self.config.status_port,
        )
        meshcc_spec, txt_warnings = build_meshcc_service(self._node)
        for w in txt_warnings:
            warnings.append(w)
            log.warning("%s", w)
        distcc_specs = build_distcc_services(self._node) if publish_distcc else []
        self._own_names = {meshcc_spec.name, *(spec.name for spec in distcc_specs)}

        from meshcc.mesh.discovery import Discovery

        discovery = Discovery(
            list(addresses),
            self._on_event,
            interfaces=mdns_interfaces,
            resolve_timeout_s=self.config.resolve_timeout_s,
            dialable=dialable,
        )
        try:
            await discovery.start([meshcc_spec, *distcc_specs])
        except OSError as e:
            why = f"cannot use mDNS on {', '.join(addresses)}: {e.strerror or e}"
            self._status = status(False, why)
            log.warning("discovery is off: %s; %s", why, self._still())
            if load_sock is not None:
                load_sock.close()
            return
        self._discovery = discovery
        warnings.extend(discovery.warnings)  # e.g. IPv6 mDNS failed: IPv4 only
        if load_sock is not None:
            await self._start_load(nid, load_sock)
        self._status = status(True, None, instance_label(self._node))
        log.log(
            NOTICE,
            "announcing %s over %s on %s (%s) port %d; peers allowed from (%s): %s",
            instance_label(self._node),
            "IPv4" if discovery.warnings else selection.families,
            ", ".join(self._status.interfaces),
            ", ".join(addresses),
            self.port,
            self._status.allowed_source,
            ", ".join(str(n) for n in allowed) or "nothing",
        )
        self._loop = LivenessLoop(self.table, self._probe, on_change=self._on_liveness)
        self._tasks = [supervise("meshcc-liveness", self._loop.run, log)]
        if self.config.republish_min_interval_s > 0:
            self._tasks.append(supervise("meshcc-republish", self._republish, log))

    def _still(self) -> str:
        """What a daemon whose discovery is off still does, for the warning."""
        if self.toolchains:
            return "this daemon still serves compiles"
        return "this mesh-only daemon (no compilers) finds no peers"

    async def _start_browsing(
        self,
        addresses: tuple[str, ...],
        mdns_interfaces: Sequence[str | int],
        status: Callable[..., MeshStatus],
        dialable: Callable[[str], bool] | None = None,
    ) -> None:
        """Browse-only mode: track peers without announcing ourselves."""
        from meshcc.mesh.discovery import Discovery

        discovery = Discovery(
            list(addresses),
            self._on_event,
            interfaces=mdns_interfaces,
            resolve_timeout_s=self.config.resolve_timeout_s,
            dialable=dialable,
        )
        try:
            await discovery.start([])
        except OSError as e:
            self._status = status(
                False, f"cannot use mDNS on {', '.join(addresses)}: {e.strerror or e}"
            )
            return
        self._discovery = discovery
        self._status = status(True, None)
        self._loop = LivenessLoop(self.table, self._probe, on_change=self._on_liveness)
        self._tasks = [supervise("meshcc-liveness", self._loop.run, log)]

    async def stop(self) -> None:
        """Stop probing; goodbyes so peers drop us at once; close the mDNS sockets."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        channel, self.load_channel = self.load_channel, None
        if channel is not None:
            await channel.stop()
        discovery, self._discovery = self._discovery, None
        if discovery is not None:
            await discovery.stop()
        old = self._status
        self._status = MeshStatus(
            False, "stopped", old.node_id, old.instance, (), (), old.allowed, old.allowed_source
        )

    # ------------------------------------------------------------ queries

    @property
    def status(self) -> MeshStatus:
        return self._status

    def snapshot(self) -> list[PeerState]:
        """Every known peer with its liveness (ours, not mDNS's)."""
        return self.table.snapshot()

    def explain(self, fingerprint: ClientCompiler | None) -> list[Verdict]:
        """Every peer, in or out for this compiler, with the reason; included first, best first."""
        return judge_all(fingerprint, self.table.snapshot(), self._policy)

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when a judgement may have changed: a peer came, went or
        changed its record, its liveness changed, or a job outcome changed its failures,
        back-off or liveness (``PeerTable.report_job`` says). Returns what unsubscribes
        it. Some changes come with time alone (a back-off or a stock distccd's
        re-admission ending, a probe's round trip, which ranks peers): whoever must follow
        those also looks on a timer."""
        self._change_callbacks.append(callback)
        return lambda: self._change_callbacks.remove(callback)

    def _changed(self) -> None:
        for callback in self._change_callbacks:
            try:
                callback()
            except Exception:
                log.exception("mesh: a change callback failed")

    def hosts_line(self, fingerprint: ClientCompiler | None) -> str:
        """DISTCC_HOSTS entries of the matching, live, allowed peers, best first."""
        return hosts_line(self.explain(fingerprint))

    # ------------------------------------------------------------ inputs from the daemon

    def report_job_result(self, peer: str, ok: bool, *, connect_failed: bool = False) -> bool:
        """A lease's outcome on ``peer`` (table key or ``ADDR:PORT`` spec); False if unknown."""
        key = self.table.find(peer)
        if key is None:
            return False
        changed = self.table.report_job(key, ok, connect_failed=connect_failed)
        if connect_failed and self._loop is not None:
            self._loop.wake()
        if changed:
            self._changed()
        return True

    def set_load(self, busy_jobs: int) -> None:
        """Jobs running here now; republished as ``free`` at most every 30 s, on big changes."""
        self._busy = max(0, busy_jobs)

    def set_load_figures(self, figures: Callable[[], tuple[int, int, int]]) -> None:
        """Where the live-load channel reads this box's (running, queued, speed)."""
        self._load_figures = figures
        if self.load_channel is not None:
            self.load_channel.figures = figures

    def load_infos(self) -> list[PeerLoadInfo]:
        """Every peer's live load (fresh records only), for status and ``meshcc top``."""
        book = self.load
        if book is None:
            return []
        out = []
        for key, pl in book.loads().items():
            r = self.table.record(key)
            out.append(
                PeerLoadInfo(
                    key,
                    r.host if r is not None else key,
                    jobs=pl.jobs,
                    running=pl.running,
                    queued=pl.queued,
                    free=pl.free,
                    speed=pl.speed,
                    share=pl.share,
                    held=pl.held,
                    age_s=pl.age_s,
                )
            )
        return out

    # ------------------------------------------------------------ live load

    def _bind_load(self, caps: frozenset[str]) -> socket.socket | None:
        """The live-load channel's UDP socket, if this daemon runs the channel."""
        if not self.config.live_load or (self.caps is not None and "load" not in caps):
            return None
        from meshcc.mesh.loadnet import bind_load_socket

        try:
            return bind_load_socket(self.port)
        except OSError as e:
            log.warning(
                "no live-load channel: cannot bind UDP port %d (%s); peers see this box's "
                "load from mDNS only",
                self.port,
                e.strerror or e,
            )
            return None

    async def _start_load(self, nid: str, sock: socket.socket) -> None:
        from meshcc.mesh.loadnet import LoadChannel

        self.load = LoadBook(nid, self.jobs if self.toolchains else 0, self.config.load_timings)
        channel = LoadChannel(self.load, self._load_peers, self._load_figures)
        channel.on_heard = self.table.heard_from  # proof of life: fewer TCP probes
        try:
            await channel.start(sock)
        except OSError as e:
            log.warning("no live-load channel: %s", e.strerror or e)
            sock.close()
            self.load = None
            return
        self.load_channel = channel

    def _load_peers(self) -> list[RemotePeer]:
        """The peers the channel talks to: meshcc peers announcing ``load`` with an allowed
        address (IPv4 or IPv6), whatever our probes say of their compile port: as clients of ours
        their records are proof of life enough (waiting for our probe to confirm them
        would let them fall back to guessing our free slots meanwhile), and the table
        drops them when mDNS does.

        The same list object is returned while the table's records and the policy are
        unchanged (the channel asks on every round; it re-reads the list only when the
        object differs)."""
        built_from = (self.table.records_version, self._policy)
        if built_from == self._load_peers_of:
            return self._load_peers_list
        out = []
        for st in self.table.snapshot():
            r = st.record
            if r.kind is not PeerKind.MESHCC or "load" not in r.caps or r.node_id is None:
                continue
            address = pick_address(r, self._policy)
            if address is None:
                continue
            allowed = frozenset(
                a
                for a in r.addresses
                if pick_address(dataclasses.replace(r, addresses=(a,)), self._policy)
            )
            out.append(RemotePeer(r.key, r.node_id, address, r.port, r.jobs, allowed))
        self._load_peers_of, self._load_peers_list = built_from, out
        return out

    def cache_homes(self, fingerprint: tuple[str, str, str | None]) -> list[tuple[str, str, int]]:
        """(node id, address, status port) of the live meshcc peers that serve this exact
        toolchain (version, target, binutils) at an allowed address and announce a result
        cache (``rcache``): the peers this daemon would take compile results from, so the
        result cache's candidate homes."""
        version, target, binutils = fingerprint
        out = []
        for st in self.table.snapshot():
            r = st.record
            if st.liveness is not Liveness.UP or r.kind is not PeerKind.MESHCC:
                continue
            if "rcache" not in r.caps:  # no result cache there
                continue
            if r.node_id is None or binutils is None:
                continue
            if not any(
                t.version == version and t.target == target and t.binutils == binutils
                for t in r.toolchains
            ):
                continue
            address = pick_address(r, self._policy)
            if address is not None:
                out.append((r.node_id, address, r.status_port))
        return out

    # ------------------------------------------------------------ internals

    def _on_event(self, event: DiscoveryEvent) -> None:
        version = self.table.records_version
        try:
            self._apply_event(event)
        finally:
            if self.table.records_version != version:
                if self.load_channel is not None:
                    self.load_channel.poke()  # a peer came, went or changed: the book follows
                self._changed()

    def _apply_event(self, event: DiscoveryEvent) -> None:
        from meshcc.mesh.discovery import ServiceGone, ServiceSeen

        if isinstance(event, ServiceGone):
            key = self._names.pop((event.type_, event.name), None)
            self._unreadable.pop(event.name, None)
            if key is not None and key not in self._names.values():
                if self.table.remove(key):
                    log.info("peer %s left (goodbye)", event.name)
            return
        if not isinstance(event, ServiceSeen) or event.name in self._own_names:
            return
        try:
            parse = parse_meshcc if event.type_ == MESHCC_TYPE else parse_distcc
            record = parse(event.name, event.properties, event.addresses, event.port, event.server)
        except RecordError as e:
            if self._unreadable.get(event.name) != str(e):
                log.info("ignoring %s: %s", event.name, e)
            self._unreadable[event.name] = str(e)
            return
        self._unreadable.pop(event.name, None)
        if self._is_self(record):
            return
        old = self._names.get((event.type_, event.name))
        self._names[(event.type_, event.name)] = record.key
        if old is not None and old != record.key and old not in self._names.values():
            self.table.remove(old)
        new = record.key not in self.table
        if self.table.upsert(record) and self._loop is not None:
            self._loop.wake()
        if new and record.key in self.table:
            log.info(
                "peer %s announced at %s",
                record.host,
                ", ".join(_endpoint(a, record.port) for a in record.addresses),
            )

    def _is_self(self, record: PeerRecord) -> bool:
        node = self._node
        if node is None:
            return False
        if record.node_id is not None and record.node_id == node.node_id:
            return True
        # A stale record of an earlier run of this daemon (e.g. a random id): our own endpoint.
        eps = {(a.split("%")[0], p) for a, p in record.endpoints()}
        return bool(eps) and eps <= self._policy.own_endpoints

    def _on_liveness(self, key: str, liveness: Liveness | None) -> None:
        self._changed()
        state = self.table.state(key)
        if state is None:
            return
        r = state.record
        if liveness is Liveness.UP:
            where = _endpoint(pick_address(r, self._policy) or "?", r.port)
            log.info("peer %s (%s) is up", r.host, where)
        elif liveness is Liveness.DOWN:
            log.log(
                NOTICE,
                "peer %s (port %d) is not responding: %s",
                r.host,
                r.port,
                state.down_detail or "probe failed",
            )

    async def _republish(self) -> None:
        """Republish free slots rarely: every update is 3 multicast packets to every box."""
        while True:
            await asyncio.sleep(self.config.republish_min_interval_s)
            if self._busy is None or self._node is None or self._discovery is None:
                continue
            free = max(0, self.jobs - self._busy)
            last = self._published_free if self._published_free is not None else self.jobs
            if abs(free - last) < max(2, self.jobs // 4):
                continue
            spec, _ = build_meshcc_service(self._node, free=free)
            try:
                await self._discovery.update(spec)
                self._published_free = free
            except Exception as e:  # noqa: BLE001 - a republish failure must not stop the loop
                log.debug("republishing free slots failed: %r", e)
