"""``meshcc top`` as a person uses it: in a real terminal (tmux: send-keys to type,
capture-pane to read the screen), against a real daemon, while a real build runs.

* A loopback daemon (discovery off) whose compiler is gcc behind a gate: a compile holds
  until the test opens the gate, so a stock distcc 3.4 job sits in its Compile phase on
  the daemon for as long as the test looks. top must show the daemon's header, the job
  (from the state file distcc itself wrote, the one distccmon-text reads), then see it
  finish; ``q`` and Ctrl-C must give the shell back with the terminal restored.
* No daemon: a plain snapshot that says so and still lists this box's compiles.
* Two daemons in network namespaces: top on one lists the other peer.

Waits are bounded polls; nothing asserts on elapsed time.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import netns
from meshd import Meshd, private_dir, trusted_dir
from netns import Lan

TMUX = shutil.which("tmux")
PROMPT = "top-test$ "

# gcc, except that a compile (-c, not -E) first writes the marker and then waits while
# the gate file exists (at most 60 s): the job stays on the daemon until the test lets go.
GATED_GCC = """#!/bin/sh
compile=
for a in "$@"; do
    case "$a" in
        -c) compile=1 ;;
        -E) compile= ; break ;;
    esac
done
if [ -n "$compile" ]; then
    touch "{marker}"
    i=0
    while [ -e "{gate}" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
fi
exec /usr/bin/gcc "$@"
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tmux:
    """A private tmux server (its own socket, no config) running one bash in a pane."""

    def __init__(self, workdir: Path, env: dict[str, str], width: int = 160, height: int = 45):
        assert TMUX is not None
        self.sock = str(workdir / "tmux.sock")
        self.env = dict(env, TERM="xterm")
        self.size = (width, height)
        self.server_pid: int | None = None

    def start(self) -> Tmux:
        width, height = self.size
        self._tmux(
            "new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
            "bash --norc --noprofile",
        )  # fmt: skip
        self.server_pid = int(self._tmux("display-message", "-p", "#{pid}").strip())
        self.type(f"PS1='{PROMPT}'; clear")  # bash run by root ignores PS1 from the environment
        self.wait(lambda s: s.rstrip().endswith(PROMPT.rstrip()), 10, "the shell's prompt")
        return self

    def _tmux(self, *args: str) -> str:
        assert TMUX is not None
        p = subprocess.run(
            [TMUX, "-S", self.sock, "-f", "/dev/null", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 0, f"tmux {args}: {p.stderr}"
        return p.stdout

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "top", "-l", line)
        self._tmux("send-keys", "-t", "top", "Enter")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "top", *keys)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top")

    def alternate_screen(self) -> bool:
        """Is a full-screen program's screen up (curses' smcup, undone by rmcup)?"""
        return self._tmux("display-message", "-p", "-t", "top", "#{alternate_on}").strip() == "1"

    def pane_pid(self) -> int:
        """The pid of the pane's shell."""
        return int(self._tmux("display-message", "-p", "-t", "top", "#{pane_pid}").strip())

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "top", "-x", str(width), "-y", str(height))

    def wait(self, pred: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if pred(text):
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout}s; the screen:\n{text}")
            time.sleep(0.1)

    def kill(self) -> None:
        """End this server (its socket names it) and, to be sure, its process by pid."""
        subprocess.run([str(TMUX), "-S", self.sock, "kill-server"], capture_output=True, timeout=10)
        if self.server_pid is not None:
            try:
                os.kill(self.server_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Tmux]]:
    """Start a :class:`Tmux` with an environment; every one is killed after the test."""
    made: list[Tmux] = []

    def start(env: dict[str, str]) -> Tmux:
        made.append(Tmux(tmp_path, env))
        return made[-1].start()

    yield start
    for t in made:
        t.kill()


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def _shell_is_back(tmux: Tmux) -> None:
    """The program is gone, the terminal is as the shell left it: normal screen, echo and
    line editing on (curses turns both off), and typed commands run."""
    netns.wait_for(lambda: not tmux.alternate_screen(), 10, what="the normal screen back")
    # Type only once the shell prompts again: text typed while the program is still ending
    # is read by nobody, or echoed without its Enter (seen in the fresh-root CI run).
    tmux.wait(lambda s: s.rstrip().splitlines()[-1:] == [PROMPT.rstrip()], 10, "the shell's prompt")
    tmux.type("stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e icanon | tr '\\n' ' '; echo END")
    screen = tmux.wait(
        lambda s: any(x.endswith("END") and "stty" not in x for x in s.splitlines()),
        10,
        "stty's answer",
    )
    answer = [x for x in screen.splitlines() if x.endswith("END") and "stty" not in x]
    assert sorted(answer[-1].split()) == ["END", "echo", "icanon"], screen
    assert "Traceback" not in screen, screen


@pytest.fixture
def gated_daemon() -> Iterator[tuple[Meshd, Path, Path]]:
    """A loopback daemon whose gcc holds compiles while ``gate`` exists; yields (daemon,
    gate, marker): the marker appears when a compile reaches the daemon's compiler."""
    # (no "meshcc" in the script: the daemon would take it for its own wrapper script)
    work = private_dir("top-gated-")
    bindir = trusted_dir("top-gcc-")
    gate, marker = work / "gate", work / "compiling"
    # named as Debian's distcc names the compiler it sends (gcc -> TRIPLET-gcc)
    triplet = subprocess.run(
        ["gcc", "-dumpmachine"], capture_output=True, text=True, check=True
    ).stdout.strip()
    gcc = bindir / f"{triplet}-gcc"
    gcc.write_text(GATED_GCC.format(marker=marker, gate=gate))
    gcc.chmod(0o755)
    d = Meshd(work, None, "--no-discovery", "--compiler", str(gcc), port=_free_port())
    try:
        d.start()
        yield d, gate, marker
    finally:
        gate.unlink(missing_ok=True)
        d.stop()
        shutil.rmtree(work, ignore_errors=True)


def _client_env(work: Path) -> dict[str, str]:
    distcc_dir = work / "distcc-dir"
    distcc_dir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    env["DISTCC_DIR"] = str(distcc_dir)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
@pytest.mark.skipif(shutil.which("distcc") is None, reason="stock distcc is not installed")
def test_top_in_tmux_shows_a_live_build_and_quits_cleanly(
    gated_daemon: tuple[Meshd, Path, Path],
    terminal: Callable[[dict[str, str]], Tmux],
    tmp_path: Path,
) -> None:
    daemon, gate, marker = gated_daemon
    node = daemon.status()["node"]
    work = tmp_path / "build"
    work.mkdir()
    (work / "hello.c").write_text("int hello(void) { return 42; }\n")
    env = _client_env(tmp_path)
    env["DISTCC_HOSTS"] = f"127.0.0.1:{daemon.port}"
    env["DISTCC_FALLBACK"] = "0"  # the job must run on the daemon, never quietly here
    gate.touch()
    job = subprocess.Popen(
        ["distcc", "gcc", "-O2", "-c", "hello.c", "-o", "hello.o"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        netns.wait_for(
            lambda: marker.exists() or job.poll() is not None, 30, what="the job on the daemon"
        )
        assert job.poll() is None, (job.communicate(), daemon.log_text())

        # What distcc's own monitor sees, and what top's plain snapshot says of the job.
        # (the client notes its Compile phase just after sending: poll, the server may be
        # a hair faster)
        def monitor() -> str:
            return subprocess.run(
                ["distccmon-text"], env=env, capture_output=True, text=True, timeout=20
            ).stdout

        netns.wait_for(
            lambda: f"{job.pid}  Compile     hello.c" in monitor(), 10, what="distccmon-text"
        )
        once = daemon.cli("top", "--once", "--distcc-dir", env["DISTCC_DIR"])
        assert once.returncode == 0, once.stderr
        row = next(line for line in once.stdout.splitlines() if line.split()[:1] == [str(job.pid)])
        assert row.split()[:4] == [str(job.pid), "Compile", "hello.c", "127.0.0.1[0]"], once.stdout

        # The live screen.
        tmux = terminal(dict(env, MESHCC_SOCKET=str(daemon.socket)))
        tmux.type(f"{sys.executable} -m meshcc top -d 0.3")  # DISTCC_DIR from the environment
        screen = tmux.wait(
            lambda s: f"daemon {node}" in s and "hello.c" in s, 20, "the daemon and the job"
        )
        assert tmux.alternate_screen()
        assert "discovery off" in screen and "1 compiling for the mesh" in screen, screen
        lines = screen.splitlines()
        assert any(line.split()[:1] == ["HOST"] for line in lines), screen
        # this box's row: its slots, the job its server runs, reached on the daemon's port
        here = next(line for line in lines if " here " in line).split()
        assert here[1:10] == [
            f":{daemon.port}",
            str(os.cpu_count()),
            "4",
            "1",
            "-",
            "-",
            "-",
            "-",
            "here",
        ], screen
        row = next(line for line in lines if line.split()[:1] == [str(job.pid)])
        assert row.split()[1:4] == ["Compile", "hello.c", "127.0.0.1[0]"], screen

        # A resize redraws at the new size (and does not end the program).
        tmux.resize(100, 30)
        tmux.wait(
            lambda s: max(map(len, s.splitlines())) <= 100 and f"daemon {node}" in s,
            10,
            "a redraw at 100 columns",
        )

        # The build finishes: the screen follows without a key pressed.
        gate.unlink()
        _out, err = job.communicate(timeout=60)
        assert job.returncode == 0, err
        assert (work / "hello.o").stat().st_size > 0
        tmux.wait(
            lambda s: "this box's compiles: 0" in s and "0 compiling for the mesh" in s,
            20,
            "the finished job gone from the screen",
        )

        tmux.keys("q")
        _shell_is_back(tmux)

        # Ctrl-C quits as cleanly.
        tmux.type(f"{sys.executable} -m meshcc top -d 0.3")
        tmux.wait(lambda s: f"daemon {node}" in s, 20, "top again")
        tmux.keys("C-c")
        _shell_is_back(tmux)
        tmux.type("echo status=$?")
        tmux.wait(lambda s: "status=0" in s, 10, "top's exit status")

        # So does SIGTERM (a service manager, `kill`): the terminal is restored too.
        tmux.type(f"clear; {sys.executable} -m meshcc top -d 0.3; echo status=$?")
        tmux.wait(lambda s: f"daemon {node}" in s, 20, "top a third time")
        [top_pid] = _children(tmux.pane_pid())
        os.kill(top_pid, signal.SIGTERM)
        _shell_is_back(tmux)
        tmux.wait(lambda s: "status=0" in s, 10, "top's exit status after SIGTERM")
    finally:
        gate.unlink(missing_ok=True)
        if job.poll() is None:
            job.kill()
            job.wait(10)


def _state_record(pid: int, file: bytes, host: bytes, slot: int, phase: int) -> bytes:
    layout = "@NLL128s128siiP"  # struct dcc_task_state, distcc 3.4's src/state.h
    return struct.pack(layout, struct.calcsize(layout), 0x44494800, pid, file, host, slot, phase, 0)


def test_no_daemon_plain_snapshot_still_shows_local_compiles(tmp_path: Path) -> None:
    """No daemon at MESHCC_SOCKET; a state file for a live process (a sleep the test
    owns) and one for a dead one. stdout is a pipe: plain text, no --once needed."""
    state = tmp_path / "distcc" / "state"
    state.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (state / f"binstate_{sleeper.pid}").write_bytes(
            _state_record(sleeper.pid, b"live.c", b"10.77.0.12", 3, 4)
        )
        gone = subprocess.Popen(["true"])
        gone.wait()
        (state / f"binstate_{gone.pid}").write_bytes(
            _state_record(gone.pid, b"dead.c", b"10.77.0.12", 1, 5)
        )
        env = dict(os.environ, MESHCC_SOCKET=str(tmp_path / "nobody.sock"))
        env["DISTCC_DIR"] = str(tmp_path / "distcc")
        p = subprocess.run(
            [sys.executable, "-m", "meshcc", "top"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert p.returncode == 0 and p.stderr == "", p
    lines = p.stdout.splitlines()
    assert "no meshcc daemon answers" in lines[0] and "nobody.sock" in lines[0], p.stdout
    assert any(line.startswith("this box's compiles: 1") for line in lines), p.stdout
    row = next(line for line in lines if line.split()[:1] == [str(sleeper.pid)])
    assert row.split()[1:4] == ["Send", "live.c", "10.77.0.12[3]"]
    assert "dead.c" not in p.stdout


def test_bad_options_and_iterations(tmp_path: Path) -> None:
    env = dict(os.environ, MESHCC_SOCKET=str(tmp_path / "nobody.sock"))
    run = [sys.executable, "-m", "meshcc", "top", "--distcc-dir", str(tmp_path)]
    p = subprocess.run([*run, "-d", "0"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "between 0.1 and 3600" in p.stderr, p
    p = subprocess.run(
        [*run, "-n", "2", "-d", "0.1"], env=env, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, p
    assert p.stdout.count("meshcc top - ") == 2
    assert f"this box's compiles: 0  [state: {tmp_path} (absent)]" in p.stdout


# ---------------------------------------------------------------- two hosts


@pytest.mark.netns
@pytest.mark.skipif(netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason()))
def test_top_on_one_host_lists_the_other_peer(lan: Callable[..., Lan]) -> None:
    net = lan()
    work = private_dir("meshcc-top-netns-")
    ha, hb = net.add_host("a"), net.add_host("b")
    a = Meshd(work, ha, "--interface", "eth0", name="a")
    b = Meshd(work, hb, "--interface", "eth0", "--jobs", "3", name="b")
    try:
        for m in (a, b):
            m.start(wait=False)
        for m in (a, b):
            m.wait_ready()
        b_addr = f"{hb.address}:3632"

        def listed() -> str | None:  # b listed *and* confirmed by a's probe (not pending)
            p = a.cli("top", "--once", "--distcc-dir", str(work / "none"), inside=True)
            assert p.returncode == 0, p.stderr
            return p.stdout if b_addr in p.stdout and "(1 up)" in p.stdout else None

        out = netns.wait_for(listed, 20, what="b in a's top, up")
        print(f"\n{out}")
        lines = out.splitlines()
        assert "discovery on (eth0)" in out, out
        assert "this box + 1 peer (1 up)" in lines[1], out
        row = next(line for line in lines if b_addr in line).split()
        # host, address, cpus, jobs (b's --jobs 3), run/wait/free/speed/held, state, gcc
        assert row[1:4] == [b_addr, str(os.cpu_count()), "3"], out
        assert row[9] == "up", out
        version = subprocess.run(
            ["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert version in " ".join(row[10:]), out
    finally:
        for m in (a, b):
            m.stop()
        shutil.rmtree(work, ignore_errors=True)
