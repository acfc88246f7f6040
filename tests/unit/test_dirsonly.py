"""Which jobs use -fdirectives-only (args.directives_only), the client's host-macro test, and
the server's directive_refusal (real gcc behaviour: integration/test_dirsonly_gcc.py)."""

import pytest

from meshcc.compiler import args, policy
from meshcc.compiler.args import analyse


@pytest.mark.parametrize(
    "cmd",
    [
        "gcc -O0 -c a.c",
        "gcc -O0 -DX=1 -Iinc -include h.h -imacros m.h -c a.c -o a.o",
        "g++ -Og -std=c++17 -c a.cc",
        "gcc -O2 -O0 -c a.c",  # the last -O counts
        "gcc -x c -c a.c",
        "gcc -g -gno-record-gcc-switches -c a.c",
        "gcc -g -g0 -c a.c",
        "gcc -Wp,-MMD,obj/.a.o.d -c a.c -o obj/a.o",
        "gcc -MD -MF a.d -c a.c",
        "gcc -dumpbase a -c a.c",
        "gcc -S a.c",
    ],
)
def test_eligible(cmd):
    j = analyse(cmd.split())
    assert j.distributable, j.reason
    assert args.directives_only(j)
    assert args.DIRECTIVES_ONLY in args.cpp_argv(j)
    assert args.DIRECTIVES_ONLY in args.remote_argv(j)


@pytest.mark.parametrize(
    "cmd",
    [
        "gcc -g -c a.c",  # DW_AT_producer would name the option
        "gcc -g3 -c a.c",
        "gcc -gdwarf-4 -c a.c",
        "gcc -gno-record-gcc-switches -g -grecord-gcc-switches -c a.c",
        "gcc -frecord-gcc-switches -c a.c",
        "gcc -C -c a.c",
        "gcc -CC -c a.c",
        "gcc -traditional-cpp -c a.c",
        "gcc -Wall -Wunused-macros -c a.c",  # gcc refuses it with -fdirectives-only
        "gcc -dD -c a.c",
        "gcc -dM -c a.c",
        "gcc -fpch-preprocess -c a.c",
        "gcc -Wp,-dD -c a.c",
        "gcc -c a.i",  # already preprocessed
        "gcc -x cpp-output -c a.c",
        "gcc -c a.m",  # Objective-C
        "gcc -c a.S",  # assembler-with-cpp: #defines would reach the assembler
        "gcc -fdirectives-only -c a.c",  # the user's own, passed on once as given
        "gcc -O2 -c a.c",  # optimizing: full preprocessing gives the local object
        "gcc -O -c a.c",
        "gcc -O0 -Os -c a.c",
        "g++ -Ofast -c a.cc",
    ],
)
def test_not_eligible(cmd):
    j = analyse(cmd.split())
    assert not args.directives_only(j)
    assert args.cpp_argv(j).count(args.DIRECTIVES_ONLY) <= cmd.split().count(args.DIRECTIVES_ONLY)


@pytest.mark.parametrize(
    "cmd,eligible",
    [
        ("gcc -O2 -c a.c", True),  # byte-identical objects in zlib, lua and liblzma
        ("gcc -O -c a.c", True),
        ("g++ -Ofast -c a.cc", True),
        ("gcc -O2 -flto -c a.c", False),  # LTO objects differ from local ones either way
        ("gcc -O2 -flto=auto -c a.c", False),
        ("gcc -O2 -g -c a.c", False),  # recorded switches keep full preprocessing
    ],
)
def test_optimizing_jobs_only_when_asked(monkeypatch, cmd, eligible):
    j = analyse(cmd.split())
    assert not args.directives_only(j)
    monkeypatch.setattr(args, "directives_only_when_optimizing", True)
    assert args.directives_only(j) is eligible
    assert (args.DIRECTIVES_ONLY in args.cpp_argv(j)) is eligible


def test_user_directives_only_is_distributable_and_sent_once():
    j = analyse("gcc -fdirectives-only -c a.c".split())
    assert j.distributable, j.reason
    assert args.remote_argv(j).count(args.DIRECTIVES_ONLY) == 1


@pytest.mark.parametrize(
    "body,found",
    [
        (b"int a;\n#define V 1\n", None),
        (b"const char *d = __DATE__;\n", "__DATE__"),
        (b"#define T __TIME__\n", "__TIME__"),
        (b"const char *s = __TIMESTAMP__;\n", "__TIMESTAMP__"),
        (b"const char *b = __BASE_FILE__;\n", "__BASE_FILE__"),
        (b"int l = __INCLUDE_LEVEL__;\n", "__INCLUDE_LEVEL__"),
        (b"const char *f = __FILE__; int n = __LINE__, c = __COUNTER__;\n", None),
    ],
)
def test_host_macro_use(body, found):
    assert args.host_macro_use(body) == found


@pytest.mark.parametrize(
    "body",
    [
        b'#include "x"\n',
        b"  # /* c */ include <x>\n",
        b'%:include "x"\n',
        b'#inc\\\nlude "x"\n',
        b'#inc\\  \nlude "x"\n',  # gcc splices with blanks after the backslash too
        b'??=include "x"\n',
        b'int a; ??/\n#include "x"\n',  # without trigraphs this #include starts a line
        b'/* a\n b */ #include "x"\n',
        b'#if __has_include("/etc/x")\n#endif\n',
        b"#ifdef X\n#endif\n",
        b"#include_next <x>\n",
        b'#import "x"\n',
        b'#pragma GCC dependency "/etc/x"\n',
        b'const char *r = R"(/*)";\n#include "/etc/x"\n// */\n',
        b'int fooR"(\n#include "/e"\n)";\n',  # fooR is an identifier: no raw string
        b'"unterminated\n#include "y"\n',
    ],
)
def test_directive_refused(body):
    why = policy.directive_refusal(body)
    assert why is not None
    assert policy.scan_source_refusal(body) == why


@pytest.mark.parametrize(
    "body",
    [
        b'# 1 "a.c"\n# 1 "<built-in>" 1\n#define A 1\n#undef A\n#pragma once\n#\nint a;\n',
        b'#ident "v1"\n#line 7\n#pragma GCC poison gets\n',
        b"/* a comment that says\n   #if __GNUC_PREREQ (2,8)\n*/\nint a;\n",
        b"// #include <stdio.h>\nint a;\n",
        b'char *s = "\\\n#include";\n',
        b'const char *r = R"x(\n#include "y"\n)x";\n',
        b'const char *r = u8R"(\n#include "y"\n)";\n',
        b"char c = '#'; int x = 1 # 2;\n",
        b"int a; /* \n */ #include\n",  # '#' not first on its (spliced) line
        b"",
    ],
)
def test_directive_allowed(body):
    assert policy.directive_refusal(body) is None
