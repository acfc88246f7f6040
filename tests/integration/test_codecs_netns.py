"""Negotiated codecs end to end through the mesh (issue 12): two namespaces on a bridge.

Server box ``s`` runs a ``meshcc daemon`` (it announces ``zstd`` and ``lz4`` in its caps);
client box ``c`` runs one whose only compiler is a gcc reporting another version, so every
job of ``meshcc-gcc`` on ``c`` is leased to ``s`` (``DISTCC_FALLBACK=0``: never compiled
here). What must hold:

1. ``c``'s daemon lists ``s`` with its codecs, and a grant for ``s`` carries them.
2. The first job (nothing measured yet: the link is assumed to be 100 Mbit/s) sends its
   large ``.i`` in zstd; the object is byte-identical to a local compile.
3. Its ``done`` carried the kernel's measurement: the next grant has a measured rate,
   and ``MESHCC_VERBOSE`` shows it.
4. ``MESHCC_CODEC=lz4`` and ``none`` are honoured, byte-identical all the same.
5. With ``c``'s link shaped to 10 Mbit/s (``tc``), the measured rate falls to about
   that within a few jobs and the choice stays zstd; unshaped again, a body sent in one
   window is sent as it is once the link is measured fast.

Time bounds are only against hangs.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN, run
from meshcc.wire import control
from meshd import Meshd, mismatched_gcc, private_dir, request, trusted_dir
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

GCC_ARGS_ZLIB = ["-O2", "-D_LARGEFILE64_SOURCE=1"]
SENT = re.compile(r"sent (\d+) bytes as (\w+) \(link ([^,]+), rtt (\d+) us\)")


def _grant(c: Meshd) -> control.LeaseGranted:
    """Ask c's daemon for a lease as meshcc-gcc would, and give it back at once."""
    gcc = os.path.realpath("/usr/bin/gcc")
    with_conn = request(c.socket, control.LeaseRequest("gcc", gcc, "x.c", False).to_message())
    got = control.decode_lease_reply(with_conn)
    assert isinstance(got, control.LeaseGranted), got
    return got


def test_codecs_chosen_per_job_through_the_mesh(zlib_source: Path, tmp_path: Path) -> None:
    with Lan() as net:
        hosts = {n: net.add_host(n) for n in ("c", "s")}
        work = private_dir("codecs-netns-")
        try:
            _run(hosts, work, zlib_source, tmp_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _run(hosts: dict[str, netns.Host], work: Path, zlib_source: Path, tmp_path: Path) -> None:
    odd = mismatched_gcc(trusted_dir("codecs-odd-"), "12.9.9")
    s = Meshd(work, hosts["s"], "--interface", "eth0", "--jobs", "2", name="s").start()
    c = Meshd(
        work, hosts["c"], "--interface", "eth0", "--jobs", "1", "--compiler", str(odd), name="c"
    ).start()
    try:

        def listed() -> bool:
            res = c.cli("hosts", "--cc", "gcc", inside=True)
            return hosts["s"].address in res.stdout

        netns.wait_for(listed, 60, 0.25, "s in c's hosts line")
        caps = [set(v["peer"]["caps"]) for v in c.hosts()["verdicts"]]
        assert any({"zstd", "lz4", "zref"} <= cs for cs in caps), caps
        grant = _grant(c)  # zref: s keeps zstd bodies as prefixes (compression.prefixes)
        assert grant.codecs == ("zstd", "lz4", "zref") and grant.rate == 0, grant

        tree = tmp_path / "src"
        shutil.copytree(zlib_source, tree)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
        state = tmp_path / "state"
        (state / "tmp").mkdir(parents=True)
        env |= {
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
            "DISTCC_DIR": str(state),
            "TMPDIR": str(state / "tmp"),
            "MESHCC_SOCKET": str(c.socket),
            "DISTCC_FALLBACK": "0",
            "MESHCC_VERBOSE": "1",
        }

        def compile_(name: str, **extra: str) -> tuple[str, int, str]:
            """meshcc-gcc on c; (codec sent, bytes of .i, the link it was chosen for)."""
            out = f"{name[:-2]}.{len(list(tree.glob('*.o')))}.o"
            res = hosts["c"].run(
                ["meshcc-gcc", *GCC_ARGS_ZLIB, "-c", name, "-o", out],
                cwd=tree,
                env=env | extra,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert res.returncode == 0, res.stderr + c.log_text() + s.log_text()
            ref = tmp_path / "ref.o"
            run(["gcc", *GCC_ARGS_ZLIB, "-c", str(tree / name), "-o", str(ref)])
            assert (tree / out).read_bytes() == ref.read_bytes(), f"{name}: object differs"
            m = SENT.search(res.stderr)
            assert m is not None, res.stderr
            return m.group(2), int(m.group(1)), m.group(3)

        codec, size, link = compile_("deflate.c")
        assert (codec, link) == ("zstd", "not measured yet") and size > 50_000
        measured = _grant(c)
        assert measured.rate > 0 and measured.rtt_us > 0, measured

        assert compile_("trees.c", MESHCC_CODEC="lz4")[0] == "lz4"
        assert compile_("trees.c", MESHCC_CODEC="none")[0] == "none"

        # 10 Mbit/s both ways: the estimate follows within a few jobs, zstd stays the choice.
        for h in hosts.values():
            h.run(
                ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "10mbit",
                 "burst", "16kb", "latency", "100ms"],
                check=True,
            )  # fmt: skip
        for _ in range(5):
            assert compile_("deflate.c", MESHCC_CODEC="none")[0] == "none"  # measure it
        slow = _grant(c)
        assert 0.5e6 < slow.rate < 2.5e6, slow  # ~1.25 MB/s
        assert compile_("deflate.c")[0] == "zstd"

        for h in hosts.values():
            h.run(["tc", "qdisc", "del", "dev", "eth0", "root"], check=True)
        for _ in range(4):
            compile_("deflate.c", MESHCC_CODEC="none")
        fast = _grant(c)
        assert fast.rate > 20 * slow.rate, (slow, fast)
        assert compile_("adler32.c")[0] == "none"  # ~15 KB: one window on a fast link
    finally:
        c.stop()
        s.stop()
