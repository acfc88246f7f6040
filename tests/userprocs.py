"""Throwaway users' processes, for the tests and benchmarks that run clients as one (the
zygote is never root's): finding and ending them by pid, and a zygote's counters."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

# Run as the user with ``python3 -c STATS_CODE SOCKET_DIR``: one JSON line of counters per
# zygote that answers in that directory (meshcc.client.zygote's ``MZYS`` request).
STATS_CODE = """
import glob, socket, sys
for path in glob.glob(sys.argv[1] + "/z-*"):
    if path.endswith(".lock"):
        continue
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError:
        continue
    s.sendall(b"MZYS\\0\\0\\0\\0")
    print(s.makefile().readline().strip())
"""


def pids_of(uid: int) -> list[int]:
    """Every process ``uid`` owns now."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except FileNotFoundError:
                pass
    return found


def end_processes(uid: int) -> None:
    """SIGKILL, by pid, every process of ``uid`` until none is left (at most ~5 s): the
    zygote its compiles started, and anything else it left."""
    for _ in range(50):
        pids = pids_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove_user(uid: int, name: str) -> None:
    """End a throwaway user's processes, delete the user, and remove its zygote socket
    directory (``/tmp/meshcc-UID``, where no ``XDG_RUNTIME_DIR`` is set)."""
    end_processes(uid)
    subprocess.run(["userdel", name], check=False)
    shutil.rmtree(f"/tmp/meshcc-{uid}", ignore_errors=True)
