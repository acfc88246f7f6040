"""``meshcc setup portage`` on a make.conf with -march=native (scratch root, fake daemon).

It must report the native flags, say that meshcc's client handles them, be honest that
Portage's FEATURES=distcc runs stock distcc (which keeps them local), and never advise a
bare -march=<name>, which builds different code.
"""

from __future__ import annotations

from pathlib import Path

from test_setup import STAGE3_MAKE_CONF, fake_daemon, make_root, setup

__all__ = ["fake_daemon"]  # the fixture, used by name below


def test_setup_portage_reports_march_native(tmp_path: Path, fake_daemon: str) -> None:
    conf = STAGE3_MAKE_CONF.replace(b'"-O2 -pipe"', b'"-O2 -pipe -march=native"')
    conf += b'CXXFLAGS="${COMMON_FLAGS} -mtune=native" # tuned\n'
    root = make_root(tmp_path, make_conf=conf)
    out = setup(root, fake_daemon, "--dry-run")
    lines = out.splitlines()
    head = [ln for ln in lines if ln.startswith("-march=native in make.conf:")]
    assert head == [
        "-march=native in make.conf: COMMON_FLAGS (-march=native), CXXFLAGS (-mtune=native)"
    ], out
    assert "meshcc handles it" in out and "byte-identical" in out
    assert "stock distcc" in out and "compiles every -march=native job locally" in out
    assert "-march=<" not in out and "--help=target" not in out
    assert (root / "etc/portage/make.conf").read_bytes() == conf  # --dry-run wrote nothing


def test_setup_portage_silent_about_native_without_it(tmp_path: Path, fake_daemon: str) -> None:
    out = setup(make_root(tmp_path), fake_daemon, "--dry-run")
    assert "native" not in out, out
