"""A throw-away LAN of Linux network namespaces for multi-host mesh tests.

Why: the mesh tests need several "machines" (daemons discovering each other by mDNS) while
never sending a packet to this machine's real interfaces. Every host is its own network
namespace, wired by a veth pair to a Linux bridge that itself lives in a dedicated *switch*
namespace, so the root namespace gains no interface, address or route at all. There is no
default route anywhere: anything not on the LAN fails with ENETUNREACH before a packet leaves.

Layout of one :class:`Lan` (``<runid>`` = ``<pid>x<seq>``, unique per live process)::

    mcc<runid>            switch ns: br0 (no IP, IPv6 off, multicast snooping off)
      p0 p1 ...           switch-side veth ends, ports of br0 (br1.. appear for partitions)
    mcc<runid>-<name>     one ns per host: lo up, eth0 = 10.77.0.N/24 (+ extras),
                          route 224.0.0.0/4 dev eth0, kernel IPv6 link-local without DAD

An IPv6-only LAN (``Lan(ipv6_only=True)``): eth0 gets no IPv4 address and no IPv4 route
at all, only ``fd77::N/64`` (a ULA, ``nodad``: usable at once) next to its fe80:: address;
``Lan(ipv6_only=True, ipv6_subnet=None)`` leaves eth0 with the link-local address alone;
``dad_transmits=N`` turns duplicate address detection on (addresses tentative for ~N s).

A mixed LAN (dual-stack, IPv4-only and IPv6-only boxes on one wire): on an IPv4 LAN,
``add_host(name, stack="dual")`` adds ``fd77::N/64`` next to ``10.77.0.N/24`` (same N),
``stack="ipv6"`` gives eth0 that ULA and no IPv4 address or route, and ``stack="ipv4"``
turns IPv6 off on eth0 (not even a fe80:: address). The default, ``stack=None``, is the
LAN's own mode (IPv4 plus the kernel's fe80::, or IPv6-only).

Interface names (eth0, pN, brN) stay far below the 15-character limit whatever the host name.
Stale namespaces of a crashed run are recognised by the dead owner pid in their name and
removed by :func:`sweep_stale` (called once per process by the first :class:`Lan`).

Use as ``with Lan() as lan: a = lan.add_host("a"); a.run([...])`` or via the ``lan`` fixture
in ``netns_fixtures.py``. Needs root and iproute2's ``ip``; see :func:`unavailable_reason`.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

PREFIX = "mcc"
NETNS_DIR = Path("/run/netns")
IFNAME = "eth0"
DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_IPV6_SUBNET = "fd77::/64"  # ULA: never routed beyond a site, and here not even that
MCAST_ROUTE = "224.0.0.0/4"
_FIRST_HOST_NUMBER = 11  # 10.77.0.11, .12, ... (matches the zeroconf research notes)
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?$")
# mcc<pid>x<seq> (switch) or mcc<pid>x<seq>-<host>: the pid tells the sweep who owns it.
_OWNED_RE = re.compile(rf"^{PREFIX}(?P<pid>\d+)x(?P<seq>\d+)(?:-[a-z0-9-]+)?$")
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")
Stack = Literal["ipv4", "ipv6", "dual"]
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
StrPath = str | os.PathLike[str]


class NetnsError(RuntimeError):
    """An ``ip`` command that builds or changes the LAN failed."""


# --------------------------------------------------------------------------- small helpers


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (``None`` if they can): used for skip messages."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (creating namespaces needs CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "network-namespace tests need iproute2's `ip` (apt-get install iproute2)"
    return None


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy and return that; bounded by `timeout`.

    Tests never assert on timing, but every wait must end: on expiry this raises
    ``TimeoutError`` naming `what` and the last exception `predicate` raised, if any.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:  # noqa: BLE001 - remembered and reported on timeout
            last_exc, result = exc, None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def readline(proc: subprocess.Popen[Any], timeout: float = 10.0) -> str:
    """Next line of `proc`'s stdout (a PIPE), waiting at most `timeout` (TimeoutError after).

    Why: a "ready" line is the usual start-up handshake, and a bare readline() could block the
    test forever. The reader thread ends by itself once the process dies (teardown kills it).
    """
    if proc.stdout is None:
        raise ValueError("process was not started with stdout=PIPE")
    box: list[Any] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box:
        raise TimeoutError(f"no output line from pid {proc.pid} within {timeout:g}s")
    return box[0]


def _ip(*args: str, netns: str | None = None, batch: Sequence[str] = (), check: bool = True) -> str:
    """Run ``ip [-n NS] ARGS`` (or ``ip [-n NS] -b -`` fed `batch`); raise NetnsError on failure."""
    argv = ["ip"] + (["-n", netns] if netns else [])
    argv += ["-b", "-"] if batch else list(args)
    proc = subprocess.run(
        argv,
        input="".join(line + "\n" for line in batch) if batch else None,
        stdin=None if batch else subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        shown = "; ".join(batch) if batch else " ".join(args)
        raise NetnsError(f"`{' '.join(argv)}` failed ({shown}): {proc.stderr.strip()}")
    return proc.stdout


def _ns_path(ns: str) -> Path:
    return NETNS_DIR / ns


def ns_exists(ns: str) -> bool:
    """True if the named namespace is still mounted under /run/netns."""
    return _ns_path(ns).exists()


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    """Named network namespaces starting with `prefix` (what ``ip netns list`` shows)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def ns_pids(ns: str) -> list[int]:
    """Pids of processes whose network namespace is `ns` (like ``ip netns pids``, no exec).

    Compares the nsfs inode of /run/netns/NS with each /proc/PID/ns/net. Threads that merely
    entered the namespace (see :meth:`Host.socket`) are not listed, nor is this process.
    """
    try:
        st = os.stat(_ns_path(ns))
    except FileNotFoundError:
        return []
    key, me, pids = (st.st_dev, st.st_ino), os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            pst = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # exited, or a zombie (its namespaces are already released)
            continue
        if (pst.st_dev, pst.st_ino) == key:
            pids.append(int(entry.name))
    return pids


def kill_ns_processes(ns: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in `ns` until none is left (new children of dying ones included)."""
    deadline = time.monotonic() + timeout
    while pids := ns_pids(ns):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() >= deadline:
            raise NetnsError(f"processes {pids} in namespace {ns} survived SIGKILL")
        time.sleep(0.01)


def delete_namespace(ns: str) -> None:
    """Kill what runs in `ns`, then delete it (its veth ends go with it). Missing ns: no-op."""
    if not ns_exists(ns):
        return
    kill_ns_processes(ns)
    _ip("netns", "del", ns, check=False)
    if ns_exists(ns):
        raise NetnsError(f"could not delete namespace {ns}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces left by crashed runs: ours by name, with an owner pid that is dead.

    Namespaces of live processes (e.g. a concurrent pytest session) and names that do not
    follow our pattern are left alone. Returns the names removed.
    """
    removed = []
    for ns in list_namespaces(prefix):
        m = _OWNED_RE.match(ns)
        if m and not _pid_alive(int(m["pid"])):
            delete_namespace(ns)
            removed.append(ns)
    return removed


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Call `fn` in a short-lived thread that has entered namespace `ns`; return its result.

    Why: sockets belong to the namespace they were created in, so a socket made here lets the
    test process itself talk on the LAN without spawning a helper process. Only that thread
    switches namespace (setns(CLONE_NEWNET) is per thread); the test process stays put.
    """
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(_ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


# --------------------------------------------------------------------------- hosts


class Host:
    """One machine on the LAN: a namespace with ``eth0`` plugged into the switch.

    Commands run through ``ip netns exec`` (which execs the program, so ``Popen.pid`` is the
    program itself). Processes started with :meth:`popen` are reaped on teardown.
    """

    def __init__(
        self,
        lan: Lan,
        name: str,
        ns: str,
        port: str,
        interfaces: list[IPInterface],
        stack: Stack | None = None,
    ):
        self.lan = lan
        # None: the LAN's mode; "ipv4" (no IPv6 at all), "ipv6" (no IPv4), "dual".
        self.stack: Stack | None = stack
        self.name = name
        self.ns = ns
        self.ifname = IFNAME
        self.switch_port = port  # veth end in the switch namespace
        # Primary first, e.g. IPv4Interface("10.77.0.11/24") (IPv6-only LAN: "fd77::b/64");
        # empty on a link-local-only LAN.
        self.interfaces = interfaces
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, address={self.address!r})"

    @property
    def address(self) -> str:
        """Primary address, without prefix length (``"10.77.0.11"``; ``"fd77::b"`` on an
        IPv6-only LAN; on a link-local-only one the fe80:: address, without scope)."""
        if not self.interfaces:
            return self.ipv6_link_local()
        return str(self.interfaces[0].ip)

    @property
    def ipv4_less(self) -> bool:
        """No IPv4 on eth0 (an IPv6-only LAN, or an ``stack="ipv6"`` host): no IPv4 route."""
        return self.lan.ipv6_only or self.stack == "ipv6"

    @property
    def addresses(self) -> list[str]:
        """All configured addresses on eth0 (IPv4, or the IPv6 ones), primary first."""
        return [str(i.ip) for i in self.interfaces]

    @property
    def cidr(self) -> str:
        """Primary address with prefix length (``"10.77.0.11/24"``)."""
        return str(self.interfaces[0])

    # ---- running things

    def exec_argv(self, argv: Sequence[StrPath]) -> list[str]:
        """`argv` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *map(os.fspath, argv)]

    def run(self, argv: Sequence[StrPath], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace; defaults: capture text output, 60 s timeout."""
        kw.setdefault("timeout", 60)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        if not kw.get("text") and "encoding" not in kw and "universal_newlines" not in kw:
            kw.setdefault("text", True)
        return subprocess.run(self.exec_argv(argv), **kw)

    def popen(self, argv: Sequence[StrPath], **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace; killed and reaped by the LAN's teardown."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.exec_argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def python(self, code: str, *args: StrPath, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``python -c code args...`` (this interpreter, so the venv) inside the namespace."""
        return self.run([sys.executable, "-c", code, *args], **kw)

    def python_popen(self, code: str, *args: StrPath, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``python -c code args...`` inside the namespace (see :meth:`popen`)."""
        return self.popen([sys.executable, "-c", code, *args], **kw)

    def pids(self) -> list[int]:
        """Pids of every process currently in this host's namespace."""
        return ns_pids(self.ns)

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the namespace (a host crash) and reap our children."""
        kill_ns_processes(self.ns, timeout)
        self._reap()

    def _reap(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        self._procs = [p for p in self._procs if p.returncode is None]

    # ---- sockets from the test process

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in this host's namespace, usable directly from the test process."""
        return in_netns(self.ns, lambda: socket.socket(family, type))

    def connect(self, address: str, port: int, timeout: float = 1.0) -> socket.socket:
        """TCP-connect from this host to ``address:port``; the caller closes the socket.

        Link-local IPv6 takes a scope as ``fe80::1%eth0`` or ``%2``, resolved in *this* host's
        namespace (a plain getaddrinfo would look the name up in the test's own namespace).
        """
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        target: tuple[Any, ...] = (address, port)
        if family == socket.AF_INET6:
            ip, _, scope = address.partition("%")
            if scope and not scope.isdigit():
                scope = str(in_netns(self.ns, lambda: socket.if_nametoindex(scope)))
            target = (ip, port, 0, int(scope or 0))
        sock = self.socket(family)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock

    def can_connect(self, address: str, port: int, timeout: float = 0.5) -> bool:
        """True if a TCP connect from this host to ``address:port`` succeeds within `timeout`."""
        try:
            self.connect(address, port, timeout).close()
        except OSError:
            return False
        return True

    def probe(
        self, address: str, port: int, timeout: float = 0.5
    ) -> Literal["open", "refused", "unreachable", "timeout"]:
        """Classify a TCP connect from this host: "peer down" vs "path cut" in failure tests.

        ``refused`` means the packet reached a live kernel with nothing listening;
        ``unreachable`` is ENETUNREACH/EHOSTUNREACH (no route, or ARP gave up).
        """
        try:
            self.connect(address, port, timeout).close()
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return "unreachable"
            raise
        return "open"

    def wait_tcp(self, port: int, address: str | None = None, timeout: float = 10.0) -> None:
        """Wait (bounded) until ``address:port`` (default: this host) accepts from this host."""
        target = address or self.address
        wait_for(
            lambda: self.can_connect(target, port, timeout=0.5),
            timeout=timeout,
            what=f"{target}:{port} to accept TCP connections from {self.name}",
        )

    @property
    def ifindex(self) -> int:
        """Index of eth0 inside this namespace: the scope id for fe80:: peers (``"fe80::1%2"``)."""
        return in_netns(self.ns, lambda: socket.if_nametoindex(self.ifname))

    def ipv6_link_local(self) -> str:
        """The kernel-made fe80:: address of eth0 (DAD is off, so usable at once)."""
        out = _ip("-6", "-o", "addr", "show", "dev", self.ifname, "scope", "link", netns=self.ns)
        for line in out.splitlines():
            fields = line.split()
            if "inet6" in fields:
                return fields[fields.index("inet6") + 1].split("/")[0]
        raise NetnsError(f"{self.name}: no IPv6 link-local address on {self.ifname}")

    # ---- failures

    def link_down(self, side: Literal["switch", "host"] = "switch") -> None:
        """Cut this host off the LAN.

        ``"switch"`` downs the switch-side veth end: a pulled cable (eth0 keeps its config and
        sees NO-CARRIER). ``"host"`` downs eth0 itself (the kernel drops its routes and v6
        addresses; :meth:`link_up` restores them).
        """
        if side == "switch":
            _ip("link", "set", self.switch_port, "down", netns=self.lan.switch_ns)
        else:
            _ip("link", "set", self.ifname, "down", netns=self.ns)

    def link_up(self, side: Literal["switch", "host"] = "switch") -> None:
        """Undo :meth:`link_down` for the same `side`."""
        if side == "switch":
            _ip("link", "set", self.switch_port, "up", netns=self.lan.switch_ns)
        else:
            _ip(
                netns=self.ns,
                batch=[
                    f"link set {self.ifname} up",
                    *([] if self.ipv4_less else [f"route replace {MCAST_ROUTE} dev {self.ifname}"]),
                ],
            )


# --------------------------------------------------------------------------- the LAN

_live_lans: weakref.WeakSet[Lan] = weakref.WeakSet()
_seq_lock = threading.Lock()
_seq = 0
_swept = False


def _new_runid() -> str:
    """``<pid>x<seq>``, skipping any name a dead process with our (reused) pid left behind."""
    global _seq
    with _seq_lock:
        while True:
            runid = f"{os.getpid()}x{_seq}"
            _seq += 1
            switch = PREFIX + runid
            if not any(n == switch or n.startswith(switch + "-") for n in list_namespaces(switch)):
                return runid


class Lan:
    """A switch namespace with a bridge, plus hosts added by :meth:`add_host`.

    Tear-down (:meth:`close`, also run by ``__exit__`` and at interpreter exit) kills every
    process in every namespace and deletes them all; it is idempotent.
    """

    def __init__(
        self,
        subnet: str = DEFAULT_SUBNET,
        *,
        ipv6_only: bool = False,
        ipv6_subnet: str | None = DEFAULT_IPV6_SUBNET,
        dad_transmits: int = 0,
    ) -> None:
        global _swept
        reason = unavailable_reason()
        if reason:
            raise NetnsError(reason)
        if not _swept:
            _swept = True
            sweep_stale()
        self.ipv6_only = ipv6_only
        # 0: DAD off, IPv6 addresses usable at once. N: real DAD with N probes (~N s
        # tentative after add_host): what a daemon started at boot or on link-up meets.
        self.dad_transmits = dad_transmits
        self.subnet: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(subnet)
        # The ULA of IPv6-only LANs, and of dual-stack / IPv6-only hosts on an IPv4 LAN.
        self.ipv6_subnet = ipaddress.IPv6Network(ipv6_subnet) if ipv6_subnet else None
        if ipv6_only and self.ipv6_subnet is not None:
            self.subnet = self.ipv6_subnet
        self.runid = _new_runid()
        self.switch_ns = PREFIX + self.runid
        self.hosts: dict[str, Host] = {}
        self._bridges = ["br0"]
        self._cables: list[tuple[str, str]] = []
        self._closed = False
        _live_lans.add(self)
        try:
            _ip("netns", "add", self.switch_ns)
            # The switch is pure layer 2: no IPv6 (so no RS/MLD/DAD from br0 or its ports) and
            # no multicast snooping (a dumb switch floods mDNS to every port, predictably).
            self._sysctl(
                self.switch_ns,
                {"net/ipv6/conf/all/disable_ipv6": 1, "net/ipv6/conf/default/disable_ipv6": 1},
            )
            self._add_bridge("br0")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __repr__(self) -> str:
        return f"Lan({self.switch_ns!r}, hosts={list(self.hosts)})"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this LAN created (hosts, then the switch)."""
        return [h.ns for h in self.hosts.values()] + [self.switch_ns]

    @staticmethod
    def _sysctl(ns: str, values: dict[str, int]) -> None:
        # A subprocess in the namespace, so a mistake can never touch the root namespace's sysctls.
        script = "; ".join(f"echo {v} > /proc/sys/{k}" for k, v in values.items())
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-ec", script],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise NetnsError(f"sysctl in {ns} failed: {proc.stderr.strip()}")

    def _add_bridge(self, name: str) -> None:
        _ip(
            netns=self.switch_ns,
            batch=[
                f"link add {name} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
                f"link set {name} up",
            ],
        )

    def _next_number(self) -> int:
        """The lowest host number from .11 up that no host uses in either family (so a
        dual-stack host is 10.77.0.N and fd77::N with the same N)."""
        nets = [self.subnet] + ([self.ipv6_subnet] if self.ipv6_subnet is not None else [])
        used = {
            int(i.ip) - int(n.network_address)
            for h in self.hosts.values()
            for i in h.interfaces
            for n in nets
            if i.ip in n
        }
        for number in range(_FIRST_HOST_NUMBER, min(self.subnet.num_addresses - 1, 1 << 16)):
            if number not in used:
                return number
        raise NetnsError(f"no free address left in {self.subnet}")

    def _next_address(self) -> IPInterface:
        ip = self.subnet.network_address + self._next_number()
        return ipaddress.ip_interface(f"{ip}/{self.subnet.prefixlen}")

    @property
    def link_local_only(self) -> bool:
        """An IPv6-only LAN without a ULA prefix: hosts have fe80:: addresses alone."""
        return self.ipv6_only and self.subnet.version == 4

    def add_host(
        self,
        name: str,
        address: str | None = None,
        *,
        extra_addresses: Sequence[str] = (),
        stack: Stack | None = None,
    ) -> Host:
        """Create host `name` (namespace ``mcc<runid>-<name>``) plugged into the switch.

        `address` is ``"IP/prefix"`` in any subnet (e.g. ``"10.78.0.11/24"`` for a host that
        shares the wire but not the subnet); default: the next free one in the LAN's subnet
        from .11 up. `extra_addresses` are further ``"IP/prefix"`` on the same eth0. On an
        IPv6-only LAN both are IPv6 (default ``fd77::b/64`` on), and IPv4 ones are refused.

        `stack` (IPv4 LANs only; see the module docstring) makes a mixed LAN: ``"dual"``
        adds the ULA with the same host number, ``"ipv6"`` gives that ULA alone, ``"ipv4"``
        disables IPv6 on eth0.
        """
        if self._closed:
            raise NetnsError("LAN already closed")
        if not _NAME_RE.match(name):
            raise ValueError(
                f"host name {name!r}: use 1-20 of [a-z0-9-], not starting/ending with '-'"
            )
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        if stack is not None and self.ipv6_only:
            raise ValueError("stack= makes a mixed LAN: build it on an IPv4 LAN")
        if stack in ("ipv6", "dual") and self.ipv6_subnet is None:
            raise ValueError(f"stack={stack!r} needs the LAN's ipv6_subnet")
        interfaces: list[IPInterface] = []
        if address:
            interfaces.append(ipaddress.ip_interface(address))
        elif stack in ("ipv6", "dual"):
            assert self.ipv6_subnet is not None
            number = self._next_number()
            if stack == "dual":
                interfaces.append(self._next_address())
            ip6 = self.ipv6_subnet.network_address + number
            interfaces.append(ipaddress.ip_interface(f"{ip6}/{self.ipv6_subnet.prefixlen}"))
        elif not self.link_local_only:
            interfaces.append(self._next_address())
        interfaces += [ipaddress.ip_interface(a) for a in extra_addresses]
        taken = {i.ip for h in self.hosts.values() for i in h.interfaces}
        for iface in interfaces:
            if iface.ip in taken:
                raise ValueError(f"address {iface.ip} already used on this LAN")
            if (self.ipv6_only or stack == "ipv6") and iface.version != 6:
                raise ValueError(f"{iface}: this host is IPv6-only")
            if stack == "ipv4" and iface.version != 4:
                raise ValueError(f"{iface}: this host is IPv4-only")
            if not iface.ip.is_private or iface.ip.is_loopback or iface.ip.is_link_local:
                raise ValueError(
                    f"{iface}: use a private test range such as 10.77.x.0/24 or fd77::/64"
                )
        ns = f"{self.switch_ns}-{name}"
        port = f"p{len(self.hosts)}"
        host = Host(self, name, ns, port, interfaces, stack)
        self.hosts[name] = host  # registered first so close() cleans up a half-built host
        _ip("netns", "add", ns)
        # Both veth ends are created directly inside their namespaces: never in the root one.
        _ip(
            "link",
            "add",
            IFNAME,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.switch_ns,
        )
        # DAD off before the link comes up, so the kernel's fe80:: address is usable at once.
        dad = {f"net/ipv6/conf/{IFNAME}/accept_dad": 1 if self.dad_transmits else 0}
        if self.dad_transmits:
            dad[f"net/ipv6/conf/{IFNAME}/dad_transmits"] = self.dad_transmits
        if stack == "ipv4":  # no IPv6 at all on eth0: not even the kernel's fe80::
            dad[f"net/ipv6/conf/{IFNAME}/disable_ipv6"] = 1
        self._sysctl(ns, dad)
        _ip(
            netns=ns,
            batch=[
                "link set lo up",
                *(
                    f"addr add {i} dev {IFNAME}"
                    + (" nodad" if i.version == 6 and not self.dad_transmits else "")
                    for i in interfaces
                ),
                f"link set {IFNAME} up",
                # No default route exists; mDNS stacks binding 0.0.0.0 need a multicast route.
                # An IPv6-only host gets no IPv4 route at all (ff00::/8 is the kernel's).
                *([] if host.ipv4_less else [f"route add {MCAST_ROUTE} dev {IFNAME}"]),
            ],
        )
        _ip(netns=self.switch_ns, batch=[f"link set {port} master br0", f"link set {port} up"])
        return host

    # ---- a second link

    def cable(self, a: Host, b: Host, ifname: str = "eth1") -> tuple[str, str]:
        """Plug a veth straight from `a` to `b` (off the switch): another link for both.

        Each end gets only a fixed link-local address (``nodad``: usable at once, besides
        the kernel's own), returned as ``(a's, b's)`` without scope. Why: fe80::/64 exists
        on every link, so a test of "this link only" needs a second one. The veth goes
        with the namespaces on teardown.
        """
        n = len(self._cables) + 1
        self._cables.append((a.name, b.name))
        ends = (f"fe80::77:{n}:a", f"fe80::77:{n}:b")
        _ip("link", "add", ifname, "netns", a.ns, "type", "veth", "peer", "name", ifname,
            "netns", b.ns)  # fmt: skip
        for host, addr in ((a, ends[0]), (b, ends[1])):
            _ip(
                netns=host.ns,
                batch=[f"addr add {addr}/64 dev {ifname} nodad", f"link set {ifname} up"],
            )
        return ends

    # ---- partitions

    def partition(self, *groups: Iterable[Host | str]) -> None:
        """Split the wire: each group gets its own bridge; unlisted hosts stay on br0.

        Multicast and unicast both stop crossing groups, as with separate switches.
        """
        seen: set[str] = set()
        for index, group in enumerate(groups, start=1):
            bridge = f"br{index}"
            if bridge not in self._bridges:
                self._add_bridge(bridge)
                self._bridges.append(bridge)
            for member in group:
                host = self.hosts[member] if isinstance(member, str) else member
                if host.name in seen:
                    raise ValueError(f"host {host.name} is in two partition groups")
                seen.add(host.name)
                _ip("link", "set", host.switch_port, "master", bridge, netns=self.switch_ns)

    def heal(self) -> None:
        """Undo :meth:`partition`: every host back on br0."""
        lines = [f"link set {h.switch_port} master br0" for h in self.hosts.values()]
        if lines:
            _ip(netns=self.switch_ns, batch=lines)

    # ---- teardown

    def close(self) -> None:
        """Kill all processes, delete every namespace of this LAN. Safe to call repeatedly."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for host in self.hosts.values():
            try:
                kill_ns_processes(host.ns)
            except NetnsError as exc:
                errors.append(str(exc))
            host._reap()
        for ns in self.namespaces:
            try:
                delete_namespace(ns)
            except NetnsError as exc:
                errors.append(str(exc))
        _live_lans.discard(self)
        if errors:
            raise NetnsError("LAN teardown incomplete: " + "; ".join(errors))


@atexit.register
def _close_leftover_lans() -> None:
    """Last resort for LANs nobody closed (e.g. a KeyboardInterrupt between setup and with)."""
    for lan in list(_live_lans):
        try:
            lan.close()
        except Exception:  # noqa: BLE001 - exiting anyway; the next session's sweep retries
            pass
