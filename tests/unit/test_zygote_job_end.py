"""A worker that has told its launcher the job's end cannot be turned into a failure.

Why: the launcher exits as soon as it reads the worker's ``X`` record, and the zygote, on
seeing that connection end before it has reaped the worker, takes it for a launcher that
vanished and sends the worker's group ``SIGTERM``. The worker still had the wrapper's
handler, which raises: a traceback on the user's terminal after a job that succeeded
(about one job in 300 here, more on a loaded box). A fresh interpreter installs that
handler as a job does, tells a job's end on a pipe, then gets ``SIGTERM``: it must exit
with the code it was given and write nothing else.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

_WORKER = r"""
import os, signal, sys
from meshcc.client import wrapper, zygote_worker

signal.signal(signal.SIGTERM, wrapper._on_signal)
signal.signal(signal.SIGINT, wrapper._on_signal)
fd = int(sys.argv[1])
zygote_worker._job_ended(fd, 3)
os.kill(os.getpid(), signal.SIGTERM)   # the zygote's _abandon, racing the exit
os.kill(os.getpid(), signal.SIGINT)
os._exit(3)
"""


def test_a_signal_after_the_job_end_was_told_changes_nothing() -> None:
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER, str(write_end)],
            pass_fds=(write_end,),
            capture_output=True,
            timeout=60,
        )
        os.close(write_end)
        write_end = -1
        record = os.read(read_end, 64)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == b""
    kind, status, _, _ = struct.unpack("=ciQQ", record)
    assert (kind, os.waitstatus_to_exitcode(status)) == (b"X", 3)
