"""TEMPORARY SHIM until meshcc.compiler.hostspec lands; remove then. Minimal DISTCC_HOSTS parser."""
from __future__ import annotations
import os


class HostSpecError(Exception):
    pass


class Host:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class HostList:
    def __init__(self, hosts, localslots=4, localslots_cpp=8, randomize=False):
        self.hosts, self.localslots, self.localslots_cpp, self.randomize = hosts, localslots, localslots_cpp, randomize


def parse_hosts(text: str) -> HostList:
    hosts = []
    for tok in text.split():
        if tok == "localhost" or tok.startswith("localhost/"):
            n = int(tok.split("/")[1]) if "/" in tok else 2
            hosts.append(Host(kind="localhost", host="localhost", port=0, limit=n, protocol=1,
                              lzo=False, down=False, spec=tok, lock_name="localhost"))
            continue
        main, *opts = tok.split(",")
        for o in opts:
            if o not in ("lzo", "down", "cpp"):
                raise HostSpecError(f"unrecognized option in host specification: {tok!r}")
        limit = 4
        if "/" in main:
            main, lim = main.split("/")
            limit = int(lim)
        host, _, port = main.partition(":")
        if port and not port.isdigit():
            raise HostSpecError(f"bad port in host specification: {tok!r}")
        port = int(port or 3632)
        hosts.append(Host(kind="tcp", host=host, port=port, limit=limit,
                          protocol=2 if "lzo" in opts else 1, lzo="lzo" in opts,
                          down="down" in opts, spec=tok, lock_name=f"tcp_{host}_{port}"))
    if not hosts:
        raise HostSpecError("host list contained no hosts")
    return HostList(hosts)


def load_hosts(environ) -> HostList:
    if "DISTCC_HOSTS" in environ:
        return parse_hosts(environ["DISTCC_HOSTS"])
    raise HostSpecError("no hostlist is set; can't distribute work")
