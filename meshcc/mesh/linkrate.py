"""What this daemon knows of the link to each peer, for the clients' codec choice.

Compile clients are short processes: each measures one job's connection (the kernel's
``TCP_INFO`` after the reply: delivery rate, whether that rate was limited by the sender
rather than the link, minimum round trip) and reports it with the lease's ``done``. The
book keeps, per peer, a smoothed throughput and round trip and hands them out with every
lease, so the next client picks its codec (``meshcc.compression.choose``) from the link
as measured, not as guessed.

Rules, and why:

- A sample the sender limited (``app_limited``: we had nothing more to send, typical of a
  body of a few KB) is ignored: measured across a 10 Mbit/s veth, such samples read
  70-90 MB/s while every larger body read 1.2-1.4 MB/s. Samples that fill the window
  were within 10 % of the shaped rate at 10 and 100 Mbit/s.
- Other samples move the estimate by :data:`WEIGHT` of the way, geometrically (the rates
  span five decades: one job on a new link should move it by a decade, not by a third of
  the old value), so one odd job (a busy box, a retransmission) does not flip the choice
  for the next ones, and a changed link is followed within two or three jobs.
- An estimate older than :data:`STALE_S` is dropped: links change (a laptop moving from
  cable to Wi-Fi), and the cost of not knowing is only one compressed job.
- Samples are bounded (0 < rate < 1 TB/s, round trip < 60 s); anything else is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

WEIGHT = 0.5
STALE_S = 600.0
MAX_RATE = 10**12  # bytes/s
MAX_RTT_US = 60_000_000
MAX_PEERS = 4096  # entries kept (a mesh has far fewer peers; bounded all the same)


@dataclass(slots=True)
class LinkEstimate:
    rate: float  # bytes/s
    rtt_us: int  # minimum round trip seen lately, microseconds (0: unknown)
    at: float  # when it was last updated (monotonic)


class LinkBook:
    """Per-peer link estimates from the clients' reports (all times from ``clock``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._links: dict[str, LinkEstimate] = {}

    def record(self, key: str, rate: int, app_limited: bool, rtt_us: int = 0) -> None:
        """One job's measurement of the link to peer ``key``."""
        if app_limited or not 0 < rate < MAX_RATE:
            return
        rtt = rtt_us if 0 < rtt_us < MAX_RTT_US else 0
        now = self._clock()
        old = self.get(key)
        if old is None:
            if len(self._links) >= MAX_PEERS:
                self._links.pop(next(iter(self._links)))
            self._links[key] = LinkEstimate(float(rate), rtt, now)
            return
        old.rate *= (rate / old.rate) ** WEIGHT
        if rtt:
            old.rtt_us = rtt if not old.rtt_us else round(old.rtt_us + WEIGHT * (rtt - old.rtt_us))
        old.at = now

    def get(self, key: str) -> LinkEstimate | None:
        """The estimate for ``key``, or None (never measured, or stale)."""
        est = self._links.get(key)
        if est is not None and self._clock() - est.at > STALE_S:
            del self._links[key]
            return None
        return est

    def forget(self, key: str) -> None:
        self._links.pop(key, None)
