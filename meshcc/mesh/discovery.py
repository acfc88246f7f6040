"""python-zeroconf adapter: register our services, browse theirs, resolve without blocking.

The only module that imports zeroconf. It turns browse events into two plain events,
:class:`ServiceSeen` (resolved: addresses, port, TXT) and :class:`ServiceGone` (goodbye or
PTR expiry), and hands them to a callback; it decides nothing about peers.

* One ``AsyncZeroconf`` inside the daemon's loop, bound to an explicit list of
  interfaces (never ``InterfaceChoice.All``, which would include loopback and every NIC):
  IPv4 addresses and, where mDNS runs over IPv6 (an interface with IPv6; see netif.py),
  that link's link-local address or its index. The IP version follows the list: V4Only
  for IPv4 addresses alone, V6Only for IPv6 entries alone (an IPv6-only box), All for a
  mix (a dual-stack box: python-zeroconf then listens on one dual-stack socket, answers
  on one socket per entry, and every answer carries all our A and AAAA records,
  whichever family the question came over).
* If the IPv6 side cannot be opened on a dual-stack box (IPv6 multicast refused, a
  stack owning [::]:5353), mDNS falls back to IPv4 alone, with a warning in
  :attr:`Discovery.warnings`, rather than discovery going off altogether.
* Before opening IPv6 sockets it waits (up to ``dad_wait_s``) for duplicate address
  detection on the addresses it binds and announces: a tentative address cannot be
  bound, and python-zeroconf then only logs it and stays deaf and mute on that link.
* Resolved addresses are ordered for dialing: IPv4, then routable IPv6 (global, ULA),
  then link-local IPv6 with its scope, the interface the answer came in on, by name
  (``fe80::1%eth0``: getaddrinfo takes it, and so does distcc's host grammar). Dropped:
  a scope-less link-local address (it cannot be dialed), any address the ``dialable``
  check refuses (netif.dialable: a family this box does not have), and the link-local
  addresses of a peer with a routable address we can dial (see :func:`_dial_order`).
  A dual-stack peer heard over both families is one cache entry in python-zeroconf: its
  link-local address keeps the scope of the IPv6 copy, whatever order they came in.
* Registration uses ``cooperating_responders=True``: our instance and host names embed the
  node id, so they are unique by construction and the 1.2 s probing phase buys nothing
  (measured: peers see us in ~20-60 ms instead of ~1.2 s).
* Browse handlers run in the event loop and must not block: Added/Updated start a resolve
  task (answered from the cache in ~0 ms right after Added); one resolve per name at a
  time, re-run if another event arrived meanwhile.
* Events are hints (an Updated can follow a Removed, python-zeroconf #1048): the peer
  table and the probes decide.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshcc.mesh import netif
from meshcc.mesh.records import DISTCC_TYPE, MESHCC_TYPE, ServiceSpec

__all__ = ["Discovery", "DiscoveryEvent", "ServiceGone", "ServiceSeen"]

log = logging.getLogger("meshcc.mesh")


@dataclass(frozen=True, slots=True)
class ServiceSeen:
    """A resolved service instance (base type, full name, where, TXT as str)."""

    type_: str
    name: str
    addresses: tuple[str, ...]
    port: int
    properties: dict[str, str | None]
    server: str | None


@dataclass(frozen=True, slots=True)
class ServiceGone:
    """A service instance said goodbye (or its PTR expired)."""

    type_: str
    name: str


DiscoveryEvent = ServiceSeen | ServiceGone


def _scope_name(scope: str) -> str:
    """``2`` -> ``eth0``: the same link for getaddrinfo, and readable in a hosts line."""
    if scope.isdigit():
        try:
            return socket.if_indextoname(int(scope))
        except OSError:
            pass
    return scope


def _dial_order(
    addresses: Sequence[str], dialable: Callable[[str], bool] | None = None
) -> tuple[str, ...]:
    """IPv4 first, then global/ULA IPv6 (stable within each), leaving out what
    ``dialable`` refuses; scoped link-local addresses only when nothing else is left.

    Why link-local only as a last resort: every box on the wire shares the link-local
    subnet, so a box announcing an IPv4 or routable address in another subnet (one the
    allowed subnets keep out) would otherwise slip in through its fe80:: address. A peer
    is judged by its routable addresses; fe80:: serves the peers that have none we can
    dial (an IPv6-only box seen from an IPv4 LAN box, and the other way round)."""
    ranked: list[tuple[int, int, str]] = []
    for i, text in enumerate(addresses):
        bare, _, scope = text.partition("%")
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            continue
        if ip.version == 4:
            ranked.append((0, i, text))
        elif not ip.is_link_local:
            ranked.append((1, i, bare))
        elif scope:
            ranked.append((2, i, f"{bare}%{_scope_name(scope)}"))
    usable = [(rank, text) for rank, _, text in sorted(ranked) if not dialable or dialable(text)]
    routable = [text for rank, text in usable if rank < 2]
    return tuple(routable or (text for _, text in usable))


def _ip_version(interfaces: Sequence[str | int]) -> IPVersion:
    v6 = any(isinstance(i, int) or ":" in i for i in interfaces)
    v4 = any(isinstance(i, str) and ":" not in i for i in interfaces)
    return IPVersion.All if v4 and v6 else IPVersion.V6Only if v6 else IPVersion.V4Only


def _to_info(spec: ServiceSpec, addresses: Sequence[str]) -> ServiceInfo:
    return ServiceInfo(
        spec.type_,
        spec.name,
        port=spec.port,
        properties=dict(spec.properties),
        server=spec.server,
        parsed_addresses=list(addresses),
    )


class Discovery:
    """Announce ``addresses`` and browse, over ``interfaces`` (default: the addresses).

    ``interfaces`` lists IPv4 addresses and, for mDNS over IPv6 on a link, that link's
    IPv6 (link-local) address or its index. ``addresses`` are what the A/AAAA records
    carry (no scopes). ``tentative`` lists the addresses still in DAD (injectable);
    ``dialable`` filters the addresses of what we resolve (None: keep all)."""

    def __init__(
        self,
        addresses: Sequence[str],
        on_event: Callable[[DiscoveryEvent], None],
        *,
        interfaces: Sequence[str | int] | None = None,
        browse_types: Sequence[str] = (MESHCC_TYPE, DISTCC_TYPE),
        resolve_timeout_s: float = 1.5,
        dad_wait_s: float = 5.0,
        tentative: Callable[[], set[ipaddress.IPv6Address]] = netif.tentative_ipv6,
        dialable: Callable[[str], bool] | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("Discovery needs at least one interface address")
        self.addresses = list(addresses)
        self.interfaces: list[str | int] = list(interfaces if interfaces else addresses)
        self._on_event = on_event
        self._browse_types = list(browse_types)
        self._resolve_timeout_ms = resolve_timeout_s * 1000
        self._dad_wait_s = dad_wait_s
        self._tentative = tentative
        self._dialable = dialable
        self.warnings: list[str] = []  # what did not work out but left discovery on
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._again: set[tuple[str, str]] = set()
        self._background: set[asyncio.Future[Any]] = set()
        self._registered: dict[str, ServiceInfo] = {}

    async def start(self, services: Sequence[ServiceSpec]) -> None:
        """Open the mDNS sockets, register ``services``, start browsing (OSError if impossible)."""
        await self._wait_dad()
        self._azc = self._open()
        try:
            for spec in services:
                info = _to_info(spec, self.addresses)
                announce = await self._azc.async_register_service(info, cooperating_responders=True)
                self._keep(announce)
                self._registered[spec.name] = info
            self._browser = AsyncServiceBrowser(
                self._azc.zeroconf, self._browse_types, handlers=[self._on_state_change]
            )
        except BaseException:
            await self.stop()
            raise

    async def update(self, spec: ServiceSpec) -> None:
        """Re-announce a registered service with new TXT (3 packets: call rarely)."""
        if self._azc is None or spec.name not in self._registered:
            return
        info = _to_info(spec, self.addresses)
        self._keep(await self._azc.async_update_service(info))
        self._registered[spec.name] = info

    async def stop(self) -> None:
        """Goodbyes for our services, then close the sockets."""
        azc, self._azc = self._azc, None
        if self._browser is not None:
            browser, self._browser = self._browser, None
            await browser.async_cancel()
        for task in [*self._resolving.values(), *self._background]:
            task.cancel()
        pending = [*self._resolving.values(), *self._background]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._resolving.clear()
        self._registered.clear()
        if azc is not None:
            try:
                await azc.async_unregister_all_services()
            finally:
                await azc.async_close()

    # -- internals

    def _open(self) -> AsyncZeroconf:
        """The mDNS sockets: over every family asked for or, when that fails on a
        dual-stack box, over IPv4 alone (OSError when nothing can be opened)."""
        version = _ip_version(self.interfaces)
        try:
            return AsyncZeroconf(interfaces=list(self.interfaces), ip_version=version)
        except (OSError, RuntimeError) as e:  # RuntimeError: "No adapter found for index N"
            if version is not IPVersion.All:
                raise OSError(str(e)) from None
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        v4 = [i for i in self.interfaces if isinstance(i, str) and ":" not in i]
        try:
            azc = AsyncZeroconf(interfaces=v4, ip_version=IPVersion.V4Only)
        except (OSError, RuntimeError) as e:
            raise OSError(str(e)) from None
        self.interfaces = list(v4)
        self.warnings.append(
            f"mDNS over IPv6 failed ({why}): discovery runs over IPv4 only, so IPv6-only "
            "peers cannot find this box"
        )
        log.warning("%s", self.warnings[-1])
        return azc

    async def _wait_dad(self) -> None:
        """Wait until no IPv6 address we bind or announce is tentative (bounded)."""
        ours = set()
        for text in (*self.addresses, *(i for i in self.interfaces if isinstance(i, str))):
            if ":" in text:
                ours.add(ipaddress.IPv6Address(text.split("%", 1)[0]))
        if not ours:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._dad_wait_s
        while pending := ours & self._tentative():
            if loop.time() >= deadline:
                log.warning(
                    "IPv6 duplicate address detection has not finished for %s after %g s; "
                    "mDNS may not work on that link (a duplicate address on the LAN?)",
                    ", ".join(sorted(map(str, pending))),
                    self._dad_wait_s,
                )
                return
            await asyncio.sleep(0.1)

    def _keep(self, aw: object) -> None:
        if isinstance(aw, asyncio.Future):
            self._background.add(aw)
            aw.add_done_callback(self._background.discard)

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        key = (service_type, name)
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(key, None)
            if task is not None:
                task.cancel()
            self._again.discard(key)
            self._on_event(ServiceGone(service_type, name))
            return
        if key in self._resolving:
            self._again.add(key)
            return
        self._resolving[key] = asyncio.get_running_loop().create_task(self._resolve(key))

    async def _resolve(self, key: tuple[str, str]) -> None:
        type_, name = key
        try:
            while True:
                self._again.discard(key)
                if self._azc is None:
                    return
                info = AsyncServiceInfo(type_, name)
                if await info.async_request(self._azc.zeroconf, self._resolve_timeout_ms):
                    if info.port:
                        self._on_event(
                            ServiceSeen(
                                type_=type_,
                                name=name,
                                addresses=_dial_order(
                                    info.parsed_scoped_addresses(), self._dialable
                                ),
                                port=info.port,
                                properties=dict(info.decoded_properties),
                                server=info.server,
                            )
                        )
                else:
                    log.debug("could not resolve %s (no answer)", name)
                if key not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("resolving %s failed", name)
        finally:
            if self._resolving.get(key) is asyncio.current_task():
                del self._resolving[key]
