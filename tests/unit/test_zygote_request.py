"""The zygote's request parsing and a worker's take-over of the environment and fds.

Why: a worker must see exactly the launcher's argv and environment (in the C ``environ``
that an exec'd compiler gets, and in ``os.environ``), never the zygote's; and the request
layout must stay what the C launcher writes. The environment take-over runs in a child
interpreter here (it replaces the process's whole environment).
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from meshcc.client import zygote_worker


def _body(key: bytes, argv: list[bytes], env: list[bytes], targets: list[int]) -> bytes:
    """A request body as packaging/launcher/meshcc-launcher.c writes it."""
    out = struct.pack("=I", len(key)) + key
    out += struct.pack("=QIQQI", 123456789, 0o027, 1 << 1, 1 << 0, len(targets))
    out += struct.pack(f"={len(targets)}I", *targets)
    out += struct.pack("=II", len(argv), len(env))
    out += b"".join(a + b"\0" for a in argv) + b"".join(e + b"\0" for e in env)
    return out


def test_request_fields_round_trip() -> None:
    argv = [b"/usr/bin/meshcc-gcc", b"-c", b"a b.c", b"-DX=\xff"]
    env = [b"PATH=/bin", b"EMPTY=", b"EQ=a=b"]
    req = zygote_worker._Request(_body(b"k" * 40, argv, env, [0, 1, 2, 7]))
    assert req.argv == argv
    assert req.env == env
    assert req.targets == [0, 1, 2, 7]
    assert (req.t0, req.umask) == (123456789, 0o027)
    assert zygote_worker._bits(req.blocked) == [2]  # SIGINT
    assert zygote_worker._bits(req.ignored) == [1]  # SIGHUP


def test_short_request_is_refused() -> None:
    body = _body(b"k", [b"gcc", b"-c"], [b"A=1"], [])
    with pytest.raises(ValueError):
        zygote_worker._Request(body[:-4])
    with pytest.raises(struct.error):
        zygote_worker._Request(body[:10])


CHILD = r"""
import os, posix, subprocess, sys
from meshcc.client import zygote_worker
r, w = os.pipe()
os.environ["ZYGOTE_ONLY"] = "must go"
zygote_worker._install_env([b"JOB=1", b"PATH=/usr/bin:/bin", b"ODD=x=y"], {b"LC_CTYPE": b"C.UTF-8"})
# The C environ (what exec'd programs get) and os.environ must both be the job's.
got = subprocess.run(["env"], capture_output=True, text=True, env=None).stdout
print(sorted(got.split()))
print(sorted(os.environ.items()))
"""


def test_install_env_replaces_c_and_python_environments() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ZYGOTE_OLD": "x"},
        check=True,
    )
    c_env, py_env = proc.stdout.splitlines()
    want = ["JOB=1", "LC_CTYPE=C.UTF-8", "ODD=x=y", "PATH=/usr/bin:/bin"]
    assert c_env == str(want)
    assert py_env == str(sorted(tuple(item.split("=", 1)) for item in want))
