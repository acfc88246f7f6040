"""Compiler names and discovery on PATH (meshcc.compiler.toolchain); probing compilers and the
registry: integration/test_toolchain_probe.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from meshcc.compiler.toolchain import find_compilers, is_compiler_name, masquerade_reason

GCC = shutil.which("gcc") or "/usr/bin/gcc"


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    "name",
    [
        "gcc",
        "g++",
        "cc",
        "c++",
        "gcc-12",
        "g++-12",
        "gcc-13.2",
        "x86_64-linux-gnu-gcc",
        "x86_64-linux-gnu-g++-12",
        "aarch64-linux-gnu-gcc-13",
        "arm-none-eabi-gcc",
        "x86_64-pc-linux-gnu-g++",
        "c89-gcc",
        "c99-gcc",
    ],
)
def test_offered_names(name: str) -> None:
    assert is_compiler_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "gcc-ar",
        "gcc-nm",
        "gcc-ranlib",
        "gcc-ar-12",
        "x86_64-linux-gnu-gcc-ar",
        "x86_64-linux-gnu-gcc-nm-12",
        "x86_64-linux-gnu-gcc-ranlib",
        "gcov",
        "gcc-12-foo",
        "clang",
        "sh",
        "distcc",
        "ccache",
        "gccgo",
        "c++filt",
        "gcc.sh",
        "",
        "gcc-",
    ],
)
def test_not_offered_names(name: str) -> None:
    assert not is_compiler_name(name)


def test_find_compilers_skips_masquerades_and_first_on_path_wins(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(GCC, real / "gcc")
    os.symlink(GCC, real / "gcc-12")
    script(real / "gcc-ar", "#!/bin/sh\n")
    script(real / "x86_64-linux-gnu-gcc-nm", "#!/bin/sh\n")
    (real / "g++").write_text("not executable")  # not +x: ignored

    # A distcc masquerade dir, a ccache symlink and a meshcc console script, all before 'real'.
    masq = tmp_path / "lib" / "distcc"
    masq.mkdir(parents=True)
    fake_distcc = script(tmp_path / "bin" / "distcc", "#!/bin/sh\n")
    os.symlink(fake_distcc, masq / "gcc")
    cc_dir = tmp_path / "ccachebin"
    cc_dir.mkdir()
    os.symlink(script(tmp_path / "bin" / "ccache", "#!/bin/sh\n"), cc_dir / "cc")
    wrap = tmp_path / "venv"
    script(wrap / "gcc-12", "#!/usr/bin/python3\nfrom meshcc.client.wrapper import main\n")

    path = os.pathsep.join(map(str, [masq, cc_dir, wrap, "relative/dir", real]))
    found, skipped = find_compilers(path)
    assert dict(found) == {"gcc": str(real / "gcc"), "gcc-12": str(real / "gcc-12")}
    reasons = {s.path: s.reason for s in skipped}
    assert "distcc" in reasons[str(masq / "gcc")]
    assert "ccache" in reasons[str(cc_dir / "cc")]
    assert "meshcc" in reasons[str(wrap / "gcc-12")]


def test_masquerade_reason() -> None:
    assert masquerade_reason(GCC) is None
    if os.path.exists("/usr/lib/distcc/gcc"):
        assert masquerade_reason("/usr/lib/distcc/gcc") is not None
