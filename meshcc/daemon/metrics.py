"""The daemon's view of itself for the status port: ``/status.json`` and ``/metrics``.

Everything here is derived, at request time, from the records the daemon already keeps:
the control socket's :class:`~meshcc.wire.control.StatusReply` (one source of truth for
version, node, slots, running, leases, discovery), the compile server's
:class:`~meshcc.transport.jobstats.JobStats` and ccache counts, the mesh's peer table, the
probe observations below, and the compile clients' outcomes
(:mod:`meshcc.daemon.outcomes`). Nothing is computed per job here.

``/metrics`` is the Prometheus text format 0.0.4, or OpenMetrics 1.0 text when the
request's ``Accept`` asks for ``application/openmetrics-text``; both are written by
:class:`Exposition` (a few dozen lines: a dependency for the format alone would have to
ship in meshcc.pyz too). The tests parse both with prometheus_client's parsers.

``/status.json`` has a stable, versioned schema (``"schema": 1``): new keys may be added,
none removed or changed in meaning without bumping it. Schema 1::

    schema: 1
    <every field of the control socket's StatusReply but "peers">: version, node,
        discovery, off_reason, interfaces, addresses, allowed, allowed_source, warnings,
        jobs (slots), running, port, socket, leases (held), queued (waiting for a lease)
    started, uptime_s: float            this daemon's start (Unix time), seconds since
    waiting: int                        served jobs waiting for a job slot
    toolchains: [{path, version, target, binutils, names}]
    served: {jobs: {outcome: n}, bytes_in, bytes_out, compile_seconds: {count, sum,
             buckets: [[le, n]...]}, shed} | null (no compile port)
    ccache: {hit, miss, uncached} | null (no --ccache)
    result_cache: {hit, remote_hit, miss, off, stored, ..., entries, bytes} | null (off);
        with direct mode's figures when it keeps manifests: direct_{hit, miss, stored,
        refused, loaded, mesh_hit, mesh_miss, mesh_failed, mesh_pushed, mesh_push_failed,
        mesh_received, manifests, manifest_bytes}
    clients: meshcc stats' snapshot {schema, since, totals, entries, failed_attempts,
             dropped, uids} | null (no outcome socket)
    peer_count: int
    peers: [{key, host, addresses, port, kind, liveness, rtt_s, probe_failures,
             job_failures, backed_off, jobs, free, probes: {ok, failed, seconds} | null}]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from meshcc.mesh.liveness import ProbeFn, ProbeResult
from meshcc.mesh.peers import PeerState, ProbeTarget
from meshcc.transport.jobstats import OUTCOMES, Histogram
from meshcc.wire.control import StatusReply

SCHEMA = 1
MAX_PEERS = 1024  # probe observations kept (the peer table is bounded too)
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------- the exposition format


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


Labels = Sequence[tuple[str, str]]


class Exposition:
    """Builds one exposition: families of (suffix, labels, value) samples."""

    def __init__(self, openmetrics: bool = False) -> None:
        self.openmetrics = openmetrics
        self._lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[str, Labels, float]],
    ) -> None:
        """``name`` without ``_total`` (counter) or ``_info`` (info): the samples get it.
        The text format has no info type: there it is a gauge named ``<name>_info``."""
        declared = name
        if not self.openmetrics and kind in ("counter", "info"):
            declared = name + ("_total" if kind == "counter" else "_info")
            kind = "gauge" if kind == "info" else kind
        self._lines.append(f"# HELP {declared} {help_text}")
        self._lines.append(f"# TYPE {declared} {kind}")
        for suffix, labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            self._lines.append(
                f"{name}{suffix}{{{text}}} {_number(value)}"
                if text
                else f"{name}{suffix} {_number(value)}"
            )

    def histogram(
        self, name: str, help_text: str, series: Iterable[tuple[Labels, Histogram]]
    ) -> None:
        samples: list[tuple[str, Labels, float]] = []
        for labels, h in series:
            for bound, n in h.cumulative():
                le = "+Inf" if math.isinf(bound) else repr(float(bound))
                samples.append(("_bucket", (*labels, ("le", le)), n))
            samples.append(("_count", labels, h.count))
            samples.append(("_sum", labels, h.sum))
        self.family(name, "histogram", help_text, samples)

    def text(self) -> str:
        return "\n".join([*self._lines, "# EOF"] if self.openmetrics else self._lines) + "\n"


def wants_openmetrics(accept: str) -> bool:
    """Does an ``Accept`` header ask for OpenMetrics (as Prometheus itself sends)?"""
    return "application/openmetrics-text" in accept.lower()


# ---------------------------------------------------------------- probe observations


class _PeerProbes:
    __slots__ = ("failed", "hist", "host", "ok")

    def __init__(self, host: str) -> None:
        self.host = host
        self.ok = 0
        self.failed = 0
        self.hist = Histogram(PROBE_BUCKETS)


class ProbeStats:
    """Liveness probe results per peer: wraps the mesh's probe function (``Mesh(probe=)``)."""

    def __init__(self) -> None:
        self.peers: dict[str, _PeerProbes] = {}

    def observe(self, target: ProbeTarget, ok: bool, rtt_s: float | None) -> None:
        p = self.peers.get(target.key)
        if p is None:
            if len(self.peers) >= MAX_PEERS:
                del self.peers[next(iter(self.peers))]
            p = self.peers[target.key] = _PeerProbes(target.host)
        if ok:
            p.ok += 1
            if rtt_s is not None:
                p.hist.observe(rtt_s)
        else:
            p.failed += 1

    def wrap(self, probe: ProbeFn) -> ProbeFn:
        async def observed(target: ProbeTarget) -> ProbeResult:
            result = ProbeResult(*await probe(target))
            self.observe(target, result.ok, result.rtt_s)
            return result

        return observed

    def prune(self, keys: set[str]) -> None:
        """Forget peers the table no longer has (their series end)."""
        for key in [k for k in self.peers if k not in keys]:
            del self.peers[key]


# ---------------------------------------------------------------- sources


class OutcomeView(Protocol):
    def totals(self) -> dict[str, int]: ...
    def snapshot(self) -> dict[str, object]: ...

    counts: dict[tuple[str, str, str], int]
    attempts: dict[tuple[str, str], int]
    dropped: dict[str, int]


class Telemetry:
    """Renders ``/status.json`` and ``/metrics`` from the daemon's live records."""

    def __init__(
        self,
        status: Callable[[], StatusReply],
        *,
        server: object | None = None,
        ccache: bool = False,
        peers: Callable[[], list[PeerState]] = list,
        toolchains: Sequence[object] = (),
        probes: ProbeStats | None = None,
        outcomes: OutcomeView | None = None,
    ) -> None:
        self.status = status
        self.server = server
        self.ccache = ccache
        self.peers = peers
        self.toolchains = toolchains
        self.probes = probes or ProbeStats()
        self.outcomes = outcomes
        self.started = time.time()

    # -- JSON

    def status_json(self) -> dict[str, object]:
        st = self.status().to_message()
        st.pop("ok", None)
        peer_count = st.pop("peers", 0)
        server = self.server
        stats = getattr(server, "stats", None)
        served: dict[str, object] | None = None
        if stats is not None:
            served = {
                "jobs": dict(stats.jobs),
                "bytes_in": stats.bytes_in,
                "bytes_out": stats.bytes_out,
                "compile_seconds": stats.compile_seconds.to_dict(),
                "shed": getattr(server, "shed_count", 0),
            }
        peers = self.peers()
        return {
            "schema": SCHEMA,
            **st,
            "started": self.started,
            "uptime_s": round(time.time() - self.started, 3),
            "waiting": stats.waiting if stats is not None else 0,
            "toolchains": [
                {
                    "path": getattr(t, "path", ""),
                    "version": getattr(t, "version", ""),
                    "target": getattr(t, "target", ""),
                    "binutils": getattr(t, "binutils", None),
                    "names": list(getattr(t, "names", ())),
                }
                for t in self.toolchains
            ],
            "served": served,
            "ccache": dict(getattr(server, "cache_counts", {})) if self.ccache else None,
            "result_cache": self._result_cache_figures(),
            "clients": self.outcomes.snapshot() if self.outcomes is not None else None,
            "peer_count": peer_count,
            "peers": [self._peer_json(p) for p in peers],
        }

    def _peer_json(self, p: PeerState) -> dict[str, object]:
        probes = self.probes.peers.get(p.key)
        return {
            "key": p.key,
            "host": p.record.host,
            "addresses": list(p.record.addresses),
            "port": p.record.port,
            "kind": p.record.kind.value,
            "liveness": p.liveness.value,
            "rtt_s": p.rtt_s,
            "probe_failures": p.probe_failures,
            "job_failures": p.job_failures,
            "backed_off": p.backoff_until is not None,
            "jobs": p.record.jobs,
            "free": p.record.free,
            "probes": None
            if probes is None
            else {"ok": probes.ok, "failed": probes.failed, "seconds": probes.hist.to_dict()},
        }

    def summary_lines(self) -> list[str]:
        """Two lines for the plain-text status page: served jobs, this box's compiles."""
        lines = []
        stats = getattr(self.server, "stats", None)
        if stats is not None:
            served = ", ".join(f"{n} {o}" for o, n in stats.jobs.items() if n) or "none yet"
            lines.append(f"served jobs: {served}")
        if self.outcomes is not None:
            mine = ", ".join(f"{n} {o}" for o, n in self.outcomes.totals().items() if n)
            lines.append(f"this box's compiles: {mine or 'none reported yet'} (meshcc stats)")
        return lines

    # -- Prometheus / OpenMetrics

    def exposition(self, openmetrics: bool = False) -> str:
        st = self.status()
        out = Exposition(openmetrics)
        info = (("version", st.version), ("node", st.node))
        out.family(
            "meshcc_build", "info", "This daemon's version and node id.", [("_info", info, 1)]
        )
        out.family(
            "meshcc_start_time_seconds",
            "gauge",
            "When this daemon started (Unix time).",
            [("", (), self.started)],
        )
        gauges = (
            ("meshcc_job_slots", "Compile jobs this daemon runs at once.", st.jobs),
            ("meshcc_jobs_running", "Compilers running now.", st.running),
            ("meshcc_leases_held", "Peer slots leased to local clients now.", st.leases),
            ("meshcc_leases_waiting", "Local clients waiting for a lease now.", st.queued),
            ("meshcc_peers", "Peers in the table now.", st.peers),
        )
        for name, help_text, value in gauges:
            out.family(name, "gauge", help_text, [("", (), value)])
        stats = getattr(self.server, "stats", None)
        if stats is not None:
            out.family(
                "meshcc_jobs_waiting",
                "gauge",
                "Served jobs with a whole request, waiting for a job slot now.",
                [("", (), stats.waiting)],
            )
            jobs = stats.jobs
            out.family(
                "meshcc_jobs",
                "counter",
                "Compile jobs served, by outcome (distccd's result names; refused: turned "
                "down with a reason).",
                [
                    ("_total", (("outcome", o),), jobs.get(o, 0))
                    for o in (*OUTCOMES, *sorted(set(jobs) - set(OUTCOMES)))
                ],
            )
            out.family(
                "meshcc_received_bytes",
                "counter",
                "Request bytes read from compile clients.",
                [("_total", (), stats.bytes_in)],
            )
            out.family(
                "meshcc_sent_bytes",
                "counter",
                "Reply bytes written to compile clients.",
                [("_total", (), stats.bytes_out)],
            )
            out.histogram(
                "meshcc_compile_seconds",
                "Run time of the compilers this daemon ran for clients.",
                [((), stats.compile_seconds)],
            )
            out.family(
                "meshcc_connections_shed",
                "counter",
                "Idle or stalled compile connections closed to make room.",
                [("_total", (), getattr(self.server, "shed_count", 0))],
            )
        if self.ccache:
            cache = getattr(self.server, "cache_counts", {})
            out.family(
                "meshcc_ccache_jobs",
                "counter",
                "Served jobs by what ccache did (--ccache).",
                [
                    ("_total", (("result", r),), cache.get(r, 0))
                    for r in ("hit", "miss", "uncached")
                ],
            )
        self._result_cache_metrics(out)
        self._direct_metrics(out)
        self._peer_metrics(out)
        self._client_metrics(out)
        return out.text()

    def _result_cache_figures(self) -> dict[str, int] | None:
        """The result cache's counters (meshcc.cache.service.ResultCache.figures), or None."""
        cache = getattr(self.server, "result_cache", None)
        return cache.figures() if cache is not None else None

    def _result_cache_metrics(self, out: Exposition) -> None:
        f = self._result_cache_figures()
        if f is None:
            return
        out.family(
            "meshcc_result_cache_jobs",
            "counter",
            "Served jobs by what the result cache did (hit: this daemon's store; remote_hit: "
            "the key's home peer; off: uncacheable or the client asked for no cache).",
            [("_total", (("result", r),), f[r]) for r in ("hit", "remote_hit", "miss", "off")],
        )
        out.family(
            "meshcc_result_cache_entries",
            "gauge",
            "Results stored in this daemon's cache now.",
            [("", (), f["entries"])],
        )
        out.family(
            "meshcc_result_cache_bytes",
            "gauge",
            "Bytes of results stored in this daemon's cache now.",
            [("", (), f["bytes"])],
        )
        out.family(
            "meshcc_result_cache_evicted",
            "counter",
            "Results evicted to stay within the cache's size limit.",
            [("_total", (), f["evicted"])],
        )
        out.family(
            "meshcc_result_cache_corrupt",
            "counter",
            "Stored results that failed their hash check and were discarded.",
            [("_total", (), f["corrupt"])],
        )

    def _direct_metrics(self, out: Exposition) -> None:
        """Direct mode's figures (meshcc.cache.direct.DirectCache.figures, reported with
        the result cache's), when the daemon keeps manifests."""
        f = self._result_cache_figures()
        if f is None or "direct_hit" not in f:
            return
        out.family(
            "meshcc_direct_lookups",
            "counter",
            "Direct-mode lookups by local clients (hit: a result handed over without the "
            "preprocessor; miss: no manifest here for the job).",
            [("_total", (("result", r),), f[f"direct_{r}"]) for r in ("hit", "miss")],
        )
        out.family(
            "meshcc_direct_stored",
            "counter",
            "Direct-mode records (with their results) stored by this daemon.",
            [("_total", (), f["direct_stored"])],
        )
        out.family(
            "meshcc_direct_mesh",
            "counter",
            "Direct-mode records and the mesh (hit/miss/failed: asked of a home peer on a "
            "local miss; pushed/push_failed: offered to home peers; received: taken as "
            "their home).",
            [
                ("_total", (("event", r),), f[f"direct_mesh_{r}"])
                for r in ("hit", "miss", "failed", "pushed", "push_failed", "received")
            ],
        )
        out.family(
            "meshcc_direct_manifests",
            "gauge",
            "Direct-mode manifests held in memory now.",
            [("", (), f["direct_manifests"])],
        )

    def _peer_metrics(self, out: Exposition) -> None:
        peers = self.peers()
        self.probes.prune({p.key for p in peers})
        labelled = [(p, (("peer", p.key), ("host", p.record.host))) for p in peers]
        out.family(
            "meshcc_peer_up",
            "gauge",
            "1 if our own probes (or a job) confirm the peer, else 0.",
            [("", lab, 1 if p.liveness.value == "up" else 0) for p, lab in labelled],
        )
        out.family(
            "meshcc_peer_rtt_seconds",
            "gauge",
            "The last successful liveness probe's round trip.",
            [("", lab, p.rtt_s) for p, lab in labelled if p.rtt_s is not None],
        )
        out.family(
            "meshcc_peer_consecutive_failures",
            "gauge",
            "Failures in a row: liveness probes (kind=probe), clients' jobs (kind=job).",
            [
                s
                for p, lab in labelled
                for s in (
                    ("", (*lab, ("kind", "probe")), p.probe_failures),
                    ("", (*lab, ("kind", "job")), p.job_failures),
                )
            ],
        )
        probes = self.probes.peers
        observed = [(lab, probes[p.key]) for p, lab in labelled if p.key in probes]
        out.family(
            "meshcc_peer_probes",
            "counter",
            "Liveness probes of each peer, by result.",
            [
                s
                for lab, pp in observed
                for s in (
                    ("_total", (*lab, ("result", "ok")), pp.ok),
                    ("_total", (*lab, ("result", "failed")), pp.failed),
                )
            ],
        )
        out.histogram(
            "meshcc_peer_probe_seconds",
            "Round trip of successful liveness probes.",
            [(lab, pp.hist) for lab, pp in observed],
        )

    def _client_metrics(self, out: Exposition) -> None:
        oc = self.outcomes
        if oc is None:
            return
        by: dict[tuple[str, str], int] = {}
        for (outcome, host, _), n in oc.counts.items():
            by[(outcome, host)] = by.get((outcome, host), 0) + n
        for outcome, n in oc.totals().items():
            if n == 0:
                by.setdefault((outcome, ""), 0)
        out.family(
            "meshcc_client_jobs",
            "counter",
            "This box's compiles by outcome (remote, local, fallback, refused, busy, failed, "
            "cpp_error) and the host that did or failed them, as the compile clients report.",
            [("_total", (("outcome", o), ("host", h)), n) for (o, h), n in sorted(by.items())],
        )
        out.family(
            "meshcc_client_failed_attempts",
            "counter",
            "Attempts of this box's compiles that a host failed: refused (the server said "
            "why) or error (connect, protocol, lost connection); the compile may then have "
            "succeeded elsewhere.",
            [
                ("_total", (("host", h), ("kind", k)), n)
                for (h, k), n in sorted(oc.attempts.items())
            ],
        )
        out.family(
            "meshcc_client_reports_dropped",
            "counter",
            "Outcome datagrams dropped (oversized, malformed, rate, ...).",
            [("_total", (("reason", r),), n) for r, n in sorted(oc.dropped.items())],
        )
