"""A stub mesh's one matching peer, for the control server's tests and benchmark: a
meshcc peer with the box's gcc, up and judged a match, as ``Mesh.explain`` returns it."""

from __future__ import annotations

from meshcc.mesh.matching import Verdict
from meshcc.mesh.peers import Liveness, PeerState
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo


def matching_peer(address: str, limit: int, caps: frozenset[str] = frozenset()) -> Verdict:
    """A verdict for one peer at ``address`` with ``limit`` job slots."""
    tc = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc",))
    rec = PeerRecord(
        "m:a",
        PeerKind.MESHCC,
        "a._meshcc._tcp.local.",
        "a",
        (address,),
        3632,
        2,
        limit,
        (tc,),
        node_id="0000000000aa",
        protocols=(1, 2),
        caps=caps,
    )
    state = PeerState(rec, Liveness.UP, 0.0, 0.0, None, None, 0.001, 0, 0, 0, None)
    return Verdict(state, True, "ok", address, "gcc")
