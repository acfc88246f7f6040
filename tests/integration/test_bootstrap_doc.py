"""docs/bootstrap.md, run as written: its shell blocks of steps 2, 3 and 6 on a "LiveCD".

The LiveCD is a network namespace whose shell has no compiler and no binutils on PATH
(python3 >= 3.11 without meshcc installed, plus the coreutils and curl the page uses), in a
private mount namespace where /usr/local/bin, /run, /tmp and /mnt are fresh tmpfs and
/mnt/gentoo is a scratch stage3-like root (make.conf and Gentoo's GCC layout, describing
the peer's gcc). One peer runs `meshcc daemon` with the real gcc. The only edit to the
page's text is PEER -> the peer's address. Steps 4, 5, 7 and later (disks, stage3, chroot,
emerge, services) are the Handbook's and are not run here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import netns
from meshd import Meshd, private_dir
from netns import Lan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
    ),
]

DOC = Path(__file__).resolve().parents[2] / "docs" / "bootstrap.md"
# What a LiveCD's shell has besides python3; no gcc, cc, as or meshcc among them.
LIVECD_TOOLS = ("bash", "sh", "curl", "sha256sum", "chmod", "mv", "cat", "sleep", "seq", "kill")


def doc_blocks(step: int) -> list[str]:
    """The ```sh blocks of section ``## <step>.`` of docs/bootstrap.md, verbatim."""
    text = DOC.read_text()
    m = re.search(rf"^## {step}\. .*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"docs/bootstrap.md has no step {step}"
    return re.findall(r"^```sh\n(.*?)^```", m.group(0), re.MULTILINE | re.DOTALL)


def _gcc_facts() -> tuple[str, str, str]:
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    version = out("gcc", "-dumpfullversion").strip()
    chost = out("gcc", "-dumpmachine").strip()
    binutils = re.findall(r"\d+\.\d+(?:\.\d+)?", out("as", "--version").splitlines()[0])[-1]
    return version, chost, binutils


def scratch_stage3(root: Path, version: str, chost: str, binutils: str) -> None:
    """make.conf and Gentoo's GCC layout (gcc-config, usr/lib/gcc, the VDB), as a stage3."""
    major = version.split(".", maxsplit=1)[0]
    (root / "etc/portage").mkdir(parents=True)
    (root / "etc/portage/make.conf").write_text('COMMON_FLAGS="-O2 -pipe"\nCFLAGS="-O2"\n')
    (root / "etc/env.d/gcc").mkdir(parents=True)
    (root / f"etc/env.d/gcc/config-{chost}").write_text(f"CURRENT={chost}-{major}\n")
    (root / "etc/env.d/binutils").mkdir(parents=True)
    (root / f"etc/env.d/binutils/config-{chost}").write_text(f"CURRENT={binutils}\n")
    (root / f"usr/lib/gcc/{chost}/{major}").mkdir(parents=True)
    (root / f"var/db/pkg/sys-devel/gcc-{version}").mkdir(parents=True)
    (root / f"var/db/pkg/sys-devel/binutils-{binutils}").mkdir(parents=True)


def test_bootstrap_page_steps_2_3_6_on_a_livecd_without_a_compiler(
    lan: Callable[..., Lan],
) -> None:
    net = lan()
    work = private_dir("meshcc-bootdoc-")
    version, chost, binutils = _gcc_facts()
    scratch = work / "stage3"
    scratch_stage3(scratch, version, chost, binutils)
    bare = work / "livecd-bin"
    bare.mkdir()
    (bare / "python3").symlink_to(os.path.realpath(sys._base_executable))  # no meshcc in it
    for tool in LIVECD_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bare / tool).symlink_to(found)

    hp, hl = net.add_host("peer"), net.add_host("livecd")
    peer = Meshd(work, hp, "--interface", "eth0", name="peer")
    peer.start()
    peer_addr = hp.address

    def blocks(step: int) -> str:
        return "\n".join(
            f'echo "=== step {step}.{i}"\n' + b.replace("PEER", peer_addr)
            for i, b in enumerate(doc_blocks(step))
        )

    make_conf = (scratch / "etc/portage/make.conf").read_bytes()
    script = f"""
set -u
shopt -s expand_aliases
# The LiveCD: fresh /usr/local/bin, /run, /tmp and /mnt; the scratch stage3 on /mnt/gentoo.
# (Absolute paths: these tools are not on the LiveCD shell's PATH.) Nothing runs unless
# every mount worked, so the page's commands never touch this machine's real files.
/usr/bin/mount -t tmpfs tmpfs /mnt || exit 99
/usr/bin/mkdir /mnt/gentoo /mnt/livecd-bin || exit 99
/usr/bin/mount --bind {shlex.quote(str(scratch))} /mnt/gentoo || exit 99
/usr/bin/mount --bind {shlex.quote(str(bare))} /mnt/livecd-bin || exit 99
export PATH=/mnt/livecd-bin  # the work dir under /tmp is hidden from here on
for d in /usr/local/bin /run /tmp; do /usr/bin/mount -t tmpfs tmpfs "$d" || exit 99; done
cd /tmp
{blocks(2)}
{blocks(3)}
daemon_pid=$!
echo "=== steps 4, 5"
# (the Handbook's: meanwhile the LiveCD's daemon meets the peer)
for i in $(seq 100); do meshcc hosts >/dev/null 2>&1 && break; sleep 0.2; done
{blocks(6)}
echo "=== log"
cat /tmp/meshcc.log
kill $daemon_pid
"""
    # env -i inside the namespace: `ip netns exec` itself needs this process's PATH.
    env = ["/usr/bin/env", "-i", f"PATH={bare}", f"HOME={work}", "LANG=C.UTF-8"]
    argv = [*env, "/usr/bin/unshare", "-m", "--propagation", "private", str(bare / "bash")]
    try:
        p = hl.run([*argv, "-c", script], timeout=240)
        out = p.stdout + p.stderr
        print(out)
        assert p.returncode == 0, out
        assert not os.path.exists("/usr/local/bin/meshcc.pyz") or "Traceback" in out
        parts = dict(re.findall(r"^=== ([^\n]*)\n(.*?)(?=^=== |\Z)", out, re.M | re.S))
        # Step 2: both ways of fetching meshcc.pyz work and check the hash.
        assert "verified and written to /usr/local/bin/meshcc.pyz" in parts["step 2.0"]
        assert "meshcc.pyz: OK" in parts["step 2.1"] and "Traceback" not in out
        # Step 3: the daemon runs with no compiler, and `hosts --explain` answers.
        assert "mesh-only node, offering no compiles" in parts["log"]
        assert f"DISTCC_HOSTS: {peer_addr}:3632/" in parts["step 3.0"]
        # Step 6: the dry run writes nothing, then the block and hosts file match the peer;
        # again: nothing changes; --undo: make.conf as it was, no hosts file.
        first, again = parts["step 6.0"].split("--dry-run: nothing written", 1)
        assert "wrote" not in first
        assert f"toolchain: gcc {version} ({chost}, binutils {binutils}) matches 1 peer" in again
        assert "wrote /etc/portage/make.conf" in again and "wrote /etc/distcc/hosts" in again
        assert "up to date, nothing to change" in parts["step 6.1"]
        assert "wrote" not in parts["step 6.1"]
        assert "restored from" in parts["step 6.2"]
        assert (scratch / "etc/portage/make.conf").read_bytes() == make_conf
        assert not (scratch / "etc/distcc/hosts").exists()
    finally:
        peer.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
