"""Tests for meshcc.compiler.args: distcc 3.4's scan rules, meshcc's extras, and the cpp/remote
command lines (checked against real gcc in integration/test_args_gcc.py)."""

import pytest

from meshcc.compiler import args, cmdline, policy
from meshcc.compiler.args import analyse, cpp_argv, remote_argv

DO = args.DIRECTIVES_ONLY  # eligible C/C++ jobs: macros are expanded by the server's gcc


def A(cmd: str) -> args.Job:
    return analyse(cmd.split())


# --- distributable basics -------------------------------------------------------------------


def test_simple_compile():
    j = A("gcc -O2 -c hello.c -o hello.o")
    assert j.distributable and j.reason == ""
    assert (j.source, j.output, j.output_given, j.mode) == ("hello.c", "hello.o", True, "-c")
    assert j.temp_suffix == ".i" and not j.preprocessed


def test_implied_output_is_basename_in_cwd():
    j = A("gcc -c src/dir/hello.c")
    assert j.output == "hello.o" and not j.output_given
    assert remote_argv(j)[-3:] == ["-o", "hello.o", DO]


def test_dash_S_wins_over_c():
    j = A("gcc -c -S src/x.cc")
    assert j.mode == "-S" and j.output == "x.s" and j.temp_suffix == ".ii"


def test_joined_output():
    j = A("gcc -c x.c -oobj/x.o")
    assert j.output == "obj/x.o" and j.output_given


@pytest.mark.parametrize(
    "src,suffix,pre",
    [
        ("a.c", ".i", False),
        ("a.i", ".i", True),
        ("a.cc", ".ii", False),
        ("a.cpp", ".ii", False),
        ("a.cxx", ".ii", False),
        ("a.cp", ".ii", False),
        ("a.c++", ".ii", False),
        ("a.C", ".ii", False),
        ("a.ii", ".ii", True),
        ("a.m", ".mi", False),
        ("a.mi", ".mi", True),
        ("a.mm", ".mii", False),
        ("a.M", ".mii", False),
        ("a.mii", ".mii", True),
    ],
)
def test_source_suffixes(src, suffix, pre):
    j = A(f"gcc -c {src}")
    assert j.distributable, j.reason
    assert j.temp_suffix == suffix and j.preprocessed is pre


def test_x_language_sets_temp_suffix():
    j = A("gcc -x c++ -c a.c")
    assert j.distributable and j.temp_suffix == ".ii" and j.language == "c++"
    j = A("gcc -x cpp-output -c a.c")
    assert j.distributable and j.preprocessed


def test_flto_is_distributable():
    assert A("gcc -flto -O2 -c a.c").distributable


def test_joined_xc_is_handled():
    # distcc 3.4 inspects the *next* argument for joined -xc and keeps this local.
    j = A("gcc -xc -c a.c")
    assert j.distributable, j.reason
    assert "-xcpp-output" in remote_argv(j)


def test_wp_expansion():
    assert args.expand_wp(["-Wp,-MD,dep.d"]) == ["-MD", "-MF", "dep.d"]
    assert args.expand_wp(["-Wp,-MMD,dir/x.d"]) == ["-MMD", "-MF", "dir/x.d"]
    assert args.expand_wp(["-Wp,-DX,-UY"]) == ["-DX", "-UY"]
    assert args.expand_wp(["-O2"]) == ["-O2"]
    j = A("gcc -Wp,-MD,.x.o.d -c x.c -o x.o")
    assert j.argv == ["gcc", "-MD", "-MF", ".x.o.d", "-c", "x.c", "-o", "x.o"]
    assert j.distributable


def test_kernel_style_command():
    cmd = (
        "gcc -Wp,-MMD,fs/.open.o.d -nostdinc -I./arch/x86/include -I./include "
        "-include ./include/linux/kconfig.h -D__KERNEL__ -fno-strict-aliasing -Wall -O2 "
        '-fno-PIE -mcmodel=kernel -DKBUILD_MODNAME="open" -c -o fs/open.o fs/open.c'
    )
    j = A(cmd)
    assert j.distributable, j.reason
    assert remote_argv(j) == [
        "gcc",
        "-fno-strict-aliasing",
        "-Wall",
        "-O2",
        "-fno-PIE",
        "-mcmodel=kernel",
        "-c",
        "-o",
        "fs/open.o",
        "fs/open.c",
    ]


# --- distcc 3.4's local-only table ------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd,word",
    [
        ("gcc -E a.c", "-E"),
        ("gcc -M -c a.c", "-M"),
        ("gcc -MM -c a.c", "-MM"),
        ("gcc -MMX -c a.c", "-MMX"),
        ("gcc -march=native -c a.c", "-march=native"),
        ("gcc -mtune=native -c a.c", "-mtune=native"),
        ("gcc -mcpu=native -c a.c", "-mcpu=native"),
        ("gcc -Wa,-adhln=a.lst -c a.c", "-Wa,-adhln=a.lst"),
        ("gcc -Wa,--MD,a.d -c a.c", "-Wa,--MD,a.d"),
        ("gcc -specs=x.specs -c a.c", "-specs=x.specs"),
        ("gcc -fprofile-arcs -c a.c", "-fprofile-arcs"),
        ("gcc -ftest-coverage -c a.c", "-ftest-coverage"),
        ("gcc --coverage -c a.c", "--coverage"),
        ("gcc -fprofile-generate=dir -c a.c", "-fprofile-generate"),
        ("gcc -fprofile-use -c a.c", "-fprofile-use"),
        ("gcc -fauto-profile=x -c a.c", "-fauto-profile"),
        ("gcc -fprofile-correction -c a.c", "-fprofile-correction"),
        ("gcc -frepo -c a.c", "-frepo"),
        ("gcc -x assembler -c a.c", "-x assembler"),
        ("gcc -xassembler-with-cpp -c a.c", "-x assembler-with-cpp"),
        ("gcc -x go -c a.c", "-x go"),
        ("gcc -drtl -c a.c", "-drtl"),
        ("gcc -c a.c b.c", "a.c, b.c"),
        ("gcc a.c -o a", "-c"),
        ("gcc -c a.s", "a.s"),
        ("gcc -c a.S", "a.S"),
        ("gcc -c a.cu", "a.cu"),
        ("gcc -c a.CPP", "a.CPP"),
        ("gcc -c", "source"),
        ("gcc -c conftest.c", "conftest.c"),
        ("gcc -c tmp.conftest.c", "tmp.conftest.c"),
        ("gcc -c a.c -o -", "-o -"),
        ("gcc -c a.c -o x.o -o y.o", "-o"),
        ("gcc -c a.c x.o", "x.o"),
    ],
)
def test_distcc_local_rules(cmd, word):
    j = A(cmd)
    assert not j.distributable
    assert word in j.reason and not j.reason.endswith("locally"), j.reason


def test_allowed_M_options():
    j = A("gcc -MD -MMD -MG -MP -MF x.d -MT t -MQ q -MFy.d -MTt2 -MQq2 -c a.c")
    assert j.distributable, j.reason


def test_x_prefix_rule_not_applied_to_headers():
    # distcc distributes -x c-header (prefix test); meshcc keeps it local (PCH output).
    assert not A("gcc -x c-header -c a.h").distributable


# --- meshcc's own local rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd,word,why",
    [
        ("gcc -gsplit-dwarf -c a.c", "-gsplit-dwarf", ".dwo"),
        ("gcc -save-temps -c a.c", "-save-temps", "intermediate"),
        ("gcc -save-temps=obj -c a.c", "-save-temps=obj", "intermediate"),
        ("gcc @args.rsp", "@args.rsp", "response file"),
        ("gcc -c a.c @more.rsp", "@more.rsp", "response file"),
        ("gcc -fplugin=./p.so -c a.c", "-fplugin=./p.so", "load code"),
        ("gcc -fplugin-arg-p-x=1 -c a.c", "-fplugin-arg-p-x=1", "load code"),
        ("gcc -iplugindir=/x -c a.c", "-iplugindir=/x", "plugin"),
        ("gcc -wrapper gdb,--args -c a.c", "-wrapper", "another command"),
        ("gcc -B/opt/x/ -c a.c", "-B/opt/x/", "programs"),
        ("gcc -aux-info a.aux -c a.c", "-aux-info", "extra file"),
        ("gcc -fdump-tree-all -c a.c", "-fdump-tree-all", "dump"),
        ("gcc -fstack-usage -c a.c", "-fstack-usage", ".su"),
        ("gcc -fcallgraph-info -c a.c", "-fcallgraph-info", ".ci"),
        ("gcc -fopt-info-vec=v.txt -c a.c", "-fopt-info-vec=v.txt", "file"),
        ("gcc -fdiagnostics-format=json-file -c a.c", "json-file", "file"),
        ("gcc -time=t.log -c a.c", "-time=t.log", "timing"),
        ("gcc -Wa,-o,x.o -c a.c", "-Wa,-o,x.o", "assembler"),
        ("gcc -Xassembler -adhln -c a.c", "-adhln", "assembler"),
        ("gcc -Wa,@asm.rsp -c a.c", "-Wa,@asm.rsp", "response file"),
        ("gcc -fno-preprocessed -c a.c", "-fno-preprocessed", "preprocessor"),
        ("gcc -dumpdir /tmp/ -c a.c", "-dumpdir /tmp/", "outside"),
        ("gcc -dumpbase ../x -c a.c", "-dumpbase ../x", "outside"),
        ("gcc -c a.c --output=a.o", "--output=a.o", "long option"),
        ("gcc -fsyntax-only -c a.c", "-fsyntax-only", "no object"),
        ("gcc -### -c a.c", "-###", "prints"),
        ("gcc -fmodules-ts -c a.cc", "-fmodules-ts", "modules"),
    ],
)
def test_meshcc_local_rules(cmd, word, why):
    j = A(cmd)
    assert not j.distributable
    assert word in j.reason and why in j.reason, j.reason


def test_policy_reason_reused_by_client():
    j = A("gcc -fdump-rtl-all -c a.c")
    server = policy.refusal(["gcc", "-fdump-rtl-all", "-c", "a.c", "-o", "a.o"])
    assert server and j.reason == server  # one phrasing for both sides


def test_client_preprocessor_options_are_fine():
    # These are refused on the server, but the client strips them after running cpp.
    j = A("gcc -include cfg.h -imacros m.h -Xpreprocessor -DX -Wp,-DY -MD -c a.c -o a.o")
    assert j.distributable, j.reason
    assert remote_argv(j) == ["gcc", "-c", "a.c", "-o", "a.o"]


def test_dumpdir_relative_is_fine():
    assert A("gcc -dumpdir obj/ -c a.c -o obj/a.o").distributable


def test_dA_dp_allowed_other_d_local():
    assert A("gcc -dA -dp -dP -c a.c").distributable
    assert not A("gcc -dumpmachine -c a.c").distributable


def test_absolute_source_distributable():
    j = A("gcc -o CMakeFiles/x.dir/a.c.o -c /home/u/proj/a.c")
    assert j.distributable, j.reason


# --- remote_argv ------------------------------------------------------------------------------


def test_remote_argv_strip_rules():
    cmd = (
        "gcc -DA=1 -D B -UC -U D -Iinc -I inc2 -Llib -L lib2 -lm -l z -MF x.d -MTt -MT t2 "
        "-MQ q -include h.h -imacros m.h -iprefix p -iwithprefix w -isystem s -isystemS2 "
        "-iwithprefixbefore wb -idirafter da -Wl,-O1 -stdlib=libc++ -undef -nostdinc "
        "-nostdinc++ -MD -MMD -MG -MP -iquote q -O2 -g -c a.c -o a.o"
    )
    j = A(cmd)
    assert j.distributable, j.reason
    assert remote_argv(j) == ["gcc", "-iquote", "q", "-O2", "-g", "-c", "a.c", "-o", "a.o"]


@pytest.mark.parametrize(
    "given,sent",
    [
        (["-x", "c"], ["-x", "cpp-output"]),
        (["-x", "c++"], ["-x", "c++-cpp-output"]),
        (["-x", "objective-c"], ["-x", "objective-c-cpp-output"]),
        (["-x", "objective-c++"], ["-x", "objective-c++-cpp-output"]),
        (["-xc"], ["-xcpp-output"]),
        (["-xc++"], ["-xc++-cpp-output"]),
        (["-x", "cpp-output"], ["-x", "cpp-output"]),
        (["-x", "none"], ["-x", "none"]),
    ],
)
def test_remote_argv_language_rewrite(given, sent):
    j = analyse(["gcc", *given, "-c", "a.c"])
    assert j.distributable, j.reason
    lang = given[-1].removeprefix("-x")
    tail = [DO] if lang in ("c", "c++", "none") else []  # not preprocessed yet, C or C++
    assert remote_argv(j) == ["gcc", *sent, "-c", "a.c", "-o", "a.o", *tail]


def test_remote_argv_keeps_source_mode_and_output():
    j = A("gcc -S -o out/a.s src/a.c")
    assert remote_argv(j) == ["gcc", "-S", "-o", "out/a.s", "src/a.c", DO]


def test_remote_argv_passes_policy():
    for cmd in (
        "gcc -O2 -g -fPIC -DX -Iinc -MD -c a.c -o a.o",
        "g++ -std=c++17 -x c++ -include pch.h -c a.cpp",
        "gcc -Wp,-MD,a.d -c a.c",
    ):
        j = A(cmd)
        assert j.distributable
        assert policy.refusal(remote_argv(j)) is None


# --- cpp_argv ---------------------------------------------------------------------------------


def test_cpp_argv_basic():
    j = A("gcc -O2 -DX -c src/a.c -o obj/a.o")
    assert cpp_argv(j) == ["gcc", "-O2", "-DX", "-E", "src/a.c"]  # optimizing: full cpp
    j = A("gcc -O0 -c src/a.c -oobj/a.o")
    assert cpp_argv(j) == ["gcc", "-O0", "-E", "src/a.c", DO]


def test_cpp_argv_deps_adds_mf_and_mq():
    j = A("gcc -MD -c src/a.c -o obj/a.o")
    assert cpp_argv(j) == ["gcc", "-MD", "-E", "src/a.c", "-MF", "obj/a.d", "-MQ", "obj/a.o", DO]


def test_cpp_argv_keeps_wp_for_cc1():
    j = A("gcc -Wp,-MD,obj/.a.o.d -c src/a.c -o obj/a.o")
    assert cpp_argv(j) == ["gcc", "-Wp,-MD,obj/.a.o.d", "-E", "src/a.c", DO]


@pytest.mark.parametrize(
    "path,expect",
    [
        ("obj/foo.o", "obj/foo.d"),
        ("foo.obj", "foo.d"),
        ("foo", "foo.d"),
        ("dir.x/foo", "dir.x/foo.d"),
        ("obj/foo.o.x", "obj/foo.o.d"),
        (".hidden", ".d"),
        ("foo.", "foo.d"),
    ],
)
def test_replace_suffix_matches_gcc_rule(path, expect):
    assert cmdline.replace_suffix(path, ".d") == expect


# --- robustness -------------------------------------------------------------------------------


def test_never_raises_on_odd_input():
    for argv in (
        ["gcc"],
        ["gcc", "-o"],
        ["gcc", "-x"],
        ["gcc", "-MF"],
        ["gcc", "-c", "-"],
        ["gcc", ""],
        ["gcc", "-"],
        ["gcc", "-c", "a.c", "-o", ""],
        [],
    ):
        j = analyse(argv)
        assert isinstance(j.reason, str)
        if argv and j.distributable:
            remote_argv(j)
            cpp_argv(j)


def test_repr_mentions_fields():
    assert "distributable=True" in repr(A("gcc -c a.c"))


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    _TOKENS = st.sampled_from(
        [
            "-c",
            "-S",
            "-E",
            "-o",
            "x.o",
            "a.c",
            "b.cc",
            "-x",
            "c",
            "c++",
            "-xc",
            "-MD",
            "-MF",
            "d.d",
            "-MT",
            "t",
            "-Wp,-MD,w.d",
            "-O2",
            "-g",
            "-DX",
            "-I",
            "inc",
            "-include",
            "h.h",
            "-fplugin=p",
            "@r",
            "-march=native",
            "-",
            "conftest.c",
            "-Wa,-a",
            "-flto",
            "--x",
        ]
    )

    # The options (of the tokens above, and -MQ, which cpp_argv adds) that take the next word
    # as their argument, as gcc reads them: in `gcc -c -I -c a.c` the second -c is -I's
    # directory, not a second mode option; in `gcc -c a.c -o -c -MD` it is the output's name.
    _TAKES_ARG = frozenset({"-o", "-x", "-MF", "-MT", "-MQ", "-I", "-include"})

    def _read_as_options(argv: list[str]) -> list[str]:
        """argv[1:] without the words that are another option's argument."""
        words: list[str] = []
        is_argument = False
        for word in argv[1:]:
            if not is_argument:
                words.append(word)
            is_argument = not is_argument and word in _TAKES_ARG
        return words

    def test_read_as_options_skips_option_arguments():
        assert _read_as_options(["gcc", "-c", "-I", "-c", "a.c"]) == ["-c", "-I", "a.c"]
        assert _read_as_options(["gcc", "-o", "-o", "-o", "x"]) == ["-o", "-o"]

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_TOKENS, max_size=10))
    def test_property_consistency(tokens):
        j = analyse(["gcc", *tokens])
        assert j.distributable == (j.reason == "")
        if j.distributable:
            sent = remote_argv(j)
            assert policy.refusal(sent) is None
            options = _read_as_options(sent)
            assert j.source in options and j.mode in options
            assert options.count("-o") == 1
            cpp = _read_as_options(cpp_argv(j))
            assert "-E" in cpp and "-c" not in cpp and "-S" not in cpp
            assert "-o" not in cpp

    def test_property_consistency_mode_word_as_an_option_argument():
        """Hypothesis found this one: the -c after -I is the include directory's name."""
        j = analyse(["gcc", "-c", "-I", "-c", "a.c"])
        assert j.distributable and j.mode == "-c" and j.source == "a.c"
        assert "-c" not in _read_as_options(cpp_argv(j))
