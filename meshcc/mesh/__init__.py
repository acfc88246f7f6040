"""Layer 5: announcement, browsing, the peer table, liveness, allowed subnets, leases.

Modules, one job each (import the one you need: the CLI reads records without zeroconf):

* ``records``   — TXT/ServiceInfo data for ``_distcc._tcp`` and ``_meshcc._tcp``, PeerRecord,
                  node identity (pure)
* ``netif``     — interface selection (ifaddr + /sys flags), default allowed subnets
* ``peers``     — the peer table state machine: browse hints + probes + job outcomes (no I/O)
* ``liveness``  — the asyncio TCP-probe driver of the table
* ``matching``  — a client compiler vs a peer: in/out with a reason, ranking, DISTCC_HOSTS
* ``leases``    — the scheduler: which peer slot a local compile gets, and who waits
* ``discovery`` — the python-zeroconf adapter (the only module importing zeroconf)
* ``service``   — :class:`Mesh`, the object the daemon owns (API in its docstring)
"""
