"""The daemon's watch of its peers (``daemon.main._watch_default_cc``): it judges the
peers when the mesh says something changed, not on a poll, and still logs each change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from meshcc.daemon import main as daemon_main


class _Mesh:
    """Judges one peer, counting how often it is asked."""

    def __init__(self) -> None:
        self.included = True
        self.judged = 0
        self.callbacks: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def explain(self, fingerprint: object) -> list[Any]:
        self.judged += 1
        record = SimpleNamespace(key="m:b", host="b", addresses=("10.0.0.2",))
        verdict = SimpleNamespace(
            peer=SimpleNamespace(record=record),
            included=self.included,
            reason="" if self.included else "gcc 12.9.9 here, 12.2.0 there",
            address="10.0.0.2",
        )
        return [verdict]

    def change(self, included: bool) -> None:
        self.included = included
        for callback in self.callbacks:
            callback()


class _Fingerprints:
    async def get(self, cc: str, path: str) -> Any:
        return SimpleNamespace(name="cc", describe=lambda: "gcc 12.2.0 x86_64-linux-gnu")


def test_the_watch_judges_on_a_change_and_not_on_a_poll(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_main.hostos, "which", lambda name: "/usr/bin/cc")
    mesh = _Mesh()

    async def scenario() -> tuple[int, int, int]:
        watch = asyncio.create_task(
            daemon_main._watch_default_cc(mesh, _Fingerprints(), None)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.7)  # two judgements at the old twice-a-second poll
        idle = mesh.judged
        mesh.change(included=False)
        await asyncio.sleep(0.05)
        after_change = mesh.judged
        mesh.change(included=True)
        await asyncio.sleep(0.05)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        assert mesh.callbacks == []  # a watch that ends (or is restarted) unsubscribes
        return idle, after_change, mesh.judged

    with caplog.at_level(logging.INFO, logger="meshcc.daemon"):
        idle, after_change, last = asyncio.run(scenario())
    assert (idle, after_change, last) == (1, 2, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("is in for" in line for line in lines) == 2, lines
    assert sum("is excluded" in line and "12.9.9" in line for line in lines) == 1, lines


def test_the_watch_still_looks_again_on_its_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verdicts change with time too (a failed peer's cool-down ends): the watch judges
    again after its backstop with no change signalled."""
    monkeypatch.setattr(daemon_main.hostos, "which", lambda name: "/usr/bin/cc")
    monkeypatch.setattr(daemon_main, "WATCH_BACKSTOP_S", 0.2)
    mesh = _Mesh()

    async def scenario() -> int:
        watch = asyncio.create_task(
            daemon_main._watch_default_cc(mesh, _Fingerprints(), None)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.5)
        watch.cancel()
        return mesh.judged

    assert asyncio.run(scenario()) >= 2


def test_the_mesh_signals_a_peer_that_comes_goes_or_fails() -> None:
    """``Mesh.on_change``: a discovery event that changes the table, a change of liveness
    and a job outcome that changes a peer's failures call back; an announcement that
    changes nothing and a job that went as the last one did do not."""
    from meshcc.mesh.discovery import ServiceGone, ServiceSeen
    from meshcc.mesh.peers import Liveness
    from meshcc.mesh.records import DISTCC_TYPE
    from meshcc.mesh.service import Mesh, MeshConfig

    mesh = Mesh(MeshConfig(), (), 3632, 2, distcc_id=None, node_id="0000000000aa")
    calls: list[int] = []
    unsubscribe = mesh.on_change(lambda: calls.append(1))
    name = f"box.{DISTCC_TYPE}"
    seen = ServiceSeen(DISTCC_TYPE, name, ("10.0.0.2",), 3632, {"distcc": "3.4"}, "box.local.")
    mesh._on_event(seen)
    assert len(calls) == 1
    mesh._on_event(seen)  # the same announcement again: nothing changed
    assert len(calls) == 1
    assert mesh.report_job_result("10.0.0.2:3632", True)
    assert len(calls) == 1
    assert mesh.report_job_result("10.0.0.2:3632", False)
    assert len(calls) == 2
    assert mesh.report_job_result("10.0.0.2:3632", True)  # its failures are forgiven
    assert len(calls) == 3
    mesh._on_liveness("d:" + name, Liveness.DOWN)  # (the liveness loop's callback)
    assert len(calls) == 4
    mesh._on_event(ServiceGone(DISTCC_TYPE, name))
    assert len(calls) == 5
    unsubscribe()
    mesh._on_event(seen)
    assert len(calls) == 5
