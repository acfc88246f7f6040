"""The zygote's warm-up leaves a worker nothing to load on a job's way.

Why: a worker is forked from the zygote for every compile, so whatever a job imports or
``dlopen``s that the zygote did not is paid again on every job (liblzo2 through ``ctypes``
was ~1 ms of each ``,lzo`` job). A fresh interpreter warms up as the zygote does, then
does what jobs do with every codec, both directions, and reports its ``sys.modules`` and
mapped libraries before and after: they must not change.
"""

from __future__ import annotations

import json
import subprocess
import sys

from meshcc import compression

_JOB_WORK = r"""
import json, sys

def loaded():
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if ".so" in line}
    return sorted(sys.modules), sorted(libs)

from meshcc.client import zygote
zygote.warm()
before = loaded()

from meshcc import compression
from meshcc.client import outcome
from meshcc.wire import codecs, outcome as wire_outcome

body = b"int f(void) { return 42; }\n" * 4000
used = []
for codec in compression.Codec.ALL:
    if not compression.available(codec):
        continue
    packed = compression.compress(codec, body)
    assert compression.decompress(codec, packed, len(body)) == body
    # the LZO scanner's path: a cap the body could exceed
    assert compression.decompress(codec, packed, len(body) * 300) == body
    used.append(codec)
    if codec in compression.Codec.NEGOTIATED:
        codecs.encode_codec_request(codec)
wire_outcome.encode("fallback", "h:1", "why")
outcome.without_files("x.o is a link input", ["cc", "x.o"])
print(json.dumps({"before": before, "after": loaded(), "used": used}))
"""


def test_a_job_after_the_warm_up_imports_and_loads_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _JOB_WORK], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert compression.Codec.LZO in seen["used"]  # a test dependency: liblzo2 or lzallright
    new_modules = sorted(set(seen["after"][0]) - set(seen["before"][0]))
    new_libraries = sorted(set(seen["after"][1]) - set(seen["before"][1]))
    assert new_modules == []
    assert new_libraries == []
