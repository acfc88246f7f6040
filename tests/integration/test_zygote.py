"""The C launcher and the warm zygote (packaging/launcher, meshcc/client/zygote.py).

Why: ``meshcc-gcc`` as a small C program handing each job to a forked worker of a warm
Python process must behave exactly as the Python launcher: same objects, exit codes,
diagnostics, signals, stdin and inherited descriptors, and it must never hand a job
through an unsafe place or in a context it cannot reproduce. Everything here is real:
gcc, stock distccd on loopback, make, a zlib build, signals to real processes.

The zygote is not used by root (see the launcher), so every client runs as a throwaway
user (``setpriv``), which needs root to create: the module is skipped otherwise. The
launcher is built by ``packaging/launcher/build.sh`` (what install.sh runs) over a venv
of Debian's ``/usr/bin/python3``, the interpreter users run.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import REPO_ROOT, Daemon, hash_objects
from userprocs import STATS_CODE, end_processes, pids_of

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creates a user account: needs root"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for the launcher"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3"),
]


class User:
    """A throwaway account, its work directory, and the processes it leaves."""

    def __init__(self, entry: pwd.struct_passwd, prefix: Path) -> None:
        self.entry = entry
        self.uid = entry.pw_uid
        self.prefix = prefix
        self.sockdir = Path(f"/tmp/meshcc-{self.uid}")
        self.work = Path(tempfile.mkdtemp(prefix="meshcc-zygote-", dir="/tmp"))
        os.chown(self.work, self.uid, entry.pw_gid)
        for sub in ("distcc", "tmp"):
            (self.work / sub).mkdir()
            os.chown(self.work / sub, self.uid, entry.pw_gid)

    @property
    def gcc(self) -> str:
        return str(self.prefix / "bin" / "meshcc-gcc")

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.work),
            "DISTCC_DIR": str(self.work / "distcc"),
            "TMPDIR": str(self.work / "tmp"),
            "MESHCC_SOCKET": str(self.work / "no-daemon.sock"),
            "DISTCC_HOSTS": "",
            # A UTF-8 locale, so that a Python in between (the fd test's) adds no LC_CTYPE
            # (C locale coercion), which is part of the zygote's key.
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def argv(self, *cmd: str) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.entry.pw_gid}",
            "--clear-groups",
            *cmd,
        ]

    def run(
        self, *cmd: str, env: dict[str, str] | None = None, cwd: Path | None = None, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            self.argv(*cmd),
            env=env or self.env(),
            cwd=cwd or self.work,
            capture_output=True,
            text=True,
            timeout=300,
            **kw,
        )

    def stats(self, pid: int = 0) -> dict[str, int] | None:
        """A zygote's counters: the one with ``pid``, else the first that answers."""
        proc = self.run("/usr/bin/python3", "-c", STATS_CODE, str(self.sockdir))
        found = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        found = [s for s in found if s["pid"] == pid] if pid else found
        return found[0] if found else None

    def wait_zygote(self, old_pid: int = 0, timeout: float = 30.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats is not None and stats["pid"] != old_pid:
                return stats
            assert time.monotonic() < deadline, "no zygote answered"
            time.sleep(0.1)

    def warm(self) -> dict[str, int]:
        """Make sure a zygote serves this user's default context; its counters."""
        stats = self.stats()
        if stats is not None:
            return stats
        src = self.work / "warm.c"
        src.write_text("int warm(void) { return 1; }\n")
        proc = self.run(self.gcc, "-c", "warm.c", "-o", "warm.o")
        assert proc.returncode == 0, proc.stderr
        return self.wait_zygote()

    def pids(self) -> list[int]:
        return pids_of(self.uid)

    def cleanup(self) -> None:
        end_processes(self.uid)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture(scope="module")
def prefix() -> Iterator[Path]:
    """A venv of /usr/bin/python3 with the C launcher built over a copy of this checkout's
    package that the throwaway user can read (a checkout may not be: the fresh-root check
    keeps it in /root, 0700). The test venv's site-packages come after it, for the optional
    codecs where the user can read them."""
    root = Path(tempfile.mkdtemp(prefix="meshcc-launcher-", dir="/tmp"))
    root.chmod(0o755)
    try:
        subprocess.run(
            ["/usr/bin/python3", "-m", "venv", "--without-pip", str(root / "p")], check=True
        )
        src = root / "src"
        shutil.copytree(
            REPO_ROOT / "meshcc", src / "meshcc", ignore=shutil.ignore_patterns("__pycache__")
        )
        subprocess.run(["chmod", "-R", "a+rX", str(src)], check=True)
        site = sysconfig.get_path("purelib")
        subprocess.run(
            [REPO_ROOT / "packaging" / "launcher" / "build.sh", root / "p", src, site],
            check=True,
            capture_output=True,
        )
        yield root / "p"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def user(prefix: Path) -> Iterator[User]:
    name = f"mcz{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    made = User(pwd.getpwnam(name), prefix)
    try:
        yield made
    finally:
        made.cleanup()
        subprocess.run(["userdel", name], check=False)


def _own(user: User, path: Path) -> None:
    subprocess.run(["chown", "-R", f"{user.uid}:{user.entry.pw_gid}", str(path)], check=True)


def _stat_fields(pid: int) -> list[str] | None:
    """A process's /proc stat fields after the command name (state, ppid, ...); None when
    it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _processes() -> Iterator[tuple[int, list[str]]]:
    """Each live process's pid and its stat fields (:func:`_stat_fields`); one that ends
    meanwhile is skipped."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                yield int(entry), fields


def _children_of(pid: int) -> list[int]:
    return [child for child, fields in _processes() if int(fields[1]) == pid]


def _pgid_members(pgid: int) -> list[int]:
    return [p for p, fields in _processes() if int(fields[2]) == pgid and fields[0] != "Z"]


def _wait_for(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# --------------------------------------------------------------------------- a real build


def test_zlib_build_through_the_zygote_is_byte_identical(
    user: User, zlib_source: Path, distccd: Callable[..., Daemon]
) -> None:
    """Every compile and link of a zlib -j4 build runs in a worker the zygote forked (its
    job counter grows by at least the number of compiles, its pid does not change), the
    remote jobs reach distccd, and every object equals plain gcc's."""
    tree = user.work / "zlib"
    shutil.copytree(zlib_source, tree, symlinks=True)
    (tree / "objects.mk").write_text(
        "meshcc-objects: libz.a $(PIC_OBJS) example minigzip example64.o minigzip64.o\n"
    )
    _own(user, tree)
    env = user.env()
    make = ["make", "-j4", "-f", "Makefile", "-f", "objects.mk"]
    proc = user.run("./configure", env=dict(env, CC="gcc"), cwd=tree)
    assert proc.returncode == 0, proc.stderr
    proc = user.run(*make, "meshcc-objects", env=env, cwd=tree)
    assert proc.returncode == 0, proc.stderr
    reference = hash_objects(tree, "*.o") | hash_objects(tree, "*.lo")
    assert len(reference) >= 30
    compiles = sum(1 for line in proc.stdout.splitlines() if " -c " in f" {line} ")
    user.run("make", "-f", "Makefile", "clean", env=env, cwd=tree)

    daemon = distccd(jobs=4)
    before = user.warm()
    env = user.env(DISTCC_HOSTS=daemon.host_spec(), DISTCC_FALLBACK="0")
    proc = user.run(*make, f"CC={user.gcc}", "meshcc-objects", env=env, cwd=tree)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    built = hash_objects(tree, "*.o") | hash_objects(tree, "*.lo")
    assert sorted(built) == sorted(reference)
    assert not [name for name in reference if built[name] != reference[name]]
    after = user.stats()
    assert after is not None and after["pid"] == before["pid"]
    assert after["jobs"] - before["jobs"] >= compiles >= 30
    assert after["refused"] == 0


# --------------------------------------------------------------------------- same as Python


def test_failing_compile_same_status_and_stderr_as_python_launcher(
    user: User, distccd: Callable[..., Daemon]
) -> None:
    """A compile error (remote, then retried locally) and a missing source give the same
    exit status and the same stderr, shown once, through the zygote and without it."""
    daemon = distccd()
    (user.work / "bad.c").write_text("int main(void) { return undeclared_thing; }\n")
    before = user.warm()
    env = user.env(DISTCC_HOSTS=daemon.host_spec())
    for args in (("-c", "bad.c", "-o", "bad.o"), ("-c", "missing.c", "-o", "m.o")):
        fast = user.run(user.gcc, *args, env=env)
        slow = user.run(user.gcc, *args, env=dict(env, MESHCC_ZYGOTE="0"))
        assert fast.returncode == slow.returncode != 0
        assert fast.stderr == slow.stderr
        assert fast.stderr.count("undeclared_thing") <= 2  # gcc's error, once
        assert not (user.work / "bad.o").exists()
    after = user.stats()
    assert after is not None and after["jobs"] == before["jobs"] + 2


def test_verbose_timeline_through_the_zygote(user: User, distccd: Callable[..., Daemon]) -> None:
    """MESHCC_VERBOSE=1 gives the remote job's timeline line, once, from the worker."""
    daemon = distccd()
    (user.work / "ok.c").write_text("int ok(void) { return 2; }\n")
    user.warm()
    env = user.env(DISTCC_HOSTS=daemon.host_spec(), MESHCC_VERBOSE="1")
    proc = user.run(user.gcc, "-c", "ok.c", "-o", "ok.o", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " timeline " in line]
    assert len(lines) == 1, proc.stderr
    assert re.search(r"timeline ok\.c on 127\.0\.0\.1:\d+: python [\d.]+ ", lines[0]), lines[0]
    assert " end " in lines[0]


def test_stdin_source(user: User) -> None:
    """``-x c -`` reads the launcher's stdin in the worker: the object equals gcc's."""
    before = user.warm()
    src = "int from_stdin(void) { return 7; }\n"
    proc = user.run(user.gcc, "-x", "c", "-c", "-", "-o", "s.o", input=src)
    assert proc.returncode == 0, proc.stderr
    ref = user.run("gcc", "-x", "c", "-c", "-", "-o", "r.o", input=src)
    assert ref.returncode == 0
    assert (user.work / "s.o").read_bytes() == (user.work / "r.o").read_bytes()
    after = user.stats()
    assert after is not None and after["jobs"] == before["jobs"] + 1


def test_meshcc_gcc_and_masquerade_links_take_the_zygote(user: User) -> None:
    """``meshcc gcc ...`` and a masquerade link (``gcc -> meshcc`` early on PATH) run in
    the zygote and give gcc's object; ``meshcc --version`` (a subcommand or option) runs
    the Python command, as before."""
    before = user.warm()
    (user.work / "m.c").write_text("int m(void) { return 11; }\n")
    meshcc = str(user.prefix / "bin" / "meshcc")
    proc = user.run(meshcc, "gcc", "-c", "m.c", "-o", "m1.o")
    assert proc.returncode == 0, proc.stderr
    masq = user.work / "masq"
    masq.mkdir(exist_ok=True)
    link = masq / "gcc"
    if not link.is_symlink():
        link.symlink_to(meshcc)
    env = user.env(PATH=f"{masq}:/usr/bin:/bin")
    proc = user.run("gcc", "-c", "m.c", "-o", "m2.o", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = user.run("/usr/bin/gcc", "-c", "m.c", "-o", "m3.o")
    assert proc.returncode == 0
    ref = (user.work / "m3.o").read_bytes()
    assert (user.work / "m1.o").read_bytes() == ref == (user.work / "m2.o").read_bytes()
    after = user.stats(before["pid"])
    assert after is not None and after["jobs"] == before["jobs"] + 2
    version = user.run(meshcc, "--version")
    assert version.returncode == 0 and version.stdout.startswith("meshcc "), version.stderr
    after = user.stats(before["pid"])
    assert after is not None and after["jobs"] == before["jobs"] + 2


FAKE_GCC = """#!/bin/sh
# A stand-in compiler: reports its parent chain on fd 5 and exits as asked.
echo "$PPID $(cut -d' ' -f4 /proc/$PPID/stat)" >&5
[ "$FAKE_STATUS" = term ] && kill -TERM $$
exit "${FAKE_STATUS:-0}"
"""


def test_inherited_descriptor_and_exit_status_reach_the_compiler(user: User) -> None:
    """An inherited descriptor (as make's jobserver pipe) is at the same number in the
    compiler the worker runs; the compiler's exit status is the launcher's, a death by a
    signal included; the worker is the zygote's child."""
    bindir = user.work / "fakebin"
    bindir.mkdir(exist_ok=True)
    (bindir / "gcc").write_text(FAKE_GCC)
    (bindir / "gcc").chmod(0o755)
    _own(user, bindir)
    zygote = user.warm()["pid"]
    for status in ("0", "3", "term"):
        r, w = os.pipe()
        env = user.env(PATH=f"{bindir}:/usr/bin:/bin", FAKE_STATUS=status)
        # The launcher gets the pipe at fd 5 (and at its own number), as make's children do.
        script = "import os, sys; os.dup2(int(sys.argv[1]), 5); os.execv(sys.argv[2], sys.argv[2:])"
        proc = user.run(
            "/usr/bin/python3", "-c", script, str(w), user.gcc, "--version", env=env, pass_fds=(w,)
        )
        os.close(w)
        got = os.read(r, 200).decode()
        os.close(r)
        want = -signal.SIGTERM if status == "term" else int(status)  # died of it, as gcc did
        assert proc.returncode == want, proc.stderr
        assert str(zygote) in got.split(), (zygote, got)


def test_large_environment_and_argv(user: User) -> None:
    """A request far over one socket read (300 KB of variables, 2000 arguments) arrives
    whole: the compiler sees them, and the job is the zygote's."""
    before = user.warm()
    bindir = user.work / "envbin"
    bindir.mkdir(exist_ok=True)
    (bindir / "gcc").write_text(
        '#!/bin/sh\nprintf %s "$BIG0$BIG1$BIG2" | wc -c > big.len\necho $# > argc\n'
    )
    (bindir / "gcc").chmod(0o755)
    _own(user, bindir)
    big = {f"BIG{i}": str(i) * 100_000 for i in range(3)}  # one string may not pass 128 KiB
    env = user.env(PATH=f"{bindir}:/usr/bin:/bin", **big)
    args = [f"-DA{i}" for i in range(2000)]
    proc = user.run(user.gcc, "--version", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (user.work / "big.len").read_text().strip() == "300000"
    assert (user.work / "argc").read_text().strip() == "2001"
    after = user.stats()
    assert after is not None and after["jobs"] == before["jobs"] + 1


@pytest.mark.parametrize("mask", ["002", "077"])
def test_umask_is_the_launchers(user: User, distccd: Callable[..., Daemon], mask: str) -> None:
    """Objects (remote and local) get the launcher's umask, not the zygote's (077)."""
    daemon = distccd()
    before = user.warm()
    (user.work / "um.c").write_text("int um(void) { return 9; }\n")
    modes = []
    for hosts in (daemon.host_spec(), ""):
        for zyg in ("1", "0"):
            out = user.work / f"um-{zyg}-{len(hosts)}.o"
            script = f'umask {mask} && exec "$0" -c um.c -o {out.name}'
            env = user.env(DISTCC_HOSTS=hosts, MESHCC_ZYGOTE=zyg)
            proc = user.run("/bin/sh", "-c", script, user.gcc, env=env)
            assert proc.returncode == 0, proc.stderr
            modes.append(out.stat().st_mode & 0o777)
    assert modes == [0o666 & ~int(mask, 8)] * 4, [oct(m) for m in modes]
    after = user.stats(before["pid"])
    assert after is not None and after["jobs"] == before["jobs"] + 2


# --------------------------------------------------------------------------- signals


def _blocked_compile(
    user: User, name: str, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], Path]:
    """A launcher whose job's preprocessor is stuck opening a FIFO (it waits for a writer)."""
    fifo = user.work / f"{name}.h"
    os.mkfifo(fifo)
    os.chown(fifo, user.uid, user.entry.pw_gid)
    (user.work / f"{name}.c").write_text(f'#include "{name}.h"\nint x;\n')
    # SIGINT and SIGQUIT as under a terminal: a command started in the background of a
    # non-interactive shell inherits them ignored (the fresh-root check runs the tests that
    # way), and the launcher rightly relays no signal its compile would ignore.
    launcher = subprocess.Popen(
        [
            "env",
            "--default-signal=INT,QUIT",
            *user.argv(*wrap, user.gcc, "-c", f"{name}.c", "-o", f"{name}.o"),
        ],
        env=env or user.env(),
        cwd=user.work,
        stderr=subprocess.PIPE,
    )
    return launcher, fifo


def _release(fifo: Path, header: bytes) -> None:
    """Let a :func:`_blocked_compile`'s preprocessor read its header: the job goes on."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, header)
    finally:
        os.close(fd)


def _job_group(user: User, zygote: int) -> int:
    found: list[int] = []

    def worker_started() -> bool:
        found[:] = [pid for pid in _children_of(zygote) if _children_of(pid)]
        return bool(found)

    assert _wait_for(worker_started), "no worker with a preprocessor under the zygote"
    return found[0]


def test_ctrl_c_stops_the_worker_and_its_cpp_and_leaves_no_output(user: User) -> None:
    zygote = user.warm()["pid"]
    launcher, _fifo = _blocked_compile(user, "slow")
    try:
        worker = _job_group(user, zygote)
        assert _pgid_members(worker), "the worker leads its own process group"
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=20)
        # By SIGINT, or 1 when gcc's driver saw cc1 die of it first (gcc's own race, the
        # same under a terminal's ^C without meshcc); the exact relay of a status is
        # test_inherited_descriptor_and_exit_status_reach_the_compiler's.
        assert launcher.returncode in (-signal.SIGINT, 1), launcher.returncode
        assert _wait_for(lambda: not _pgid_members(worker)), "the job's group outlived ^C"
        assert not (user.work / "slow.o").exists()
        assert not [p for p in os.listdir(user.work) if p.startswith("slow.o")]
    finally:
        launcher.kill()
        launcher.wait()


def _state(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[0] if fields is not None else "gone"


def test_ctrl_z_stops_and_fg_continues_the_job(user: User) -> None:
    """SIGTSTP to the launcher stops the worker's group and the launcher (as a shell's
    job control expects); SIGCONT continues both; the job then finishes normally."""
    zygote = user.warm()["pid"]
    launcher, fifo = _blocked_compile(user, "paused")
    try:
        worker = _job_group(user, zygote)
        launcher.send_signal(signal.SIGTSTP)
        assert _wait_for(lambda: _state(launcher.pid) == "T"), _state(launcher.pid)
        assert _wait_for(lambda: _state(worker) == "T"), _state(worker)
        launcher.send_signal(signal.SIGCONT)
        assert _wait_for(lambda: _state(worker) in ("S", "R")), _state(worker)
        _release(fifo, b"int from_fifo;\n")
        launcher.wait(timeout=60)
        assert launcher.returncode == 0
        assert (user.work / "paused.o").exists()
    finally:
        launcher.kill()
        launcher.wait()


def test_a_remote_jobs_end_reaches_the_launcher_from_the_worker(
    user: User, distccd: Callable[..., Daemon]
) -> None:
    """The worker tells its launcher the job's status itself, before its own teardown, so
    make does not wait for the zygote to reap it: with the zygote stopped once the job
    runs, the launcher still ends, with the job's status and its object; the zygote,
    continued, reaps the worker and counts the job as before."""
    daemon = distccd()
    zygote = user.warm()["pid"]
    before = user.stats(zygote)
    assert before is not None
    env = user.env(DISTCC_HOSTS=daemon.host_spec(), DISTCC_FALLBACK="0")
    launcher, fifo = _blocked_compile(user, "early", env)
    header = b"int from_fifo(void) { return 7; }\n"
    try:
        _job_group(user, zygote)  # the worker runs: its preprocessor waits for the header
        os.kill(zygote, signal.SIGSTOP)
        try:
            _release(fifo, header)
            launcher.wait(timeout=30)
        finally:
            os.kill(zygote, signal.SIGCONT)
        assert launcher.stderr is not None
        assert launcher.returncode == 0, launcher.stderr.read()
        fifo.unlink()
        fifo.write_bytes(header)
        ref = user.run("gcc", "-c", "early.c", "-o", "early-ref.o")
        assert ref.returncode == 0, ref.stderr
        assert (user.work / "early.o").read_bytes() == (user.work / "early-ref.o").read_bytes()

        def reaped() -> bool:
            now = user.stats(zygote)
            return now is not None and now["jobs"] == before["jobs"] + 1 and not now["running"]

        assert _wait_for(reaped), "the zygote did not reap the worker once continued"
        daemon.wait_for_jobs(1)
        assert daemon.jobs("COMPILE_OK"), daemon.diagnostics()  # the job did go remote
    finally:
        launcher.kill()
        launcher.wait()


def test_a_zygote_killed_during_a_remote_job_does_not_cost_the_job(
    user: User, distccd: Callable[..., Daemon]
) -> None:
    """The worker holds its own end of the connection and reports the job's status itself,
    so a zygote that dies while a remote job runs (killed here) no longer fails that job
    (before: "the meshcc zygote ended while running the job", status 100); the next
    compile starts a new zygote."""
    daemon = distccd()
    zygote = user.warm()["pid"]
    env = user.env(DISTCC_HOSTS=daemon.host_spec(), DISTCC_FALLBACK="0")
    launcher, fifo = _blocked_compile(user, "orphan", env)
    try:
        _job_group(user, zygote)
        os.kill(zygote, signal.SIGKILL)
        assert _wait_for(lambda: _zombie(zygote)), "the zygote outlived SIGKILL"
        _release(fifo, b"int orphan_header;\n")
        launcher.wait(timeout=30)
        assert launcher.stderr is not None
        err = launcher.stderr.read().decode(errors="replace")
        assert launcher.returncode == 0, err
        assert "zygote ended" not in err
        assert (user.work / "orphan.o").exists()
        assert user.warm()["pid"] != zygote  # the next compile starts a new one
    finally:
        launcher.kill()
        launcher.wait()


def test_sigkill_of_the_launcher_ends_the_job_group(user: User) -> None:
    zygote = user.warm()["pid"]
    launcher, _fifo = _blocked_compile(user, "killed")
    try:
        worker = _job_group(user, zygote)
        launcher.kill()
        launcher.wait(timeout=20)
        assert _wait_for(lambda: not _pgid_members(worker)), "the job outlived its launcher"
        assert not (user.work / "killed.o").exists()
    finally:
        launcher.kill()
        launcher.wait()


# --------------------------------------------------------------------------- refusals


def _compile_ok(user: User, env: dict[str, str] | None = None) -> None:
    (user.work / "plain.c").write_text("int plain(void) { return 3; }\n")
    proc = user.run(user.gcc, "-c", "plain.c", "-o", "plain.o", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (user.work / "plain.o").exists()
    (user.work / "plain.o").unlink()


@pytest.mark.parametrize(
    "extra",
    [{"MESHCC_ZYGOTE": "0"}, {"LD_PRELOAD": ""}, {"SANDBOX_ON": "1"}, {"SANDBOX_ACTIVE": "x"}],
    ids=["MESHCC_ZYGOTE=0", "LD_PRELOAD", "SANDBOX_ON", "SANDBOX_ACTIVE"],
)
def test_bypass_runs_the_python_launcher(user: User, extra: dict[str, str]) -> None:
    before = user.warm()
    _compile_ok(user, user.env(**extra))
    after = user.stats()
    assert after is not None and after["jobs"] == before["jobs"]
    _compile_ok(user)  # and the control: counted
    after = user.stats()
    assert after is not None and after["jobs"] == before["jobs"] + 1


def _doctor_compile_client(user: User, as_user: bool) -> dict[str, object]:
    """`meshcc doctor`'s compile-client check, run from the built prefix (through its C
    launcher) as the throwaway user or as root."""
    cmd = [str(user.prefix / "bin" / "meshcc"), "doctor", "--no-browse", "--json", "--cc", "gcc"]
    env = user.env(PATH=f"{user.prefix / 'bin'}:/usr/bin:/bin")
    proc = (
        user.run(*cmd, env=env)
        if as_user
        else subprocess.run(
            cmd, env=env, cwd=user.work, capture_output=True, text=True, timeout=120
        )
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    [check] = [c for c in json.loads(proc.stdout)["checks"] if c["check"] == "compile client"]
    return dict(check)


def test_doctor_tells_whether_compiles_take_the_zygote(user: User) -> None:
    """`meshcc doctor` says the installed meshcc-gcc is the C launcher and that the user's
    compiles start in the zygote (as they do: counted by it); as root, that they start the
    Python launcher, and why."""
    check = _doctor_compile_client(user, as_user=True)
    assert check["status"] == "OK", check
    assert check["details"] == {
        "path": str(user.prefix / "bin" / "meshcc-gcc"),
        "launcher": "c",
        "zygote": True,
    }
    before = user.warm()
    _compile_ok(user)
    after = user.stats(before["pid"])
    assert after is not None and after["jobs"] == before["jobs"] + 1
    check = _doctor_compile_client(user, as_user=False)
    assert check["status"] == "WARN" and "you are root" in str(check["found"]), check
    assert "regular user" in str(check["fix"])


def test_xdg_runtime_dir_holds_the_socket_when_it_is_ours(user: User) -> None:
    """With $XDG_RUNTIME_DIR ours, the socket lives in $XDG_RUNTIME_DIR/meshcc (0700);
    one that is not ours is passed over for /tmp/meshcc-UID."""
    runtime = user.work / "run"
    runtime.mkdir(mode=0o700)
    _own(user, runtime)
    env = user.env(XDG_RUNTIME_DIR=str(runtime))
    _compile_ok(user, env)
    mine = runtime / "meshcc"
    assert _wait_for(lambda: mine.is_dir() and any(p.is_socket() for p in mine.iterdir()))
    assert mine.stat().st_mode & 0o777 == 0o700
    _compile_ok(user, env)
    proc = user.run("/usr/bin/python3", "-c", STATS_CODE, str(mine))
    assert json.loads(proc.stdout.splitlines()[0])["jobs"] == 1
    foreign = Path(tempfile.mkdtemp(prefix="meshcc-foreign-run-", dir="/tmp"))  # root's
    try:
        foreign.chmod(0o755)
        before = user.warm()
        _compile_ok(user, user.env(XDG_RUNTIME_DIR=str(foreign)))
        after = user.stats(before["pid"])
        assert after is not None and after["jobs"] == before["jobs"] + 1
        assert not (foreign / "meshcc").exists()
    finally:
        shutil.rmtree(foreign, ignore_errors=True)
    for pid in _zygotes(user):  # the runtime dir's zygote: not the others' business
        if user.stats(pid) is None:
            os.kill(pid, signal.SIGKILL)


def test_cpu_time_limit_runs_the_python_launcher(user: User) -> None:
    """``ulimit -t`` is per process: a long-lived zygote would use it up over many jobs."""
    before = user.warm()
    (user.work / "plain.c").write_text("int plain(void) { return 3; }\n")
    script = 'ulimit -t 100000 && exec "$0" -c plain.c -o plain.o'
    proc = user.run("/bin/sh", "-c", script, user.gcc)
    assert proc.returncode == 0, proc.stderr
    assert (user.work / "plain.o").exists()
    after = user.stats()
    assert after is not None and after["jobs"] == before["jobs"]


def test_no_new_privs_is_another_zygote(user: User) -> None:
    """A launcher under no_new_privs (as a sandbox sets it) never hands its job to a zygote
    started without it: the key differs, so it gets (and starts) its own."""
    before = user.warm()
    (user.work / "plain.c").write_text("int plain(void) { return 3; }\n")
    for _ in range(2):
        proc = subprocess.run(
            ["setpriv", "--no-new-privs", *user.argv(user.gcc, "-c", "plain.c")],
            env=user.env(),
            cwd=user.work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
    after = user.stats(before["pid"])
    assert after is not None and after["jobs"] == before["jobs"]
    assert _wait_for(lambda: len(_zygotes(user)) >= 2), "the no_new_privs one starts its own"
    _keep_only(user, before["pid"])


def _keep_only(user: User, pid: int) -> None:
    """End every zygote but ``pid`` and remove their sockets (later tests see one)."""
    mine = user.stats(pid)
    assert mine is not None
    others = [p for p in _zygotes(user) if p != pid]
    for other in others:
        os.kill(other, signal.SIGKILL)
    assert _wait_for(lambda: all(_zombie(p) for p in others))
    for path in user.sockdir.iterdir():
        if not path.name.endswith(".lock") and _socket_pid(user, path) != pid:
            path.unlink()


def _socket_pid(user: User, path: Path) -> int:
    code = STATS_CODE.replace('glob.glob(sys.argv[1] + "/z-*")', "[sys.argv[1]]")
    proc = user.run("/usr/bin/python3", "-c", code, str(path))
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return int(json.loads(lines[0])["pid"]) if lines else 0


@pytest.mark.parametrize("how", ["group-writable", "world-writable", "another owner"])
def test_unsafe_socket_directory_is_refused(user: User, how: str) -> None:
    before = user.warm()
    mode = user.sockdir.stat().st_mode & 0o7777
    try:
        if how == "another owner":
            os.chown(user.sockdir, 0, 0)
        else:
            user.sockdir.chmod(0o770 if how == "group-writable" else 0o707)
        _compile_ok(user)
    finally:
        os.chown(user.sockdir, user.uid, user.entry.pw_gid)
        user.sockdir.chmod(mode)
    after = user.stats()
    assert after is not None and after["jobs"] == before["jobs"]
    assert after["pid"] == before["pid"]


def test_stale_socket_falls_back_and_a_new_zygote_starts(user: User) -> None:
    old = user.warm()["pid"]
    os.kill(old, signal.SIGKILL)
    assert _wait_for(lambda: not os.path.exists(f"/proc/{old}/stat") or _zombie(old))
    socks = [p for p in user.sockdir.iterdir() if not p.name.endswith(".lock")]
    assert socks, "a killed zygote leaves its socket file behind"
    _compile_ok(user)  # refused connection: the Python launcher, and a new zygote
    new = user.wait_zygote(old_pid=old)
    assert new["jobs"] == 0
    _compile_ok(user)
    again = user.stats()
    assert again is not None and again["pid"] == new["pid"] and again["jobs"] == 1


def _zygote_socket(user: User) -> Path:
    """The socket of the one zygote this user runs."""
    [sock] = [p for p in user.sockdir.glob("z-*") if not p.name.endswith(".lock")]
    return sock


def _zygotes(user: User) -> list[int]:
    """The user's zygotes: processes running the zygote's script, but not their children
    (a zygote's spare, or a worker not yet running its job, runs the same script)."""
    found: dict[int, int] = {}
    for pid in user.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = _stat_fields(pid)
        zygote_script = len(cmdline) > 2 and cmdline[2].endswith(b"/libexec/meshcc/zygote")
        if fields is not None and zygote_script:
            found[pid] = int(fields[1])
    return [pid for pid, parent in found.items() if parent not in found]


def test_at_most_one_zygote_per_key(user: User) -> None:
    """Launchers started together with no zygote all compile (by the Python launcher), and
    exactly one zygote appears: the key's lock, inherited by the zygote, holds."""
    for pid in _zygotes(user):
        os.kill(pid, signal.SIGKILL)
    assert _wait_for(lambda: not _zygotes(user))
    (user.work / "many.c").write_text("int many(void) { return 4; }\n")
    r, w = os.pipe()  # a build's descriptor, at a high number: the zygote must not keep it
    high = fcntl.fcntl(w, fcntl.F_DUPFD, 1500)
    os.close(w)
    try:
        procs = [
            subprocess.Popen(
                user.argv(user.gcc, "-c", "many.c", "-o", f"many{i}.o"),
                env=user.env(),
                cwd=user.work,
                stderr=subprocess.DEVNULL,
                pass_fds=(high,),
            )
            for i in range(8)
        ]
        assert [p.wait(timeout=120) for p in procs] == [0] * 8
    finally:
        os.close(high)
    zygote = user.wait_zygote()["pid"]
    pipe = os.readlink(f"/proc/self/fd/{r}")
    held = [os.readlink(f"/proc/{zygote}/fd/{fd}") for fd in os.listdir(f"/proc/{zygote}/fd")]
    os.close(r)
    assert pipe not in held, held
    time.sleep(1.0)  # any second zygote would have bound (or given up) by now
    assert len(_zygotes(user)) == 1, _zygotes(user)
    for _ in range(3):  # later launchers find it and start no other
        _compile_ok(user)
    assert len(_zygotes(user)) == 1


def test_idle_zygote_exits_and_removes_its_socket(user: User) -> None:
    """After its idle time without jobs the zygote exits, its socket gone first; the next
    launcher compiles (Python) and starts a fresh one."""
    for pid in _zygotes(user):
        os.kill(pid, signal.SIGKILL)
    assert _wait_for(lambda: not _zygotes(user))
    for left in user.sockdir.iterdir():  # killed zygotes' sockets: not what is tested
        if not left.name.endswith(".lock"):
            left.unlink()
    _compile_ok(user, user.env(MESHCC_ZYGOTE_IDLE="2"))
    first = user.wait_zygote()
    _compile_ok(user)
    assert _wait_for(lambda: first["pid"] not in _zygotes(user), timeout=20)
    assert not [p for p in user.sockdir.iterdir() if not p.name.endswith(".lock")]
    _compile_ok(user)
    assert user.wait_zygote(old_pid=first["pid"])["pid"] != first["pid"]


def test_a_zygote_of_another_key_refuses_and_python_runs_the_job(user: User) -> None:
    """A listener at our socket's name that serves another key (another install, locale,
    namespace...) answers 'V': the job runs in the Python launcher, nothing is handed
    over. Made here by linking a zygote's socket (LANG=C.UTF-8) to the name a LANG=C
    launcher uses."""
    a = user.warm()
    env_b = user.env(LANG="C")
    before_b = {p.name for p in user.sockdir.iterdir()}
    _compile_ok(user, env_b)  # starts B's zygote: its socket's name is B's key's

    def b_listening() -> bool:
        return any(
            not n.endswith(".lock") for n in {p.name for p in user.sockdir.iterdir()} - before_b
        )

    assert _wait_for(b_listening), "no second zygote for the other locale"
    names = {p.name for p in user.sockdir.iterdir()} - before_b
    sock_b = [n for n in names if not n.endswith(".lock")]
    assert len(sock_b) == 1, names
    pids = [pid for pid in _zygotes(user) if pid != a["pid"]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert _wait_for(lambda: all(_zombie(pid) for pid in pids))
    (user.sockdir / sock_b[0]).unlink()
    sock_a = [
        p for p in user.sockdir.iterdir() if not p.name.endswith(".lock") and p.name not in names
    ]
    assert len(sock_a) == 1
    os.link(sock_a[0], user.sockdir / sock_b[0])
    _compile_ok(user, env_b)
    after = user.stats()
    assert after is not None and after["pid"] == a["pid"] and after["jobs"] == a["jobs"]
    assert after["refused"] == a["refused"] + 1
    (user.sockdir / sock_b[0]).unlink()


def _zombie(pid: int) -> bool:
    return _state(pid) in ("Z", "gone")


def test_launcher_without_zygote_support_still_compiles(user: User, prefix: Path) -> None:
    """The Python launcher the C one falls back to is the one install.sh wrote before."""
    client = prefix / "libexec" / "meshcc" / "client"
    assert client.read_text().startswith(f"#!{prefix}/bin/python3 -IS\n")
    (user.work / "p.c").write_text("int p(void) { return 5; }\n")
    proc = user.run(str(prefix / "bin" / "python3"), "-IS", str(client), "meshcc-gcc", "-c", "p.c")
    assert proc.returncode == 0, proc.stderr
    assert (user.work / "p.o").exists()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_build_script_passes_shellcheck() -> None:
    script = REPO_ROOT / "packaging" / "launcher" / "build.sh"
    proc = subprocess.run(
        ["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


def test_launcher_compiles_without_warnings(tmp_path: Path) -> None:
    """-Wall -Wextra -Wpedantic -Wshadow -Wconversion clean, C99 (what the brief promises)."""
    proc = subprocess.run(
        [
            "cc",
            "-std=c99",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Wshadow",
            "-Wconversion",
            "-Werror",
            '-DMESHCC_PYTHON="/p/bin/python3"',
            '-DMESHCC_LIBEXEC="/p/libexec/meshcc"',
            '-DMESHCC_INSTALL_ID="0-test"',
            '-DMESHCC_PACKAGE="/p/meshcc/__init__.py"',
            "-o",
            str(tmp_path / "launcher"),
            str(REPO_ROOT / "packaging" / "launcher" / "meshcc-launcher.c"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_stopped_zygote_is_given_up_on_and_the_job_runs_once(user: User) -> None:
    """A zygote that does not hand the job over in time (stopped here, with its spare: the
    zygote's process group) is given up on: the job runs in the Python launcher, the
    zygote's socket is removed so later jobs do not wait too, and when they wake up, the
    spare that takes that request gets no "G" and runs nothing: the compile happens
    exactly once."""
    before = user.warm()
    zpid = before["pid"]
    sock = _zygote_socket(user)
    keep = user.sockdir / "z-kept-for-the-test"
    os.link(sock, keep)  # the stopped zygote stays reachable for its counters
    (user.work / "once.c").write_text("#warning compiled\nint once(void) { return 1; }\n")
    # Files, not the pipes user.run captures: the request sits unread in the stopped
    # zygote's socket with the descriptors it carries, which keeps a pipe's end open.
    script = 'exec "$0" -c once.c -o once.o > once.out 2> once.err < /dev/null'
    group = os.getpgid(zpid)  # its own (the launcher's setsid), with its spare in it
    os.killpg(group, signal.SIGSTOP)
    try:
        proc = user.run("/bin/sh", "-c", script, user.gcc)
    finally:
        os.killpg(group, signal.SIGCONT)
    try:
        err = (user.work / "once.err").read_text()
        assert proc.returncode == 0, err
        assert "did not take the job within" in err
        assert not sock.exists()
        ino = (user.work / "once.o").stat().st_ino

        def reaped() -> bool:
            now = user.stats(zpid)
            return now is not None and now["given_up"] == before["given_up"] + 1

        assert _wait_for(reaped), "the woken zygote's spare did not take the old request"
        now = user.stats(zpid)
        assert now is not None and now["jobs"] == before["jobs"] and not now["running"]
        assert (user.work / "once.err").read_text().count("warning: #warning compiled") == 1
        assert (user.work / "once.o").stat().st_ino == ino
    finally:
        os.kill(zpid, signal.SIGKILL)  # it holds the key's lock: later tests start afresh
        _wait_for(lambda: _zombie(zpid))
        keep.unlink()


# --------------------------------------------------------------------------- the spare

WHO_GCC = """#!/bin/sh
# A stand-in compiler: who ran it, and the environment it got.
echo "$$ $PPID" > who.out
env > "${ENV_OUT:-env.out}"
"""


def _fake_bin(user: User, name: str, script: str) -> Path:
    bindir = user.work / name
    bindir.mkdir(exist_ok=True)
    (bindir / "gcc").write_text(script)
    (bindir / "gcc").chmod(0o755)
    _own(user, bindir)
    return bindir


def _spare_of(user: User, zygote: int) -> int:
    """The zygote's spare once one waits (its pid from the counters, and its parent)."""
    found: list[int] = []

    def waiting() -> bool:
        now = user.stats(zygote)
        found[:] = [now["spare"]] if now is not None and now["spare"] else []
        return bool(found) and _state(found[0]) not in ("gone", "Z")

    assert _wait_for(waiting), "no spare waits"
    return found[0]


def test_each_job_runs_in_the_spare_forked_before_it(user: User) -> None:
    """The process that runs a job is the spare that waited for it (the zygote's child, in
    the zygote's group until then), and a new spare waits for the next job."""
    bindir = _fake_bin(user, "whobin", WHO_GCC)
    zygote = user.warm()["pid"]
    for _ in range(3):
        before = user.stats(zygote)
        assert before is not None
        spare = _spare_of(user, zygote)
        fields = _stat_fields(spare)
        assert fields is not None
        assert (int(fields[1]), int(fields[2])) == (zygote, os.getpgid(zygote))
        proc = user.run(user.gcc, "--version", env=user.env(PATH=f"{bindir}:/usr/bin:/bin"))
        assert proc.returncode == 0, proc.stderr
        _compiler, parent = map(int, (user.work / "who.out").read_text().split())
        assert parent == spare  # the worker spawns the compiler for --version
        after = user.stats(zygote)
        assert after is not None and after["jobs"] == before["jobs"] + 1
        assert _spare_of(user, zygote) != spare


def test_each_job_sees_its_own_environment_not_an_earlier_ones(user: User) -> None:
    """A spare installs the previous job's environment before its own job comes; the job
    still gets exactly its launcher's: what only an earlier job had is gone, what changed
    is the new value, in the C environ an exec'd compiler gets."""
    bindir = _fake_bin(user, "envbin2", WHO_GCC)
    before = user.warm()
    for k in range(1, 5):
        env = user.env(PATH=f"{bindir}:/usr/bin:/bin", ENV_OUT=f"env{k}.out", SHARED=str(k))
        env[f"ONLY_{k}"] = "x"
        if k == 4:
            del env["HOME"]  # one the zygote's earlier jobs all had
        proc = user.run(user.gcc, "--version", env=env)
        assert proc.returncode == 0, proc.stderr
        seen = dict(
            line.split("=", 1)
            for line in (user.work / f"env{k}.out").read_text().splitlines()
            if "=" in line
        )
        assert seen["SHARED"] == str(k)
        assert [name for name in seen if name.startswith("ONLY_")] == [f"ONLY_{k}"]
        assert ("HOME" in seen) == (k != 4)
    after = user.stats(before["pid"])
    assert after is not None and after["jobs"] == before["jobs"] + 4


def test_a_spare_ends_with_its_zygote(user: User) -> None:
    """A spare holds the zygote's listening socket, so it must not outlive the zygote: it
    exits when the zygote dies, and the next launcher starts a new zygote."""
    zygote = user.warm()["pid"]
    spare = _spare_of(user, zygote)
    os.kill(zygote, signal.SIGKILL)
    assert _wait_for(lambda: _state(spare) in ("gone", "Z")), "the spare outlived its zygote"
    _wait_for(lambda: _zombie(zygote))
    _compile_ok(user)
    new = user.wait_zygote(old_pid=zygote)
    _compile_ok(user)
    again = user.stats(new["pid"])
    assert again is not None and again["jobs"] == new["jobs"] + 1


def _compiles_without_the_zygote(user: User, zygote: int) -> None:
    """A launcher told "F" at once: the job compiles in Python, no hand-over timeout."""
    before = user.stats(zygote)
    assert before is not None
    (user.work / "plain.c").write_text("int plain(void) { return 3; }\n")
    proc = user.run(user.gcc, "-c", "plain.c", "-o", "plain.o")
    assert proc.returncode == 0, proc.stderr
    assert "did not take the job" not in proc.stderr
    after = user.stats(zygote)
    assert after is not None and after["jobs"] == before["jobs"]


def _compiles_through_the_zygote(user: User, zygote: int) -> None:
    before = user.stats(zygote)
    assert before is not None
    _compile_ok(user)
    after = user.stats(zygote)
    assert after is not None and after["jobs"] == before["jobs"] + 1


def test_a_lost_spare_is_replaced(user: User) -> None:
    zygote = user.warm()["pid"]
    spare = _spare_of(user, zygote)
    os.kill(spare, signal.SIGKILL)
    assert _wait_for(lambda: _spare_of(user, zygote) != spare)
    _compiles_through_the_zygote(user, zygote)


def test_a_connection_that_sends_nothing_delays_no_other_job(user: User) -> None:
    """A spare that took a connection whose request never comes holds only that
    connection: the zygote has forked the next spare, which takes the next launcher (no
    hand-over timeout, no fallback)."""
    zygote = user.warm()["pid"]
    holder = _hold(user, _zygote_socket(user), 1)
    try:
        _compiles_through_the_zygote(user, zygote)  # not after the hand-over timeout
    finally:
        _release_hold(holder)


def test_a_zygote_that_cannot_fork_answers_at_once_then_recovers(user: User) -> None:
    """With no spare (the zygote cannot fork: its process limit is below what this user
    runs), each launcher is told "F" at once and runs the Python launcher, no hand-over
    timeout; once forks work again a spare waits and jobs go through the zygote again."""
    zygote = user.warm()["pid"]
    spare = _spare_of(user, zygote)
    soft = _soft_limit(zygote, "Max processes")
    assert soft is not None
    # As the user (the soft limit only: lowering it and raising it back up to the hard one
    # needs no privilege, where root may lack CAP_SYS_RESOURCE in a container).
    lowered = user.run("prlimit", f"--pid={zygote}", "--nproc=1:")
    assert lowered.returncode == 0, lowered.stderr
    try:
        os.kill(spare, signal.SIGKILL)

        def no_spare() -> bool:
            now = user.stats(zygote)
            return now is not None and now["spare"] == 0

        assert _wait_for(no_spare)
        _compiles_without_the_zygote(user, zygote)
    finally:
        raised = user.run("prlimit", f"--pid={zygote}", f"--nproc={soft}:")
        assert raised.returncode == 0, raised.stderr
    _spare_of(user, zygote)
    _compiles_through_the_zygote(user, zygote)


_HOLD_CONNECTIONS = (
    "import socket, sys, time\n"
    "held = []\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); held.append(s)\n"
    "print('connected', flush=True)\n"
    "sys.stdin.read()\n"
)


def _hold(user: User, sock: Path, count: int) -> subprocess.Popen[str]:
    """``count`` connections to the zygote that send nothing, held until stdin closes."""
    holder = subprocess.Popen(
        user.argv("/usr/bin/python3", "-c", _HOLD_CONNECTIONS, str(sock), str(count)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "connected"
    return holder


def _release_hold(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=30)


def test_a_zygote_killed_during_a_hand_over_leaves_no_listener(user: User) -> None:
    """A spare that has taken a connection no longer holds the zygote's listening socket:
    if the zygote dies then, the next launcher is refused at once (not after the hand-over
    timeout) and starts a new zygote."""
    zygote = user.warm()["pid"]
    sock = _zygote_socket(user)
    holder = _hold(user, sock, 1)
    try:
        assert _wait_for(lambda: (user.stats(zygote) or {}).get("accepted", 0) > 0)
        os.kill(zygote, signal.SIGKILL)
        _wait_for(lambda: _zombie(zygote))
        (user.work / "plain.c").write_text("int plain(void) { return 3; }\n")
        proc = user.run(user.gcc, "-c", "plain.c", "-o", "plain.o")
        assert proc.returncode == 0, proc.stderr
        assert "did not take the job" not in proc.stderr
        assert user.wait_zygote(old_pid=zygote)["pid"] != zygote
    finally:
        _release_hold(holder)


def test_too_many_silent_connections_get_f_then_the_zygote_serves_again(user: User) -> None:
    """Hand-overs in progress are bounded (HANDING_MAX): past that, launchers are told "F"
    at once and compile in Python; once those connections end, a spare waits again."""
    from meshcc.client.zygote import HANDING_MAX

    zygote = user.warm()["pid"]
    sock = _zygote_socket(user)
    holder = _hold(user, sock, HANDING_MAX)
    try:

        def capped() -> bool:
            now = user.stats(zygote)
            return now is not None and now["spare"] == 0

        assert _wait_for(capped, timeout=60), user.stats(zygote)
        before = user.stats(zygote)
        assert before is not None
        time.sleep(1.0)  # capped, the zygote waits for its children's messages: no spinning
        idle = user.stats(zygote)
        assert idle is not None and idle["self_cpu_us"] - before["self_cpu_us"] < 200_000
        _compiles_without_the_zygote(user, zygote)
    finally:
        _release_hold(holder)
    _spare_of(user, zygote)
    _compiles_through_the_zygote(user, zygote)


_FEW_FILES = 24  # a descriptor limit the test's jobs run into


def test_a_zygote_short_of_descriptors_runs_no_job_it_could_not_watch(user: User) -> None:
    """The zygote holds each running job's launcher connection: it is how the end of a job
    whose compiler was exec'd (or whose worker died) reaches the launcher. A worker hands
    it over as it takes the job; with the zygote at its descriptor limit the connection
    would arrive without its descriptor, and the launcher of an exec'd compile would see
    its connection end and fail the build. Jobs beyond what the zygote can hold are told
    "F" instead and compile in Python; as jobs end, jobs go through the zygote again."""
    limited = ("prlimit", f"--nofile={_FEW_FILES}")  # the key's limit: a zygote of its own
    (user.work / "first.c").write_text("int first;\n")
    first = user.run(*limited, user.gcc, "-c", "first.c", "-o", "first.o")
    assert first.returncode == 0, first.stderr

    def zygotes_limited() -> list[int]:
        return [pid for pid in _zygotes(user) if _open_files(pid) == _FEW_FILES]

    assert _wait_for(lambda: bool(zygotes_limited())), "no zygote started under the limit"
    [zygote] = zygotes_limited()
    _spare_of(user, zygote)
    before = user.stats(zygote)
    assert before is not None
    room = _FEW_FILES - len(os.listdir(f"/proc/{zygote}/fd"))
    # Local compiles with no state file to keep (no DISTCC_DIR: the client says so and
    # compiles here): the worker execs gcc, so its end is the zygote's to report.
    env = user.env(DISTCC_DIR=str(user.work / "nostate"))
    jobs = [_blocked_compile(user, f"many{i}", env, limited) for i in range(room + 3)]
    try:

        def all_waiting() -> bool:
            return len([p for p, _ in _processes() if _comm(p) == "cc1"]) >= len(jobs)

        assert _wait_for(all_waiting, 60), "not every job reached its preprocessor"
        for i in range(len(jobs)):
            _release(user.work / f"many{i}.h", b"int y;\n")
        for i, (launcher, _fifo) in enumerate(jobs):
            _, err = launcher.communicate(timeout=60)
            assert launcher.returncode == 0, err.decode()
            assert b"the meshcc zygote" not in err, err.decode()
            assert (user.work / f"many{i}.o").stat().st_size > 0
    finally:
        for launcher, _fifo in jobs:
            launcher.kill()
            launcher.wait()
    after = user.stats(zygote)
    assert after is not None
    ran = after["jobs"] - before["jobs"]
    assert 0 < ran < len(jobs), (ran, len(jobs))  # the rest compiled without the zygote
    one = user.run(*limited, user.gcc, "-c", "first.c", "-o", "first.o")
    assert one.returncode == 0, one.stderr
    again = user.stats(zygote)
    assert again is not None and again["jobs"] == after["jobs"] + 1
    # Gone before the next test: the user's counters would otherwise come from two zygotes.
    os.kill(zygote, signal.SIGTERM)
    assert _wait_for(lambda: _zombie(zygote))  # (or gone)


def test_a_zygote_out_of_descriptors_waits_instead_of_spinning(user: User) -> None:
    """With its open-files limit lowered below what it holds (prlimit on the running
    zygote), it forks no spare and cannot even accept a launcher to answer "F": the
    connection stays queued. It stops watching its socket for a moment at a time rather
    than busy-loop on it; once the limit is back, the waiting launcher's job goes on."""
    zygote = user.warm()["pid"]
    assert _zygotes(user) == [zygote]  # the one this user's compiles go to
    spare = _spare_of(user, zygote)
    soft = _open_files(zygote)
    held = len(os.listdir(f"/proc/{zygote}/fd"))
    # Below what it holds, with a margin: a counters request's connection may still be
    # open in that count, and closing it must not make room.
    lowered = user.run("prlimit", f"--pid={zygote}", f"--nofile={held - 3}:")
    assert lowered.returncode == 0, lowered.stderr
    launcher: subprocess.Popen[str] | None = None
    try:
        # The spare forked before would take the next launcher, and hand its connection
        # to a zygote that cannot receive it: gone, and none forked in its place.
        os.kill(spare, signal.SIGKILL)
        assert _wait_for(lambda: not Path(f"/proc/{spare}").exists())
        (user.work / "starved.c").write_text("int starved;\n")
        launcher = subprocess.Popen(
            user.argv(user.gcc, "-c", "starved.c", "-o", "starved2.o"),
            env=user.env(),
            cwd=user.work,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # it connected and waits; the zygote has seen its connection
        before = _cpu_s(zygote)
        time.sleep(1.0)
        assert _cpu_s(zygote) - before < 0.2, "the zygote spun on a connection it cannot take"
        assert launcher.poll() is None, "the launcher did not wait for the zygote"
    finally:
        raised = user.run("prlimit", f"--pid={zygote}", f"--nofile={soft}:")
        assert raised.returncode == 0, raised.stderr
    assert launcher is not None
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, err
    assert "did not take the job" not in err, err  # served once the limit was back
    assert (user.work / "starved2.o").stat().st_size > 0
    _spare_of(user, zygote)
    _compiles_through_the_zygote(user, zygote)


def _cpu_s(pid: int) -> float:
    """A process's user + system CPU so far, in seconds (/proc/PID/stat)."""
    fields = _stat_fields(pid)
    assert fields is not None, f"process {pid} is gone"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _soft_limit(pid: int, name: str) -> str | None:
    """A process's soft limit ``name`` (as /proc/PID/limits names it, e.g. "Max open
    files"), as written there ("unlimited", say); None when the process is gone."""
    try:
        limits = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    [soft] = [line[len(name) :].split()[0] for line in limits.splitlines() if line.startswith(name)]
    return soft


def _open_files(pid: int) -> int:
    """A process's soft limit on open files (0 when it is gone)."""
    soft = _soft_limit(pid, "Max open files")
    return int(soft) if soft is not None else 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
