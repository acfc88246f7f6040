"""/metrics, /status.json and the outcome channel, without a daemon: the exposition
parsed by prometheus_client's own parsers, the outcome codec, the daemon's bounds."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from meshcc.client import outcome as client_outcome
from meshcc.daemon import outcomes
from meshcc.daemon.metrics import Exposition, ProbeStats, Telemetry, wants_openmetrics
from meshcc.mesh.liveness import ProbeResult
from meshcc.mesh.peers import ProbeTarget
from meshcc.transport.jobstats import COMPILE_BUCKETS, Histogram, JobStats
from meshcc.wire import control
from meshcc.wire import outcome as wire

# ---------------------------------------------------------------- the wire codec


def test_record_round_trip_and_sanitised_fields() -> None:
    data = wire.encode("refused", "10.0.0.2:3632", "bad\toption\nhere")
    assert wire.decode(data) == ("refused", "10.0.0.2:3632", "bad option here")
    assert wire.decode(wire.QUERY) == wire.QUERY and wire.decode(wire.RESET) == wire.RESET


def test_long_fields_are_cut_on_a_character_boundary() -> None:
    data = wire.encode("local", "h" * 500, "é" * 1000)
    assert len(data) <= wire.MAX_DATAGRAM
    decoded = wire.decode(data)
    assert isinstance(decoded, tuple)
    assert len(decoded[1]) == wire.MAX_HOST and decoded[2] == "é" * (wire.MAX_REASON // 2)


@pytest.mark.parametrize(
    ("data", "label"),
    [
        (b"O1\tremote\th\tr" + b"x" * wire.MAX_DATAGRAM, "oversized"),
        (b"O1\tremote\th", "malformed"),
        (b"O2\tremote\th\tr", "malformed"),
        (b"O1\tremote\t\xff\tr", "malformed"),
        (b"O1\tteleported\th\tr", "unknown-outcome"),
        (b"", "malformed"),
    ],
)
def test_bad_datagrams_are_labelled(data: bytes, label: str) -> None:
    with pytest.raises(wire.OutcomeError, match=label):
        wire.decode(data)


def test_failed_attempt_record() -> None:
    data = wire.encode_attempt("h:1", "refused: no")
    assert wire.decode(data) == (wire.ATTEMPT, "h:1", "refused: no")
    with pytest.raises(wire.OutcomeError, match="unknown-outcome"):
        wire.decode(b"O1\tattempt\th\tr")  # only an F1 record is an attempt


def test_failed_attempts_are_counted_per_host_and_kind() -> None:
    counts = outcomes.OutcomeCounts(Clock())
    counts.add(0, wire.ATTEMPT, "a:1", "refused: x")
    counts.add(0, wire.ATTEMPT, "a:1", "refused: y")
    counts.add(0, wire.ATTEMPT, "a:1", "connect failed")
    assert counts.attempts == {("a:1", "refused"): 2, ("a:1", "error"): 1}
    assert sum(counts.totals().values()) == 0, "an attempt is not a compile"
    for i in range(outcomes.MAX_KEYS + 5):
        counts.add(0, wire.ATTEMPT, f"h{i}", "x")
    assert len(counts.attempts) == outcomes.MAX_KEYS + 1
    assert counts.attempts[(outcomes.OTHER, "error")] == 7


def test_unknown_outcome_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        wire.encode("teleported")


@given(st.binary(max_size=2 * wire.MAX_DATAGRAM))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.OutcomeError:
        pass


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MESHCC_SOCKET": "/x/y.sock"},
        {"XDG_RUNTIME_DIR": "/run/user/1000/"},
        {"XDG_RUNTIME_DIR": "relative"},
    ],
)
def test_client_looks_where_the_control_client_looks(env: dict[str, str]) -> None:
    assert client_outcome.control_paths(env) == control.client_socket_paths(env=env)
    assert client_outcome.ROOT_SOCKET == control.ROOT_SOCKET


# ---------------------------------------------------------------- daemon-side counts


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_per_uid_rate_limit_drops_and_counts() -> None:
    clock = Clock()
    counts = outcomes.OutcomeCounts(clock)
    burst = int(outcomes.BURST)
    accepted = sum(counts.add(1000, "remote", "h", "") for _ in range(burst + 50))
    assert accepted == burst
    assert counts.dropped == {"rate": 50}
    assert counts.add(1001, "local", "", "-E"), "another user has a bucket of their own"
    clock.t += 1.0
    assert sum(counts.add(1000, "remote", "h", "") for _ in range(5000)) == int(outcomes.RATE)
    snap = counts.snapshot()
    assert snap["uids"]["1000"] == {
        "accepted": burst + int(outcomes.RATE),
        "dropped": 50 + 5000 - int(outcomes.RATE),
    }


def test_distinct_reasons_are_capped_but_totals_stay_exact() -> None:
    counts = outcomes.OutcomeCounts(Clock())
    for i in range(outcomes.MAX_KEYS + 100):
        counts.add(0, "fallback", "", f"reason {i}")
    assert len(counts.counts) == outcomes.MAX_KEYS + 1
    assert counts.counts[("fallback", "", outcomes.OTHER)] == 100
    assert counts.totals()["fallback"] == outcomes.MAX_KEYS + 100


def test_the_largest_query_reply_fits_one_datagram() -> None:
    counts = outcomes.OutcomeCounts(Clock())
    for i in range(outcomes.MAX_KEYS + 10):
        counts.add(i % 50, "fallback", "h" * wire.MAX_HOST, f"{i} " + "\u00e9" * wire.MAX_REASON)
        counts.add(i % 50, wire.ATTEMPT, f"{i}" + "h" * wire.MAX_HOST, "x")
    data = outcomes._fit({"ok": True, **counts.snapshot()})
    assert len(data) <= outcomes.MAX_REPLY
    reply = json.loads(data)
    assert reply["totals"]["fallback"] == outcomes.MAX_KEYS + 10
    assert reply.get("truncated") is True or len(reply["entries"]) == outcomes.MAX_KEYS + 1


def test_tracked_uids_are_capped() -> None:
    counts = outcomes.OutcomeCounts(Clock())
    for uid in range(outcomes.MAX_UIDS + 10):
        counts.add(uid, "local", "", "")
    assert len(counts.uids) == outcomes.MAX_UIDS
    assert counts.totals()["local"] == outcomes.MAX_UIDS + 10


def test_reset_zeroes_the_counts() -> None:
    counts = outcomes.OutcomeCounts(Clock())
    counts.add(0, "busy", "", "all busy")
    counts.drop("malformed")
    counts.reset()
    assert sum(counts.totals().values()) == 0 and counts.snapshot()["dropped"] == {}


# ---------------------------------------------------------------- exposition


def test_label_values_are_escaped_for_both_parsers() -> None:
    nasty = 'a "quoted" back\\slash\nnewline'
    for om in (False, True):
        out = Exposition(om)
        out.family("x_jobs", "counter", "help", [("_total", (("reason", nasty),), 3)])
        text = out.text()
        parse = parse_openmetrics if om else parse_prometheus
        (fam,) = list(parse(text))
        (sample,) = fam.samples
        assert sample.labels == {"reason": nasty} and sample.value == 3


def test_histogram_is_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (math.inf, 4)]
    assert h.count == 4 and h.sum == pytest.approx(7.65)


def test_accept_header_picks_openmetrics() -> None:
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    assert wants_openmetrics(prometheus_accept)
    assert not wants_openmetrics("text/plain") and not wants_openmetrics("")


def _telemetry() -> Telemetry:
    server = type("S", (), {})()
    server.stats = JobStats()
    server.stats.record("compile_ok", 1000, 2000, 0.2)
    server.stats.record("refused", 100, 0, None)
    server.cache_counts = {"hit": 2, "miss": 1, "uncached": 0}
    server.shed_count = 0
    counts = outcomes.OutcomeCounts(Clock())
    counts.add(0, "remote", "10.0.0.2:3632", "")
    counts.add(0, "local", "", "-E only preprocesses")
    counts.drop("oversized")
    probes = ProbeStats()
    probes.observe(ProbeTarget("peer-a", "10.0.0.2", 3632, 1.0), True, 0.002)
    return Telemetry(
        lambda: control.StatusReply(version="9.9", node="n1", jobs=4, running=1, peers=0),
        server=server,
        ccache=True,
        outcomes=counts,
        probes=probes,
    )


def _samples(text: str, om: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parse = parse_openmetrics if om else parse_prometheus
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in parse(text)
        for s in fam.samples
    }


@pytest.mark.parametrize("om", [False, True])
def test_exposition_parses_with_expected_values(om: bool) -> None:
    samples = _samples(_telemetry().exposition(openmetrics=om), om)
    assert samples[("meshcc_jobs_total", (("outcome", "compile_ok"),))] == 1
    assert samples[("meshcc_jobs_total", (("outcome", "refused"),))] == 1
    assert samples[("meshcc_received_bytes_total", ())] == 1100
    assert samples[("meshcc_sent_bytes_total", ())] == 2000
    assert samples[("meshcc_compile_seconds_bucket", (("le", "0.25"),))] == 1
    assert samples[("meshcc_compile_seconds_bucket", (("le", "0.1"),))] == 0
    assert samples[("meshcc_compile_seconds_count", ())] == 1
    assert samples[("meshcc_ccache_jobs_total", (("result", "hit"),))] == 2
    assert samples[("meshcc_jobs_running", ())] == 1
    assert samples[("meshcc_build_info", (("node", "n1"), ("version", "9.9")))] == 1
    key = ("meshcc_client_jobs_total", (("host", "10.0.0.2:3632"), ("outcome", "remote")))
    assert samples[key] == 1
    assert samples[("meshcc_client_reports_dropped_total", (("reason", "oversized"),))] == 1
    assert len(COMPILE_BUCKETS) + 1 == sum(
        1 for name, _ in samples if name == "meshcc_compile_seconds_bucket"
    )


def test_probe_wrapper_records_rtt_and_failures() -> None:
    stats = ProbeStats()
    answers = iter([ProbeResult(True, None, 0.003), ProbeResult(False, "refused", final=True)])

    async def probe(target: ProbeTarget) -> ProbeResult:
        return next(answers)

    wrapped = stats.wrap(probe)
    target = ProbeTarget("k", "10.0.0.9", 3632, 1.0)

    async def go() -> list[Any]:
        return [await wrapped(target), await wrapped(target)]

    results = asyncio.run(go())
    assert [r.ok for r in results] == [True, False]
    p = stats.peers["k"]
    assert (p.ok, p.failed, p.hist.count) == (1, 1, 1)
    stats.prune(set())
    assert not stats.peers


def test_status_json_is_derived_from_the_status_reply() -> None:
    doc = _telemetry().status_json()
    reply = control.StatusReply(version="9.9", node="n1", jobs=4, running=1).to_message()
    for key in set(reply) - {"ok", "peers"}:
        assert doc[key] == reply[key], key
    assert doc["schema"] == 1
    served = doc["served"]
    assert isinstance(served, dict) and served["jobs"]["compile_ok"] == 1
    assert doc["ccache"] == {"hit": 2, "miss": 1, "uncached": 0}
    clients = doc["clients"]
    assert isinstance(clients, dict) and clients["totals"]["remote"] == 1


# ---------------------------------------------------------------- the client's classification


class _Pool:
    def __init__(self, **kw: object) -> None:
        self.local_share: object | None = None
        self.local_reason = ""
        self.daemon_failure = ""
        self.__dict__.update(kw)


class _Host:
    host = "10.0.0.7"
    port = 3632


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    got: list[tuple[str, str, str]] = []
    monkeypatch.setattr(client_outcome, "report", lambda *a: got.append(a))
    monkeypatch.setattr(client_outcome, "_send", lambda *a: got.append(("attempt", *a[1:])))
    monkeypatch.setattr(client_outcome, "_last_failure", None)
    return got


def test_a_refusal_is_reported_with_the_servers_reason(sent: list[Any]) -> None:
    from meshcc.client.decisions import CompileLocally

    client_outcome.failed_on(_Host(), "refused: -fplugin= is not allowed for x.c")
    client_outcome.compiled_locally(CompileLocally("...", True), _Pool(), "x.c")
    assert sent == [
        ("attempt", "10.0.0.7:3632", "refused: -fplugin= is not allowed for x.c"),
        ("refused", "10.0.0.7:3632", "-fplugin= is not allowed for (source)"),
    ]


def test_a_transport_failure_is_a_fallback_on_that_host(sent: list[Any]) -> None:
    from meshcc.client.decisions import CompileLocally

    client_outcome.failed_on(_Host(), "connect failed: Connection refused")
    client_outcome.compiled_locally(CompileLocally("...", True), _Pool(), "x.c")
    assert sent[1:] == [("fallback", "10.0.0.7:3632", "connect failed: Connection refused")]


def test_the_daemons_answers_are_share_or_fallback(sent: list[Any]) -> None:
    from meshcc.client.decisions import CompileLocally, Fail

    act = CompileLocally("meshcc daemon: ... (for y.c); compiling locally", False)
    client_outcome.compiled_locally(
        act, _Pool(local_share=object(), local_reason="all busy"), "y.c"
    )
    client_outcome.compiled_locally(act, _Pool(local_reason="no peers"), "y.c")
    client_outcome.compiled_locally(act, _Pool(daemon_failure="daemon gone"), "y.c")
    client_outcome.compiled_locally(act, None, "y.c")
    client_outcome.compiled_locally(Fail(109, "no hosts for y.c"), None, "y.c")
    assert sent == [
        ("share", "", "meshcc daemon: all busy"),
        ("fallback", "", "meshcc daemon: no peers"),
        ("fallback", "", "daemon gone"),
        ("fallback", "", "meshcc daemon: ... (for (source)); compiling locally"),
        ("failed", "", "no hosts for (source)"),
    ]


def test_file_names_leave_the_local_reasons() -> None:
    argv = ["gcc", "-o", "prog", "main.o", "lib/util.o", "-lm"]
    assert client_outcome.without_files("main.o is a link input", argv) == "FILE is a link input"
    two = ["gcc", "-c", "a.c", "b.c"]
    assert client_outcome.without_files("more than one source file (a.c, b.c)", two) == (
        "more than one source file (FILE, FILE)"
    )
    assert client_outcome.without_files("-E only preprocesses", ["gcc", "-E", "x.c"]) == (
        "-E only preprocesses"
    )
