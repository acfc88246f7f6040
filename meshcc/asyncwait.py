"""Waiting for an event or a time, whichever comes first, in loops that run all day."""

from __future__ import annotations

import asyncio

__all__ = ["wait_set"]


async def wait_set(event: asyncio.Event, timeout: float) -> None:
    """Return once ``event`` is set, or after ``timeout`` seconds (then it is set too: the
    caller clears it when it looks again). A timer that sets the event rather than
    ``asyncio.wait_for``, which creates a task per call: the daemon's background loops
    (load channel, liveness, peer watch) wake several times a second on every box."""
    timer = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()
