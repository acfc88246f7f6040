"""meshcc.supervisor: a background task that raises is logged and restarted, never lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshcc.supervisor import FATAL_FAILURES, supervise


def test_a_failing_task_is_logged_with_its_traceback_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    sleeps: list[float] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 4:
            raise RuntimeError(f"boom {len(runs)}")

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def scenario() -> None:
        task = supervise("flaky", flaky, logging.getLogger("test.sup"), sleep=fake_sleep)
        await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.ERROR, "test.sup"):
        asyncio.run(scenario())
    assert len(runs) == 4  # restarted until it finished its work, then left alone
    assert sleeps == [1.0, 2.0, 4.0]
    failures = [r for r in caplog.records if "background task flaky failed" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info for r in failures)
    assert "boom 1" in caplog.text and "Traceback" in caplog.text


def test_a_task_that_keeps_failing_ends_the_daemon(caplog: pytest.LogCaptureFixture) -> None:
    fatal: list[str] = []

    async def broken() -> None:
        raise OSError("disk full")

    async def no_sleep(seconds: float) -> None:
        return None

    async def scenario() -> None:
        task = supervise(
            "writer", broken, logging.getLogger("test.sup"), on_fatal=fatal.append, sleep=no_sleep
        )
        await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.ERROR, "test.sup"):
        asyncio.run(scenario())
    assert fatal == ["background task writer keeps failing"]
    assert sum("failed; restarting" in r.getMessage() for r in caplog.records) == FATAL_FAILURES - 1
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)


def test_cancelling_stops_it_for_good() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def scenario() -> None:
        task = supervise("forever", forever, logging.getLogger("test.sup"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
