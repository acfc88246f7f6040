"""The daemon's settings, made from ``meshcc daemon``'s parsed options."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass

from meshcc.defaults import DISTCC_PORT
from meshcc.transport.addresses import IPNetwork


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """The daemon's settings, as parsed from ``meshcc daemon`` options."""

    listen: str | None = None
    port: int = DISTCC_PORT
    status_port: int | None = None  # None: 3633, unless listening on loopback only
    allow: tuple[IPNetwork, ...] = ()
    jobs: int | None = None
    nice: int = 5
    log_level: str = "notice"
    log_file: str | None = None
    log_stderr: bool = False
    compilers: tuple[str, ...] = ()
    ccache: str | None = None  # --ccache [PATH]: the ccache to run jobs through
    ccache_dir: str | None = None
    ccache_size: str | None = None
    user: str | None = None
    job_lifetime: float = 0.0
    io_timeout: float = 300.0
    interfaces: tuple[str, ...] = ()
    accept_unverified: bool = False
    socket: str | None = None
    write_hosts: str | None = None
    discovery: bool = True
    inetd: bool = False  # serve one job on stdin/stdout (meshcc.daemon.inetd)
    cache: bool = True  # the result cache (meshcc.cache); --no-cache turns it off
    cache_dir: str | None = None  # None: meshcc.cache.store.default_dir()
    cache_size: int | None = None  # bytes; None: meshcc.cache.store.DEFAULT_LIMIT
    cache_lookup_timeout: float = 0.25  # a home peer's answer, at most (a miss waits this)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> DaemonOptions:
        return cls(
            listen=ns.listen,
            port=ns.port,
            status_port=getattr(ns, "status_port", None),
            allow=tuple(ns.allow),
            jobs=ns.jobs,
            nice=ns.nice,
            log_level=ns.log_level,
            log_file=ns.log_file,
            log_stderr=bool(getattr(ns, "log_stderr", False)),
            compilers=tuple(ns.compiler),
            ccache=getattr(ns, "ccache", None),
            ccache_dir=getattr(ns, "ccache_dir", None),
            ccache_size=getattr(ns, "ccache_size", None),
            user=ns.user,
            job_lifetime=ns.job_lifetime,
            io_timeout=ns.io_timeout,
            interfaces=tuple(getattr(ns, "interface", ()) or ()),
            accept_unverified=bool(getattr(ns, "accept_unverified", False)),
            socket=getattr(ns, "socket", None),
            write_hosts=getattr(ns, "write_hosts", None),
            discovery=not getattr(ns, "no_discovery", False),
            inetd=bool(getattr(ns, "inetd", False)),
            cache=not getattr(ns, "no_cache", False),
            cache_dir=getattr(ns, "cache_dir", None),
            cache_size=getattr(ns, "cache_size", None),
            cache_lookup_timeout=getattr(ns, "cache_lookup_timeout", 0.25),
        )

    def loopback_only(self) -> bool:
        """``--listen`` names a loopback address: no peer could reach this daemon."""
        if not self.listen:
            return False
        try:
            addr = ipaddress.ip_address(self.listen.strip("[]"))
        except ValueError:
            return self.listen == "localhost"
        mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
        return addr.is_loopback or (mapped is not None and mapped.is_loopback)
