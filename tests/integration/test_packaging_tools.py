"""The service files and packages checked by the tools that read them: systemd-analyze,
systemd-sysusers, sh/dash -n, OpenRC's start_pre, bash on the ebuilds, shellcheck (what needs
no tool: unit/test_packaging.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "meshcc.service"
SYSUSERS = ROOT / "systemd" / "meshcc.sysusers"
GENTOO = ROOT / "packaging" / "gentoo"
INITD = GENTOO / "dev-util" / "meshcc" / "files" / "meshcc.initd"
CONFD = GENTOO / "dev-util" / "meshcc" / "files" / "meshcc.confd"
EBUILDS = sorted(GENTOO.rglob("*.ebuild"))
MESHCC = Path(sys.executable).parent / "meshcc"  # the venv's launcher

needs = pytest.mark.skipif


@needs(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify needs ExecStart's binary to exist: check a copy that runs the venv's meshcc
    (as install.sh --systemd writes it)."""
    assert MESHCC.exists()
    text = UNIT.read_text()
    copy = tmp_path / "meshcc.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/meshcc ", f"ExecStart={MESHCC} ", 1))
    assert copy.read_text() != text
    p = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "meshcc.service" not in p.stderr, p.stderr  # no warnings about our unit

    p = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if p.returncode == 0 or "exposure level" in p.stdout:
        m = re.search(r"exposure level for \S+: (\d+\.\d+)", p.stdout)
        assert m and float(m.group(1)) <= 3.0, p.stdout[-400:]


@needs(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_meshcc_in_a_scratch_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    p = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    group = (tmp_path / "etc" / "group").read_text()
    assert re.search(r"^meshcc:x:\d+:\d+:", passwd, re.MULTILINE), passwd
    assert re.search(r"^meshcc:x:\d+:", group, re.MULTILINE), group


def test_openrc_script_parses() -> None:
    assert INITD.read_text().startswith("#!/sbin/openrc-run\n")
    assert os.access(INITD, os.X_OK)
    for sh in ("sh", "dash", "busybox"):
        exe = shutil.which(sh)
        if exe:
            argv = [exe, "sh", "-n", str(INITD)] if sh == "busybox" else [exe, "-n", str(INITD)]
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            assert p.returncode == 0, (sh, p.stderr)
    text = INITD.read_text()
    for line in (
        'command="/usr/bin/meshcc"',
        'command_background="yes"',
        'command_user="meshcc:meshcc"',
        "need net",
        "use logger",
        "checkpath --directory --owner meshcc:meshcc --mode 0755 /run/meshcc",
    ):
        assert line in text, line
    assert "${MESHCC_OPTS}" in text and "pidfile=" in text


def test_openrc_start_pre_finds_write_hosts(tmp_path: Path) -> None:
    """Run start_pre with checkpath stubbed: it prepares /run/meshcc and the hosts file."""
    calls = tmp_path / "calls"
    script = f'checkpath() {{ echo "$*" >> {calls}; }}\n. {INITD}\nstart_pre\n'
    env = dict(
        os.environ,
        MESHCC_OPTS="--jobs 4 --write-hosts /etc/distcc/hosts -i eth0",
        RC_SVCNAME="meshcc",
    )
    p = subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert p.returncode == 0, p.stderr
    assert calls.read_text().splitlines() == [
        "--directory --owner meshcc:meshcc --mode 0755 /run/meshcc",
        "--directory --mode 0755 /etc/distcc",
        "--file --owner meshcc:meshcc --mode 0644 /etc/distcc/hosts",
    ]
    calls.unlink()
    env["MESHCC_OPTS"] = "--jobs 4"
    p = subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert p.returncode == 0, p.stderr
    assert calls.read_text().splitlines() == [
        "--directory --owner meshcc:meshcc --mode 0755 /run/meshcc"
    ]


def test_confd_parses_and_sets_empty_opts() -> None:
    p = subprocess.run(
        ["sh", "-c", f'. {CONFD} && printf "[%s]" "$MESHCC_OPTS"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 0 and p.stdout == "[]", p.stderr
    text = CONFD.read_text()
    for example in ("--allow", "--jobs", "--write-hosts /etc/distcc/hosts", "--interface"):
        assert example in text


def test_ebuilds_parse() -> None:
    assert {p.relative_to(GENTOO).as_posix() for p in EBUILDS} == {
        "acct-group/meshcc/meshcc-0.ebuild",
        "acct-user/meshcc/meshcc-0.ebuild",
        "dev-util/meshcc/meshcc-0.1.0.ebuild",
    }
    for ebuild in EBUILDS:
        p = subprocess.run(
            ["bash", "-n", str(ebuild)], capture_output=True, text=True, timeout=30, check=False
        )
        assert p.returncode == 0, (ebuild, p.stderr)
        assert "EAPI=8" in ebuild.read_text()
    main = (GENTOO / "dev-util/meshcc/meshcc-0.1.0.ebuild").read_text()
    for needle in (
        "DISTUTILS_USE_PEP517=setuptools",
        "PYTHON_COMPAT=( python3_{11..13} )",
        "inherit distutils-r1 systemd",
        "dev-python/zeroconf",
        "dev-python/ifaddr",
        "acct-user/meshcc",
        "newinitd",
        "newconfd",
        "systemd_dounit systemd/meshcc.service",
    ):
        assert needle in main, needle
    assert "dev-python/msgpack" not in main  # the control codec is meshcc's own


@needs(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck() -> None:
    # SC2034: OpenRC/ebuild variables are read by openrc-run/portage; SC3043: openrc-run's
    # sh has `local`; SC2154: variables portage sets (FILESDIR, PYTHON_USEDEP, ...).
    checks = [
        (["-s", "sh", "-e", "SC2034,SC3043"], [INITD, CONFD]),
        (["-s", "sh"], [ROOT / "install.sh"]),
        (["-s", "bash", "-e", "SC2034,SC2154"], EBUILDS),
    ]
    for flags, files in checks:
        p = subprocess.run(
            ["shellcheck", *flags, *map(str, files)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert p.returncode == 0, p.stdout


def test_install_sh_parses_and_keeps_default() -> None:
    p = subprocess.run(
        ["sh", "-n", str(ROOT / "install.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    p = subprocess.run(
        ["sh", str(ROOT / "install.sh"), "--bogus"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 2 and "unknown option" in p.stderr
    text = (ROOT / "install.sh").read_text()
    assert "systemd=${INSTALL_SYSTEMD:-0}" in text  # off unless asked for
