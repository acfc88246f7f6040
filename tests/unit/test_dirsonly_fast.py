"""directive_refusal's fast path (policy._fast_accepts) against the full lexer (_directive_in).

The fast path may only *accept*: whatever it accepts, the full lexer must accept too, and
directive_refusal with the fast path must give exactly the full path's answer.  Hypothesis
builds bodies from the pieces the lexer cares about (comment openers and closers, quotes,
raw string prefixes, splices, trigraphs, digraphs, directive names, line starts), so the
generated texts mix them in the awkward ways a crafted body would.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshcc.compiler import policy

PIECES = [
    b"#",
    b"%:",
    b"%",
    b":",
    b"??=",
    b"??/",
    b"?",
    b"\\",
    b"\\\n",
    b"\\ \n",
    b"\n",
    b"\n",
    b"\n#",
    b"\n# ",
    b" ",
    b"\t",
    b"\r",
    b"\f",
    b"\v",
    b"/*",
    b"*/",
    b"*",
    b"/",
    b"//",
    b'"',
    b"'",
    b'R"',
    b'u8R"',
    b'LR"',
    b"R",
    b"u8",
    b"u",
    b"x",
    b"_",
    b"(",
    b")",
    b"d",
    b"define",
    b"undef",
    b"pragma",
    b"line",
    b"ident",
    b"include",
    b"include_next",
    b"if",
    b"dependency",
    b"1",
    b"12",
    b"int a;",
    b"#/*",
    b"# /*",
    b"*/include",
    b"*/ if",
]
bodies = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)
# Mostly allowed lines, so that the fast path really accepts many of the generated bodies
# (a property over bodies it always rejects would prove nothing).
LINES = [
    b"#define A(x) x ## y #x",
    b'# 1 "a.h" 2',
    b"#pragma once",
    b"#undef A",
    b"%:define B",
    b"int a; /* #if X */",
    b"/* #include <x>",
    b"*/",
    b'char *s = "/*";',
    b"char c = '\"';",
    b'const char *r = R"(',
    b')";',
    b"// #ifdef Y",
    b"  #  define C 1",
    b"#",
]
line_bodies = st.lists(st.one_of(st.sampled_from(LINES), st.sampled_from(PIECES)), max_size=30).map(
    b"\n".join
)


# Directive-shaped lines: what may come before the '#', between it and the name (blanks,
# comments that may span lines, splices), the name, and the rest of the line.
_directive_line = st.tuples(
    st.sampled_from([b"", b" ", b"/* c */", b"/*\n*/", b"*/", b"x", b'"', b'R"(']),
    st.sampled_from([b"#", b"%:", b"??=", b"%\\\n:"]),
    st.sampled_from([b"", b" ", b"/**/", b"/*\n*/", b"/*\n", b"\\\n", b"//"]),
    st.sampled_from([b"include", b"define", b"if", b"pragma", b"1", b"", b"defined"]),
    st.sampled_from([b"", b' "x"', b" /*", b" */", b")", b'"', b" dependency"]),
).map(b"".join)
directive_bodies = st.lists(st.one_of(_directive_line, st.sampled_from(LINES)), max_size=12).map(
    b"\n".join
)


def _spliced(data: bytes) -> bytes:
    return re.sub(policy._SPLICE, b"", data)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(bodies, line_bodies, directive_bodies))
@example(b"/* a\n b */ #include 'x'\n")
@example(b"#/**/include 'x'\n")
@example(b"%\\\n:include 'x'\n")
@example(b"#/*\n*/include")  # a comment open at the suspect's line end hides the name
@example(b"#/*\n*/ /*\n*/include")
def test_fast_path_never_accepts_what_the_lexer_refuses(body: bytes) -> None:
    text = _spliced(body)
    if policy._fast_accepts(text):
        assert policy._directive_in(text) is None


@settings(max_examples=1500, deadline=None)
@given(st.one_of(bodies, line_bodies, directive_bodies))
def test_directive_refusal_equals_the_full_lexer(body: bytes) -> None:
    assert policy.directive_refusal(body) == policy.directive_refusal_full(body)


HEADERISH = (
    b'# 1 "lvm.c"\n# 1 "/usr/include/features.h" 1 3 4\n'
    b"/* Convenience macro to test the version of gcc.\n   Use like this:\n"
    b"   #if __GNUC_PREREQ (2,8)\n   ... code requiring gcc 2.8 or later ...\n   #endif\n*/\n"
    b"#define __GNUC_PREREQ(maj, min) \\\n  ((__GNUC__ << 16) + __GNUC_MINOR__ >= (maj) << 16)\n"
    b'static const char *s = "#include <x>";\n'
    b"char c = '#';\n"
    b'const char *r = R"x(\n  int ; /* ")x";\n'
    b"#define CAT(a, b) a ## b\n#define STR(x) #x\n"
    b'%:define DIGRAPH 1\n#pragma GCC diagnostic push\n#ident "v"\n#\nint a;\n'
)


@pytest.mark.parametrize(
    "body",
    [
        HEADERISH,  # a suspect inside a comment: the prefix walk clears it
        HEADERISH.replace(b"#if __GNUC", b"#define __GNUC"),  # no suspect at all
        b"",
        b"int a;\n",
    ],
)
def test_fast_path_accepts_real_looking_bodies(body: bytes) -> None:
    """The fast path is really taken for what gcc -fdirectives-only prints (headers keep
    their comments, which mention #if), so its speed is not only on paper."""
    assert policy._fast_accepts(_spliced(body))
    assert policy.directive_refusal(body) is None


@pytest.mark.parametrize(
    "body",
    [
        HEADERISH + b'#include "/etc/passwd"\n',
        HEADERISH.replace(b"*/\n#define", b'*/ #include "x"\n#define'),
        b'#/**/include "x"\n',
        b'# /* a\n b */ include "x"\n',
        b'%\\\n:include "x"\n',  # the splice makes a digraph; gcc obeys it
        b'# pragma GCC dependency "x"\n',
        b"x\n#ifdef A\n#endif\n",
    ],
)
def test_fast_path_leaves_refusals_to_the_lexer(body: bytes) -> None:
    assert not policy._fast_accepts(_spliced(body))
    assert policy.directive_refusal(body) is not None


def test_a_directive_line_inside_a_raw_string_goes_to_the_lexer() -> None:
    """The walk keeps literals, so a raw string's own lines are judged too: the fast path
    declines and the lexer (which blanks the raw string) accepts."""
    body = b'const char *r = R"x(\n#include "y"\n)x";\n'
    assert not policy._fast_accepts(_spliced(body))
    assert policy.directive_refusal(body) is None


def test_a_spliced_digraph_is_refused() -> None:
    """``%`` backslash-newline ``:`` is the digraph ``%:`` once spliced; gcc -fdirectives-only
    then reads the named file (integration/test_dirsonly_gcc.py shows it with real gcc).
    The early return used to look for ``%:`` in the unspliced text and missed it."""
    body = b'%\\\n:include "/etc/passwd"\nint a;\n'
    assert policy.scan_source_refusal(body) is not None
    assert policy.directive_refusal_full(body) is not None


# --- the memchr loops (policy._splice, policy._followed) against the slow forms they replace

# Bytes that matter to the loops (backslashes, blanks, newlines, '?', '%') mixed with filler.
_LOOP_PIECES = [b"\\", b"\\\n", b"\\ \n", b"\\\t\r\n", b"\\\\\n", b" ", b"\t", b"\r", b"\v"]
_LOOP_PIECES += [b"\f", b"\n", b"?", b"??", b"??=", b"??/", b"%", b"%:", b":", b"=", b"/", b"x"]
loop_bodies = st.lists(st.sampled_from(_LOOP_PIECES), max_size=60).map(b"".join)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(loop_bodies, bodies, directive_bodies))
@example(b"\\\\\n\n")  # a splice made by a splice is not spliced again (one pass, as gcc)
@example(b"\\ \t\n\\\n")
def test_splice_equals_the_regular_expression(body: bytes) -> None:
    assert policy._splice(body) == re.sub(policy._SPLICE, b"", body)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(loop_bodies, bodies))
def test_followed_equals_substring_tests(body: bytes) -> None:
    assert policy._followed(body, b"?", (b"?=", b"?/")) == (b"??=" in body or b"??/" in body)
    assert policy._followed(body, b"%", (b":",)) == (b"%:" in body)
    assert policy._followed(body, b"?", (b"?",)) == (b"??" in body)


@pytest.mark.parametrize("limit", [0, 1, 3])
def test_loops_hand_over_to_the_slow_forms_past_their_limit(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crafted body full of backslashes or '?' costs a bounded number of loop turns, then
    the one-pass slow form, with the same answer."""
    monkeypatch.setattr(policy, "_LOOP_LIMIT", limit)
    body = b"\\x \\ \n ? ?? %% %: \\\n#include x\n" * 3 + b"??/\n??=include y\n"
    assert policy._splice(body) == re.sub(policy._SPLICE, b"", body)
    assert policy._followed(body, b"?", (b"?=", b"?/"))
    assert policy._followed(body, b"%", (b":",))
    assert not policy._followed(body.replace(b"%:", b"%"), b"%", (b":",))
    assert policy.directive_refusal(body) == policy.directive_refusal_full(body) is not None


# A pragma line is not a suspect unless it could name "dependency" on the lexer's line.
PRAGMA_LINES = [
    b"#pragma GCC dependency",
    b'#pragma GCC /*\n*/ dependency "x"',  # a comment carries the line on
    b'#pragma GCC R"x(\n)x" dependency "x"',  # so does a raw string
    b'#pragma GCC u8R"(\n)" dependency "x"',
    b'#pragma message("dependency")',  # a string: the lexer accepts it
    b"#pragma GCC diagnostic push",
    b"#  pragma once // dependency",
    b"%:pragma GCC dep\\\nendency",
]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PRAGMA_LINES), _directive_line), max_size=8))
def test_pragma_lines_are_judged_as_the_lexer_judges_them(lines: list[bytes]) -> None:
    body = b"\n".join(lines)
    text = _spliced(body)
    if policy._fast_accepts(text):
        assert policy._directive_in(text) is None
    assert policy.directive_refusal(body) == policy.directive_refusal_full(body)


@pytest.mark.parametrize("line", PRAGMA_LINES[:4] + PRAGMA_LINES[-1:])
def test_a_pragma_that_may_name_dependency_goes_to_the_lexer(line: bytes) -> None:
    assert not policy._fast_accepts(_spliced(line + b"\n"))
    assert policy.directive_refusal(line + b"\n") is not None
