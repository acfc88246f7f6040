"""Several meshes discovering each other over real mDNS, on loopback, in a private netns.

Network rule: nothing may reach the machine's real interfaces. The outer test re-runs this
file's ``test_inner_*`` tests under ``unshare --net`` (a fresh network namespace whose only
interface is ``lo``), and every mesh there is bound to ``--interface lo`` (127.0.0.1)
explicitly. So even a bug in interface selection could not send a packet to the LAN.
Needs root and util-linux ``unshare``; skipped otherwise.

Timing limits in the inner tests are generous upper bounds that keep a broken build from
hanging, not performance assertions; the measured times are printed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from meshcc.compiler.fingerprints import ClientCompiler
from meshcc.compiler.toolchain import Driver, Toolchain
from meshcc.mesh.peers import Liveness, LivenessTimings
from meshcc.mesh.records import DistccId, PeerKind

INNER = os.environ.get("MESHCC_TEST_PRIVATE_NETNS") == "1"
HERE = Path(__file__).resolve().parent


def inner(fn: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that runs only inside the namespace (see the end of the module)."""
    return fn


FAST = LivenessTimings(
    up_interval_s=0.2, retry_s=0.05, down_interval_s=0.2, connect_timeout_s=0.5, jitter=0.0
)
GCC12 = Toolchain(
    path="/usr/bin/gcc",
    realpath="/usr/bin/x86_64-linux-gnu-gcc-12",
    names=("gcc", "cc", "gcc-12"),
    version="12.2.0",
    target="x86_64-linux-gnu",
    binutils="2.40",
    driver=Driver.GCC,
)
GCC13 = Toolchain(
    path="/usr/bin/gcc-13",
    realpath="/usr/bin/gcc-13",
    names=("gcc-13",),
    version="13.2.0",
    target="x86_64-linux-gnu",
    binutils="2.40",
    driver=Driver.GCC,
)
CLIENT12 = ClientCompiler("gcc", "12.2.0", "x86_64-linux-gnu", "2.40", "gcc")
CLIENT13 = ClientCompiler("gcc-13", "13.2.0", "x86_64-linux-gnu", "2.40", "gcc")


def test_loopback_meshes_in_private_netns() -> None:
    """Outer: run the inner tests in `unshare --net` with only `lo` up."""
    if INNER:
        pytest.skip("already inside the private netns")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to create a private network namespace")
    env = dict(os.environ, MESHCC_TEST_PRIVATE_NETNS="1")
    script = (
        f"ip link set lo up && exec {sys.executable} -m pytest -q -rA -p no:cacheprovider "
        f"{Path(__file__).name} -k test_inner"
    )
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert " passed" in out and "skipped" not in out.split("short test summary")[-1], out
    print(out)


# --------------------------------------------------------------------------- inner helpers


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Poll until cond() holds; seconds it took (fails the test after `timeout`)."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class Listener:
    """A TCP port that accepts and closes (what a probe needs from a compile server)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def open(self, port: int = 0) -> None:
        async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@asynccontextmanager
async def mesh_node(
    *toolchains: Toolchain, jobs: int = 4, accept_unverified: bool = False
) -> AsyncIterator[tuple[object, Listener]]:
    from meshcc.mesh.service import Mesh, MeshConfig

    listener = Listener()
    await listener.open()
    mesh = Mesh(
        MeshConfig(interfaces=("lo",), timings=FAST, accept_unverified=accept_unverified),
        toolchains or (GCC12,),
        port=listener.port,
        jobs=jobs,
        cpus=2,
        caps=frozenset({"lzo", "lz4", "errm"}),
        distcc_id=DistccId("x86_64-linux-gnu", "12"),
    )
    await mesh.start()
    try:
        yield mesh, listener
    finally:
        await mesh.stop()
        await listener.close()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))


# --------------------------------------------------------------------------- inner tests


@inner
def test_inner_default_interfaces_turn_discovery_off(caplog: pytest.LogCaptureFixture) -> None:
    from meshcc.mesh.service import Mesh, MeshConfig

    async def main() -> None:
        mesh = Mesh(MeshConfig(), (GCC12,), port=3632, jobs=4, distcc_id=None)
        with caplog.at_level(logging.WARNING, logger="meshcc.mesh"):
            await mesh.start()
        try:
            assert not mesh.status.discovery
            assert "only loopback" in (mesh.status.off_reason or "")
            assert mesh.hosts_line(CLIENT12) == ""
        finally:
            await mesh.stop()

    run(main)
    assert any(
        "discovery is off: no multicast-capable interface (only loopback)" in r.getMessage()
        and "still serves compiles" in r.getMessage()
        for r in caplog.records
    ), caplog.text


@inner
def test_inner_distcc_record_only_for_an_offered_cc() -> None:
    """The _distcc._tcp record describes the daemon's own `cc` (probed by its path), and is
    not published at all when the daemon does not offer one: stock clients name `cc`."""
    from meshcc.mesh.records import MESHCC_TYPE
    from meshcc.mesh.service import Mesh, MeshConfig

    async def main() -> None:
        for toolchains, published in (((GCC13,), False), ((GCC12,), True)):
            mesh = Mesh(MeshConfig(interfaces=("lo",), timings=FAST), toolchains, port=3632, jobs=2)
            await mesh.start()
            try:
                names = mesh._own_names
                distcc = [n for n in names if not n.endswith(MESHCC_TYPE)]
                warned = any("offers no `cc`" in w for w in mesh.status.warnings)
                assert bool(distcc) is published and warned is not published, (names, toolchains)
                if published:  # probed through the offered cc: a subtype record too
                    assert len(distcc) == 2
            finally:
                await mesh.stop()

    run(main)


@inner
def test_inner_meshes_find_each_other_and_match_toolchains() -> None:
    async def main() -> None:
        t0 = time.monotonic()
        async with (
            mesh_node(GCC12, jobs=6) as (a, la),
            mesh_node(GCC12, GCC13, jobs=3) as (b, lb),
            mesh_node(GCC13, jobs=2) as (c, lc),
        ):
            assert a.status.discovery and a.status.interfaces == ("lo",)
            took = await wait_for(
                lambda: all(len(m.hosts_line(None).split()) == 2 for m in (a, b, c)),
                what="every mesh to list the two others",
            )
            print(
                f"all three meshes saw each other {took:.3f}s after the last start "
                f"({time.monotonic() - t0:.3f}s after the first)"
            )
            # gcc 12 is on a and b: a's line for gcc 12 has b only, with its limit and lzo
            assert a.hosts_line(CLIENT12) == f"127.0.0.1:{lb.port}/3,lzo"
            assert c.hosts_line(CLIENT13) == f"127.0.0.1:{lb.port}/3,lzo"
            # b sees both, best (more free slots) first
            assert b.hosts_line(CLIENT13) == f"127.0.0.1:{lc.port}/2,lzo"
            assert b.hosts_line(None) == f"127.0.0.1:{la.port}/6,lzo 127.0.0.1:{lc.port}/2,lzo"
            why = {v.peer.record.port: v for v in a.explain(CLIENT12)}
            assert not why[lc.port].included
            assert why[lc.port].reason == "gcc 12.2.0 ≠ 13.2.0"
            assert why[lb.port].remote_name == "gcc"
            assert why[lb.port].peer.record.kind is PeerKind.MESHCC
            # Each daemon's _distcc._tcp record is folded into its meshcc entry.
            assert len(a.snapshot()) == 2
            assert all(p.record.kind is PeerKind.MESHCC for p in a.snapshot())

    run(main)


@inner
def test_inner_kill_without_goodbye_then_restart_on_same_port() -> None:
    """The SIGKILL case: mDNS keeps the peer and sends no event on restart; probes notice."""

    async def main() -> None:
        async with mesh_node(GCC12) as (a, _la), mesh_node(GCC12) as (_b, lb):
            spec = f"127.0.0.1:{lb.port}/4,lzo"
            await wait_for(lambda: a.hosts_line(CLIENT12) == spec, what="a to list b")
            port = lb.port
            await lb.close()  # the compile port dies, mDNS records stay
            took = await wait_for(lambda: a.hosts_line(CLIENT12) == "", what="b dropped")
            [v] = a.explain(CLIENT12)
            assert v.reason.startswith("not responding since"), v.reason
            assert "connection refused" in v.reason
            await lb.open(port)
            back = await wait_for(lambda: a.hosts_line(CLIENT12) == spec, what="b back")
            print(f"dead peer dropped after {took:.3f}s, restarted peer back after {back:.3f}s")

    run(main)


@inner
def test_inner_goodbye_removes_peer_and_failed_jobs_back_off() -> None:
    async def main() -> None:
        async with mesh_node(GCC12) as (a, _la):
            async with mesh_node(GCC12) as (_b, lb):
                spec = f"127.0.0.1:{lb.port}/4,lzo"
                await wait_for(lambda: a.hosts_line(CLIENT12) == spec, what="a to list b")
                for _ in range(3):
                    assert a.report_job_result(f"127.0.0.1:{lb.port}", ok=False)
                assert a.hosts_line(CLIENT12) == ""
                [v] = a.explain(CLIENT12)
                assert v.reason.startswith("backed off after 3 failed jobs"), v.reason
            took = await wait_for(lambda: not a.snapshot(), what="goodbye to remove b")
            print(f"goodbye removed the peer after {took:.3f}s")

    run(main)


@inner
def test_inner_stock_distccd_peer_and_stock_browsers() -> None:
    """A stock distccd is listed unverified; late browsers of the base type and of distcc's
    subtype (avahi-browse, distcc +zeroconf) find meshcc daemons by query, with distcc's TXT."""
    from zeroconf import IPVersion, ServiceInfo, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    subtype = "_x86-64-linux-gnu--12._sub._distcc._tcp.local."

    async def main() -> None:
        fake = Listener()
        await fake.open()
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        info = ServiceInfo(
            "_distcc._tcp.local.",
            "distcc@oldbox._distcc._tcp.local.",
            port=fake.port,
            parsed_addresses=["127.0.0.1"],
            server="oldbox.local.",
            properties={
                "txtvers": "1",
                "cpus": "2",
                "jobs": "4",
                "distcc": "3.4",
                "gnuhost": "x86_64-pc-linux-gnu",
                "cc_version": "12",
                "cc_machine": "x86_64-linux-gnu",
            },
        )
        await (await zc.async_register_service(info, cooperating_responders=True))
        seen: dict[str, dict[str, dict[str, str | None]]] = {"base": {}, "sub": {}}
        browsers = []

        def collect(kind: str) -> Callable[..., None]:
            def handler(
                zeroconf: object, service_type: str, name: str, state_change: object
            ) -> None:
                if state_change is not ServiceStateChange.Added:
                    return

                async def resolve() -> None:
                    si = AsyncServiceInfo(service_type, name)
                    if await si.async_request(zc.zeroconf, 2000):
                        seen[kind][name] = si.decoded_properties

                asyncio.get_running_loop().create_task(resolve())

            return handler

        try:
            async with (
                mesh_node(GCC12) as (a, la),
                mesh_node(GCC12, accept_unverified=True) as (b, lb),
            ):
                await wait_for(
                    lambda: (
                        len(a.snapshot()) == 2
                        and all(p.liveness is Liveness.UP for p in a.snapshot())
                    ),
                    what="a to see b and oldbox",
                )
                v = {x.peer.record.host: x for x in a.explain(CLIENT12)}
                old = v["distcc@oldbox"]
                assert not old.included and old.unverified
                assert old.reason == (
                    "binutils unknown (stock distccd, gcc 12 known only as -dumpversion)"
                    " — pass --accept-unverified"
                )
                assert a.hosts_line(CLIENT12) == f"127.0.0.1:{lb.port}/4,lzo"
                await wait_for(
                    lambda: any(
                        p.record.kind is PeerKind.DISTCC and p.liveness is Liveness.UP
                        for p in b.snapshot()
                    ),
                    what="b to confirm oldbox",
                )
                # accepted when asked for, ranked after verified peers
                assert b.hosts_line(CLIENT12) == (
                    f"127.0.0.1:{la.port}/4,lzo 127.0.0.1:{fake.port}/4,lzo"
                )
                # Browsers started now see the daemons only through answers to their queries.
                browsers.append(
                    AsyncServiceBrowser(
                        zc.zeroconf, ["_distcc._tcp.local."], handlers=[collect("base")]
                    )
                )
                browsers.append(
                    AsyncServiceBrowser(zc.zeroconf, [subtype], handlers=[collect("sub")])
                )
                base_name = f"{a.status.instance}._distcc._tcp.local."
                sub_name = f"{a.status.instance}-cc._distcc._tcp.local."
                await wait_for(
                    lambda: base_name in seen["base"] and sub_name in seen["sub"],
                    what="late browsers to find a",
                )
                assert sub_name not in seen["base"] and base_name not in seen["sub"]
                for props in (seen["base"][base_name], seen["sub"][sub_name]):
                    assert list(props) == [
                        "txtvers",
                        "cpus",
                        "jobs",
                        "distcc",
                        "gnuhost",
                        "cc_version",
                        "cc_machine",
                    ]
                    assert props["cc_version"] == "12" and props["jobs"] == "4"
                    assert props["cc_machine"] == "x86_64-linux-gnu"
        finally:
            for browser in browsers:
                await browser.async_cancel()
            await zc.async_close()
            await fake.close()

    run(main)


if not INNER:  # the inner tests are collected only inside the private netns
    for _name in [n for n in globals() if n.startswith("test_inner_")]:
        del globals()[_name]
