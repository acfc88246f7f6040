"""The compile server's lean job path (issue 12): how the compiler is run and watched, and
the per-job timeline in the daemon's debug log. Real daemon, real gcc, real sockets.

What the rewrite must keep: output kept up to a cap with a note of what was dropped, a
compiler that ends leaves nothing of its process group behind (and nothing holds the job
directory), a compiler that cannot be executed is a clear COMPILE_ERROR, and the timeline
is one debug line per job that costs nothing at info level."""

from __future__ import annotations

import re
from pathlib import Path

from test_server import (
    HELLO_C,
    ROOT,
    job_dirs,
    process_gone,
    send_job,
    summaries_after,
    wait_for,
    write_script,
)

GCC = "/usr/bin/gcc"
STEPS = ("accept", "read", "dir", "spawn", "compile", "reply", "close")
TIMELINE = re.compile(r"client (\S+): timeline ms after accept: (.*) \((\S+)\)$")


def timelines(log: str) -> list[tuple[str, dict[str, float], str]]:
    out = []
    for line in log.splitlines():
        m = TIMELINE.search(line)
        if m is not None:
            steps = {}
            for field in m.group(2).split():
                name, _, value = field.partition("=")
                steps[name] = float(value)
            out.append((m.group(1), steps, m.group(3)))
    return out


def test_debug_log_has_one_ordered_timeline_per_job(meshcc_daemon) -> None:
    daemon = meshcc_daemon(*ROOT, "--log-level", "debug")
    for _ in range(2):
        reply = send_job(daemon.port, ["gcc", "-O2", "-c", "hello.c", "-o", "hello.o"])
        assert reply.status == 0 and reply.obj.startswith(b"\x7fELF")
    summaries_after(daemon, 2)
    wait_for(lambda: len(timelines(daemon.log_text())) == 2, what="two timeline lines")
    for client, steps, source in timelines(daemon.log_text()):
        assert client.startswith("127.0.0.1:") and source == "hello.c"
        assert tuple(steps) == STEPS, steps  # every step, in the order they happen
        values = list(steps.values())
        assert values == sorted(values) and values[0] >= 0.0, steps


def test_no_timeline_at_info_level(meshcc_daemon) -> None:
    daemon = meshcc_daemon(*ROOT)  # --log-level info
    assert send_job(daemon.port, ["gcc", "-c", "hello.c", "-o", "hello.o"]).status == 0
    summaries_after(daemon, 1)
    assert "timeline" not in daemon.log_text()


def test_output_over_the_cap_is_cut_with_a_note(meshcc_daemon, tmp_path: Path) -> None:
    """A compiler's stderr beyond --max-output's 16 MiB is dropped and counted (the files
    the output now goes to are read up to the cap, as the pipes were)."""
    noisy = write_script(
        tmp_path / "noisygcc",
        "#!/bin/sh\n"
        'case " $* " in *" -c "*)\n'
        "  head -c 17000000 /dev/zero | tr '\\0' 'e' >&2\n"
        "  echo out-line;;\n"
        "esac\n"
        f'exec {GCC} "$@"\n',
    )
    daemon = meshcc_daemon(*ROOT, compilers=(noisy,))
    reply = send_job(daemon.port, ["noisygcc", "-c", "hello.c", "-o", "hello.o"], timeout=60)
    assert reply.status == 0 and reply.obj.startswith(b"\x7fELF")
    assert reply.stdout == b"out-line\n"
    cap = 16 * 1024 * 1024
    kept, note = reply.stderr[:cap], reply.stderr[cap:]
    assert kept == b"e" * cap
    assert note == f"\nmeshcc: {17000000 - cap} more bytes of output were dropped\n".encode()
    assert job_dirs(daemon) == []


def test_leftovers_of_a_finished_compiler_are_killed(meshcc_daemon, tmp_path: Path) -> None:
    """A compiler that exits but leaves a process in its group does not leave it running:
    the group is cleared before the reply. (This leftover holds none of the compiler's
    output, so nothing waited for it before: it ran on after the job.)"""
    marker = tmp_path / "leftover"
    leaky = write_script(
        tmp_path / "leakygcc",
        "#!/bin/sh\n"
        'case " $* " in *" -c "*)\n'
        f"  (sleep 60; echo still-here > {marker}) </dev/null >/dev/null 2>&1 &\n"
        f"  echo $! > {tmp_path}/leftover.pid;;\n"
        "esac\n"
        f'exec {GCC} "$@"\n',
    )
    daemon = meshcc_daemon(*ROOT, compilers=(leaky,))
    reply = send_job(daemon.port, ["leakygcc", "-c", "hello.c", "-o", "hello.o"])
    assert reply.status == 0 and reply.obj.startswith(b"\x7fELF")
    pid = int((tmp_path / "leftover.pid").read_text())
    wait_for(lambda: process_gone(pid), timeout=5, what="the leftover process killed")
    assert not marker.exists()
    (job,) = summaries_after(daemon, 1)
    assert job.result == "COMPILE_OK"
    assert job_dirs(daemon) == []


def test_compiler_that_cannot_run_is_a_compile_error(meshcc_daemon, tmp_path: Path) -> None:
    """The probed compiler vanished after the daemon started: the client gets the reason,
    the daemon keeps serving."""
    gone = tmp_path / "gonegcc"
    write_script(gone, f'#!/bin/sh\nexec {GCC} "$@"\n')
    daemon = meshcc_daemon(*ROOT, compilers=(str(gone), GCC))
    gone.unlink()
    reply = send_job(daemon.port, ["gonegcc", "-c", "hello.c", "-o", "hello.o"])
    assert reply.status == 110 << 8, reply
    assert b"failed to exec" in reply.stderr
    (job,) = summaries_after(daemon, 1)
    assert job.result == "COMPILE_ERROR"
    assert job_dirs(daemon) == []
    # and the next job on a working compiler is served
    assert send_job(daemon.port, ["gcc", "-c", "hello.c", "-o", "hello.o"], HELLO_C).status == 0
