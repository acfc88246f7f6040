"""What the compile server counts for ``/metrics`` and ``/status.json``: served jobs by
outcome, bytes in and out, compile time, jobs waiting for a slot.

Cheap on purpose (it runs once per job on the daemon's loop): integer additions into
preallocated dicts and lists and one ``bisect`` per job; no allocation per job beyond the
slot guard below.

Outcome labels are distccd's job result names in lower case (``compile_ok``,
``compile_error``, ``compile_timeout``, ``cli_disconn``, ``rej_bad_req``, ``other``), plus
``refused`` for a job the server turned down with a reason (a refused option, an unknown
compiler, protocol 3), and ``prefix_unknown`` for a zstd body that named a kept body
(``ZREF``) this server no longer holds (it restarted or evicted it): an expected answer,
after which the client sends the same job whole, not a refusal.
"""

from __future__ import annotations

from bisect import bisect_left

# Compile time, seconds: a header-only file takes ~20 ms, a large C++ unit a minute.
COMPILE_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
OUTCOMES = (
    "compile_ok",
    "compile_error",
    "compile_timeout",
    "cli_disconn",
    "rej_bad_req",
    "refused",
    "prefix_unknown",
    "other",
)


class Histogram:
    """Cumulative-on-read histogram over fixed upper bounds (Prometheus ``le`` buckets)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with (inf, count)."""
        out = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": [["+Inf" if b == float("inf") else b, n] for b, n in self.cumulative()],
        }


class JobStats:
    """The server's counters since start."""

    __slots__ = ("bytes_in", "bytes_out", "compile_seconds", "jobs", "waiting")

    def __init__(self) -> None:
        self.jobs = dict.fromkeys(OUTCOMES, 0)
        self.bytes_in = 0
        self.bytes_out = 0
        self.compile_seconds = Histogram(COMPILE_BUCKETS)
        self.waiting = 0  # jobs with a whole request, waiting for a job slot

    def record(self, outcome: str, bytes_in: int, bytes_out: int, compile_s: float | None) -> None:
        """One finished job (``compile_s``: the compiler's run time, if it ran)."""
        self.jobs[outcome] = self.jobs.get(outcome, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        if compile_s is not None:
            self.compile_seconds.observe(compile_s)
