"""Tests for meshcc.compiler.policy: server refusals, job rewriting, source scanning (what
real gcc makes of a rewritten job: integration/test_policy_gcc.py)."""

import pytest

from meshcc.compiler.policy import refusal, rewrite_for_job, scan_source_refusal


def R(cmd: str) -> str | None:
    return refusal(cmd.split())


BASE = "gcc -O2 -c a.c -o a.o"

# (extra options inserted before -c, text the reason must contain)
REFUSED = [
    ("-fplugin=/x/p.so", "-fplugin=/x/p.so"),
    ("-fplugin-arg-p-key=v", "-fplugin-arg-p-key=v"),
    ("-iplugindir=/x", "-iplugindir=/x"),
    ("-specs=/x/s", "-specs=/x/s"),
    ("--specs=/x/s", "--specs=/x/s"),
    ("-wrapper /bin/sh", "-wrapper"),
    ("-B/tmp/evil/", "-B/tmp/evil/"),
    ("-B /tmp/evil/", "-B"),
    ("--prefix=/tmp/evil/", "--prefix"),
    ("@/etc/args", "@/etc/args"),
    ("-Wa,@/etc/args", "-Wa,@/etc/args"),
    ("-Xassembler @/etc/args", "@/etc/args"),
    ("-aux-info /tmp/x", "-aux-info"),
    ("-Wa,-adhln=/tmp/l", "-Wa,-adhln=/tmp/l"),
    ("-Wa,-a", "-Wa,-a"),
    ("-Wa,--MD,/tmp/d", "-Wa,--MD,/tmp/d"),
    ("-Wa,-o,/tmp/x.o", "-Wa,-o,/tmp/x.o"),
    ("-Wa,--noexecstack,-al", "-Wa,--noexecstack,-al"),
    ("-Xassembler -al=/tmp/l", "-al=/tmp/l"),
    ("-Xassembler --MD", "--MD"),
    # GNU as takes one dash or two and any unambiguous prefix of a long option's name
    ("-Wa,-MD,/tmp/d", "-Wa,-MD,/tmp/d"),
    ("-Wa,--M,/tmp/d", "-Wa,--M,/tmp/d"),
    ("-Xassembler -MD", "-MD"),
    ("-Wa,--al=/tmp/l", "-Wa,--al=/tmp/l"),
    ("-Wa,--o,/tmp/x.o", "-Wa,--o,/tmp/x.o"),
    ("-Wa,-I/etc", "-Wa,-I/etc"),
    ("-Wa,-I,/etc", "-Wa,-I,/etc"),
    ("-fcompare-debug=-wrapper /bin/sh", "-fcompare-debug=-wrapper"),
    ("-fcompare-debug=-fplugin=/x/p.so", "-fcompare-debug=-fplugin=/x/p.so"),
    ("-fcompare-debug=-aux-info=/tmp/x", "-fcompare-debug=-aux-info=/tmp/x"),
    ("-save-temps", "-save-temps"),
    ("-save-temps=obj", "-save-temps=obj"),
    ("--save-temps", "--save-temps"),
    ("-fdump-tree-all", "-fdump-tree-all"),
    ("-fdump-rtl-expand", "-fdump-rtl-expand"),
    ("-fdump-ipa-all=/tmp/x", "-fdump-ipa-all"),
    ("-dr", "-dr"),
    ("-dD", "-dD"),
    ("-dM", "-dM"),
    ("-da", "-da"),
    ("-dumpmachine", "-dumpmachine"),
    ("-fopt-info-vec-all=/tmp/o", "-fopt-info-vec-all=/tmp/o"),
    ("-fopt-info=/tmp/o", "-fopt-info=/tmp/o"),
    ("-fprofile-generate", "-fprofile-generate"),
    ("-fprofile-use=/x", "-fprofile-use=/x"),
    ("-fprofile-arcs", "-fprofile-arcs"),
    ("-fprofile-dir=/x", "-fprofile-dir=/x"),
    ("--coverage", "--coverage"),
    ("-ftest-coverage", "-ftest-coverage"),
    ("-fauto-profile", "-fauto-profile"),
    ("-fauto-profile=/x", "-fauto-profile=/x"),
    ("-fbranch-probabilities", "-fbranch-probabilities"),
    ("-fcallgraph-info", "-fcallgraph-info"),
    ("-fcallgraph-info=su", "-fcallgraph-info=su"),
    ("-fstack-usage", "-fstack-usage"),
    ("-gsplit-dwarf", "-gsplit-dwarf"),
    ("-fsave-optimization-record", "-fsave-optimization-record"),
    ("-fdiagnostics-format=json-file", "-fdiagnostics-format=json-file"),
    ("-fdiagnostics-format=sarif-file", "-fdiagnostics-format=sarif-file"),
    ("-fdiagnostics-generate-patch", "-fdiagnostics-generate-patch"),
    ("-time=/tmp/t", "-time=/tmp/t"),
    ("-Wp,-MD,/tmp/d", "-Wp,-MD,/tmp/d"),
    ("-Wp,-DX", "-Wp,-DX"),
    ("-Xpreprocessor -DX", "-Xpreprocessor"),
    ("-include /etc/shadow", "-include"),
    ("-include/etc/shadow", "-include/etc/shadow"),
    ("-imacros /etc/shadow", "-imacros"),
    ("-M", "-M"),
    ("-MM", "-MM"),
    ("-MD", "-MD"),
    ("-MMD", "-MMD"),
    ("-MF /tmp/d", "-MF"),
    ("-MT x", "-MT"),
    ("-MQ x", "-MQ"),
    ("-MP", "-MP"),
    ("-E", "-E"),
    ("-dumpdir /tmp/", "-dumpdir /tmp/"),
    ("-dumpdir ../", "-dumpdir ../"),
    ("-dumpbase /tmp/x", "-dumpbase /tmp/x"),
    ("-dumpbase a/../../x", "-dumpbase a/../../x"),
    ("-auxbase /tmp/x", "-auxbase /tmp/x"),
    ("-fno-preprocessed", "-fno-preprocessed"),
    ("-fmodule-mapper=|evil", "-fmodule-mapper=|evil"),
    ("-fmodules-ts", "-fmodules-ts"),
    ("-fself-test=/x", "-fself-test=/x"),
    ("-x c-header", "-x c-header"),
    ("-x c++-header", "-x c++-header"),
    ("-x assembler", "-x assembler"),
    ("-x assembler-with-cpp", "-x assembler-with-cpp"),
    ("-xgo", "-x go"),
    ("-x ada", "-x ada"),
    ("-march=native", "-march=native"),
    ("-mtune=native", "-mtune=native"),
    ("-specs x", "-specs"),
    ("-frepo", "-frepo"),
    ("-o b.o", "-o"),
]


@pytest.mark.parametrize("extra,word", REFUSED)
def test_refused(extra, word):
    cmd = BASE.replace(" -c ", f" {extra} -c ")
    r = R(cmd)
    assert r is not None and word in r, (cmd, r)
    assert not r.endswith("locally")


@pytest.mark.parametrize(
    "cmd,word",
    [
        ("gcc -O2 -c a.c b.c -o a.o", "more than one source"),
        ("gcc -O2 a.c -o a.o", "-c or -S"),
        ("gcc -O2 -c a.s -o a.o", "a.s"),
        ("gcc -O2 -c -o a.o", "no C"),
        ("gcc -c conftest.c -o conftest.o", "conftest.c"),
        ("gcc -c a.c -o -", "-o -"),
        ("gcc -c a.c x.o -o a.o", "x.o"),
    ],
)
def test_structural_refusals(cmd, word):
    r = R(cmd)
    assert r is not None and word in r, r


SAFE = [
    # zlib's Makefile (configure on Linux)
    "gcc -O3 -D_LARGEFILE64_SOURCE=1 -DHAVE_HIDDEN -c -o adler32.o adler32.c",
    "gcc -O3 -fPIC -D_LARGEFILE64_SOURCE=1 -DHAVE_HIDDEN -DPIC -c -o objs/adler32.o adler32.c",
    # what a distcc client sends for those (strip.c removes -D/-I)
    "x86_64-linux-gnu-gcc -O3 -c -o adler32.o adler32.c",
    "gcc -O3 -fPIC -DPIC -c -o objs/adler32.o adler32.c",
    # kernel-style flags after stripping
    "gcc -fno-strict-aliasing -Wall -O2 -g -fPIC -fno-common -fno-PIE -mcmodel=kernel "
    "-fno-asynchronous-unwind-tables -mno-red-zone -std=gnu11 -c -o fs/open.o fs/open.c",
    # distcc sends -x c unchanged; allowed, and rewritten to cpp-output
    "gcc -x c -O2 -c a.c -o a.o",
    "gcc -xc++ -O2 -c a.cc -o a.o",
    "gcc -x cpp-output -c a.i -o a.o",
    "gcc -x none -c a.c -o a.o",
    "g++ -std=c++17 -O2 -g -Wextra -fvisibility=hidden -S a.cpp -o a.s",
    "gcc -O2 -flto -ffat-lto-objects -c a.c -o a.o",
    "gcc -dA -dp -dP -c a.c -o a.o",
    "gcc -dumpdir obj/ -dumpbase a.c -dumpbase-ext .c -c a.c -o obj/a.o",
    "gcc -Wa,--noexecstack -Wa,-mrelax-relocations=no -Xassembler --gdwarf-5 -c a.c -o a.o",
    "gcc -Wa,--compress-debug-sections=zlib,--32 -Wa,-mx86-used-note=no -c a.c -o a.o",
    "gcc -Wa,--defsym,X=1 -Wa,--fatal-warnings -c a.c -o a.o",
    "gcc -fcompare-debug -c a.c -o a.o",  # checks itself by a second compile, no options
    "gcc -fopt-info-vec -fdiagnostics-color=always -fdiagnostics-show-caret -c a.c -o a.o",
    "gcc -fdebug-prefix-map=/a=/b -ffile-prefix-map=/x=. -c a.c -o a.o",
    "gcc -c a.c",  # no -o: the server appends one
    "gcc -c /home/user/proj/src/a.c -o CMakeFiles/t.dir/src/a.c.o",  # CMake: absolute source
    "gcc -c ../src/a.c -o ../obj/a.o",  # names are replaced, never used
    "gcc -I/usr/include/x -isystem /opt/inc -c a.c -o a.o",
    "gcc -fprofile-info-section -c a.c -o a.o".replace("-fprofile-info-section ", ""),
    "gcc -fno-profile-arcs -c a.c -o a.o",
]


@pytest.mark.parametrize("cmd", SAFE)
def test_safe(cmd):
    assert R(cmd) is None


def test_empty():
    assert refusal([]) and refusal(["gcc"])


# --- rewrite_for_job --------------------------------------------------------------------------


def test_rewrite_basic():
    got = rewrite_for_job(
        "gcc -O2 -c hello.c -o hello.o".split(), "/j/in.i", "/j/out.o", hide_source_lines=False
    )
    assert got == ["gcc", "-O2", "-c", "/j/in.i", "-o", "/j/out.o"]


def test_rewrite_appends_output_and_caret_flag():
    got = rewrite_for_job(["gcc", "-c", "a.c"], "/j/in.i", "/j/out.o")
    assert got == ["gcc", "-c", "/j/in.i", "-o", "/j/out.o", "-fno-diagnostics-show-caret"]


def test_rewrite_joined_output():
    got = rewrite_for_job(
        ["gcc", "-c", "a.c", "-oa.o"], "/j/in.i", "/j/o.o", hide_source_lines=False
    )
    assert got == ["gcc", "-c", "/j/in.i", "-o", "/j/o.o"]


@pytest.mark.parametrize(
    "given,forced",
    [
        (["-x", "c"], ["-x", "cpp-output"]),
        (["-x", "c++"], ["-x", "c++-cpp-output"]),
        (["-x", "objective-c"], ["-x", "objective-c-cpp-output"]),
        (["-x", "objective-c++"], ["-x", "objective-c++-cpp-output"]),
        (["-xc"], ["-xcpp-output"]),
        (["-xobjective-c++"], ["-xobjective-c++-cpp-output"]),
        (["-x", "cpp-output"], ["-x", "cpp-output"]),
        (["-x", "none"], ["-x", "none"]),
    ],
)
def test_rewrite_forces_preprocessed_language(given, forced):
    argv = ["gcc", *given, "-c", "a.c", "-o", "a.o"]
    assert refusal(argv) is None
    got = rewrite_for_job(argv, "/j/in.i", "/j/o.o", hide_source_lines=False)
    assert got == ["gcc", *forced, "-c", "/j/in.i", "-o", "/j/o.o"]


def test_rewrite_skips_option_values():
    # A value that looks like a source must not be taken for the source.
    argv = ["gcc", "-iquote", "x.c", "-c", "a.c", "-o", "a.o"]
    got = rewrite_for_job(argv, "/j/in.i", "/j/o.o", hide_source_lines=False)
    assert got == ["gcc", "-iquote", "x.c", "-c", "/j/in.i", "-o", "/j/o.o"]


def test_rewrite_without_source_raises():
    with pytest.raises(ValueError):
        rewrite_for_job(["gcc", "-c"], "/j/in.i", "/j/o.o")


# --- scan_source_refusal ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,word",
    [
        (b'__asm__(".incbin \\"/etc/shadow\\"");', ".incbin"),
        (b'asm(".INCBIN \\"/etc/shadow\\"");', ".incbin"),
        (b'asm(".include \\"/etc/passwd\\"");', ".include"),
        (b'asm(".include\\t\\"/etc/passwd\\"");', ".include"),
        (b'#pragma GCC pch_preprocess "/etc/passwd"\nint x;', "pch_preprocess"),
        (b'#pragma GCC dependency "/etc/shadow"\nint x;', "dependency"),
        (b'_Pragma("GCC dependency \\"/etc/shadow\\"") int x;', "dependency"),
        (b'asm(".InCbIn \\"/etc/shadow\\"");', ".incbin"),
        (b'asm(".iNcLuDe \\"/etc/passwd\\"");', ".include"),
        (b'asm(".include\\\\\n\\"/etc/passwd\\"");', ".include"),
        # an .incbin after a harmless ".includes" is still found, and reported as such
        (b's.includes(1); asm(".incbin \\"/etc/shadow\\"");', ".incbin"),
        # an .incbin after a real .include: the more serious one is reported
        (b'asm(".include \\"a\\"\\n.incbin \\"b\\"");', ".incbin"),
    ],
)
def test_scan_refuses(text, word):
    r = scan_source_refusal(b"int a;\n" + text + b"\nint b;\n")
    assert r is not None and word in r


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"int main(void) { return 0; }\n",
        b'# 1 "/usr/include/stdio.h" 1 3 4\nextern int printf(const char *, ...);\n',
        b"bool f(S s) { return s.includes(3) || s.include_dirs; }\n",
        b'const char *m = "see the include directory";\n',
        b"x.INCLUDES = 1; y.incbi = 2; z.Includex = 3;\n",
        b"#pragma GCC PCH_PREPROCESS\n",  # the pragma's name is case-sensitive in gcc
        b'const char *why = "a dependency of GCC";\n',
    ],
)
def test_scan_allows(text):
    assert scan_source_refusal(text) is None


def test_scan_include_at_the_very_end():
    assert scan_source_refusal(b"int a;\n.include") is not None
    assert scan_source_refusal(b"int a;\n.INCLUDE") is not None


def test_scan_agrees_with_a_plain_reference():
    """The one-pass scan against the rules written the slow, obvious way (lowercase the
    text, find every occurrence), on generated text full of near misses."""
    import random

    def reference(data: bytes) -> str | None:
        if b"pch_preprocess" in data:
            return "pch_preprocess"
        low = data.lower()
        if b".incbin" in low:
            return ".incbin"
        pos = low.find(b".include")
        while pos >= 0:
            nxt = low[pos + 8 : pos + 9]
            if not nxt or nxt in (b" ", b"\t", b"\\", b'"'):
                return ".include"
            pos = low.find(b".include", pos + 1)
        return None

    rng = random.Random(12)
    pieces = [b".inc", b"bin", b"lude", b"LUDE", b"Bin", b" ", b"\t", b'"', b"\\", b"x", b"."]
    pieces += [b"pch_pre", b"process", b"s", b"\n", b"I", b"i", b"nc"]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        want = reference(data)
        got = scan_source_refusal(data)
        assert (got is None) == (want is None), data
        if want is not None:
            assert got is not None and want in got, data
