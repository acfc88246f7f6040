"""``meshcc hosts --explain``'s live-load cells, from control-protocol replies (pure).

What a real daemon sends is covered by tests/integration/test_hosts_load_netns.py; here
the formatting rules: speeds, the mDNS hint for peers without live figures, where a
peer's load is found (its verdict, else the status reply's list), this box's line."""

from __future__ import annotations

import io

from meshcc.cli import hosts
from meshcc.wire import control


def _verdict(
    key: str, *, load: dict[str, object] | None = None, **peer: object
) -> dict[str, object]:
    v: dict[str, object] = {
        "peer": {"key": key, "host": key, "addresses": ["10.0.0.2"], **peer},
        "included": True,
        "reason": "matches",
        "host_spec": "10.0.0.2:3632/4,lzo",
    }
    if load is not None:
        v["load"] = load
    return v


LOAD = control.PeerLoadInfo(
    "m:b", "b", jobs=4, running=3, queued=2, free=1, speed=1_234_567, share=2, held=1, age_s=0.2
)


def test_rate_formats_bytes_per_second() -> None:
    assert [hosts.rate(n) for n in (0, 999, 1000, 850_400, 999_999, 1_250_000)] == [
        "?",
        "999 B/s",
        "1 kB/s",
        "850 kB/s",
        "1.0 MB/s",
        "1.2 MB/s",
    ]


def test_load_cells_from_the_verdict_or_the_status_list() -> None:
    status = control.StatusReply(jobs=2, free=2, loads=[LOAD])
    want = ("1/4", "3", "2", "1.2 MB/s", "1/2")
    assert hosts.load_cells(_verdict("m:b", load=LOAD.to_message()), status) == want
    # An older daemon without per-verdict load: found in the status list by peer key.
    assert hosts.load_cells(_verdict("m:b"), status) == want
    # No live record: the mDNS hint (announced free, else its limit) and dashes.
    quiet = control.StatusReply(jobs=2, free=2)
    assert hosts.load_cells(_verdict("m:c", limit=8, free=3), quiet) == ("~3/8", "-", "-", "-", "-")
    assert hosts.load_cells(_verdict("m:c", limit=8), quiet)[0] == "~8/8"
    assert hosts.load_cells(_verdict("m:c"), quiet)[0] == "-"


def test_explain_table_has_load_columns_this_box_and_legend() -> None:
    reply = control.HostsReply(
        "10.0.0.2:3632/4,lzo",
        [_verdict("m:b", load=LOAD.to_message(), limit=4), _verdict("d:x", limit=2)],
        control.StatusReply(
            discovery=True,
            jobs=6,
            running=2,
            free=3,
            speed=640_000,
            leases=1,
            slot_waiting=1,
            loads=[LOAD],
        ),
        "gcc",
    )
    out = io.StringIO()
    hosts.print_explain(reply, "test", out)
    text = out.getvalue()
    lines = text.splitlines()
    mine = "3/6 free, 2 running, 1 waiting, 640 kB/s per job; its clients hold 1 lease, 0 waiting"
    assert f"this box:  {mine}" in lines
    head = next(ln for ln in lines if ln.startswith("HOST"))
    assert head.split() == [
        "HOST",
        "ADDRESS",
        "TOOLCHAINS",
        "USE",
        "FREE",
        "RUN",
        "WAIT",
        "SPEED",
        "SHARE",
        "REASON",
    ]
    b = next(ln for ln in lines if ln.startswith("m:b "))
    assert b.split()[3:10] == ["in", "1/4", "3", "2", "1.2", "MB/s", "1/2"]
    x = next(ln for ln in lines if ln.startswith("d:x "))
    assert x.split()[3:9] == ["in", "~2/2", "-", "-", "-", "-"]
    assert any(ln.startswith("load:") for ln in lines)
    assert any("~N/J: no live load (stock distccd" in ln for ln in lines)
    assert any(ln.startswith("order:") for ln in lines)
    # Every peer with live figures: no hint line.
    reply = control.HostsReply("", [_verdict("m:b", load=LOAD.to_message())], reply.status)
    out = io.StringIO()
    hosts.print_explain(reply, "test", out)
    assert "~N/J" not in out.getvalue()
