"""The server's argument vetting fast paths against the full walks they stand in for.

``policy._option_refusal`` skips its walk when every argument is a plain option it has
passed before (or a word); ``cmdline.scan`` skips its rule chain for such options;
``policy.vet`` scans once where the server used to scan twice. Each must give exactly the
old verdict: refuse everything the old code refused, with the same reason, and fill the same
job fields, whatever the caches hold.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcc.compiler import cmdline, policy

# Options and words that hit every kind of rule: plain ones, ones that take a value, ones
# refused alone or only with a certain value, sources, outputs, response files.
TOKENS = [
    *("-c", "-S", "-o", "-ox.o", "x.o", "-O2", "-O0", "-g", "-Wall", "-Wextra", "-std=gnu99"),
    *("-pthread", "-fPIC", "-DPIC", "-fvisibility=hidden", "-x", "c", "c++", "assembler"),
    *("-xc", "-xassembler", "-Xassembler", "-a", "-adhln", "--noexecstack", "-dumpdir"),
    *("/abs", "../up", "sub/dir", "-dumpbase", "-auxbase-strip", "-Wa,-a", "-Wa,--noexecstack"),
    *("-Wa,--MD,x", "-Wa,@f", "-fplugin=x.so", "-fplugin-arg-x", "-march=native"),
    *("-mtune=native", "-march=x86-64", "-MD", "-MMD", "-MF", "-MT", "dep.d", "-M", "-E"),
    *("-include", "-imacros", "@rsp", "a.c", "b.c", "a.i", "x.cc", "a.s", "lib.a", "-", ""),
    *("-gsplit-dwarf", "-save-temps", "--save-temps=obj", "-fdump-tree-all", "-dA", "-dr"),
    *("-dumpversion", "-fdiagnostics-color", "-fdiagnostics-format=sarif-file"),
    *("-fdiagnostics-generate-patch", "--param", "max-inline-insns=1", "-I", "-isystem"),
    *("-Wp,-MD,x.d", "-Xpreprocessor", "-specs=x", "--specs=x", "-fprofile-generate"),
    *("-fprofile-use=x", "--version", "-fno-preprocessed", "-fdirectives-only", "conftest.c"),
    *("-time=t", "-B/x", "-Bprefix", "--prefix", "-iplugindir=x", "-fopt-info-all=x"),
    *("-fopt-info", "--sysroot=/", "-aux-info", "x.aux", "-frepo", "-fsyntax-only", "-l", "m"),
    *("-wrapper", "-fstack-usage", "-fcallgraph-info=su", "-fsave-optimization-record"),
    *("-fmodules-ts", "-fself-test=x", "--coverage", "--long-unknown", "-v", "-w", "-u", "sym"),
]
_argv = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.text(min_size=0, max_size=6)), min_size=0, max_size=10
).map(lambda rest: ["gcc", *rest])


@pytest.fixture(autouse=True)
def _empty_caches() -> Iterator[None]:
    """Each test starts from empty caches and leaves them empty (other tests expect none)."""
    policy._PLAIN_OK.clear()
    policy._VALUE_OK.clear()
    for s in cmdline._PLAIN.values():
        s.clear()
    yield
    policy._PLAIN_OK.clear()
    policy._VALUE_OK.clear()
    for s in cmdline._PLAIN.values():
        s.clear()


def _scan_uncached(argv: list[str], client: bool) -> tuple[str, tuple[object, ...]]:
    """cmdline.scan's verdict and fields with its cache empty (its full rule chain)."""
    saved = {k: set(v) for k, v in cmdline._PLAIN.items()}
    for s in cmdline._PLAIN.values():
        s.clear()
    try:
        job = cmdline.Job(list(argv), list(argv))
        why = cmdline.scan(job, client)
    finally:
        for k, v in saved.items():
            cmdline._PLAIN[k].clear()
            cmdline._PLAIN[k].update(v)
    return why, tuple(getattr(job, f) for f in cmdline.Job.__slots__)


def _old_refusal(argv: list[str]) -> str | None:
    """refusal() as it was: the full option walk, then a fresh scan."""
    if not argv:
        return "empty command line"
    r = policy._option_refusal_walk(argv)
    if r:
        return r
    return _scan_uncached(argv, client=False)[0] or None


@settings(max_examples=300, deadline=None)
@given(st.lists(_argv, min_size=1, max_size=8))
def test_option_refusal_fast_path_refuses_what_the_walk_refuses(argvs: list[list[str]]) -> None:
    # Earlier jobs fill the cache; every later verdict must still be the walk's own.
    for argv in argvs:
        assert policy._option_refusal(argv) == policy._option_refusal_walk(argv)
    for argv in reversed(argvs):
        assert policy._option_refusal(argv) == policy._option_refusal_walk(argv)


@settings(max_examples=300, deadline=None)
@given(st.lists(_argv, min_size=1, max_size=8), st.booleans())
def test_scan_cache_gives_the_rule_chains_verdict_and_fields(
    argvs: list[list[str]], client: bool
) -> None:
    for argv in argvs + argvs[::-1]:
        job = cmdline.Job(list(argv), list(argv))
        got = cmdline.scan(job, client)
        assert (got, tuple(getattr(job, f) for f in cmdline.Job.__slots__)) == _scan_uncached(
            argv, client
        )


@settings(max_examples=300, deadline=None)
@given(st.lists(_argv, min_size=1, max_size=6))
def test_vet_matches_the_old_two_scans(argvs: list[list[str]]) -> None:
    """vet's verdict is refusal()'s old one; an accepted job has the fields the server took
    from its old second scan (client rules, -Wp expanded)."""
    for argv in argvs + argvs[::-1]:
        why, job = policy.vet(argv)
        assert why == _old_refusal(argv)
        assert policy.refusal(argv) == why
        if why is None:
            assert job is not None
            old = cmdline.Job([argv[0], *cmdline.expand_wp(argv[1:])], argv)
            assert _scan_uncached(old.argv, client=True)[0] == ""
            cmdline.scan(old, client=True)
            assert (job.source, job.temp_suffix, job.mode) == (
                old.source,
                old.temp_suffix,
                old.mode,
            )
        else:
            assert job is None


def test_plain_options_are_remembered_and_refusing_ones_never() -> None:
    argv = ["gcc", "-O2", "-Wall", "-fplugin=x.so", "-c", "a.c"]
    assert policy.refusal(argv) == "-fplugin=x.so loads code into the compiler"
    assert policy.refusal(argv) == "-fplugin=x.so loads code into the compiler"
    assert "-Wall" in policy._PLAIN_OK
    assert "-fplugin=x.so" not in policy._PLAIN_OK
    assert "-o" not in policy._PLAIN_OK  # takes a value: its value is skipped, not it
    policy.refusal(["gcc", "-c", "a.c", "-o", "a.o"])
    assert "-o" in policy._VALUE_OK
    # The value of -o is never checked, in the walk as on the fast path.
    assert policy.refusal(["gcc", "-c", "a.c", "-o", "-fplugin=x"]) is None
    assert policy.refusal(["gcc", "-c", "a.c", "-o", "-Wall", "-fplugin=x"]) is not None


def test_the_caches_are_bounded() -> None:
    for n in range(policy._PLAIN_MAX + 50):
        policy.refusal(["gcc", f"-Wno-thing-{n}", "-c", "a.c"])
    policy.refusal(["gcc", "-W" + "x" * 500, "-c", "a.c"])
    assert len(policy._PLAIN_OK) == policy._PLAIN_MAX
    assert all(len(a) <= policy._PLAIN_LEN for a in policy._PLAIN_OK)
    assert len(cmdline._PLAIN[False]) <= cmdline._PLAIN_MAX
