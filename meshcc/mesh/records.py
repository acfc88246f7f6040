"""What a daemon announces over DNS-SD and what it reads back: pure data, no I/O.

Two services per daemon, both on the same unique instance label and host name:

``_distcc._tcp`` (stock distcc compatibility, exactly distccd 3.4's zeroconf-reg.c)
    TXT, in this order: ``txtvers=1 cpus=N jobs=N distcc=3.4 gnuhost=T cc_version=V
    cc_machine=M`` (the last two only when ``cc -dumpversion``/``-dumpmachine`` worked),
    plus the subtype ``_<machine>--<version>._sub._distcc._tcp`` that ``distcc +zeroconf``
    browses (both lower-cased, every char outside [a-z0-9] turned into ``-``); see
    :func:`build_distcc_services` for why that is a second instance.

``_meshcc._tcp`` (meshcc's own record, schema ``v=1``)
    ``v`` schema major (a reader ignores keys it does not know; an incompatible change
    would get a new service type), ``id`` node id, ``mv`` meshcc version, ``host``
    display host name, ``cpus``, ``jobs``, ``proto`` distcc protocol versions served
    (``1,2``), ``caps`` extensions (``lzo``, ``errm``, ...; ``zstd`` and ``lz4``: the body
    codecs the daemon decodes and answers in when a client negotiates one with ``CODC``,
    see :mod:`meshcc.wire.codecs`), optional ``free`` (free job
    slots, republished rarely), optional ``sport`` (the status port: the result cache's
    home endpoints and ``meshcc.pyz`` are served there; a peer without it is assumed to use
    its compile port + 1, as distccd pairs 3632 with 3633), and one ``tN`` per toolchain:
    ``DRIVER;VERSION;TARGET;BINUTILS;NAMES`` e.g.
    ``t0=gcc;12.2.0;x86_64-linux-gnu;2.40;gcc,cc,gcc-12,~-gcc,~-gcc-12`` where ``~`` in a
    name stands for the target triplet and BINUTILS ``-`` means unknown. Each string stays
    within DNS's 255-byte limit and the whole TXT within :data:`TXT_BUDGET` (it is re-sent
    with every answer): names are dropped first, then whole toolchains, with a warning.

Node identity (:func:`node_id`) hashes the NIC MAC addresses together with the port,
machine-id and host name, so boxes cloned from one image (same host name and machine-id,
different MACs) differ, while a restart of the same daemon keeps its id and names. The
id is part of both the instance label and the host (``server``) name, which makes the
names unique by construction: that is what lets the daemon register with
``cooperating_responders`` (no 1.2 s probing) and appear on peers in tens of ms.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshcc.compiler.toolchain import Toolchain

__all__ = [
    "DISTCC_TYPE",
    "DISTCC_VERSION",
    "MESHCC_TYPE",
    "SCHEMA_VERSION",
    "TXT_BUDGET",
    "DistccId",
    "LocalNode",
    "PeerKind",
    "PeerRecord",
    "RecordError",
    "ServiceSpec",
    "ToolchainInfo",
    "build_distcc_services",
    "build_meshcc_service",
    "distcc_subtype",
    "distcc_txt",
    "instance_label",
    "meshcc_txt",
    "node_id",
    "parse_distcc",
    "parse_meshcc",
    "random_node_id",
    "server_name",
    "txt_size",
]

DISTCC_TYPE = "_distcc._tcp.local."
MESHCC_TYPE = "_meshcc._tcp.local."
SCHEMA_VERSION = 1
DISTCC_VERSION = "3.4"
"""What the ``distcc=`` key claims: the distccd release whose protocol meshcc serves."""

TXT_BUDGET = 900
"""Bytes the whole meshcc TXT may take (RFC 6763 advises a few hundred; it must fit one packet)."""
_TXT_STRING_MAX = 255
_LABEL_MAX = 63
_ID_BYTES = 6  # 12 hex digits


class RecordError(ValueError):
    """An announcement that cannot be read; str(e) says why (shown by ``--explain``)."""


class PeerKind(enum.Enum):
    """Who announced a peer: a meshcc daemon or a stock ``distccd --zeroconf``."""

    MESHCC = "meshcc"
    DISTCC = "distcc"


@dataclass(frozen=True, slots=True)
class ToolchainInfo:
    """One announced compiler: the fingerprint peers match on, and the names it answers to."""

    driver: str  # "gcc", "g++" or "cc" (meshcc.compiler.toolchain.Driver values)
    version: str  # gcc -dumpfullversion (a stock distccd gives -dumpversion, maybe "12")
    target: str  # -dumpmachine
    binutils: str | None  # `as --version`; None = unknown
    names: tuple[str, ...] = ()

    @classmethod
    def from_toolchain(cls, tc: Toolchain) -> ToolchainInfo:
        """From one of the daemon's probed toolchains."""
        return cls(
            driver=tc.driver.value,
            version=tc.version,
            target=tc.target,
            binutils=tc.binutils,
            names=tuple(tc.names),
        )

    def describe(self) -> str:
        return f"{self.driver} {self.version} {self.target} binutils {self.binutils or 'unknown'}"


@dataclass(frozen=True, slots=True)
class DistccId:
    """What distccd announces of its default ``cc``: first words of -dumpmachine/-dumpversion."""

    machine: str
    version: str


@dataclass(frozen=True, slots=True)
class LocalNode:
    """Everything this daemon announces (input of the ``build_*`` functions)."""

    node_id: str
    hostname: str
    port: int
    cpus: int
    jobs: int
    toolchains: tuple[ToolchainInfo, ...]
    meshcc_version: str
    protocols: tuple[int, ...] = (1, 2)
    caps: frozenset[str] = frozenset()
    distcc_id: DistccId | None = None
    gnuhost: str | None = None  # distcc's configure host triple; default: distcc_id.machine
    status_port: int | None = None  # announced as ``sport`` when the daemon has one


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A service to register, without zeroconf types (discovery.py turns it into a ServiceInfo)."""

    type_: str  # registered type: a subtype PTR name for the distcc record when known
    name: str  # full instance name: <label>.<base type>
    server: str  # host name, <label>.local.
    port: int
    properties: dict[str, str]  # insertion order = TXT order


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One peer as resolved from an announcement (meshcc or stock distcc)."""

    key: str  # table key: "m:<node id>" or "d:<instance name>"
    kind: PeerKind
    instance: str  # full service name, e.g. meshcc@box-1a2b…._meshcc._tcp.local.
    host: str  # display name
    addresses: tuple[str, ...]  # as resolved (IPv4 first; link-local IPv6 with %scope)
    port: int
    cpus: int
    jobs: int  # <= 0 means unknown; see limit
    toolchains: tuple[ToolchainInfo, ...]
    node_id: str | None = None
    protocols: tuple[int, ...] = (1,)
    caps: frozenset[str] = frozenset()
    version: str | None = None  # meshcc version, or distcc version for stock peers
    free: int | None = None  # free slots if the peer publishes them
    verified: bool = True  # toolchain fingerprints complete (binutils known); False for distccd
    schema: int = SCHEMA_VERSION
    server: str | None = None
    announced_status_port: int | None = None  # ``sport``; see :attr:`status_port`

    @property
    def status_port(self) -> int:
        """Where its status port is: as announced, else (a meshcc from before ``sport``) the
        compile port + 1, distccd's pairing (3632 and 3633)."""
        return self.announced_status_port or self.port + 1

    @property
    def limit(self) -> int:
        """Concurrent jobs to send it: distcc's zeroconf rule (jobs, else cpus+2)."""
        return self.jobs if self.jobs > 0 else max(1, self.cpus) + 2

    @property
    def lzo(self) -> bool:
        return "lzo" in self.caps and 2 in self.protocols

    @property
    def codecs(self) -> tuple[str, ...]:
        """Body codecs it negotiates with ``CODC`` (wire.codecs), best first; none for a stock
        distccd (LZO by protocol 2 only) or a meshcc without the libraries (meshcc.pyz)."""
        if self.kind is not PeerKind.MESHCC or 1 not in self.protocols:
            return ()
        return tuple(c for c in NEGOTIATED_CODECS if c in self.caps)

    def endpoints(self) -> frozenset[tuple[str, int]]:
        return frozenset((a, self.port) for a in self.addresses)


# ---------------------------------------------------------------- identity and names


def node_id(macs: Iterable[str], port: int, machine_id: str = "", hostname: str = "") -> str:
    """Stable node id: same NICs + port -> same id; cloned images (new MACs) -> new ids."""
    material = "|".join(
        [",".join(sorted({m.lower() for m in macs})), str(port), machine_id.strip(), hostname]
    )
    digest = hashlib.blake2b(material.encode(), digest_size=_ID_BYTES, person=b"meshcc-node")
    return digest.hexdigest()


def random_node_id() -> str:
    """For a box without MAC addresses: unique, but new at each start (peers dedupe by endpoint)."""
    return uuid.uuid4().hex[: _ID_BYTES * 2]


def _host_label(hostname: str, room: int) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", hostname.split(".", maxsplit=1)[0].lower()).strip("-")
    return (label[:room].rstrip("-")) or "host"


_SUBTYPE_SUFFIX = "-cc"
# wire.codecs.KNOWN, as caps words (best first); then zref (zstd body prefixes, not a codec)
NEGOTIATED_CODECS = ("zstd", "lz4", "zref")


def instance_label(node: LocalNode) -> str:
    """``meshcc@<host>-<id>``: the instance label of our services (≤ 63 bytes with a suffix)."""
    room = _LABEL_MAX - 8 - len(node.node_id) - len(_SUBTYPE_SUFFIX)
    return f"meshcc@{_host_label(node.hostname, room)}-{node.node_id}"


def server_name(node: LocalNode) -> str:
    """``<host>-<id>.local.``: a host name no other box uses (A8 in zeroconf.md)."""
    return f"{_host_label(node.hostname, _LABEL_MAX - 1 - len(node.node_id))}-{node.node_id}.local."


def _distcc_sanitize(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "-", text.lower())


def distcc_subtype(ident: DistccId) -> str:
    """distcc's ``dcc_make_dnssd_subtype``: ``_<machine>--<version>._sub._distcc._tcp.local.``."""
    machine, version = _distcc_sanitize(ident.machine), _distcc_sanitize(ident.version)
    return f"_{machine}--{version}._sub.{DISTCC_TYPE}"


# ---------------------------------------------------------------- TXT building


def distcc_txt(node: LocalNode) -> dict[str, str]:
    """distccd's TXT keys in distccd's order."""
    props = {
        "txtvers": "1",
        "cpus": str(node.cpus),
        "jobs": str(node.jobs),
        "distcc": DISTCC_VERSION,
    }
    gnuhost = node.gnuhost or (node.distcc_id.machine if node.distcc_id else None)
    if gnuhost:
        props["gnuhost"] = gnuhost
    if node.distcc_id is not None:
        props["cc_version"] = node.distcc_id.version
        props["cc_machine"] = node.distcc_id.machine
    return props


def _encode_names(tc: ToolchainInfo, names: Sequence[str]) -> str:
    prefix = tc.target + "-"
    return ",".join("~-" + n[len(prefix) :] if n.startswith(prefix) else n for n in names)


def _encode_toolchain(tc: ToolchainInfo, names: Sequence[str]) -> str:
    return f"{tc.driver};{tc.version};{tc.target};{tc.binutils or '-'};{_encode_names(tc, names)}"


def txt_size(props: Mapping[str, str | None]) -> int:
    """Wire size of a TXT record: one length byte + ``key=value`` per string."""
    return sum(
        1 + len(k.encode()) + (0 if v is None else 1 + len(v.encode())) for k, v in props.items()
    )


def meshcc_txt(node: LocalNode, free: int | None = None) -> tuple[dict[str, str], list[str]]:
    """The ``_meshcc._tcp`` TXT and warnings about anything left out to respect the limits."""
    warnings: list[str] = []
    base: dict[str, str] = {
        "v": str(SCHEMA_VERSION),
        "id": node.node_id,
        "mv": node.meshcc_version,
        "host": node.hostname[:_LABEL_MAX],
        "cpus": str(node.cpus),
        "jobs": str(node.jobs),
        "proto": ",".join(str(p) for p in node.protocols),
        "caps": ",".join(sorted(node.caps)),
    }
    if free is not None:
        base["free"] = str(max(0, free))
    if node.status_port is not None:
        base["sport"] = str(node.status_port)
    entries: list[tuple[ToolchainInfo, list[str]]] = []
    for tc in node.toolchains:
        names = list(tc.names)
        while names and len(f"t{len(entries)}=" + _encode_toolchain(tc, names)) > _TXT_STRING_MAX:
            names.pop()
        text = f"t{len(entries)}=" + _encode_toolchain(tc, names)
        if len(text.encode()) > _TXT_STRING_MAX:
            warnings.append(f"not announcing {tc.describe()}: its record exceeds 255 bytes")
            continue
        if len(names) < len(tc.names):
            warnings.append(f"announcing only {len(names)} of the names of {tc.describe()}")
        entries.append((tc, names))

    def assemble() -> dict[str, str]:
        props = dict(base)
        for i, (tc, names) in enumerate(entries):
            props[f"t{i}"] = _encode_toolchain(tc, names)
        return props

    props = assemble()
    # Over budget: trim names (keep each toolchain's first), longest entries first, then drop
    # whole toolchains from the end.
    while txt_size(props) > TXT_BUDGET:
        trimmable = [e for e in entries if len(e[1]) > 1]
        if trimmable:
            victim = max(trimmable, key=lambda e: len(_encode_toolchain(e[0], e[1])))
            victim[1].pop()
            if not any(w.startswith(f"trimmed names of {victim[0].describe()}") for w in warnings):
                warnings.append(f"trimmed names of {victim[0].describe()} to fit the TXT budget")
        elif entries:
            dropped = entries.pop()
            warnings.append(f"not announcing {dropped[0].describe()}: TXT budget exceeded")
        else:
            break
        props = assemble()
    return props, warnings


def build_meshcc_service(node: LocalNode, free: int | None = None) -> tuple[ServiceSpec, list[str]]:
    """The ``_meshcc._tcp`` registration for this node."""
    props, warnings = meshcc_txt(node, free)
    spec = ServiceSpec(
        type_=MESHCC_TYPE,
        name=f"{instance_label(node)}.{MESHCC_TYPE}",
        server=server_name(node),
        port=node.port,
        properties=props,
    )
    return spec, warnings


def build_distcc_services(node: LocalNode) -> list[ServiceSpec]:
    """The ``_distcc._tcp`` registrations: the base type, plus distcc's subtype if cc is known.

    Avahi (stock distccd) publishes one instance under both PTRs. python-zeroconf indexes a
    service under exactly one type and answers queries only for that type, so one instance
    registered under the subtype would stay invisible to ``avahi-browse _distcc._tcp``
    started later, and one under the base type invisible to ``distcc +zeroconf`` (which
    browses only its subtype). Hence two instances with the same SRV target, TXT and
    port: ``<label>`` under the base type and ``<label>-cc`` under the subtype (a stock
    client browses one of the two PTRs, so it lists each daemon once).
    """
    label, props = instance_label(node), distcc_txt(node)
    server = server_name(node)
    specs = [ServiceSpec(DISTCC_TYPE, f"{label}.{DISTCC_TYPE}", server, node.port, props)]
    if node.distcc_id is not None:
        specs.append(
            ServiceSpec(
                distcc_subtype(node.distcc_id),
                f"{label}{_SUBTYPE_SUFFIX}.{DISTCC_TYPE}",
                server,
                node.port,
                dict(props),
            )
        )
    return specs


# ---------------------------------------------------------------- parsing


# Every field an announcement carries is bounded: one rogue record must neither take a
# share of the mesh it cannot have (jobs=10**20) nor break a reply to a client.
MAX_CPUS = 4096
MAX_JOBS = 4096
MAX_ADDRESSES = 16
MAX_TOOLCHAINS = 64
MAX_NAMES = 64  # names one toolchain answers to
MAX_CAPS = 16
_SHORT_TEXT = 64  # versions, capability names
_NAME_TEXT = 128  # compiler names, targets, instance labels
_HOST_TEXT = 255
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")
_VERSION_TEXT = re.compile(r"[0-9A-Za-z.+~_-]{1,64}")
_WORD_TEXT = re.compile(r"[0-9A-Za-z.+~_-]{1,128}")
_DRIVERS = frozenset(("gcc", "g++", "cc"))
_PROTOCOLS = frozenset((1, 2, 3))


def _int(props: Mapping[str, str | None], key: str, default: int, lo: int, hi: int) -> int:
    raw = props.get(key)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not re.fullmatch(r"-?[0-9]{1,10}", text):
        raise RecordError(f"TXT {key}={raw[:40]!r} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise RecordError(f"TXT {key}={value} is outside {lo}..{hi}")
    return value


def _text(value: str | None, what: str, limit: int, pattern: re.Pattern[str] = _PRINTABLE) -> str:
    """A printable string of at most ``limit`` characters (RecordError otherwise)."""
    if value is None:
        return ""
    if len(value) > limit:
        raise RecordError(f"{what} is longer than {limit} characters")
    if not pattern.fullmatch(value):
        raise RecordError(f"{what} {value[:40]!r} has characters it may not have")
    return value


def _check_common(instance: str, addresses: Sequence[str], port: int) -> tuple[str, ...]:
    _text(instance, "the instance name", _HOST_TEXT + len(MESHCC_TYPE))
    if not 0 < port < 65536:
        raise RecordError(f"port {port} is not a TCP port")
    if not addresses:
        raise RecordError("no address")
    if len(addresses) > MAX_ADDRESSES:
        raise RecordError(f"more than {MAX_ADDRESSES} addresses")
    for a in addresses:
        _text(a, "an address", 64)
    return tuple(addresses)


def _label_of(instance: str, type_: str) -> str:
    return instance[: -len(type_) - 1] if instance.endswith("." + type_) else instance


def _decode_toolchain(text: str) -> ToolchainInfo:
    parts = text.split(";")
    if len(parts) != 5 or not all(parts[:3]):
        raise RecordError(
            f"toolchain entry {text[:80]!r} is not DRIVER;VERSION;TARGET;BINUTILS;NAMES"
        )
    driver, version, target, binutils, names = parts
    if driver not in _DRIVERS:
        raise RecordError(f"toolchain driver {driver[:20]!r} is not gcc, g++ or cc")
    _text(version, "a toolchain version", _SHORT_TEXT, _VERSION_TEXT)
    _text(target, "a toolchain target", _NAME_TEXT, _WORD_TEXT)
    known = (
        None
        if binutils in ("", "-")
        else _text(binutils, "a binutils version", _SHORT_TEXT, _VERSION_TEXT)
    )
    decoded = tuple(target + n[1:] if n.startswith("~-") else n for n in names.split(",") if n)
    if len(decoded) > MAX_NAMES:
        raise RecordError(f"a toolchain with more than {MAX_NAMES} names")
    for name in decoded:
        _text(name, "a compiler name", _NAME_TEXT + _NAME_TEXT, _WORD_TEXT)
    return ToolchainInfo(driver, version, target, known, decoded)


def _protocols(raw: str | None) -> tuple[int, ...]:
    words = [p.strip() for p in (raw or "1").split(",") if p.strip()]
    if len(words) > len(_PROTOCOLS) or not all(w.isdigit() and int(w) in _PROTOCOLS for w in words):
        raise RecordError(f"TXT proto={(raw or '')[:20]!r} is not a list of 1, 2 and 3")
    return tuple(int(w) for w in words) or (1,)


def _caps(raw: str | None) -> frozenset[str]:
    caps = [c.strip() for c in (raw or "").split(",") if c.strip()]
    if len(caps) > MAX_CAPS:
        raise RecordError(f"more than {MAX_CAPS} capabilities")
    for c in caps:
        _text(c, "a capability", _SHORT_TEXT, _VERSION_TEXT)
    return frozenset(caps)


def parse_meshcc(
    instance: str,
    props: Mapping[str, str | None],
    addresses: Sequence[str],
    port: int,
    server: str | None = None,
) -> PeerRecord:
    """A resolved ``_meshcc._tcp`` service -> PeerRecord; RecordError if unusable."""
    schema = _int(props, "v", 0, 0, 1 << 16)
    if schema < 1:
        raise RecordError("meshcc record without a schema version (v=)")
    nid = (props.get("id") or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,32}", nid):
        raise RecordError(f"meshcc record with a bad node id {nid[:40]!r}")
    checked_addresses = _check_common(instance, addresses, port)
    toolchains = []
    for i in range(MAX_TOOLCHAINS):
        raw = props.get(f"t{i}")
        if raw is None:
            break
        toolchains.append(_decode_toolchain(raw))
    free = _int(props, "free", -1, -1, MAX_JOBS)
    status_port = _int(props, "sport", 0, 1, 65535) if props.get("sport") else None
    host = _text(props.get("host"), "the host name", _HOST_TEXT)
    return PeerRecord(
        key=f"m:{nid}",
        kind=PeerKind.MESHCC,
        instance=instance,
        host=host or _label_of(instance, MESHCC_TYPE),
        addresses=checked_addresses,
        port=port,
        cpus=_int(props, "cpus", 1, 1, MAX_CPUS),
        jobs=_int(props, "jobs", 0, 0, MAX_JOBS),
        toolchains=tuple(toolchains),
        node_id=nid,
        protocols=_protocols(props.get("proto")),
        caps=_caps(props.get("caps")),
        version=_text(props.get("mv"), "the meshcc version", _SHORT_TEXT) or None,
        free=free if free >= 0 else None,
        verified=all(tc.binutils for tc in toolchains),
        schema=schema,
        server=server,
        announced_status_port=status_port,
    )


def parse_distcc(
    instance: str,
    props: Mapping[str, str | None],
    addresses: Sequence[str],
    port: int,
    server: str | None = None,
) -> PeerRecord:
    """A resolved ``_distcc._tcp`` service (stock distccd or a meshcc daemon's) -> PeerRecord.

    Follows distcc's client: cpus defaults to 1; a missing jobs key means the default limit
    4, jobs <= 0 means cpus+2. The compiler is only the default cc, binutils unknown.
    """
    checked_addresses = _check_common(instance, addresses, port)
    cpus = _int(props, "cpus", 1, 1, MAX_CPUS)
    # distcc's client reads jobs <= 0 as "cpus + 2"; keep that, within bounds.
    jobs = _int(props, "jobs", 4, -MAX_JOBS, MAX_JOBS) if "jobs" in props else 4
    machine = _text(props.get("cc_machine"), "cc_machine", _NAME_TEXT, _WORD_TEXT)
    version = _text(props.get("cc_version"), "cc_version", _SHORT_TEXT, _VERSION_TEXT)
    toolchains: tuple[ToolchainInfo, ...] = ()
    if machine and version:
        toolchains = (ToolchainInfo("cc", version, machine, None, ("cc",)),)
    dversion = _text(props.get("distcc"), "the distcc version", _SHORT_TEXT) or None
    # distcc >= 2.18 speaks protocol 2 (LZO); 3.x always does.
    major = (dversion or "").split(".")[0]
    modern = major.isdigit() and int(major) >= 3
    return PeerRecord(
        key=f"d:{instance}",
        kind=PeerKind.DISTCC,
        instance=instance,
        host=_label_of(instance, DISTCC_TYPE),
        addresses=checked_addresses,
        port=port,
        cpus=cpus,
        jobs=jobs,
        toolchains=toolchains,
        protocols=(1, 2) if modern else (1,),
        caps=frozenset({"lzo"}) if modern else frozenset(),
        version=dversion,
        verified=False,
        server=server,
    )
