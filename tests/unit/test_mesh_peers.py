"""meshcc.mesh.peers (state machine, fake clock) and liveness (asyncio loop, fake probes; the
real TCP probe: integration/test_mesh_tcp_probe.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from meshcc.mesh.liveness import LivenessLoop
from meshcc.mesh.peers import Liveness, LivenessTimings, PeerTable, ProbeTarget
from meshcc.mesh.records import PeerKind, PeerRecord, ToolchainInfo

GCC = ToolchainInfo("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", ("gcc",))
T = LivenessTimings(jitter=0.0)


class Clock:
    """Monotonic and wall clocks that only move when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def rec(nid: str = "aaaaaa", addr: str = "10.0.0.2", port: int = 3632, **kw: object) -> PeerRecord:
    args: dict[str, object] = {
        "key": f"m:{nid}",
        "kind": PeerKind.MESHCC,
        "instance": f"meshcc@h-{nid}._meshcc._tcp.local.",
        "host": f"h-{nid}",
        "addresses": (addr,),
        "port": port,
        "cpus": 4,
        "jobs": 6,
        "toolchains": (GCC,),
        "node_id": nid,
        "protocols": (1, 2),
        "caps": frozenset({"lzo"}),
    }
    args.update(kw)
    return PeerRecord(**args)  # type: ignore[arg-type]


def distcc_rec(addr: str = "10.0.0.2", port: int = 3632) -> PeerRecord:
    return rec(
        key="d:distcc@h._distcc._tcp.local.",
        kind=PeerKind.DISTCC,
        node_id=None,
        instance="distcc@h._distcc._tcp.local.",
        addr=addr,
        port=port,
        verified=False,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(clock: Clock) -> PeerTable:
    return PeerTable(T, clock=clock, wallclock=clock.wall, rng=random.Random(1))


def probe_all(table: PeerTable, ok: bool, detail: str | None = None) -> list[ProbeTarget]:
    targets = table.due()
    for target in targets:
        table.probe_done(target, ok, None if ok else (detail or "connection refused"), 0.001)
    return targets


def state(table: PeerTable, key: str = "m:aaaaaa") -> Liveness:
    s = table.state(key)
    assert s is not None
    return s.liveness


def test_new_peer_is_pending_until_a_probe_succeeds(table: PeerTable) -> None:
    assert table.upsert(rec())
    assert state(table) is Liveness.PENDING
    [target] = probe_all(table, ok=True)
    assert (target.host, target.port, target.timeout_s) == ("10.0.0.2", 3632, T.connect_timeout_s)
    assert state(table) is Liveness.UP
    assert table.due() == []  # nothing until the next interval


def test_kill9_is_noticed_within_10s_even_when_probes_time_out(
    table: PeerTable, clock: Clock
) -> None:
    """Worst case: the peer dies right after a good probe and every probe takes the timeout."""
    table.upsert(rec())
    probe_all(table, ok=True)
    killed = clock()
    while state(table) is not Liveness.DOWN:
        nxt = table.next_wakeup()
        assert nxt is not None
        clock.advance(max(0.0, nxt - clock()))
        targets = table.due()
        clock.advance(T.connect_timeout_s)  # the connect times out
        for target in targets:
            table.probe_done(target, False, "no answer within 1s")
        assert clock() - killed <= 10.0
    s = table.state("m:aaaaaa")
    assert s is not None and s.down_detail == "no answer within 1s"
    assert s.down_since == pytest.approx(clock.wall() - (clock() - (killed + T.up_interval_s + 1)))


def test_single_failure_is_rechecked_before_declaring_down(table: PeerTable, clock: Clock) -> None:
    table.upsert(rec())
    probe_all(table, ok=True)
    clock.advance(T.up_interval_s)
    probe_all(table, ok=False)
    assert state(table) is Liveness.UP  # one blip is not death
    clock.advance(T.retry_s)
    probe_all(table, ok=True)
    assert state(table) is Liveness.UP
    s = table.state("m:aaaaaa")
    assert s is not None and s.probe_failures == 0


def test_restart_without_any_mdns_event_is_back_within_5s(table: PeerTable, clock: Clock) -> None:
    table.upsert(rec())
    probe_all(table, ok=True)
    for _ in range(30):  # long dead: many failed probes
        clock.advance(T.down_interval_s)
        probe_all(table, ok=False)
    assert state(table) is Liveness.DOWN
    restarted = clock()
    while state(table) is not Liveness.UP:
        nxt = table.next_wakeup()
        assert nxt is not None
        clock.advance(max(0.0, nxt - clock()))
        probe_all(table, ok=True)
    assert clock() - restarted <= 5.0


def test_announcement_from_a_down_peer_probes_it_now(table: PeerTable, clock: Clock) -> None:
    table.upsert(rec())
    probe_all(table, ok=False)
    assert state(table) is Liveness.DOWN
    clock.advance(0.1)
    assert table.due() == []
    table.upsert(rec(jobs=8))  # an Updated event
    assert [t.key for t in table.due()] == ["m:aaaaaa"]


def test_goodbye_removes_and_stale_probe_results_are_ignored(table: PeerTable) -> None:
    table.upsert(rec())
    [target] = table.due()
    assert table.remove("m:aaaaaa")
    assert table.probe_done(target, True) is None
    assert len(table) == 0


def test_probe_result_for_an_old_address_is_ignored(table: PeerTable) -> None:
    table.upsert(rec())
    [target] = table.due()
    table.upsert(rec(addr="10.0.0.3"))  # the peer moved while we probed
    table.probe_done(target, True)
    assert state(table) is Liveness.PENDING
    assert [t.host for t in table.due()] == ["10.0.0.3"]


def test_restarted_node_with_new_id_replaces_the_old_entry(table: PeerTable) -> None:
    table.upsert(rec("aaaaaa"))
    table.upsert(rec("bbbbbb"))  # same endpoint, new id (no MAC: random id per start)
    assert table.keys() == ["m:bbbbbb"]


def test_boxes_sharing_one_address_are_not_merged(table: PeerTable) -> None:
    table.upsert(rec("aaaaaa", addresses=("10.0.0.2", "172.17.0.1")))
    table.upsert(rec("bbbbbb", addresses=("10.0.0.3", "172.17.0.1")))  # both have docker0
    assert sorted(table.keys()) == ["m:aaaaaa", "m:bbbbbb"]


def test_a_meshcc_daemons_distcc_record_is_hidden_either_order(table: PeerTable) -> None:
    table.upsert(distcc_rec())
    assert table.keys() == ["d:distcc@h._distcc._tcp.local."]
    table.upsert(rec())
    assert table.keys() == ["m:aaaaaa"]
    assert not table.upsert(distcc_rec())
    assert table.keys() == ["m:aaaaaa"]
    table.remove("m:aaaaaa")
    assert len(table) == 0


def test_stock_distccd_elsewhere_is_kept(table: PeerTable) -> None:
    table.upsert(rec())
    table.upsert(distcc_rec(addr="10.0.0.9"))
    assert sorted(table.keys()) == ["d:distcc@h._distcc._tcp.local.", "m:aaaaaa"]


def test_peer_outside_allowed_subnets_is_never_probed(clock: Clock) -> None:
    table = PeerTable(T, clock=clock, wallclock=clock.wall, address_for=lambda r: None)
    table.upsert(rec())
    assert table.due() == []
    clock.advance(60)
    assert table.due() == []
    assert state(table) is Liveness.PENDING


def test_client_connect_failure_marks_down_at_once(table: PeerTable, clock: Clock) -> None:
    table.upsert(rec())
    probe_all(table, ok=True)
    table.report_job("m:aaaaaa", False, connect_failed=True)
    assert state(table) is Liveness.DOWN
    clock.advance(T.retry_s)
    probe_all(table, ok=True)  # re-checked quickly; it was a fluke
    assert state(table) is Liveness.UP


def test_repeated_job_failures_back_off_then_retry_longer(table: PeerTable, clock: Clock) -> None:
    table.upsert(rec())
    probe_all(table, ok=True)
    for _ in range(T.job_fail_threshold - 1):
        table.report_job("m:aaaaaa", False)
    assert not table.backed_off("m:aaaaaa")
    table.report_job("m:aaaaaa", False)
    assert table.backed_off("m:aaaaaa")
    s = table.state("m:aaaaaa")
    assert s is not None and s.job_failures == 3
    assert s.backoff_until == pytest.approx(clock.wall() + T.backoff_s)
    clock.advance(T.backoff_s + 1)
    assert not table.backed_off("m:aaaaaa")
    table.report_job("m:aaaaaa", False)  # one more failure after the period: longer back-off
    s = table.state("m:aaaaaa")
    assert s is not None and s.backoff_until == pytest.approx(clock.wall() + 2 * T.backoff_s)
    clock.advance(3 * T.backoff_s)
    table.report_job("m:aaaaaa", True)
    s = table.state("m:aaaaaa")
    assert s is not None and (s.job_failures, s.backoffs, s.backoff_until) == (0, 0, None)


def test_find_by_key_or_host_spec(table: PeerTable) -> None:
    table.upsert(rec())
    table.upsert(rec("bbbbbb", addr="fd00::3", port=4000))
    assert table.find("m:aaaaaa") == "m:aaaaaa"
    assert table.find("10.0.0.2:3632/6,lzo") == "m:aaaaaa"
    assert table.find("[fd00::3]:4000") == "m:bbbbbb"
    assert table.find("10.0.0.2:9999") is None


def test_snapshot_is_json_safe(table: PeerTable) -> None:
    import json

    table.upsert(rec())
    probe_all(table, ok=True)
    [s] = table.snapshot()
    data = json.loads(json.dumps(s.to_dict()))
    assert data["liveness"] == "up" and data["toolchains"][0]["version"] == "12.2.0"


# --------------------------------------------------------------------------- per-kind policy


def test_kill9_refused_is_down_within_2s_with_default_jitter(clock: Clock) -> None:
    """A SIGKILLed meshcc daemon on a live box: the next probe is refused, and that is final."""
    for seed in range(50):
        table = PeerTable(clock=clock, wallclock=clock.wall, rng=random.Random(seed))
        table.upsert(rec())
        probe_all(table, ok=True)
        killed = clock()  # right after a good probe: the worst case
        while state(table) is not Liveness.DOWN:
            nxt = table.next_wakeup()
            assert nxt is not None
            clock.advance(max(0.0, nxt - clock()))
            for target in table.due():
                table.probe_done(target, False, "connection refused", final=True)
        assert clock() - killed <= 2.0 - 0.5  # room for an RTT and the poll of a listing
        s = table.state("m:aaaaaa")
        assert s is not None and s.probe_failures == 1


def test_timeouts_still_need_two_failures(table: PeerTable, clock: Clock) -> None:
    table.upsert(rec())
    probe_all(table, ok=True)
    clock.advance(T.up_interval_s)
    probe_all(table, ok=False, detail="no answer within 1s")
    assert state(table) is Liveness.UP
    clock.advance(T.retry_s)
    probe_all(table, ok=False, detail="no answer within 1s")
    assert state(table) is Liveness.DOWN


def test_probe_method_follows_the_ping_capability(table: PeerTable) -> None:
    table.upsert(rec("aaaaaa", "10.0.0.2", caps=frozenset({"lzo", "errm", "ping"})))
    table.upsert(rec("bbbbbb", "10.0.0.3"))  # an older meshcc: connect + close
    methods = {t.key: t.method for t in table.due()}
    assert methods == {"m:aaaaaa": "ping", "m:bbbbbb": "connect"}


def test_probe_rate_is_bounded_on_a_big_lan(clock: Clock) -> None:
    """300 meshcc peers: this daemon starts ≤ max_probe_rate probes a second (after the
    first round), spread out by jitter instead of in bursts."""
    table = PeerTable(clock=clock, wallclock=clock.wall, rng=random.Random(3))
    for i in range(300):
        table.upsert(rec(f"{i:06x}", f"10.0.{i // 250}.{i % 250 + 1}"))
    probe_all(table, ok=True)  # the first round: everybody at once
    per_second: dict[int, int] = {}
    start = clock()
    while clock() - start < 60:
        clock.advance(0.01)
        n = len(probe_all(table, ok=True))
        second = int(clock() - start)
        per_second[second] = per_second.get(second, 0) + n
    busiest = max(per_second.values())
    assert busiest <= table.timings.max_probe_rate * 1.1 + 1  # the bucket's burst
    assert sum(per_second.values()) >= 60 * 300 / (300 / table.timings.max_probe_rate) * 0.7


def test_stock_distccd_is_never_probed(table: PeerTable, clock: Clock) -> None:
    table.upsert(distcc_rec())
    assert state(table, "d:distcc@h._distcc._tcp.local.") is Liveness.UP  # on its announcement
    for _ in range(600):
        assert table.due() == []
        clock.advance(1.0)
    assert table.next_wakeup() is None
    s = table.state("d:distcc@h._distcc._tcp.local.")
    assert s is not None and not s.confirmed


def test_stock_distccd_connect_failure_then_readmitted_with_backoff(
    table: PeerTable, clock: Clock
) -> None:
    key = "d:distcc@h._distcc._tcp.local."
    table.upsert(distcc_rec())
    periods = []
    for _ in range(5):
        table.report_job(key, False, connect_failed=True)
        assert state(table, key) is Liveness.DOWN
        failed = clock()
        while state(table, key) is Liveness.DOWN:
            nxt = table.next_wakeup()
            assert nxt is not None
            clock.advance(max(0.0, nxt - clock()))
            assert table.due() == []  # re-admitted on trust: never a connection
        periods.append(clock() - failed)
    assert periods == [60.0, 120.0, 240.0, 480.0, 600.0]
    table.report_job(key, True)  # a job got through: the back-off starts over
    table.report_job(key, False, connect_failed=True)
    nxt = table.next_wakeup()
    assert nxt is not None and nxt - clock() == 60.0


def test_stock_distccd_new_announcement_readmits_at_once(table: PeerTable) -> None:
    key = "d:distcc@h._distcc._tcp.local."
    table.upsert(distcc_rec())
    table.report_job(key, False, connect_failed=True)
    assert state(table, key) is Liveness.DOWN
    table.upsert(distcc_rec())  # the same record again (a cache refresh): no news
    assert state(table, key) is Liveness.DOWN
    table.upsert(distcc_rec(addr="10.0.0.7"))  # it moved: back at once
    assert state(table, key) is Liveness.UP


def test_full_table_evicts_announced_only_before_confirmed(clock: Clock) -> None:
    table = PeerTable(LivenessTimings(max_peers=2, jitter=0.0), clock=clock, wallclock=clock.wall)
    table.upsert(rec())
    probe_all(table, ok=True)  # confirmed by a probe
    table.upsert(distcc_rec(addr="10.0.0.9"))  # announced only
    assert table.upsert(rec("bbbbbb", "10.0.0.3"))
    assert sorted(table.keys()) == ["m:aaaaaa", "m:bbbbbb"]


# --------------------------------------------------------------------------- asyncio driver


def test_liveness_loop_drives_probes_and_reports_changes() -> None:
    fast = LivenessTimings(up_interval_s=0.02, retry_s=0.01, down_interval_s=0.02, jitter=0.0)
    alive = {"10.0.0.2": True}
    calls: list[str] = []
    changes: list[tuple[str, Liveness | None]] = []

    async def fake_probe(target: ProbeTarget) -> tuple[bool, str | None, float]:
        calls.append(target.host)
        return alive[target.host], None if alive[target.host] else "connection refused", 0.001

    async def main() -> None:
        table = PeerTable(fast)
        loop = LivenessLoop(table, fake_probe, on_change=lambda k, s: changes.append((k, s)))
        task = asyncio.create_task(loop.run())
        table.upsert(rec())
        loop.wake()

        async def until(want: Liveness) -> None:
            for _ in range(500):
                s = table.state("m:aaaaaa")
                if s is not None and s.liveness is want:
                    return
                await asyncio.sleep(0.005)
            pytest.fail(f"never {want}")

        await until(Liveness.UP)
        alive["10.0.0.2"] = False
        await until(Liveness.DOWN)
        alive["10.0.0.2"] = True
        await until(Liveness.UP)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert [s for _, s in changes] == [Liveness.UP, Liveness.DOWN, Liveness.UP]
    assert len(calls) >= 4


def test_liveness_loop_never_probes_stock_distccd() -> None:
    """The driver only ever gets meshcc targets: a stock distccd is up on its announcement,
    down on a client's connect failure, and back on trust, without a single probe."""
    fast = LivenessTimings(
        up_interval_s=0.02, retry_s=0.01, down_interval_s=0.02, distcc_readmit_s=0.05, jitter=0.0
    )
    calls: list[ProbeTarget] = []

    async def fake_probe(target: ProbeTarget) -> tuple[bool, str | None, float]:
        calls.append(target)
        return True, None, 0.001

    async def main() -> None:
        table = PeerTable(fast)
        loop = LivenessLoop(table, fake_probe)
        task = asyncio.create_task(loop.run())
        table.upsert(rec(caps=frozenset({"ping"})))
        table.upsert(distcc_rec(addr="10.0.0.9"))
        loop.wake()
        key = "d:distcc@h._distcc._tcp.local."
        await asyncio.sleep(0.1)
        table.report_job(key, False, connect_failed=True)
        loop.wake()
        assert state(table, key) is Liveness.DOWN
        for _ in range(200):
            await asyncio.sleep(0.005)
            if state(table, key) is Liveness.UP:
                break
        assert state(table, key) is Liveness.UP  # re-admitted on trust
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert calls and {(t.host, t.method) for t in calls} == {("10.0.0.2", "ping")}


def test_records_version_moves_with_the_records_only() -> None:
    """What is built from the records alone (the load channel's peers) is rebuilt when
    this moves: on every change of an entry's record or of the set of entries, never on a
    probe or an unchanged re-announcement."""
    clock = Clock()
    table = PeerTable(T, clock=clock, wallclock=clock.wall)
    seen = [table.records_version]

    def moved() -> bool:
        seen.append(table.records_version)
        return seen[-1] != seen[-2]

    table.upsert(rec("aaaaaa"))
    assert moved()
    table.upsert(rec("aaaaaa"))  # the same announcement again
    assert not moved()
    (target,) = table.due()
    table.probe_done(target, True, None, 0.001)
    assert not moved()
    table.upsert(rec("aaaaaa", jobs=8))
    assert moved()
    table.upsert(distcc_rec("10.0.0.9"))  # a stock distccd at another endpoint
    assert moved()
    table.upsert(rec("bbbbbb", addr="10.0.0.3"))
    assert moved()
    assert table.remove("m:bbbbbb")
    assert moved()
    assert not table.remove("m:bbbbbb")
    assert not moved()


def test_a_peer_heard_on_the_load_channel_is_probed_rarely(clock: Clock, table: PeerTable) -> None:
    """Records every half second stand in for the 1 s probes of an UP peer: one probe
    every heard_probe_s (its RTT, its compile port) instead of ten."""
    table.upsert(rec())
    assert len(probe_all(table, True)) == 1
    probes = 0
    for _ in range(int(T.heard_probe_s / 0.5) - 1):  # just under heard_probe_s
        clock.advance(0.5)
        table.heard_from("m:aaaaaa")
        probes += len(probe_all(table, True))
    assert probes == 0
    for _ in range(4):
        clock.advance(0.5)
        table.heard_from("m:aaaaaa")
        probes += len(probe_all(table, True))
    assert probes == 1  # heard_probe_s after the last probe: one real probe
    assert state(table) is Liveness.UP


def test_when_the_records_stop_the_probe_comes_an_interval_after_the_last(
    clock: Clock, table: PeerTable
) -> None:
    """kill -9: no more records; the first probe is due up_interval_s (+ jitter) after the
    last one, as it would be without the channel."""
    table.upsert(rec())
    probe_all(table, True)
    for _ in range(3):
        clock.advance(0.5)
        table.heard_from("m:aaaaaa")
        assert probe_all(table, True) == []
    last = clock.t
    clock.advance(T.up_interval_s - 0.05)
    assert probe_all(table, False) == []  # not yet: the deferral holds to its time
    clock.advance(0.05 + T.up_interval_s * T.jitter)
    assert len(probe_all(table, False)) == 1
    assert clock.t - last <= T.up_interval_s * (1 + T.jitter)


def test_a_peer_not_yet_confirmed_is_probed_though_heard(clock: Clock, table: PeerTable) -> None:
    table.upsert(rec())
    table.heard_from("m:aaaaaa")
    assert len(table.due()) == 1  # PENDING: only a probe confirms the compile port
