"""The lease broker judges peers again only when something other than live load changed.

A load record (LeaseBroker.on_load) only changes a peer's live load, which the broker reads
from the load book; re-judging every peer per record cost the daemon 13 % of its CPU in a
-j build.  These tests count Mesh.explain calls with real load books (test_mesh_load's Net)
and check that a waiter is still served by the record that promises it a slot.
"""

from __future__ import annotations

import asyncio
import random

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.mesh.leases import DEMAND_VERDICTS_S, Grant, LeaseBroker
from meshcc.mesh.matching import Verdict
from test_mesh_load import FP, Net, _verdict


class _Status:
    off_reason: str | None = None


class _CountingMesh:
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.status = _Status()
        self.judged = 0

    def explain(self, fp: ClientCompiler | None) -> list[Verdict]:
        self.judged += 1
        return list(self.verdicts)


def test_load_records_reuse_fresh_verdicts_and_still_serve_the_waiter() -> None:
    async def scenario() -> None:
        net = Net(jobs=1)
        a = net.books["a"]
        mesh = _CountingMesh([_verdict("s", 1)])
        broker = LeaseBroker(mesh, load=a, clock=net.clock, rng=random.Random(3))
        a.set_local(running=2)  # a's own slots are busy: only s can help
        waiter = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        assert not waiter.done()  # s has promised nothing yet
        assert mesh.judged == 1  # the request judged, and the verdicts are kept
        for _ in range(6):  # records within DEMAND_VERDICTS_S: no judging
            broker.on_load("m:s")
        assert mesh.judged == 1
        net.clock.t += DEMAND_VERDICTS_S * 2
        broker.on_load("m:s")  # stale verdicts: judged again
        for _ in range(3):
            broker.on_load("m:s")
        assert mesh.judged == 2
        net.settle()  # s's record now promises a a slot (rounds ask demand(), which judges)
        assert not waiter.done()
        judged = mesh.judged
        broker.on_load("m:s")  # the record serves the waiter from the verdicts demand() kept
        got = await asyncio.wait_for(waiter, 1)
        assert isinstance(got, Grant) and got.key == "m:s"
        assert mesh.judged == judged
        broker.stop()

    asyncio.run(scenario())


def test_releases_and_the_tick_judge_again() -> None:
    """A release (a job's outcome may have changed a peer's standing) judges afresh even
    with fresh verdicts kept."""

    async def scenario() -> None:
        net = Net(jobs=1)
        a = net.books["a"]
        mesh = _CountingMesh([_verdict("s", 1)])
        broker = LeaseBroker(mesh, load=a, clock=net.clock, rng=random.Random(3))
        a.set_local(running=2)
        waiter = asyncio.ensure_future(broker.acquire(FP, local_ok=False))
        await asyncio.sleep(0)
        broker.on_load("m:s")
        judged = mesh.judged
        broker.dispatch()  # the tick's call
        assert mesh.judged == judged + 1
        broker.release("m:b")  # (a lease elsewhere ends)
        assert mesh.judged == judged + 2
        waiter.cancel()
        broker.stop()

    asyncio.run(scenario())
