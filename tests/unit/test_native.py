"""meshcc.compiler.native, sans-IO part: real ``gcc -###`` outputs captured on a gcc 12 box.

The files under data/native/ are what Debian's gcc 12.2 printed for the probe the client
runs (``gcc [OPTS] -### -c -x c /dev/null -o /dev/null``) on an Intel Xeon VM whose
native CPU gcc calls ``cooperlake``; the gxx12 pair is ``g++ [-march=native] -### -c x.cc``.
The cache functions are exercised on a temp directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcc.compiler import native

DATA = Path(__file__).parent / "data" / "native"


def cc1(name: str) -> list[str]:
    return native.cc1_argv((DATA / name).read_text())


# --------------------------------------------------------------------------- -### parsing


def test_split_line_undoes_gccs_quoting() -> None:
    line = (
        ' /usr/lib/cc1 -quiet x.c "-march=cooperlake" --param "l1-cache-size=48" "a\\"b\\\\c\\$d"'
    )
    assert native.split_line(line) == [
        "/usr/lib/cc1",
        "-quiet",
        "x.c",
        "-march=cooperlake",
        "--param",
        "l1-cache-size=48",
        'a"b\\c$d',
    ]
    assert native.split_line("") == []
    with pytest.raises(native.NativeError, match="unterminated"):
        native.split_line(' cc1 "-march=x')


def test_cc1_line_found_and_driver_lines_skipped() -> None:
    words = cc1("gcc12-march-native.txt")
    assert words[0].endswith("/cc1") and "-march=cooperlake" in words
    assert cc1("gxx12-march-native.txt")[0].endswith("/cc1plus")
    # COLLECT_GCC_OPTIONS mentions '-march=native' but is not the cc1 line.
    assert "-march=native" not in words
    with pytest.raises(native.NativeError, match="no cc1"):
        native.cc1_argv("Using built-in specs.\n as --64 -o x.o x.s\n")


# --------------------------------------------------------------------------- the expansion


def test_march_native_expansion_from_real_output() -> None:
    exp = native.expansion(cc1("gcc12-march-native.txt"), cc1("gcc12-plain.txt"))
    assert exp[0] == "-march=cooperlake"
    assert exp[-1] == "-mtune=generic"  # tune detection follows arch's, as the spec says
    assert "-mavx512f" in exp and "-mno-avx512er" in exp and "-mno-3dnow" in exp
    assert exp[-4:-1] == [
        "--param=l1-cache-size=48",
        "--param=l1-cache-line-size=64",
        "--param=l2-cache-size=307200",
    ]
    assert len(exp) == 93
    # Nothing of the probe's own line leaks in (-quiet, -dumpbase, -o, the input).
    assert all(t.startswith(("-m", "--param=")) for t in exp)
    assert not any("native" in t for t in exp)


def test_gxx_gives_the_same_expansion_as_gcc() -> None:
    gcc = native.expansion(cc1("gcc12-march-native.txt"), cc1("gcc12-plain.txt"))
    gxx = native.expansion(cc1("gxx12-march-native.txt"), cc1("gxx12-plain.txt"))
    assert gxx == gcc


def test_mtune_native_adds_only_tuning_and_cache_params() -> None:
    exp = native.expansion(cc1("gcc12-mtune-native.txt"), cc1("gcc12-plain.txt"))
    assert exp == [
        "--param=l1-cache-size=48",
        "--param=l1-cache-line-size=64",
        "--param=l2-cache-size=307200",
        "-mtune=generic",
    ]


def test_mcpu_native_is_the_deprecated_alias_of_mtune_native_on_x86() -> None:
    assert native.expansion(cc1("gcc12-mcpu-native.txt"), cc1("gcc12-plain.txt")) == (
        native.expansion(cc1("gcc12-mtune-native.txt"), cc1("gcc12-plain.txt"))
    )
    assert "deprecated" in (DATA / "gcc12-mcpu-native.txt").read_text()


def test_explicit_mtune_suppresses_natives_tuning_and_params() -> None:
    exp = native.expansion(
        cc1("gcc12-march-native-mtune-znver3.txt"), cc1("gcc12-mtune-znver3.txt")
    )
    assert exp[0] == "-march=cooperlake"
    assert not any(t.startswith(("--param", "-mtune")) for t in exp)


@pytest.mark.parametrize(
    ("with_native", "without", "match"),
    [
        (["cc1", "x.c", "-quiet"], ["cc1", "x.c", "-quiet"], "no expansion|nothing"),
        (["cc1", "x.c", "-march=k8", "-quiet"], ["cc1", "x.c", "-o"], "where the expansion"),
        (["cc1", "x.c", "-march=native", "-quiet"], ["cc1", "x.c", "-quiet"], "unexpected"),
        (["cc1", "x.c", "-fomg", "-quiet"], ["cc1", "x.c", "-quiet"], "unexpected"),
        (["cc1", "x.c", "-mavx", "-quiet"], ["cc1", "x.c", "-quiet"], "no -march=, -mtune="),
        (
            ["cc1", "x.c", "--param", "x=$(id)", "-mtune=k8", "-quiet"],
            ["cc1", "x.c", "-quiet"],
            "unexpected",
        ),
        (["cc1", "x.c"], ["cc1", "x.c"], "no expansion"),
    ],
    ids=["same", "no-resume", "native-left", "not-m", "no-march", "bad-param", "short"],
)
def test_unexpected_output_is_refused(
    with_native: list[str], without: list[str], match: str
) -> None:
    with pytest.raises(native.NativeError, match=match):
        native.expansion(with_native, without)


def test_aarch64_style_mcpu_expansion_is_accepted() -> None:
    """Shape only (no AArch64 gcc here): its driver turns -mcpu=native into -mcpu=NAME+EXT."""
    with_native = ["cc1", "x.c", "-mcpu=neoverse-n1+crc+crypto", "-quiet", "-dumpbase"]
    assert native.expansion(with_native, ["cc1", "x.c", "-quiet", "-dumpbase"]) == [
        "-mcpu=neoverse-n1+crc+crypto"
    ]


# --------------------------------------------------------------------------- argv


def test_probe_args_keep_only_what_decides_the_expansion() -> None:
    argv = ["gcc", "-O2", "-m32", "-march=native", "-D", "-mtune=x", "-mtune=k8", "-c", "a.c"]
    assert native.probe_args(argv) == ["-m32", "-march=native", "-mtune=k8"]


def test_rewrite_puts_the_expansion_first_and_drops_every_native() -> None:
    exp = ["-march=cooperlake", "-mavx512f", "--param=l1-cache-size=48", "-mtune=generic"]
    argv = ["gcc", "-mno-avx512f", "-march=native", "-O2", "-mtune=native", "-c", "a.c"]
    out = native.rewrite(argv, exp)
    # The user's -mno-avx512f must come *after* native's -mavx512f, as in the driver.
    assert out == ["gcc", *exp, "-mno-avx512f", "-O2", "-c", "a.c"]
    # A native word that is an option's value is not an option.
    assert native.rewrite(["gcc", "-D", "-march=native", "-c", "a.c"], exp)[-4:] == [
        "-D",
        "-march=native",
        "-c",
        "a.c",
    ]


@pytest.mark.parametrize(
    ("args", "records"),
    [
        ("-O2", None),
        ("-O2 -g", "-g"),
        ("-ggdb3", "-ggdb3"),
        ("-g -g0", None),
        ("-g -gno-record-gcc-switches", None),
        ("-gno-record-gcc-switches -g -grecord-gcc-switches", "-g"),
        ("-frecord-gcc-switches", "-frecord-gcc-switches"),
        ("-frecord-gcc-switches -fno-record-gcc-switches", None),
        ("-flto", "-flto"),
        ("-flto=auto -fno-lto", None),
        ("-D -g", None),
        ("-S -fverbose-asm", "-fverbose-asm"),
        ("-fverbose-asm -fno-verbose-asm", None),
    ],
)
def test_records_options(args: str, records: str | None) -> None:
    assert native.records_options(["gcc", *args.split(), "-c", "a.c"]) == records


# --------------------------------------------------------------------------- cache file


def test_cache_round_trip_and_corrupt_entries_ignored(tmp_path: Path) -> None:
    env = {"DISTCC_DIR": str(tmp_path)}
    key = "gcc 1:2 3 4\0-march=native\0flags : fpu sse"
    path = native._cache_file(env, key)
    assert path.startswith(str(tmp_path / "native") + "/")
    assert native._read_cache(path, key) is None  # missing
    exp = ["-march=cooperlake", "--param=l1-cache-size=48", "-mtune=generic"]
    native._write_cache(path, key, exp)
    assert native._read_cache(path, key) == exp
    assert native._read_cache(path, key + "x") is None  # another key (crc collision)
    assert list((tmp_path / "native").iterdir()) == [Path(path)]  # no temp file left
    good = Path(path).read_text()
    for bad in (
        good[: len(good) // 2],  # truncated
        good.replace("-mtune=generic", "-mtune=native"),  # would send native
        good.replace("--param=l1-cache-size=48", "-fplugin=x.so"),  # not an expansion word
        good.replace("meshcc-native 1", "meshcc-native 0"),
        "",
    ):
        Path(path).write_text(bad)
        assert native._read_cache(path, key) is None, bad


def test_cache_write_failure_is_silent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    native._write_cache(str(blocker / "native" / "x"), "k", ["-march=k8"])  # no exception
    assert blocker.read_text() == ""


def test_missing_distcc_dir_is_not_created_but_home_one_is(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    native._write_cache(str(missing / "native" / "x"), "k", ["-march=k8"])
    assert not missing.exists()
    home = tmp_path / ".distcc"
    native._write_cache(str(home / "native" / "x"), "k", ["-march=k8"], make_top=True)
    assert native._read_cache(str(home / "native" / "x"), "k") == ["-march=k8"]
