"""``meshcc doctor``: verdict formatting against a fake control socket, the environment and
file checks, and the issue's proof in a network-namespace mesh (a peer with another gcc is
named with its reason; ``-march=native`` is local and says why; no daemon is a FAIL with
the fix).

Network rule: the fake daemon is a Unix socket; the only multicast happens inside the
namespaces the ``lan`` fixture creates; unit tests pass --no-browse.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netns
from harness import close_listener
from meshcc.cli import doctor
from meshcc.wire import control
from meshd import Meshd, mismatched_gcc, private_dir, trusted_dir
from netns import Lan


def _peer(host: str, addr: str, version: str = "12.2.0", limit: int = 4) -> dict[str, Any]:
    return {
        "key": f"k-{addr}",
        "kind": "meshcc",
        "host": host,
        "addresses": [addr],
        "port": 3632,
        "limit": limit,
        "free": limit,
        "cpus": 2,
        "toolchains": [
            {
                "driver": "gcc",
                "version": version,
                "target": "x86_64-linux-gnu",
                "binutils": "2.40",
                "names": ["gcc"],
            }
        ],
    }


STATUS = {
    "ok": True,
    "version": "0.test",
    "node": "n",
    "discovery": True,
    "off_reason": None,
    "interfaces": ["eth0"],
    "allowed": ["10.0.0.0/24"],
    "allowed_source": "interfaces",
    "peers": 3,
    "jobs": 6,
    "running": 0,
    "warnings": [],
}
VERDICTS = [
    {
        "peer": _peer("good", "10.0.0.2"),
        "included": True,
        "reason": "matches; 4 jobs",
        "host_spec": "10.0.0.2:3632/4,lzo",
        "unverified": False,
    },
    {
        "peer": _peer("old", "10.0.0.3", "12.9.0"),
        "included": False,
        "reason": "gcc 12.2.0 ≠ 12.9.0",
        "host_spec": "10.0.0.3:3632/4,lzo",
        "unverified": False,
    },
    {
        "peer": _peer("far", "10.9.0.4"),
        "included": False,
        "reason": "announced from 10.9.0.4, outside allowed 10.0.0.0/24",
        "host_spec": None,
    },
]


class FakeDaemon:
    """A control socket answering status and hosts with canned replies (msgpack, as the
    real daemon does), one request-reply per message, many messages per connection."""

    def __init__(self, path: Path, status: dict[str, Any], verdicts: list[dict[str, Any]]):
        self.path = path
        self.status = status
        self.verdicts = verdicts
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                reader = control.MessageReader()
                while True:
                    msg = reader.next_message()
                    if msg is None:
                        data = conn.recv(65536)
                        if not data:
                            break
                        reader.feed(data)
                        continue
                    self.requests.append(msg)
                    if msg["op"] == "status":
                        reply = self.status
                    else:
                        line = " ".join(v["host_spec"] for v in self.verdicts if v["included"])
                        reply = {
                            "ok": True,
                            "line": line,
                            "verdicts": self.verdicts,
                            "status": self.status,
                            "compiler": "gcc (gcc 12.2.0)",
                            "note": None,
                        }
                    conn.sendall(control.encode(reply))

    def close(self) -> None:
        close_listener(self.sock)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[..., FakeDaemon]]:
    made: list[FakeDaemon] = []

    def start(
        status: dict[str, Any] = STATUS, verdicts: list[dict[str, Any]] = VERDICTS
    ) -> FakeDaemon:
        d = FakeDaemon(tmp_path / f"control{len(made)}.sock", status, verdicts)
        made.append(d)
        return d

    yield start
    for d in made:
        d.close()


def _env(sock: Path | str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    env.update(MESHCC_SOCKET=str(sock), DISTCC_DIR="/nonexistent-meshcc-test", **extra)
    return env


def _diagnose(env: dict[str, str], tmp_path: Path, **kw: Any) -> doctor.Report:
    kw.setdefault("system_hosts", str(tmp_path / "no-hosts"))
    kw.setdefault("make_conf", str(tmp_path / "no-make.conf"))
    return doctor.diagnose(env, browse=False, **kw)


def _by(report: doctor.Report, name: str) -> list[doctor.Check]:
    return [c for c in report.checks if c.name == name]


# ---------------------------------------------------------------- unit level


def test_verdicts_against_fake_daemon(fake: Callable[..., FakeDaemon], tmp_path: Path) -> None:
    d = fake()
    report = _diagnose(_env(d.path), tmp_path, cc="gcc")
    text = report.render()
    assert report.ok, text
    assert _by(report, "daemon")[0].status == doctor.OK and str(d.path) in text
    assert "[ OK ] discovery: on; interfaces: eth0" in text
    assert (
        "3 seen (daemon on " in text
        and "1 usable for gcc (gcc 12.2.0) (4 job slots): 10.0.0.2:3632/4,lzo" in text
    )
    old, far = _by(report, "excluded peer")
    assert (
        old.status == doctor.WARN and "old at 10.0.0.3:3632/4,lzo: gcc 12.2.0 ≠ 12.9.0" in old.found
    )
    assert "same gcc version" in old.fix
    assert "outside allowed" in far.found and "--allow CIDR" in far.fix
    assert "[WARN] excluded peer: old at" in text and "\n       fix: install the same gcc" in text
    hosts_req = next(r for r in d.requests if r["op"] == "hosts")
    assert hosts_req["cc"] == "gcc" and hosts_req["cc_path"].endswith("/gcc")
    js = report.to_dict()
    assert js["ok"] is True and {c["status"] for c in js["checks"]} <= {"OK", "WARN", "FAIL"}  # type: ignore[union-attr]


def test_all_excluded_and_discovery_off(fake: Callable[..., FakeDaemon], tmp_path: Path) -> None:
    off = dict(
        STATUS,
        discovery=False,
        interfaces=[],
        off_reason="no usable multicast-capable interface (only loopback); "
        "use --interface NAME to choose one",
    )
    d = fake(off, VERDICTS[1:])
    report = _diagnose(_env(d.path), tmp_path, cc="gcc")
    assert not report.ok
    disc = _by(report, "discovery")[0]
    assert disc.status == doctor.FAIL and "only loopback" in disc.found
    assert "--interface NAME" in disc.fix
    peers = _by(report, "peers")[0]
    assert peers.status == doctor.FAIL and "2 seen, none can take" in peers.found


@pytest.mark.parametrize(
    "reason, want",
    [
        ("binutils unknown (stock distccd) — pass --accept-unverified", "--accept-unverified"),
        ("not responding since 10:00:00 (connection refused)", "TCP port 3632"),
        ("backed off after 3 failed jobs (until 10:01:00)", "daemon log"),
        ("binutils 2.40 ≠ 2.41", "same binutils"),
        (
            "no compiler for target aarch64-linux-gnu (offers x86_64-linux-gnu)",
            "install a compiler",
        ),
    ],
)
def test_exclusion_fixes(reason: str, want: str) -> None:
    assert want in doctor.exclusion_fix(reason, "p at 10.0.0.9")


def test_no_daemon_fails_with_fix(tmp_path: Path) -> None:
    env = _env(tmp_path / "nothing.sock")
    p = subprocess.run(
        [sys.executable, "-m", "meshcc", "doctor", "--no-browse"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "[FAIL] daemon: no meshcc daemon answers" in p.stdout
    assert "fix: start it: `meshcc daemon`" in p.stdout and "Traceback" not in p.stderr


def test_command_local_and_why(tmp_path: Path) -> None:
    report = _diagnose(
        _env(tmp_path / "x.sock"), tmp_path, command=["gcc", "-march=native", "-g", "-c", "x.c"]
    )
    cmd = _by(report, "command")[0]
    assert cmd.status == doctor.WARN and "runs locally: -march=native with -g" in cmd.found
    # Never the old advice: a bare -march=<name> builds different code than native.
    assert "explicit -march" not in cmd.fix and "byte-identical" in cmd.fix
    assert "gcc (" in _by(report, "compiler")[0].found  # the command's compiler is checked


def test_command_march_native_is_distributable(tmp_path: Path) -> None:
    env = dict(_env(tmp_path / "x.sock"), DISTCC_HOSTS="127.0.0.1:1")
    report = _diagnose(env, tmp_path, command=["gcc", "-O2", "-march=native", "-c", "x.c"])
    cmd = _by(report, "command")[0]
    assert cmd.status == doctor.OK, cmd
    assert "is distributable" in cmd.found and "meshcc sends -march=" in cmd.found
    assert "-march=native" not in cmd.found.split("meshcc sends", 1)[1]


def test_command_distributable_with_distcc_hosts(tmp_path: Path) -> None:
    env = _env(tmp_path / "x.sock", DISTCC_HOSTS="10.0.0.7/4,lzo")
    report = _diagnose(env, tmp_path, command=["meshcc", "gcc", "-O2", "-c", "x.c"])
    assert "goes to one of DISTCC_HOSTS (10.0.0.7/4,lzo)" in _by(report, "command")[0].found
    dh = _by(report, "DISTCC_HOSTS")[0]
    assert dh.status == doctor.WARN and "wins over the mesh" in dh.found


def test_bad_host_specs(tmp_path: Path) -> None:
    env = _env(tmp_path / "x.sock", DISTCC_HOSTS="foo/x", DISTCC_FALLBACK="0")
    report = _diagnose(env, tmp_path)
    assert _by(report, "DISTCC_HOSTS")[0].status == doctor.FAIL
    assert "must be a number" in _by(report, "DISTCC_HOSTS")[0].found
    assert _by(report, "DISTCC_FALLBACK")[0].status == doctor.WARN
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.2/4 bogus:port\n")
    env = _env(tmp_path / "x.sock")
    report = _diagnose(env, tmp_path, system_hosts=str(hosts))
    bad = _by(report, f"host file {hosts}")
    assert bad and bad[0].status == doctor.FAIL and not report.ok


def test_compiler_not_found_and_not_gcc(tmp_path: Path) -> None:
    report = _diagnose(_env(tmp_path / "x.sock"), tmp_path, cc="no-such-cc-here")
    c = _by(report, "compiler")[0]
    assert c.status == doctor.FAIL and "not found on PATH" in c.found
    script = tmp_path / "notgcc"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    c = _by(_diagnose(_env(tmp_path / "x.sock"), tmp_path, cc=str(script)), "compiler")[0]
    assert c.status == doctor.FAIL and "not a gcc" in c.found


def _client_on_path(tmp_path: Path, head: bytes) -> dict[str, str]:
    """An environment whose PATH finds a ``meshcc-gcc`` that starts with ``head``."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    client = bindir / "meshcc-gcc"
    client.write_bytes(head + b"\0" * 60)
    client.chmod(0o755)
    return _env(tmp_path / "x.sock", PATH=f"{bindir}:/usr/bin:/bin")


def test_compile_client_python_launcher_and_missing(tmp_path: Path) -> None:
    """A Python launcher (install.sh found no C compiler) is a warning with the fix; no
    meshcc-gcc on PATH at all is one too. The C launcher itself is checked for real, as it
    is built, in test_zygote.py."""
    report = doctor.Report()
    doctor.check_compile_client(report, _env(tmp_path / "x.sock", PATH=str(tmp_path)))
    missing = _by(report, "compile client")[0]
    assert missing.status == doctor.WARN and "not on PATH" in missing.found
    env = _client_on_path(tmp_path, b"#!/usr/bin/python3 -IS\n")
    report = doctor.Report()
    doctor.check_compile_client(report, env, uid=1000, cpu_limited=False)
    python = _by(report, "compile client")[0]
    assert python.status == doctor.WARN and "Python launcher" in python.found
    assert "rerun ./install.sh" in python.fix and python.details["launcher"] == "python"


@pytest.mark.parametrize(
    ("uid", "cpu_limited", "extra", "why"),
    [
        (0, False, {}, "you are root"),
        (1000, False, {"MESHCC_ZYGOTE": "0"}, "MESHCC_ZYGOTE=0"),
        (1000, True, {}, "CPU-time limit"),
        (1000, False, {"SANDBOX_ON": "1"}, "preload sandbox"),
        (1000, False, {"LD_PRELOAD": ""}, "LD_PRELOAD"),  # set at all: as the launcher tests
    ],
)
def test_compile_client_c_launcher_said_why_it_goes_the_slow_way(
    tmp_path: Path, uid: int, cpu_limited: bool, extra: dict[str, str], why: str
) -> None:
    env = dict(_client_on_path(tmp_path, b"\x7fELF"), **extra)
    report = doctor.Report()
    doctor.check_compile_client(report, env, uid=uid, cpu_limited=cpu_limited)
    check = _by(report, "compile client")[0]
    assert check.status == doctor.WARN and why in check.found, check
    assert check.details["launcher"] == "c" and check.details["zygote"] is False
    report = doctor.Report()
    doctor.check_compile_client(report, _client_on_path(tmp_path, b"\x7fELF"), 1000, False)
    assert _by(report, "compile client")[0].status == doctor.OK


def test_lzo_backend_is_named_and_a_slow_one_has_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test command installs liblzo2 (as distcc's packages do): LZO runs there, as
    distcc's. Without it, lzallright's slower LZO is a warning naming the package; with
    neither (meshcc.pyz), what `,lzo` hosts get instead."""
    from meshcc import compression

    report = doctor.Report()
    doctor.check_lzo(report)
    [found] = _by(report, "LZO")
    assert found.status == doctor.OK and found.details["backend"] == "liblzo2", found
    monkeypatch.setattr(compression, "_liblzo2", False)  # tried, and absent
    report = doctor.Report()
    doctor.check_lzo(report)
    [slow] = _by(report, "LZO")
    assert slow.status == doctor.WARN and "lzallright" in slow.found
    assert "liblzo2-2" in slow.fix and "dev-libs/lzo" in slow.fix
    monkeypatch.setattr(compression, "_lzallright_installed", lambda: False)
    report = doctor.Report()
    doctor.check_lzo(report)
    [none] = _by(report, "LZO")
    assert none.status == doctor.WARN and "protocol 1" in none.found
    assert none.details["backend"] is None


def test_compile_client_unsafe_socket_directory(tmp_path: Path) -> None:
    """The launcher hands nothing through a socket directory open to others (or not its
    user's); doctor finds the same directory ($XDG_RUNTIME_DIR/meshcc when that is the
    user's) and says how to get it back."""
    uid = os.getuid()
    xdg = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))  # under 64 characters, as needed
    try:
        (xdg / "meshcc").mkdir()
        (xdg / "meshcc").chmod(0o755)
        env = dict(_client_on_path(tmp_path, b"\x7fELF"), XDG_RUNTIME_DIR=str(xdg))
        report = doctor.Report()
        doctor.check_compile_client(report, env, uid=uid, cpu_limited=False)
        check = _by(report, "compile client")[0]
        assert check.status == doctor.WARN, check
        assert f"{xdg}/meshcc is not a directory" in check.found, check
        assert f"remove {xdg}/meshcc" in check.fix
        (xdg / "meshcc").chmod(0o700)
        report = doctor.Report()
        doctor.check_compile_client(report, env, uid=uid, cpu_limited=False)
        assert "socket directory" not in _by(report, "compile client")[0].found
    finally:
        shutil.rmtree(xdg, ignore_errors=True)


def test_ccache_masquerade(tmp_path: Path) -> None:
    masq = tmp_path / "ccache"
    masq.mkdir()
    (masq / "gcc").symlink_to("/usr/bin/gcc")
    env = _env(tmp_path / "x.sock", PATH=f"{masq}:{os.environ['PATH']}")
    report = _diagnose(env, tmp_path, cc="gcc")
    m = _by(report, "masquerade")[0]
    assert m.status == doctor.WARN and "CCACHE_PREFIX=meshcc" in m.fix
    assert (
        "/usr/bin/gcc" in _by(report, "compiler")[0].found
        or "gcc 1" in m.found + _by(report, "compiler")[0].found
    )


def test_hosts_file_and_portage_against_mesh(tmp_path: Path) -> None:
    reply = control.HostsReply("10.0.0.2:3632/4,lzo", VERDICTS, control.StatusReply())
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.2/4 10.0.0.99/8\n")
    r = doctor.Report()
    doctor.check_hosts_file(r, str(hosts), reply)
    assert r.checks[0].status == doctor.WARN and "10.0.0.99" in r.checks[0].found
    assert "--write-hosts" in r.checks[0].fix
    hosts.write_text("10.0.0.2/4\n")
    r = doctor.Report()
    doctor.check_hosts_file(r, str(hosts), reply)
    assert r.checks[0].status == doctor.OK

    conf = tmp_path / "make.conf"
    conf.write_text('FEATURES="sandbox"\nMAKEOPTS="-j2"\n')
    r = doctor.Report()
    doctor.check_portage(r, str(conf), reply, str(hosts))
    assert r.checks[0].status == doctor.WARN and "FEATURES lacks distcc" in r.checks[0].found
    conf.write_text('FEATURES="sandbox"\nFEATURES="${FEATURES} distcc"\nMAKEOPTS="-j1"\n')
    r = doctor.Report()
    doctor.check_portage(r, str(conf), reply, str(hosts))
    assert r.checks[0].status == doctor.WARN and "uses little of the" in r.checks[0].found
    conf.write_text('FEATURES="distcc"\nMAKEOPTS="-j64"\n')
    r = doctor.Report()
    doctor.check_portage(r, str(conf), reply, str(hosts))
    assert r.checks[0].status == doctor.OK, r.render()

    # -march=native: Portage's stock distcc keeps those compiles local; said, never
    # "use -march=<name>" (that builds different code).
    conf.write_text('COMMON_FLAGS="-O2 -pipe -march=native"\nFEATURES="distcc"\nMAKEOPTS="-j64"\n')
    r = doctor.Report()
    doctor.check_portage(r, str(conf), reply, str(hosts))
    warn = [c for c in r.checks if c.status == doctor.WARN]
    assert len(warn) == 1, r.render()
    assert "COMMON_FLAGS (-march=native)" in warn[0].found and "locally" in warn[0].found
    assert "byte-identically" in warn[0].fix and "-march=<" not in warn[0].fix
    assert r.checks[-1].status == doctor.OK  # the MAKEOPTS verdict is still given


def test_json_output(fake: Callable[..., FakeDaemon], tmp_path: Path) -> None:
    d = fake()
    p = subprocess.run(
        [sys.executable, "-m", "meshcc", "doctor", "--json", "--cc", "gcc"],
        env=_env(d.path),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    js = json.loads(p.stdout)
    assert any(c["check"] == "excluded peer" and "12.9.0" in c["found"] for c in js["checks"])


# ---------------------------------------------------------------- the proof


def _real_gcc_version() -> str:
    return subprocess.run(
        ["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.netns
@pytest.mark.skipif(netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason()))
def test_doctor_in_a_namespace_mesh(lan: Callable[..., Lan]) -> None:
    net = lan()
    work = private_dir("meshcc-doctor-")
    fake_gcc = mismatched_gcc(trusted_dir("meshcc-fakegcc-"), "12.9.0")
    ha, hb, hd, hf = (net.add_host(n) for n in "abdf")
    iface = ("--interface", "eth0")
    a = Meshd(work, ha, *iface, name="a")
    b = Meshd(work, hb, *iface, name="b")
    d = Meshd(work, hd, *iface, "--compiler", str(fake_gcc), name="d")
    daemons = [a, b, d]
    try:
        for m in daemons:
            m.start(wait=False)
        for m in daemons:
            m.wait_ready()

        def sees_both() -> bool:
            v = a.hosts()["verdicts"]
            return {x["peer"]["addresses"][0] for x in v} >= {hb.address, hd.address} and any(
                x["included"] for x in v
            )

        netns.wait_for(sees_both, 20, what="a to see b and d")
        p = a.cli("doctor", "--cc", "gcc", inside=True)
        out = p.stdout
        print(out)
        assert "Traceback" not in p.stderr, p.stderr
        ours = _real_gcc_version()
        line = [ln for ln in out.splitlines() if hd.address in ln and "excluded peer" in ln]
        assert line and f"gcc {ours} ≠ 12.9.0" in line[0], out
        assert line[0].startswith("[WARN]")
        assert "[ OK ] daemon:" in out and "[ OK ] discovery: on; interfaces: eth0" in out
        assert "2 seen (daemon on " in out and "1 usable for gcc" in out and hb.address in out
        assert p.returncode == 0, out

        # The command line: -march=native -g stays local, and doctor says why.
        p = a.cli("doctor", "--", "gcc", "-march=native", "-g", "-c", "x.c", inside=True)
        assert "runs locally: -march=native with -g" in p.stdout, p.stdout
        p = a.cli("doctor", "--", "gcc", "-O2", "-c", "x.c", inside=True)
        assert "is distributable: it goes to a peer leased from the mesh" in p.stdout, p.stdout

        # No daemon on f: FAIL with the fix, and it still browses and sees the mesh.
        env = dict(os.environ, MESHCC_SOCKET=str(work / "nothing.sock"))
        env.pop("DISTCC_HOSTS", None)
        p = hf.run(
            [sys.executable, "-m", "meshcc", "doctor", "--cc", "gcc", "--browse-time", "3"], env=env
        )
        assert p.returncode == 1, p.stdout + p.stderr
        assert "[FAIL] daemon: no meshcc daemon answers" in p.stdout
        assert "fix: start it: `meshcc daemon`" in p.stdout
        assert "browsed for 3 s (no daemon)" in p.stdout, p.stdout
        assert "Traceback" not in p.stderr, p.stderr
    finally:
        for m in daemons:
            m.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
