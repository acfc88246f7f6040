"""Layer 5: announcement, browsing, the peer table, liveness, allowed subnets.

Modules, one job each (imports are lazy so the CLI can read records without zeroconf):

* ``records``   — TXT/ServiceInfo data for ``_distcc._tcp`` and ``_meshcc._tcp``, PeerRecord,
                  node identity (pure)
* ``netif``     — interface selection (ifaddr + /sys flags), default allowed subnets
* ``peers``     — the peer table state machine: browse hints + probes + job outcomes (no I/O)
* ``liveness``  — the asyncio TCP-probe driver of the table
* ``matching``  — a client compiler vs a peer: in/out with a reason, ranking, DISTCC_HOSTS
* ``discovery`` — the python-zeroconf adapter (the only module importing zeroconf)
* ``service``   — :class:`Mesh`, the object the daemon owns (API in its docstring)
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from meshcc.mesh.matching import ClientCompiler, MatchPolicy, Verdict
    from meshcc.mesh.netif import InterfaceError
    from meshcc.mesh.peers import Liveness, LivenessTimings, PeerState
    from meshcc.mesh.service import Mesh, MeshConfig, MeshStatus

__all__ = [
    "ClientCompiler",
    "InterfaceError",
    "Liveness",
    "LivenessTimings",
    "MatchPolicy",
    "Mesh",
    "MeshConfig",
    "MeshStatus",
    "PeerState",
    "Verdict",
]

_HOME = {
    "ClientCompiler": "matching",
    "MatchPolicy": "matching",
    "Verdict": "matching",
    "InterfaceError": "netif",
    "Liveness": "peers",
    "LivenessTimings": "peers",
    "PeerState": "peers",
    "Mesh": "service",
    "MeshConfig": "service",
    "MeshStatus": "service",
}


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'meshcc.mesh' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"meshcc.mesh.{module}"), name)
