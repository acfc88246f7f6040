"""The lease broker keeps a compiler's verdicts between requests while the mesh signals no
change (``LeaseBroker.follow_changes`` on ``Mesh.on_change``): judging every peer costs
~8 us a peer, paid by every lease on the client box, and most leases follow one another
with nothing changed. A real ``Mesh`` (its peer table, its judging) with a stock distccd
seen by discovery; the broker counts as the daemon wires it."""

from __future__ import annotations

import asyncio
import ipaddress

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.mesh.discovery import ServiceSeen
from meshcc.mesh.leases import VERDICTS_S, Grant, LeaseBroker, Local
from meshcc.mesh.matching import Verdict
from meshcc.mesh.records import DISTCC_TYPE
from meshcc.mesh.service import Mesh, MeshConfig
from test_mesh_load import Clock

FP = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", "gcc")


def _mesh_with_a_stock_peer() -> tuple[Mesh, list[int]]:
    config = MeshConfig(allow=(ipaddress.ip_network("10.0.0.0/8"),), accept_unverified=True)
    mesh = Mesh(config, (), 3632, 2, distcc_id=None, node_id="0000000000aa")
    props = {"distcc": "3.4", "jobs": "2", "cc_version": "12.2.0"}
    props["cc_machine"] = "x86_64-linux-gnu"
    name = f"box.{DISTCC_TYPE}"
    mesh._on_event(ServiceSeen(DISTCC_TYPE, name, ("10.0.0.2",), 3632, props, "box.local."))
    for target in mesh.table.due():  # its first probe answered: up
        mesh.table.probe_done(target, True, rtt_s=0.0005)
    judged = [0]
    explain = mesh.explain

    def counting(fp: ClientCompiler | None) -> list[Verdict]:
        judged[0] += 1
        return explain(fp)

    mesh.explain = counting  # type: ignore[method-assign]
    return mesh, judged


def test_leases_reuse_verdicts_until_the_mesh_changes_or_they_age() -> None:
    async def scenario() -> None:
        mesh, judged = _mesh_with_a_stock_peer()
        clock = Clock()
        broker = LeaseBroker(mesh, clock=clock)
        broker.follow_changes(mesh.on_change)
        first = await broker.acquire(FP)
        assert isinstance(first, Grant) and first.host == "10.0.0.2", first
        broker.release(first.key)
        for _ in range(5):  # one lease after another, nothing changed: judged once
            clock.t += VERDICTS_S / 10
            got = await broker.acquire(FP)
            assert isinstance(got, Grant)
            broker.release(got.key)
        assert judged[0] == 1
        # A job that could not connect: the peer is down now, the mesh says so, and the
        # next request is judged afresh (it compiles here rather than try a dead peer).
        assert mesh.report_job_result(first.key, False, connect_failed=True)
        got = await broker.acquire(FP)
        assert isinstance(got, Local) and "no matching peer" in got.reason, got
        assert judged[0] == 2
        # Changes that come with time alone are seen once the verdicts age.
        await broker.acquire(FP)
        assert judged[0] == 2
        clock.t += VERDICTS_S * 1.5
        await broker.acquire(FP)
        assert judged[0] == 3
        broker.stop()
        assert mesh._change_callbacks == []  # a stopped broker no longer follows

    asyncio.run(scenario())


def test_without_following_every_request_judges() -> None:
    async def scenario() -> None:
        mesh, judged = _mesh_with_a_stock_peer()
        broker = LeaseBroker(mesh, clock=Clock())
        for _ in range(3):
            got = await broker.acquire(FP)
            assert isinstance(got, Grant)
            broker.release(got.key)
        assert judged[0] == 3
        broker.stop()

    asyncio.run(scenario())
