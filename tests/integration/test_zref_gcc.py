"""zstd body prefixes (``zref``) end to end: real gcc, meshcc-gcc, a real meshcc daemon.

meshcc-gcc leases a loopback ``meshcc daemon`` (``--no-discovery``) through a scripted
control socket whose grants say what the daemon's mDNS record would: ``zstd`` and
``zref``. zlib's files are compiled one after another with ``MESHCC_CODEC=zstd``:

- the first job names no prefix; every later one is compressed against the body the one
  before it kept, and ``MESHCC_VERBOSE`` shows the prefix and the bytes on the wire,
  which are well under half of the same body's zstd frame without a prefix;
- every object is byte-identical to local gcc's;
- the daemon restarted between two jobs has forgotten every body: the next job's prefix is
  refused (``unknown body prefix``), it goes once more without one and succeeds, and the
  job after it uses a prefix again;
- a stock distcc 3.4 client is served by the same daemon as ever (LZO), and the kept
  bodies are in a 0700 directory per peer;
- through the real server, a kept body is only the sending address's, and a body whose
  frame was refused is never kept;
- a lease of a stock distccd (no codecs in its grant) never carries the new tokens.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import conftest
import meshcc.compression as comp
from conftest import Daemon
from meshcc.compression import kept
from meshcc.wire import codecs, control
from meshcc.wire import protocol as wire
from test_busy import _read_reply
from test_lease_client import FakeControl, fake_control, lease_env
from test_wrapper import meshcc

__all__ = ["fake_control"]  # the fixture, used here by name

GCC_ARGS = ["-O2", "-D_LARGEFILE64_SOURCE=1"]
SENT = re.compile(
    r"sent (\d+) bytes as zstd .*?, (\d+) bytes on the wire "
    r"\(zref: (?:no prefix|prefix ([0-9a-f]{8}) \((\d+) bytes\), level 3)"
)


def _grant(server: Daemon) -> Callable[[dict[str, Any]], dict[str, object]]:
    """A grant as a meshcc daemon's would be: SLOT/BUSY first (``busy``), the codecs, zref."""

    def answer(_msg: dict[str, Any]) -> dict[str, object]:
        return control.LeaseGranted(
            conftest.LOOPBACK, server.port, 1, "gcc", "", True, ("zstd", "lz4", "zref")
        ).to_message()

    return answer


def _compiles_as_local(
    client: list[str], name: str, cwd: Path, env: dict[str, str], out: Path, daemon: Daemon
) -> str:
    """``client`` (meshcc-gcc, or distcc and gcc) compiles ``name`` to ``out`` through
    ``daemon``: it must succeed and give local gcc's own object. Its stderr."""
    ref = out.with_suffix(".ref.o")
    subprocess.run(["gcc", *GCC_ARGS, "-c", name, "-o", str(ref)], cwd=cwd, check=True)
    done = subprocess.run(
        [*client, *GCC_ARGS, "-c", name, "-o", str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + daemon.diagnostics()
    assert out.read_bytes() == ref.read_bytes(), f"{name}: object differs from local gcc"
    return done.stderr


def _restart(old: Daemon) -> Daemon:
    """The same daemon (port, arguments, log) stopped and started again: it holds nothing."""
    old.stop()
    env = conftest._clean_env()
    env["TMPDIR"] = str(old.tmp_dir)
    new = conftest._spawn("meshcc", old.argv, old.workdir, old.port, old.log_path, env)
    new.tmp_dir = old.tmp_dir
    conftest._wait_listening(new)
    return new


def test_later_jobs_go_against_the_previous_body_and_survive_a_restart(
    meshcc_daemon: Callable[..., Daemon],
    client_env: dict[str, str],
    zlib_tree: Path,
    tmp_path: Path,
    fake_control: Callable[[list[Any]], FakeControl],
) -> None:
    server = meshcc_daemon()
    restarted: Daemon | None = None
    fc = fake_control([_grant(server)] * 40)  # every lease goes to the loopback daemon
    env = lease_env(client_env, fc, MESHCC_CODEC="zstd", MESHCC_VERBOSE="1", DISTCC_FALLBACK="0")

    def compile_(name: str) -> tuple[int, str | None, str]:
        """(bytes on the wire, the prefix's id if any, stderr); the object checked."""
        daemon = restarted or server
        err = _compiles_as_local([meshcc()], name, zlib_tree, env, tmp_path / f"{name}.o", daemon)
        found = SENT.search(err)
        assert found, err
        return int(found[2]), found[3], err

    def plain_zstd(name: str) -> int:
        """The same body's zstd frame without a prefix (level 3, as prefixed jobs use)."""
        pre = subprocess.run(
            ["gcc", "-E", *GCC_ARGS, name], cwd=zlib_tree, check=True, capture_output=True
        ).stdout
        return len(comp.compress("zstd", pre, 3))

    try:
        wire, prefix, _ = compile_("adler32.c")
        assert prefix is None, "a first job has nothing to refer to"
        # kept per (this end's address, peer), as the server keeps them per client address
        kept_dir = Path(client_env["DISTCC_DIR"], "zref", f"127.0.0.1-to-127.0.0.1_{server.port}")
        assert kept_dir.stat().st_mode & 0o777 == 0o700
        assert len(list(kept_dir.iterdir())) == 1

        for name in ("deflate.c", "trees.c", "gzlib.c"):
            (newest,) = sorted(kept_dir.iterdir())[-1:]
            wire, prefix, _ = compile_(name)
            assert prefix is not None and newest.name[17:25] == prefix, (newest, prefix)
            if name != "deflate.c":  # mostly the same headers as the job before
                assert wire * 2 < plain_zstd(name), (name, wire, plain_zstd(name))
        assert len(server.wait_for_jobs(4)) == 4, server.diagnostics()

        restarted = _restart(server)
        wire, prefix, err = compile_("inflate.c")
        assert "unknown body prefix" in err, err  # refused once, then sent without
        assert prefix is None, err
        assert "unknown body prefix" in restarted.log_text(), restarted.diagnostics()

        wire, prefix, err = compile_("gzwrite.c")
        assert prefix is not None and "unknown body prefix" not in err, err
        assert len(list(kept_dir.iterdir())) <= 4

        # A stock distcc 3.4 client to the same daemon: LZO as ever, same object.
        denv = dict(client_env, DISTCC_HOSTS=restarted.host_spec(lzo=True), DISTCC_FALLBACK="0")
        _compiles_as_local(
            ["distcc", "gcc"], "crc32.c", zlib_tree, denv, tmp_path / "d.o", restarted
        )
    finally:
        if restarted is not None:
            restarted.stop()
            restarted.cleanup()


def _job(port: int, request: bytes, source: str = conftest.LOOPBACK) -> list[object]:
    """Send ``request`` from ``source`` (a loopback address); the reply's events."""
    with socket.create_connection((conftest.LOOPBACK, port), 60, (source, 0)) as s:
        s.sendall(request)
        return _read_reply(s, 1)


def _refused(events: list[object]) -> str:
    assert isinstance(events[-1], wire.ReplyRefused), events
    return events[-1].message


def test_a_prefix_is_only_the_sending_address_and_only_a_vetted_body(
    meshcc_daemon: Callable[..., Daemon], zlib_source: Path, tmp_path: Path
) -> None:
    """Through the real server: a body kept for 127.0.0.1 cannot be named from 127.0.0.2
    (another box); a body whose frame was refused is never kept; the owner's prefixed job
    gives gcc's own object."""
    server = meshcc_daemon(allow=("127.0.0.0/8",))
    bodies, refs = {}, {}
    for name in ("adler32.c", "trees.c"):
        pre = tmp_path / (name[:-2] + ".i")
        subprocess.run(["gcc", "-E", *GCC_ARGS, zlib_source / name, "-o", pre], check=True)
        ref = tmp_path / (name[:-2] + ".o")
        subprocess.run(["gcc", "-O2", "-c", pre, "-o", ref], check=True, cwd=tmp_path)
        bodies[name], refs[name] = pre.read_bytes(), ref.read_bytes()
    head = wire.encode_request_head(1, [b"gcc", b"-O2", b"-c", b"t.c", b"-o", b"t.o"])
    zstd = codecs.encode_codec_request("zstd")
    first, second, bad = kept.new_id(), kept.new_id(), kept.new_id()

    def request(body: bytes, keep: str, prefix: str = "") -> bytes:
        return head + zstd + codecs.encode_prefix_tokens(keep, prefix) + wire.encode_source(body)

    events = _job(server.port, request(comp.compress("zstd", bodies["adler32.c"]), first))
    assert isinstance(events[-1], wire.ReplyEnd), events

    prefixed = comp.compress("zstd", bodies["trees.c"], 3, bodies["adler32.c"])
    why = _refused(_job(server.port, request(prefixed, second, first), source="127.0.0.2"))
    assert codecs.is_unknown_prefix(why), why  # another address: not found

    corrupt = bytearray(comp.compress("zstd", bodies["adler32.c"]))
    corrupt[len(corrupt) // 2] ^= 0xFF
    why = _refused(_job(server.port, request(bytes(corrupt), bad)))
    assert "corrupt zstd body" in why, why
    why = _refused(_job(server.port, request(prefixed, second, bad)))
    assert codecs.is_unknown_prefix(why), why  # a refused body was not kept

    events = _job(server.port, request(prefixed, second, first))  # the owner
    (obj,) = [e for e in events if isinstance(e, wire.ReplyObject)]
    assert comp.decompress("zstd", obj.data, 1 << 24) == refs["trees.c"]
    assert len(prefixed) * 2 < len(comp.compress("zstd", bodies["trees.c"], 3))


def test_a_stock_distccd_peer_never_sees_the_tokens(
    meshcc_daemon: Callable[..., Daemon],
    distccd: Callable[..., Daemon],
    client_env: dict[str, str],
    zlib_tree: Path,
    tmp_path: Path,
    fake_control: Callable[[list[Any]], FakeControl],
) -> None:
    """With a body kept for a meshcc peer, a lease of a stock distccd (its grant lists no
    codecs, as its mDNS record has none) still goes as distcc protocol 1: no CODC, no
    ZREF, and distccd 3.4 compiles it."""
    mesh, stock = meshcc_daemon(), distccd()

    def grant(port: int, codecs_: tuple[str, ...]) -> dict[str, object]:
        return control.LeaseGranted(
            conftest.LOOPBACK, port, 1, "gcc", "", False, codecs_
        ).to_message()

    fc = fake_control([grant(mesh.port, ("zstd", "zref")), grant(stock.port, ())])
    env = lease_env(client_env, fc, MESHCC_CODEC="zstd", MESHCC_VERBOSE="1", DISTCC_FALLBACK="0")
    for n, name in enumerate(("adler32.c", "deflate.c")):
        err = _compiles_as_local([meshcc()], name, zlib_tree, env, tmp_path / f"{n}.o", stock)
        if n == 0:
            assert "(zref: no prefix" in err, err
    assert "zref" not in err and "as zstd" not in err, err
    assert len(stock.wait_for_jobs(1)) == 1, stock.diagnostics()
    assert len(mesh.wait_for_jobs(1)) == 1, mesh.diagnostics()
