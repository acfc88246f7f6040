"""Background tasks that cannot die silently.

A daemon's background work (peer probes, republishing, the hosts-file writer, load
reports) runs for days; an exception in one of them used to end that task without a word
while the daemon went on looking healthy. :func:`supervise` runs such a coroutine, logs
any exception with its traceback, and restarts it with exponential backoff; a task that
keeps failing calls ``on_fatal`` (the daemon then exits non-zero, so its service manager
sees it) or, without one, keeps retrying at the longest backoff, logging each failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
FATAL_FAILURES = 5  # failures within FATAL_WINDOW_S that end the daemon (with on_fatal)
FATAL_WINDOW_S = 600.0


def supervise(
    name: str,
    factory: Callable[[], Coroutine[Any, Any, None]],
    log: logging.Logger,
    *,
    on_fatal: Callable[[str], None] | None = None,
    sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
) -> asyncio.Task[None]:
    """Run ``factory()`` as task ``name``; restart it when it raises.

    A coroutine that returns has finished its work and is not restarted; cancelling the
    returned task stops it for good."""

    async def run() -> None:
        failures: list[float] = []
        delay = RESTART_FIRST_S
        while True:
            started = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                now = time.monotonic()
                if now - started >= RESTART_MAX_S:
                    delay = RESTART_FIRST_S  # it ran well for a while: start backing off anew
                failures = [t for t in failures if now - t < FATAL_WINDOW_S] + [now]
                if on_fatal is not None and len(failures) >= FATAL_FAILURES:
                    log.critical(
                        "background task %s failed %d times in %.0f s; giving up",
                        name,
                        len(failures),
                        FATAL_WINDOW_S,
                        exc_info=True,
                    )
                    on_fatal(f"background task {name} keeps failing")
                    return
                log.error(
                    "background task %s failed; restarting it in %g s", name, delay, exc_info=True
                )
            await sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    return asyncio.get_running_loop().create_task(run(), name=name)
