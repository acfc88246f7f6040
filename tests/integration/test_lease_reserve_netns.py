"""Reservations (meshcc issue 11, ``MESHCC_RESERVE_NEXT=1``): the next job waits in the server.

Two network namespaces (tests/netns.py): a server s1 (``meshcc daemon --jobs 1``) and a
client box c1 whose daemon runs with ``MESHCC_RESERVE_NEXT=1`` (its only compiler reports
another gcc version, so s1 is its only peer). zlib is built on c1 with ``make -j4`` and
``DISTCC_FALLBACK=0``. Sampled every few milliseconds on s1: never more than one compile
running or one job slot held (``--jobs 1``), and never more than one request waiting for
the slot (c1's one reservation), which is seen (the handover is off the critical path);
the job log shows those waits (``queue:``). The objects match a local build's.

Time bounds are only against hangs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN, copy_tree, parse_job_summaries, run
from meshd import Meshd, mismatched_gcc, private_dir, trusted_dir
from netns import Lan
from slotsample import SlotSampler
from test_build_real_project import OBJECTS_MK, TARGET, _objects

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]


def test_reservation_waits_visibly_in_the_server_and_never_beyond_one(
    lan: Callable[..., Lan], zlib_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = lan()
    hosts = {n: net.add_host(n) for n in ("c1", "s1")}
    work = private_dir("reserve-netns-")
    try:
        odd = mismatched_gcc(trusted_dir("reserve-odd-"), "12.9.9")
        s1 = Meshd(work, hosts["s1"], "--interface", "eth0", "--jobs", "1", name="s1").start()
        monkeypatch.setenv("MESHCC_RESERVE_NEXT", "1")  # c1's daemon only (read at start)
        c1 = Meshd(work, hosts["c1"], "--interface", "eth0", "--compiler", str(odd), name="c1")
        c1.start()
        monkeypatch.delenv("MESHCC_RESERVE_NEXT")

        def assembled() -> bool:
            res = c1.cli("hosts", "--cc", "gcc", inside=True)
            return {tok.split(":")[0] for tok in res.stdout.split()} == {
                hosts["s1"].address,
                "localhost/2",
            }

        netns.wait_for(assembled, 60, 0.25, "the mesh")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)])
        ref = copy_tree(zlib_source, tmp_path / "zlib-ref")
        (ref / "objects.mk").write_text(OBJECTS_MK)
        run(["./configure"], cwd=ref, env=dict(env, CC="gcc"))
        tree = shutil.copytree(ref, tmp_path / "zlib-c1", symlinks=True)
        run(
            ["make", "-j4", "-f", "Makefile", "-f", "objects.mk", "CC=gcc", TARGET],
            cwd=ref,
            env=env,
        )
        state = tmp_path / "state"
        (state / "tmp").mkdir(parents=True)
        cenv = dict(
            env,
            DISTCC_DIR=str(state),
            TMPDIR=str(state / "tmp"),
            MESHCC_SOCKET=str(c1.socket),
            DISTCC_FALLBACK="0",
        )
        sampled = {"s1": (s1.socket, s1.proc.pid, 3632, 1)}  # type: ignore[union-attr]
        with SlotSampler(sampled, interval=0.003) as sampler:
            build = hosts["c1"].popen(
                ["make", "-j4", "-f", "Makefile", "-f", "objects.mk", "CC=meshcc-gcc", TARGET],
                cwd=tree,
                env=cenv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            out, err = build.communicate(timeout=900)
        assert build.returncode == 0, f"make exited {build.returncode}\n{out}\n{err}"
        p = sampler.peaks["s1"]
        print(f"s1 sampled peaks (--jobs 1, one reservation): {p.as_dict()}")
        assert not sampler.errors, sampler.errors[:5]
        assert p.samples > 20, p
        assert p.running <= 1 and p.slots_held <= 1, p
        assert p.slot_waiting == 1, f"the reservation must wait in s1, one at most: {p}"
        jobs = [j for j in parse_job_summaries(s1.log_text()) if j.result == "COMPILE_OK"]
        queued = sum(j.queue_ms is not None for j in jobs)
        print(f"{len(jobs)} jobs compiled on s1, {queued} of them queued there first")
        assert len(jobs) == len(_objects(ref)) and queued > 0, (len(jobs), queued)
        assert _objects(tree) == _objects(ref)
    finally:
        shutil.rmtree(work, ignore_errors=True)
