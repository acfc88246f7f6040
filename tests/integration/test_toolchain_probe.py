"""Compiler probing and the toolchain registry, against real gcc and fake compilers (shell
scripts answering gcc's probe options); name rules and PATH scanning: unit/test_toolchain.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from meshcc.compiler.toolchain import (
    CompilerRefused,
    Driver,
    ToolchainError,
    ToolchainRegistry,
    probe,
)

GCC = shutil.which("gcc") or "/usr/bin/gcc"


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_gcc(
    path: Path,
    version: str = "13.2.1",
    target: str = "aarch64-linux-gnu",
    as_name: str = "fakeas",
    dumpfull: bool = True,
) -> Path:
    """A shell script answering gcc's probe options like a cross gcc would."""
    full = f"echo {version}" if dumpfull else "exit 1"
    return script(
        path,
        '#!/bin/sh\ncase "$1" in\n'
        f"  -dumpfullversion) {full};;\n"
        f"  -dumpversion) echo {version.split('.', maxsplit=1)[0]};;\n"
        f"  -dumpmachine) echo {target};;\n"
        f"  -print-prog-name=as) echo {as_name};;\n"
        "  *) exit 1;;\nesac\n",
    )


def test_probe_real_gcc() -> None:
    pr = probe(GCC)
    assert pr.version.count(".") >= 1 and pr.version[0].isdigit()
    assert pr.target.count("-") >= 1
    assert pr.binutils is not None and pr.binutils[0].isdigit()
    assert pr.assembler and os.path.isabs(pr.assembler)


def test_probe_fake_cross_gcc_resolves_assembler_on_path(tmp_path: Path, monkeypatch) -> None:
    bindir = tmp_path / "bin"
    cc = fake_gcc(bindir / "aarch64-linux-gnu-gcc-13")
    script(bindir / "fakeas", "#!/bin/sh\necho 'GNU assembler (GNU Binutils) 2.41.50.20231010'\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    pr = probe(str(cc))
    assert (pr.version, pr.target) == ("13.2.1", "aarch64-linux-gnu")
    assert pr.binutils == "2.41.50.20231010"
    assert pr.assembler == str(bindir / "fakeas")


def test_probe_falls_back_to_dumpversion_and_unknown_binutils(tmp_path: Path) -> None:
    cc = fake_gcc(tmp_path / "oldgcc", version="7", dumpfull=False, as_name="no-such-as-xyz")
    pr = probe(str(cc))
    assert (pr.version, pr.binutils) == ("7", None)


@pytest.mark.parametrize("prog", ["/bin/true", "/bin/false"])
def test_probe_rejects_non_gcc(prog: str) -> None:
    with pytest.raises(ToolchainError):
        probe(prog)


def test_registry_groups_names_by_realpath_and_resolves(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("gcc", "cc", "x86_64-linux-gnu-gcc"):
        os.symlink(GCC, bindir / name)
    reg = ToolchainRegistry.discover(str(bindir))
    (tc,) = reg.toolchains
    assert sorted(tc.names) == ["cc", "gcc", "x86_64-linux-gnu-gcc"]
    assert tc.path == str(bindir / "gcc") and tc.driver is Driver.GCC
    assert tc.realpath == os.path.realpath(GCC)
    assert tc.fingerprint == (tc.version, tc.target, tc.binutils)

    assert reg.resolve("cc").exec_path == str(bindir / "cc")
    assert reg.resolve(b"x86_64-linux-gnu-gcc").toolchain is tc
    assert reg.resolve(str(bindir / "cc")).exec_path == str(bindir / "cc")
    # distccd's QtCreator rule: /usr/bin/NAME or /bin/NAME for an offered NAME.
    assert reg.resolve("/usr/bin/gcc").exec_path == str(bindir / "gcc")
    assert reg.resolve("/bin/cc").exec_path == str(bindir / "cc")


@pytest.mark.parametrize(
    "requested",
    [
        "/bin/sh",
        "../gcc",
        "./gcc",
        "bin/gcc",
        "g++",
        "gcc-ar",
        "/usr/bin/g++",
        "/usr/bin/",
        "/usr/bin/x/gcc",
        "/usr/local/bin/gcc",
        "",
        "gcc\0",
        "/usr/bin//gcc",
    ],
)
def test_registry_refusals_list_what_is_offered(requested: str, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(GCC, bindir / "gcc")
    reg = ToolchainRegistry.discover(str(bindir))
    with pytest.raises(CompilerRefused) as e:
        reg.resolve(requested)
    assert "this server offers: gcc" in e.value.reason
    assert reg.refusal(requested) == e.value.reason
    assert reg.refusal("gcc") is None


def test_discover_skips_broken_compilers(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    script(bindir / "gcc", "#!/bin/sh\nexit 1\n")
    os.symlink(GCC, bindir / "cc")
    reg = ToolchainRegistry.discover(str(bindir))
    assert reg.offered_names() == ["cc"]
    assert any(s.path == str(bindir / "gcc") and "probe failed" in s.reason for s in reg.skipped)


def test_from_paths(tmp_path: Path) -> None:
    wrapper = script(tmp_path / "slowcc", f'#!/bin/sh\nexec {GCC} "$@"\n')
    reg = ToolchainRegistry.from_paths([str(wrapper), "gcc"])
    assert sorted(reg.offered_names()) == ["gcc", "slowcc"]
    assert reg.resolve(str(wrapper)).exec_path == str(wrapper)
    slow = reg.resolve("slowcc").toolchain
    assert slow.driver is Driver.CC and slow.version == reg.resolve("gcc").toolchain.version


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/nonexistent/gcc", "no such file"),
        ("/etc/passwd", "not executable"),
        ("/bin/true", "not a working gcc"),
        ("no-such-compiler-xyz", "not found on PATH"),
    ],
)
def test_from_paths_errors(path: str, words: str) -> None:
    with pytest.raises(ToolchainError) as e:
        ToolchainRegistry.from_paths([path])
    assert words in str(e.value) and path in str(e.value)


def test_from_paths_refuses_masquerade(tmp_path: Path) -> None:
    d = tmp_path / "distcc"
    d.mkdir()
    os.symlink(GCC, d / "gcc")
    with pytest.raises(ToolchainError, match="masquerade"):
        ToolchainRegistry.from_paths([str(d / "gcc")])


def test_toolchain_is_frozen() -> None:
    reg = ToolchainRegistry.from_paths(["gcc"])
    tc = reg.toolchains[0]
    with pytest.raises(AttributeError):
        tc.version = "1"  # type: ignore[misc]
    assert "gcc" in tc.describe() and tc.version in tc.describe()
