"""Direct mode across the mesh (meshcc.cache.direct): the mesh manifest key, the mesh
record's codec and bounds, manifests surviving a restart, and two daemons sharing a record
through a home's status port (real loopback sockets, the real StatusServer).

The end-to-end proof (real gcc, zlib, two boxes in network namespaces) is
tests/integration/test_direct_mesh_netns.py."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from meshcc.cache import direct
from meshcc.cache.direct import (
    MAX_INCLUDES,
    UNMATCHABLE,
    DirectCache,
    DirectError,
    decode_mesh,
    encode_mesh,
    local_store_key,
    mesh_key,
    mesh_store_key,
    parse_put,
)
from meshcc.cache.remote import Home, push
from meshcc.cache.service import ResultCache
from meshcc.cache.store import DiskStore, Entry
from meshcc.client.direct import mesh_part
from meshcc.compiler.toolchain import Driver, Toolchain
from meshcc.daemon.metrics import Telemetry
from meshcc.daemon.status_http import StatusServer
from meshcc.wire import control

KEY = "ab" * 32
KEY_B = "cd" * 32  # the same job's local key on another box (another compiler stat)
PART = "12" * 32
TRUE = os.path.realpath(shutil.which("true") or "/bin/true")  # a "driver" with no cc1


def _payload(n_inc: int = 2, **over: object) -> bytes:
    msg: dict[str, object] = {
        "inc": [[f"/src/f{i}.h", 10 + i, 111, 222, bytes([i]) * 32] for i in range(n_inc)],
        "absent": [["/src/inc1", 333, ["f0.h", "sub/f0.h"]]],
        "dep": "a.o: a.c\n",
        "status": 0,
        "stderr": b"warning: unused\n",
        "stdout": b"",
        "obj": b"\x7fELF object",
    }
    msg.update(over)
    return control.packb(msg)


# ---------------------------------------------------------------- the keys


def test_mesh_key_depends_on_each_of_its_fields_and_nothing_else() -> None:
    base = mesh_key("id" * 32, "/usr/bin/gcc-12", 1000, PART)
    assert base == mesh_key("id" * 32, "/usr/bin/gcc-12", 1000, PART)  # any box, any time
    assert len(base) == 64 and int(base, 16) >= 0
    others = {
        mesh_key("ie" * 32, "/usr/bin/gcc-12", 1000, PART),  # other binaries
        mesh_key("id" * 32, "/opt/gcc/bin/gcc-12", 1000, PART),  # same bytes, other prefix
        mesh_key("id" * 32, "/usr/bin/gcc-12", 1001, PART),  # another user
        mesh_key("id" * 32, "/usr/bin/gcc-12", 1000, "13" * 32),  # another job
    }
    assert base not in others and len(others) == 4
    # Fields are length-prefixed: moving a character between two never gives the same key.
    assert mesh_key("a", "/b", 1, PART) != mesh_key("a/", "b", 1, PART)
    # The home keeps the record under a key of another domain than any result's.
    assert mesh_store_key(base) != base and mesh_store_key(base) != local_store_key(1000, base)
    assert local_store_key(1000, base) != local_store_key(1001, base)


def test_mesh_part_is_what_the_preprocessor_sees_and_not_the_box() -> None:
    argv = ["gcc", "-O2", "-Iinc", "-c", "a.c", "-o", "a.o"]
    env = {"PATH": "/usr/bin", "HOME": "/root", "CPATH": "/cp", "LANG": "C"}
    base = mesh_part(argv, "/w", env, "a.c", b"int x;\n")
    # Anything outside the preprocessor's view (the PATH, HOME, the box) leaves it alone:
    assert base == mesh_part(argv, "/w", dict(env, PATH="/x", HOME="/y"), "a.c", b"int x;\n")
    changed = [
        mesh_part([*argv, "-DX"], "/w", env, "a.c", b"int x;\n"),
        mesh_part(argv, "/w2", env, "a.c", b"int x;\n"),  # another directory
        mesh_part(argv, "/w", dict(env, CPATH="/cq"), "a.c", b"int x;\n"),
        mesh_part(argv, "/w", dict(env, LANG="de_DE.UTF-8"), "a.c", b"int x;\n"),
        mesh_part(argv, "/w", dict(env, SOURCE_DATE_EPOCH="1"), "a.c", b"int x;\n"),
        mesh_part(argv, "/w", env, "b.c", b"int x;\n"),
        mesh_part(argv, "/w", env, "a.c", b"int y;\n"),  # the source's bytes
    ]
    assert base not in changed and len(set(changed)) == len(changed)


# ---------------------------------------------------------------- the record codec


def test_mesh_record_round_trip_carries_the_result_and_no_stat() -> None:
    record, entry = parse_put(_payload())
    blob = encode_mesh(KEY, record, entry)
    inner = Entry.decode(mesh_store_key(KEY), blob).obj
    mesh = control.unpack_one(inner)[0]
    assert isinstance(mesh, dict)
    assert mesh["inc"] == [["/src/f0.h", 10, b"\0" * 32], ["/src/f1.h", 11, b"\1" * 32]]
    assert mesh["absent"] == [["/src/inc1", ["f0.h", "sub/f0.h"]]]  # no directory time
    got, result = decode_mesh(KEY, blob)
    assert got["inc"] == [
        ["/src/f0.h", 10, UNMATCHABLE, UNMATCHABLE, b"\0" * 32],
        ["/src/f1.h", 11, UNMATCHABLE, UNMATCHABLE, b"\1" * 32],
    ]
    assert got["absent"] == [["/src/inc1", UNMATCHABLE, ["f0.h", "sub/f0.h"]]]
    assert got["dep"] == "a.o: a.c\n" and got["foreign"] is True
    assert result == Entry(0, b"warning: unused\n", b"", b"\x7fELF object")


def test_mesh_records_that_do_not_check_out_are_refused() -> None:
    record, entry = parse_put(_payload())
    blob = encode_mesh(KEY, record, entry)
    flipped = bytearray(blob)
    flipped[-3] ^= 1
    with pytest.raises(DirectError, match="hash"):
        decode_mesh(KEY, bytes(flipped))
    with pytest.raises(DirectError, match="another key"):
        decode_mesh(KEY_B, blob)  # a record filed under another key

    def wrapped(mesh: object) -> bytes:
        return Entry(0, b"", b"", control.packb(mesh)).encode(mesh_store_key(KEY))

    ok = {"inc": [["/a.h", 1, b"\0" * 32]], "absent": [], "dep": None}
    ok.update(stderr=b"", stdout=b"", obj=b"o")
    decode_mesh(KEY, wrapped(ok))
    bad: list[object] = [
        [1, 2, 3],
        dict(ok, inc=[["/a.h", 1, 0, 0, b"\0" * 32]]),  # the local shape, with times
        dict(ok, inc=[["rel.h", 1, b"\0" * 32]]),
        dict(ok, inc=[["/a.h", 1, b"short"]]),
        dict(ok, absent=[["/d", 5, ["x.h"]]]),  # with a directory time
        dict(ok, absent=[["/d", ["/abs.h"]]]),
        dict(ok, obj=b""),  # no object: never a hit
        dict(ok, inc=[["/a.h", 1, b"\0" * 32]] * (MAX_INCLUDES + 1)),  # over the bound
    ]
    for mesh in bad:
        with pytest.raises(DirectError):
            decode_mesh(KEY, wrapped(mesh))
    with pytest.raises(DirectError):
        decode_mesh(KEY, wrapped(ok) + b"x")


# ---------------------------------------------------------------- a restart


def test_manifests_survive_a_restart_per_user(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path / "results"))
    store.open()
    rkey = DirectCache(store).put(1000, KEY, _payload())

    store = DiskStore(str(tmp_path / "results"))  # a new daemon on the same directory
    store.open()
    cache = DirectCache(store)
    assert asyncio.run(cache.lookup(1001, KEY)) is None  # another user: nothing
    got = asyncio.run(cache.lookup(1000, KEY))
    assert got is not None
    [record] = control.unpack_one(got)[0]  # type: ignore[misc]
    assert record["result"] == rkey and record["inc"][0][2:4] == [111, 222]
    assert cache.result(1000, rkey) is not None and cache.result(1001, rkey) is None
    assert cache.counts.loaded == 1


def test_a_corrupt_stored_manifest_is_discarded_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskStore(str(tmp_path / "results"))
    store.open()
    DirectCache(store).put(1000, KEY, _payload())
    path = Path(store.path(local_store_key(1000, KEY)))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    store = DiskStore(str(tmp_path / "results"))
    store.open()
    cache = DirectCache(store)
    with caplog.at_level(logging.INFO, logger="meshcc.cache"):
        assert asyncio.run(cache.lookup(1000, KEY)) is None
        assert asyncio.run(cache.lookup(1000, KEY)) is None
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "corrupt" in lines[0].getMessage()
    assert not path.exists() and cache.counts.miss == 2


# ---------------------------------------------------------------- two boxes, one home


def _toolchain() -> Toolchain:
    return Toolchain(TRUE, TRUE, ("gcc",), "12.2.0", "x86_64-linux-gnu", "2.40", Driver.GCC)


def _box(root: Path, homes: Sequence[Home]) -> DirectCache:
    store = DiskStore(str(root))
    store.open()
    results = ResultCache(store, homes=lambda tc: homes, lookup_timeout=2.0)
    return DirectCache(store, results=results, toolchains=[_toolchain()])


def test_a_second_box_gets_the_record_from_the_home_and_only_for_the_same_user(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        home = _box(tmp_path / "home", [])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert home.results is not None
        home.results.direct = home  # its figures go out with the result cache's
        reply = control.StatusReply.from_message({"node": "home", "version": "test"})
        status = StatusServer(
            None,
            lambda: reply,
            [ipaddress.ip_network("127.0.0.0/8")],
            direct=home,
            telemetry=Telemetry(lambda: reply, server=SimpleNamespace(result_cache=home.results)),
        )
        await status.start(sock)
        try:
            where = [Home("home", "127.0.0.1", port)]
            a, b = _box(tmp_path / "a", where), _box(tmp_path / "b", where)
            # Box a: a miss everywhere (the home has nothing), then its put is shared.
            assert await a.lookup(0, KEY, PART, TRUE) is None
            assert a.counts.mesh_miss == 1
            await a.put_and_share(0, KEY, _payload())
            await a.close()
            assert a.counts.mesh_pushed == 1 and home.counts.mesh_received == 1

            # Box b: its own local key for the job, the same mesh part: the home's record.
            got = await b.lookup(0, KEY_B, PART, TRUE)
            assert got is not None and b.counts.mesh_hit == 1
            [record] = control.unpack_one(got)[0]  # type: ignore[misc]
            assert record["foreign"] is True
            assert {tuple(i[2:4]) for i in record["inc"]} == {(UNMATCHABLE, UNMATCHABLE)}
            result = await asyncio.to_thread(b.result, 0, record["result"])
            assert result is not None
            assert control.unpack_one(result)[0] == {
                "status": 0,
                "stderr": b"warning: unused\n",
                "stdout": b"",
                "obj": b"\x7fELF object",
            }
            # Another user, another job, or another compiler: nothing from the mesh.
            assert await b.lookup(1000, "ee" * 32, PART, TRUE) is None
            assert await b.lookup(0, "ef" * 32, "13" * 32, TRUE) is None
            assert await b.lookup(0, "f0" * 32, PART, "/usr/bin/env") is None
            assert b.counts.mesh_hit == 1
            assert b.figures()["direct_mesh_hit"] == 1
            assert b.line().startswith("direct mode: 1 hits (1 records from home peers)")
            assert b.counts.stored == 0  # a record from the mesh is not one b recorded

            # A record that does not check out is refused over the wire too (400).
            record, entry = parse_put(_payload())
            wrong = encode_mesh(KEY, record, entry)
            assert not await push(where[0], KEY_B, wrong, 2.0, kind="direct")
            assert home.counts.mesh_received == 1

            # The home reports what it took: its status page, /status.json and /metrics.
            page = await _get(port, "/")
            assert "direct mode: 0 hits (0 records from home peers)" in page
            assert "1 received from peers" in page
            figures = json.loads(await _get(port, "/status.json"))["result_cache"]
            assert figures["direct_mesh_received"] == 1 and figures["direct_hit"] == 0
            metrics = await _get(port, "/metrics")
            assert 'meshcc_direct_mesh_total{event="received"} 1' in metrics
            assert 'meshcc_direct_lookups_total{result="hit"} 0' in metrics
        finally:
            await status.stop()

    asyncio.run(go())


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body.decode()


def test_the_home_checks_a_pushed_record_before_storing_it(tmp_path: Path) -> None:
    home = _box(tmp_path / "home", [])
    record, entry = parse_put(_payload())
    blob = encode_mesh(KEY, record, entry)
    with pytest.raises(DirectError):
        asyncio.run(home.serve_put(KEY_B, blob))  # filed under another key
    with pytest.raises(DirectError):
        asyncio.run(home.serve_put("../x", blob))
    assert asyncio.run(home.serve_get(KEY)) is None
    assert asyncio.run(home.serve_put(KEY, blob)) is True
    assert asyncio.run(home.serve_get(KEY)) == blob
    assert home.counts.mesh_received == 1


def test_a_silent_home_delays_a_miss_by_the_lookup_timeout_only(tmp_path: Path) -> None:
    async def go() -> tuple[float, DirectCache]:
        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)
            w.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            box = _box(tmp_path / "a", [Home("home", "127.0.0.1", port)])
            assert box.results is not None
            box.results.lookup_timeout = 0.2
            t = time.monotonic()
            assert await box.lookup(0, KEY, PART, TRUE) is None
            return time.monotonic() - t, box

    took, box = asyncio.run(go())
    assert took < 1.5 and box.counts.mesh_failed == 1 and box.counts.miss == 1
    assert direct.MESH_LOOKUP_CAP < 5.0  # below the client's wait for the whole answer


def test_meshcc_stats_shows_direct_mode_when_the_daemon_reports_it() -> None:
    from meshcc.cli.cache import render_figures

    plain = render_figures({"hit": 2, "miss": 1})
    assert "direct mode" not in plain
    both = render_figures(
        {"hit": 2, "direct_hit": 34, "direct_miss": 1, "direct_stored": 1}
        | {"direct_mesh_hit": 30, "direct_mesh_pushed": 1, "direct_mesh_received": 5}
    )
    first, second = both.split("\n")
    assert first == plain.replace("1 misses", "0 misses")
    assert second == (
        "direct mode (no preprocessor): 34 hits, 1 misses, 1 stored; 30 records from home "
        "peers, 1 pushed to them, 5 received from peers"
    )
