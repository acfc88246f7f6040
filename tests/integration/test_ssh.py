"""SSH hosts (``DISTCC_HOSTS=@host``) and ``meshcc daemon --inetd``, through a real OpenSSH
server (Debian's openssh-server) on a two-host network-namespace LAN.

The test makes everything sshd and ssh use: a host key, a user key, ``authorized_keys``,
``known_hosts`` holding exactly that host key (``StrictHostKeyChecking yes``: a client that
reached any other sshd would fail), an ``sshd_config`` (no PAM, key logins only, listening
on the server namespace's address only) and an ssh client config. ``DISTCC_SSH`` is
``ssh -F CONFIG``, split into words by distcc and by meshcc alike. Logins are root's (the
tests run as root); the served jobs then drop to ``nobody``/``distccd`` as distccd does.

Proved here, each against the real peer: stock ``distcc`` to ``meshcc --inetd``;
``meshcc-gcc`` to ``meshcc --inetd`` (both protocols, with and without ``USER@``);
refusals' reasons reaching ``meshcc-gcc`` and stock ``distcc`` over ssh; ``meshcc-gcc`` to
stock ``distccd --inetd`` (distcc's default command); an ssh failure falling back to a
local compile with ssh's own message shown (test_ssh_local.py has what needs no sshd).
Objects are compared byte for byte with a local gcc's. sshd is stopped by its pid; the
LAN's teardown kills whatever else ran in its namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import netns
from conftest import VENV_BIN, parse_job_summaries

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path
MESHCC = VENV_BIN / "meshcc"
SOURCE = '#include "hello.h"\nint hello(int x) { return x * FACTOR + 1; }\n'
HEADER = "#define FACTOR 6\n"


@dataclass
class SshLan:
    srv: netns.Host
    cli: netns.Host
    dir: Path
    ssh_config: Path
    logged: Path  # on the server: `meshcc daemon --log-file LOG --log-level info "$@"`
    log: Path
    distccd_link: Path  # on the server: distccd -> the meshcc script

    def env(self, base: dict[str, str], hosts: str) -> dict[str, str]:
        env = dict(base)
        env["DISTCC_HOSTS"] = hosts
        env["DISTCC_SSH"] = f"ssh -F {self.ssh_config}"
        env["DISTCC_FALLBACK"] = "0"  # a job that did not run remotely fails the test
        return env

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def ssh_lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLan]:
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} missing: apt-get install openssh-server (tests/run.sh does)")
    d = tmp_path_factory.mktemp("ssh")
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "meshcc-test", "-f", d / name],
            check=True,
        )
    with netns.Lan() as lan:
        srv, cli = lan.add_host("srv"), lan.add_host("cli")
        _write(d / "authorized_keys", (d / "user_key.pub").read_text(), 0o600)
        host_pub = (d / "host_key.pub").read_text().split()
        _write(d / "known_hosts", f"{srv.address} {host_pub[0]} {host_pub[1]}\n")
        sshd_config = _write(
            d / "sshd_config",
            f"ListenAddress {srv.address}:22\n"
            f"HostKey {d}/host_key\n"
            f"AuthorizedKeysFile {d}/authorized_keys\n"
            f"PidFile {d}/sshd.pid\n"
            "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPrintMotd no\nPrintLastLog no\nUseDNS no\n"
            "MaxStartups 100\nLogLevel VERBOSE\n",
        )
        ssh_config = _write(
            d / "ssh_config",
            f"Host *\n  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n  BatchMode yes\n"
            f"  UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n  LogLevel ERROR\n  ConnectTimeout 20\n",
        )
        log = d / "inetd.log"
        logged = _write(
            d / "meshcc-logged",
            f'#!/bin/sh\nexec {MESHCC} daemon --log-file {log} --log-level info "$@"\n',
            0o755,
        )
        (d / "bin").mkdir()
        (d / "bin" / "distccd").symlink_to(MESHCC)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with open(d / "sshd.out", "wb") as out:
            sshd = srv.popen([SSHD, "-D", "-e", "-f", sshd_config], stdout=out, stderr=out)
        try:
            cli.wait_tcp(22, srv.address, timeout=20)
            yield SshLan(srv, cli, d, ssh_config, logged, log, d / "bin" / "distccd")
        finally:
            sshd.terminate()
            try:
                sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait(timeout=10)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """hello.c + hello.h, and ref.o: the object a local gcc makes from them."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "hello.c").write_text(SOURCE)
    (w / "hello.h").write_text(HEADER)
    subprocess.run(["gcc", "-O2", "-c", "hello.c", "-o", "ref.o"], cwd=w, check=True)
    return w


def _compile(
    lan: SshLan, env: dict[str, str], cwd: Path, *cmd: str
) -> subprocess.CompletedProcess[str]:
    return lan.cli.run(list(cmd), cwd=cwd, env=env, timeout=120)


def _summaries(lan: SshLan, result: str | None = None) -> list[str]:
    jobs = parse_job_summaries(lan.log_text())
    return [j.client for j in jobs if result is None or j.result == result]


def _shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.mark.skipif(shutil.which("distcc") is None, reason="distcc not installed")
@pytest.mark.parametrize("lzo", ["", ",lzo"])
def test_stock_distcc_to_meshcc_inetd(ssh_lan, client_env, work, lzo):
    """Stock distcc 3.4 with ``@host:COMMAND``: COMMAND is the plain ``meshcc`` script (so
    distcc runs ``meshcc --inetd --enable-tcp-insecure``), a script adding a log file, or a
    ``distccd`` link to ``meshcc``."""
    lan = ssh_lan
    env = lan.env(client_env, f"@{lan.srv.address}:{MESHCC}{lzo}")
    env["DISTCC_VERBOSE"] = "1"
    proc = _compile(lan, env, work, "distcc", "gcc", "-O2", "-c", "hello.c", "-o", "hello.o")
    assert proc.returncode == 0, _shown(proc)
    assert (work / "hello.o").read_bytes() == (work / "ref.o").read_bytes()
    assert f"compiled on {lan.srv.address}" in proc.stderr, _shown(proc)
    assert "meshcc[" not in proc.stderr, "the inetd server logged to the client's terminal"

    before = len(_summaries(lan, "COMPILE_OK"))
    (work / "hello.o").unlink()
    env["DISTCC_HOSTS"] = f"@{lan.srv.address}:{lan.logged}{lzo}"
    proc = _compile(lan, env, work, "distcc", "gcc", "-O2", "-c", "hello.c", "-o", "hello.o")
    assert proc.returncode == 0, _shown(proc)
    assert (work / "hello.o").read_bytes() == (work / "ref.o").read_bytes()
    ok = _summaries(lan, "COMPILE_OK")
    assert len(ok) == before + 1, lan.log_text()
    assert ok[-1].startswith(f"ssh:{lan.cli.address}:"), lan.log_text()  # sshd's SSH_CLIENT

    # A box whose `distccd` is a link to meshcc serves distcc's default command line.
    (work / "hello.o").unlink()
    env["DISTCC_HOSTS"] = f"@{lan.srv.address}:{lan.distccd_link}{lzo}"
    proc = _compile(lan, env, work, "distcc", "gcc", "-O2", "-c", "hello.c", "-o", "hello.o")
    assert proc.returncode == 0, _shown(proc)
    assert (work / "hello.o").read_bytes() == (work / "ref.o").read_bytes()


@pytest.mark.parametrize(
    "spec",
    [
        "@{srv}:{meshcc}",
        "root@{srv}/2:{logged},lzo",
    ],
)
def test_meshcc_gcc_to_meshcc_inetd(ssh_lan, client_env, work, spec):
    lan = ssh_lan
    hosts = spec.format(srv=lan.srv.address, meshcc=MESHCC, logged=lan.logged)
    env = lan.env(client_env, hosts)
    env["MESHCC_VERBOSE"] = "1"
    before = len(_summaries(lan, "COMPILE_OK"))
    proc = _compile(lan, env, work, "meshcc-gcc", "-O2", "-c", "hello.c", "-o", "hello.o")
    assert proc.returncode == 0, _shown(proc)
    assert (work / "hello.o").read_bytes() == (work / "ref.o").read_bytes()
    assert f"hello.c compiled on {hosts}" in proc.stderr, _shown(proc)
    if "logged" in spec:
        assert len(_summaries(lan, "COMPILE_OK")) == before + 1, lan.log_text()
    # The SSH host's slots are distcc's: cpu_ssh_HOST_N lock files, shared with distcc.
    locks = os.listdir(Path(env["DISTCC_DIR"]) / "lock")
    assert f"cpu_ssh_{lan.srv.address}_0" in locks, locks


def test_refusal_reason_reaches_meshcc_gcc(ssh_lan, client_env, work):
    """The server logs to its file (nothing on ssh's stderr), so the reason the client
    prints can only have come back as meshcc's ERRM over the ssh channel. (meshcc-gcc
    keeps option refusals such as -fplugin local itself; a source the server will not
    compile is one only the server can refuse.)"""
    lan = ssh_lan
    (work / "incbin.c").write_text('__asm__(".incbin \\"/etc/hostname\\"");\nint x;\n')
    env = lan.env(client_env, f"@{lan.srv.address}:{lan.logged}")
    cmd = ["meshcc-gcc", "-c", "incbin.c", "-o", "incbin.o"]
    proc = _compile(lan, env, work, *cmd)
    assert proc.returncode != 0, _shown(proc)  # DISTCC_FALLBACK=0: no local compile
    reason = "the source uses the assembler directive .incbin, which reads a file on the server"
    assert f"refused: {reason}" in proc.stderr, _shown(proc)
    assert f"job refused: {reason}" in lan.log_text()
    assert not (work / "incbin.o").exists()


@pytest.mark.skipif(shutil.which("distcc") is None, reason="distcc not installed")
def test_option_refusal_reaches_stock_distcc(ssh_lan, client_env, work):
    """Stock distcc sends -fdump-*; the server refuses it, and distcc prints the ERRM it
    did not expect as its "error context", so its user reads the reason too."""
    lan = ssh_lan
    env = lan.env(client_env, f"@{lan.srv.address}:{lan.logged}")
    cmd = ["distcc", "gcc", "-fdump-tree-original", "-c", "hello.c", "-o", "hello.o"]
    proc = _compile(lan, env, work, *cmd)
    assert proc.returncode != 0, _shown(proc)  # DISTCC_FALLBACK=0
    reason = "-fdump-tree-original writes compiler dump files"
    assert reason in proc.stderr, _shown(proc)
    assert f"job refused: {reason}" in lan.log_text()
    assert not list(work.glob("*original*")), "a dump file was written"


def test_meshcc_gcc_to_stock_distccd_inetd(ssh_lan, client_env, work):
    """``@host`` with no command: distcc's default, ``distccd --inetd --enable-tcp-insecure``."""
    if not os.access("/usr/bin/distccd", os.X_OK):
        pytest.skip("distccd not installed")
    lan = ssh_lan
    for hosts in (f"@{lan.srv.address}", f"root@{lan.srv.address},lzo"):
        env = lan.env(client_env, hosts)
        env["MESHCC_VERBOSE"] = "1"
        out = work / "hello.o"
        out.unlink(missing_ok=True)
        proc = _compile(lan, env, work, "meshcc-gcc", "-O2", "-c", "hello.c", "-o", "hello.o")
        assert proc.returncode == 0, _shown(proc)
        assert out.read_bytes() == (work / "ref.o").read_bytes()
        assert f"hello.c compiled on {hosts}" in proc.stderr, _shown(proc)


def test_ssh_failure_falls_back_locally(ssh_lan, client_env, work):
    """An unknown host key: ssh refuses and exits 255. Its own message reaches the user,
    meshcc says how ssh ended, compiles locally and backs the host off (distcc's file)."""
    lan = ssh_lan
    env = lan.env(client_env, f"@{lan.srv.address}:{MESHCC}")
    env["DISTCC_SSH"] += " -o UserKnownHostsFile=/dev/null"  # more words, as distcc splits
    env["DISTCC_FALLBACK"] = "1"
    proc = _compile(lan, env, work, "meshcc-gcc", "-O2", "-c", "hello.c", "-o", "hello.o")
    assert proc.returncode == 0, _shown(proc)
    assert (work / "hello.o").read_bytes() == (work / "ref.o").read_bytes()
    assert "Host key verification failed" in proc.stderr, _shown(proc)
    assert "ssh exited with status 255" in proc.stderr, _shown(proc)
    locks = os.listdir(Path(env["DISTCC_DIR"]) / "lock")
    assert f"backoff_ssh_{lan.srv.address}_0" in locks, locks


def test_parallel_jobs_share_the_ssh_host(ssh_lan, client_env, tmp_path):
    """As under `make -j`: more compiles at once than the host's /LIMIT. Each takes one of
    distcc's cpu_ssh slots (waiting for one when all are busy), runs its own ssh session,
    and every object comes back byte-identical; none falls back (DISTCC_FALLBACK=0)."""
    lan = ssh_lan
    w = tmp_path / "par"
    w.mkdir()
    names = [f"unit{i}" for i in range(6)]
    for i, name in enumerate(names):
        (w / f"{name}.c").write_text(f"int {name}(int x) {{ return x * {i + 3} - {i}; }}\n")
        subprocess.run(["gcc", "-O2", "-c", f"{name}.c", "-o", f"{name}.ref"], cwd=w, check=True)
    env = lan.env(client_env, f"@{lan.srv.address}/3:{lan.logged},lzo")
    env["DISTCC_PAUSE_TIME_MSEC"] = "50"
    before = len(_summaries(lan, "COMPILE_OK"))
    procs = [
        lan.cli.popen(
            ["meshcc-gcc", "-O2", "-c", f"{name}.c", "-o", f"{name}.o"],
            cwd=w,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    results = [(p.communicate(timeout=180), p.returncode) for p in procs]
    for ((_, err), code), name in zip(results, names, strict=True):
        assert code == 0, f"{name}: exit {code}\n{err}"
        assert (w / f"{name}.o").read_bytes() == (w / f"{name}.ref").read_bytes(), name
    assert len(_summaries(lan, "COMPILE_OK")) == before + len(names), lan.log_text()
