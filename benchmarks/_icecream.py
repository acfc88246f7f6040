"""An icecream cluster (Debian's ``icecc``) for the benchmarks: scheduler, server, client.

Why: issue 12 wants icecream as a second anchor next to distcc, with jobs that really leave
the client box. icecream needs three roles: an ``icecc-scheduler``, an ``iceccd`` on the
box that compiles, and an ``iceccd`` on the client box (the ``icecc`` wrapper only talks to
its local daemon, which asks the scheduler for a host). This module starts them where a
bench_serial ``Site`` says:

- **veth**: scheduler and server iceccd in the server namespace, the client iceccd in the
  client namespace (tests/netns.py). Every icecream broadcast (UDP 8765: the scheduler's
  announcements, the daemons' netname queries) goes out of a namespace's eth0 onto the
  test bridge and nowhere else; the daemons get the scheduler's address with ``-s`` anyway.
- **loopback**: all three in one namespace on 127.0.0.1 (never the root namespace: its
  broadcasts would reach the real interfaces). icecream's client compiles *itself* when
  the scheduler names 127.0.0.1; ``ICECC_TEST_REMOTEBUILD=1`` (the switch icecream's own
  test suite uses) makes it send the job to the server daemon's port instead, so the job
  still crosses a TCP connection to another daemon, as meshcc's and distcc's do.

What keeps the jobs remote:

- the client iceccd runs with ``-m 0 --no-remote``: no compile slot of its own, so the
  scheduler can never hand a job back to the submitting box;
- the server iceccd reports a load from a frozen ``/proc/stat`` (bind-mounted in a private
  mount namespace): icecream's scheduler refuses any server whose idle CPU is near zero
  (load 1000), which on a VM shared with other sessions' builds is most of the time, and
  the client then waits for the scheduler for seconds to minutes. A frozen ``/proc/stat``
  reads as an idle box, as a dedicated compile server would be; memory and disk checks
  stay real;
- the scheduler's log (``-vvv``) has one ``END <id> status=0 … server=<node>`` line per
  job that ran on a compile server: :meth:`Icecream.remote_jobs` counts those naming the
  server node, and bench_serial fails unless every job is there.

``ICECC_CARET_WORKAROUND=0``: otherwise the client compiles a job a second time, locally,
whenever the remote compile printed a warning (to show gcc's carets against the real
source); distcc and meshcc relay the remote's diagnostics as they are.

``ICECC_REMOTE_CPP=0``: the client preprocesses fully, like distcc and meshcc-gcc here
(icecream's remote ``-fdirectives-only`` mode would move work off the client and is not
what the other two do). The first compile builds icecream's native environment tarball
(``icecc-create-env``, tens of seconds) and installs it in the server's chroot: the
benchmark's untimed warm-up pass pays that.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h

NETNAME = "meshccbench"
SCHEDULER_PORT = 8765  # icecream's default; each namespace has its own port space
SCHEDULER_TEXT_PORT = SCHEDULER_PORT + 1  # the scheduler's "telnet" interface
DAEMON_PORT = 10245
SERVER_NODE = "iceserver"
CLIENT_NODE = "iceclient"
APT_LINE = "apt-get install icecc"
# One line per job that a compile server finished with exit status 0.
_END_RE = re.compile(r"END \d+ status=0 .* server=(?P<node>\S+)")
# Constant CPU counters: icecream computes its load from tick deltas, and no delta reads
# as an idle CPU (see the module docstring).
_FROZEN_STAT = "cpu  1000 0 1000 100000 0 0 0 0 0 0\ncpu0 500 0 500 50000 0 0 0 0 0 0\n"


def unavailable_reason() -> str | None:
    """Why icecream cannot run here (None if it can)."""
    missing = [t for t in ("icecc", "iceccd", "icecc-scheduler") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian package icecc: `{APT_LINE}`)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not installed"
    return None


@dataclass
class Icecream:
    """A running scheduler + server iceccd + client iceccd; ``stop()`` ends all three."""

    workdir: Path
    scheduler_address: str
    client_socket: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    loopback: bool = False

    @property
    def scheduler_log(self) -> Path:
        return self.workdir / "scheduler.log"

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """The ``icecc`` client's environment: its local daemon's socket, local cpp."""
        env = dict(base)
        for k in [k for k in env if k.startswith("ICECC")]:
            del env[k]
        env["ICECC_TEST_SOCKET"] = str(self.client_socket)  # the client iceccd, by path
        env["ICECC_REMOTE_CPP"] = "0"
        # icecream recompiles a job locally when the remote compile wrote any diagnostic
        # (its gcc "caret workaround"): xz-utils has such jobs. Off, as the other two ways
        # print the remote's diagnostics as they are.
        env["ICECC_CARET_WORKAROUND"] = "0"
        if self.loopback:
            env["ICECC_TEST_REMOTEBUILD"] = "1"
        return env

    def client_daemon_pgid(self) -> int:
        """Process group of the client iceccd (its CPU counts as the client's)."""
        return os.getpgid(self.procs["client-iceccd"].pid)

    def remote_jobs(self) -> int:
        """Jobs the scheduler saw finish with status 0 on the server node."""
        try:
            text = self.scheduler_log.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for m in _END_RE.finditer(text) if m["node"] == SERVER_NODE)

    def logs(self) -> str:
        out = []
        for name in ("scheduler.log", "server.log", "client.log", "*.out"):
            for p in sorted(self.workdir.glob(name)):
                out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM each process group, SIGKILL after 10 s (by pid: only what we started)."""
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)


def _spawn(
    ice: Icecream, name: str, argv: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with open(ice.workdir / f"{name}.out", "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ice.procs[name] = proc
    return proc


def _scheduler_lists(site: Any, address: str, nodes: tuple[str, ...]) -> bool:
    """True once the scheduler's text interface lists every node in ``nodes``."""
    try:
        sock = site.client.connect(address, SCHEDULER_TEXT_PORT, timeout=2.0)
    except OSError:
        return False
    try:
        sock.settimeout(2.0)
        sock.sendall(b"listcs\nquit\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        return False
    finally:
        sock.close()
    text = data.decode(errors="replace")
    return all(re.search(rf"^ {n} \(", text, re.M) for n in nodes)


def start(site: Any, workdir: Path, server_jobs: int, loopback: bool) -> Icecream:
    """Start the cluster in ``site``'s namespaces; wait until the scheduler knows both
    daemons. ``site.server``/``site.client`` are tests/netns.py hosts (the same host in
    loopback mode)."""
    reason = unavailable_reason()
    if reason:
        raise h.HarnessError(f"icecream: {reason}")
    if site.server is None or site.client is None:
        raise h.HarnessError("icecream runs only inside network namespaces")
    workdir.mkdir(parents=True, exist_ok=True)
    # The daemons drop to the `icecc` user before opening logs and sockets.
    shutil.chown(workdir, "icecc", "icecc")
    sched_addr = "127.0.0.1" if loopback else site.server.address
    ice = Icecream(workdir, sched_addr, workdir / "client.sock", loopback=loopback)
    base = h.clean_env()
    base = {k: v for k, v in base.items() if not k.startswith("ICECC")}
    frozen = workdir / "frozen-proc-stat"
    frozen.write_text(_FROZEN_STAT)
    sched_spec = f"{sched_addr}:{SCHEDULER_PORT}"
    try:
        _spawn(
            ice,
            "scheduler",
            site.server.exec_argv(
                [
                    "icecc-scheduler",
                    "-vvv",  # END lines (trace level): the proof that jobs ran on the server
                    "-n",
                    NETNAME,
                    "-p",
                    str(SCHEDULER_PORT),
                    "-l",
                    str(ice.scheduler_log),
                ]
            ),
            base,
        )
        server_env = dict(base, ICECC_TEST_SOCKET=str(workdir / "server.sock"))
        server_argv = [
            "iceccd",
            "-n",
            NETNAME,
            "-s",
            sched_spec,
            "-m",
            str(server_jobs),
            "-p",
            str(DAEMON_PORT),
            "-N",
            SERVER_NODE,
            "-b",
            str(workdir / "server-envs"),
            "-l",
            str(workdir / "server.log"),
        ]
        _spawn(
            ice,
            "server-iceccd",
            site.server.exec_argv(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    'mount --bind "$0" /proc/stat && exec "$@"',
                    str(frozen),
                    *server_argv,
                ]
            ),
            server_env,
        )
        client_env = dict(base, ICECC_TEST_SOCKET=str(ice.client_socket))
        _spawn(
            ice,
            "client-iceccd",
            site.client.exec_argv(
                [
                    "iceccd",
                    "-n",
                    NETNAME,
                    "-s",
                    sched_spec,
                    "-m",
                    "0",  # no compile slot: the scheduler cannot pick the client box
                    "--no-remote",  # and it accepts no one's jobs (no TCP listener)
                    "-N",
                    CLIENT_NODE,
                    "-b",
                    str(workdir / "client-envs"),
                    "-l",
                    str(workdir / "client.log"),
                ]
            ),
            client_env,
        )
        deadline = time.monotonic() + 60
        while not _scheduler_lists(site, sched_addr, (SERVER_NODE, CLIENT_NODE)):
            for name, proc in ice.procs.items():
                if proc.poll() is not None:
                    raise h.HarnessError(
                        f"icecream {name} exited ({proc.returncode})\n{ice.logs()}"
                    )
            if time.monotonic() > deadline:
                raise h.HarnessError(
                    f"icecream: the scheduler did not list both daemons in 60 s\n{ice.logs()}"
                )
            time.sleep(0.5)
    except BaseException:
        ice.stop()
        raise
    return ice
