"""``meshcc hosts --explain`` shows each peer's live load, from real daemons (issue 11).

A mixed LAN of network namespaces (tests/netns.py):

* ``s`` — IPv6-only, ``--jobs 2``, its gcc a wrapper around the real one that, once the
  test arms it, holds every compile until released: a compile is then *running* there
  for as long as the test needs to look at it;
* ``a`` — dual-stack, offers only a gcc reporting another version, so its client's
  compile (``DISTCC_FALLBACK=0``) can only go to ``s``, over IPv6;
* ``n`` — a meshcc daemon whose live-load channel cannot start (its UDP port is taken):
  it announces no ``load``, so ``a`` only has its mDNS hint.

While the compile is held on ``s``, ``a``'s ``meshcc hosts --explain`` shows ``s`` with
one compile running, a free slot fewer than its jobs, and the lease held by ``a``'s client
out of the share ``s`` promised; ``n`` shows its announced hint (``~N/J``) and dashes; the
legend says what each column is. Released, the compile finishes, and ``s`` now shows a
measured speed. Waits are bounds against hangs, nothing is timed.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN
from meshd import Meshd, mismatched_gcc, private_dir, trusted_dir
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

# The real gcc; a compile (-c) waits while ARMED exists and GO does not (60 s at most).
HOLDING_GCC = """#!/bin/sh
case " $* " in
  *" -c "*)
    n=0
    while [ -e {dir}/armed ] && [ ! -e {dir}/go ] && [ $n -lt 1200 ]; do
      sleep 0.05; n=$((n + 1))
    done ;;
esac
exec /usr/bin/gcc "$@"
"""

SOURCE = "int answer(void) { return 42; }\n"
COLUMNS = ("HOST", "ADDRESS", "TOOLCHAINS", "USE", "FREE", "RUN", "WAIT", "SPEED", "SHARE")


def _address(cell: str) -> str:
    """``[fd77::d]:3632/2,lzo``, ``10.77.0.13:3632/4`` or ``10.77.0.13, fe80::…`` -> the
    first address."""
    if cell.startswith("["):
        return cell[1 : cell.index("]")]
    first = cell.split(", ", maxsplit=1)[0]
    return first.split(":", maxsplit=1)[0] if "." in first else first


def _rows(text: str) -> dict[str, dict[str, str]]:
    """The --explain table by address: {address: {column: cell}}."""
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("HOST "))
    starts = [lines[head].index(c) for c in (*COLUMNS, "REASON")]
    rows = {}
    for ln in lines[head + 1 :]:
        if ln.startswith("DISTCC_HOSTS:"):
            break
        cells = [ln[a:b].strip() for a, b in itertools.pairwise(starts)]
        row = dict(zip(COLUMNS, cells, strict=True))
        rows[_address(row["ADDRESS"])] = row
    return rows


def test_explain_shows_live_load_of_each_peer(lan: Callable[..., Lan], tmp_path: Path) -> None:
    net = lan()
    ha = net.add_host("a", stack="dual")
    hs = net.add_host("s", stack="ipv6")
    hn = net.add_host("n")
    tools = trusted_dir("mcc-hold-")  # no "meshcc" in the script: that is a wrapper
    gcc = tools / "gcc"
    gcc.write_text(HOLDING_GCC.format(dir=tools))
    gcc.chmod(0o755)
    odd_gcc = mismatched_gcc(trusted_dir("meshcc-odd-"), "12.9.0")
    # n's live-load channel needs UDP 3632: hold it, so n runs without one.
    squat = hn.python_popen(
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.bind(('::', 3632)); print('bound', flush=True); time.sleep(600)",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert netns.readline(squat, 20).strip() == "bound"

    work = private_dir("meshcc-hostsload-")
    a = Meshd(work, ha, "--compiler", str(odd_gcc), "--jobs", "3", name="a")
    s = Meshd(work, hs, "--compiler", str(gcc), "--jobs", "2", name="s")
    n = Meshd(work, hn, "--compiler", str(odd_gcc), "--jobs", "4", name="n")
    daemons = [a, s, n]
    compile_proc: subprocess.Popen[str] | None = None
    try:
        for m in daemons:
            m.start(wait=False)
        for m in daemons:
            m.wait_ready()
        assert "no live-load channel" in n.log_text(), n.log_text()[-2000:]

        def explain() -> str:
            p = a.cli("hosts", "--cc", "gcc", "--explain", inside=True)
            assert "Traceback" not in p.stderr, p.stderr
            return p.stdout

        def s_and_n_listed() -> bool:
            rows = _rows(explain())
            srow = rows.get(hs.address, {})
            return srow.get("RUN") == "0" and srow.get("USE") == "in" and hn.address in rows

        netns.wait_for(s_and_n_listed, 30, 0.3, "a to list s (up, with live load) and n")
        text = explain()
        assert re.search(r"^this box:  3/3 free, 0 running, 0 waiting, \? per job;", text, re.M), (
            text
        )
        rows = _rows(text)
        assert rows[hs.address]["USE"] == "in" and rows[hs.address]["SPEED"] == "?", text
        assert rows[hs.address]["FREE"] == "2/2" and rows[hs.address]["SHARE"].startswith("0/")
        # n: no live load, its mDNS hint (4 jobs, all free) and dashes.
        assert rows[hn.address]["USE"] == "out", text  # gcc 12.9.0 is not ours
        assert rows[hn.address]["FREE"] == "~4/4", text
        assert {rows[hn.address][c] for c in ("RUN", "WAIT", "SPEED", "SHARE")} == {"-"}
        assert "load:      FREE free/jobs, RUN compiles running" in text
        assert "~N/J: no live load" in text and "order:" in text

        # A compile from a lands on s (IPv6) and is held there: s shows it running.
        (tools / "armed").touch()
        src = tmp_path / "answer.c"
        src.write_text(SOURCE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        (tmp_path / "dd").mkdir()
        env.update(
            DISTCC_DIR=str(tmp_path / "dd"),
            DISTCC_FALLBACK="0",
            MESHCC_SOCKET=str(a.socket),
            PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
        )
        compile_proc = ha.popen(
            ["meshcc-gcc", "-c", str(src), "-o", str(tmp_path / "answer.o")],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )

        def s_running() -> dict[str, str] | None:
            row = _rows(explain()).get(hs.address)
            return row if row is not None and row["RUN"] == "1" else None

        row = netns.wait_for(s_running, 30, 0.3, "a to show s running the held compile")
        assert row["FREE"] == "1/2", row  # one of its 2 slots taken
        held, _, share = row["SHARE"].partition("/")
        assert held == "1" and int(share) >= 1, row  # a's client holds it, of a's share

        # Released: the compile finishes on s, which has now measured its speed.
        (tools / "go").touch()
        _, err = compile_proc.communicate(timeout=60)
        assert compile_proc.returncode == 0, err
        assert (tmp_path / "answer.o").stat().st_size > 0

        def s_measured_and_free() -> dict[str, str] | None:
            # The speed and the running count ride with s's next record; a tells s that
            # its lease ended a moment later (the release hold), and s's answer frees the
            # slot: wait for both rather than read the first record that shows the speed.
            row = _rows(explain()).get(hs.address)
            if row is None or row["SPEED"] in ("?", "-") or row["FREE"] != "2/2":
                return None
            return row

        row = netns.wait_for(s_measured_and_free, 20, 0.3, "a to show s measured and free")
        assert re.fullmatch(r"\d+(\.\d)? [kM]?B/s", row["SPEED"]), row
        assert row["RUN"] == "0" and row["SHARE"].startswith("0/"), row
    finally:
        (tools / "go").touch()
        if compile_proc is not None and compile_proc.poll() is None:
            compile_proc.kill()
            compile_proc.wait()
        for m in daemons:
            m.stop()
        squat.kill()
        squat.wait()
        for m in daemons:
            if "Traceback" in m.log_text():
                pytest.fail(f"{m.name} logged a traceback:\n{m.log_text()}")
        shutil.rmtree(work, ignore_errors=True)


def test_explain_without_discovery_says_there_is_no_live_load(lan: Callable[..., Lan]) -> None:
    """A daemon with discovery off has no load channel: --explain gives this box's jobs
    and says why there are no live figures (run inside a namespace: a `meshcc hosts`
    that found no daemon would browse)."""
    net = lan()
    h = net.add_host("solo")
    work = private_dir("meshcc-hostsload-solo-")
    d = Meshd(work, h, "--no-discovery", "--jobs", "2", name="solo")
    try:
        d.start()
        p = d.cli("hosts", "--cc", "gcc", "--explain", inside=True)
        assert p.returncode == 1, p  # no peers: an empty line
        assert "source:    daemon on" in p.stdout, p.stdout
        assert (
            "this box:  2 jobs, 0 running (no live-load channel: discovery off); its clients "
            "hold 0 leases, 0 waiting" in p.stdout
        ), p.stdout
        assert "(no peers seen)" in p.stdout and "load:" not in p.stdout, p.stdout
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)
