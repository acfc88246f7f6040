"""The result cache's content key and its uncacheable rules (meshcc.cache.key)."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from meshcc.cache.key import content_key, is_key, normalised_args, uncacheable

ARGV = ["gcc", "-O2", "-g", "-Wall", "-c", "src/foo.c", "-o", "build/foo.o"]
DATA = b'# 1 "src/foo.c"\nint f(void) { return 1; }\n'


def key(argv: list[str] = ARGV, data: bytes = DATA, **kw: object) -> str:
    fields: dict[str, object] = {
        "identity": "id1",
        "driver": "gcc",
        "suffix": ".i",
        "output_suffix": ".o",
        "env": {"LANG": "C.UTF-8"},
    }
    fields.update(kw)
    return content_key(argv=argv, data=data, **fields)  # type: ignore[arg-type]


def test_key_is_hex_and_stable() -> None:
    k = key()
    assert is_key(k)
    assert key() == k


def test_output_name_and_source_name_do_not_split_keys() -> None:
    other = ["gcc", "-O2", "-g", "-Wall", "-c", "/abs/foo.c", "-o", "elsewhere.o"]
    assert key(other) == key()
    assert key(["gcc", "-O2", "-g", "-Wall", "-c", "src/foo.c"]) == key()  # no -o at all
    assert key(["gcc", "-O2", "-g", "-Wall", "-c", "src/foo.c", "-obuild/x.o"]) == key()


def test_compiler_name_is_not_in_the_key_but_the_driver_is() -> None:
    assert key(["x86_64-linux-gnu-gcc", *ARGV[1:]]) == key()
    assert key(driver="g++") != key()


def test_every_output_relevant_field_splits_keys() -> None:
    base = key()
    assert key(["gcc", "-O0", "-g", "-Wall", "-c", "src/foo.c"]) != base
    assert key(["gcc", "-g", "-O2", "-Wall", "-c", "src/foo.c"]) != base  # order matters
    assert key(data=DATA + b"\n") != base
    assert key(identity="id2") != base
    assert key(suffix=".ii") != base
    assert key(output_suffix=".s") != base
    assert key(env={"LANG": "de_DE.UTF-8"}) != base
    assert key(env={"LANG": "C.UTF-8", "HOME": "/x", "PATH": "/y"}) == base  # not relevant


def test_normalised_args_name_fixed_files() -> None:
    args = normalised_args(ARGV, ".i", ".o")
    assert "src/foo.c" not in args and "build/foo.o" not in args
    assert args[:3] == ["-O2", "-g", "-Wall"]
    assert "meshcc-input.i" in args and "meshcc-output.o" in args


@given(st.lists(st.text(min_size=1, max_size=8), max_size=6), st.binary(max_size=64))
def test_fields_cannot_run_together(args: list[str], data: bytes) -> None:
    """Length prefixes: moving bytes between two fields always changes the key."""
    a = ["gcc", "-c", "x.c", *[f"-D{x}" for x in args]]
    joined = ["gcc", "-c", "x.c", "-D" + "".join(args)] if args else a
    if len(args) > 1:
        assert key(a, data) != key(joined, data)
    assert key(a, data) != key(a, data + b"\0")


def test_lto_without_a_seed_is_uncacheable() -> None:
    assert uncacheable(["gcc", "-O2", "-flto", "-c", "a.c"]) is not None
    assert uncacheable(["gcc", "-flto=auto", "-c", "a.c"]) is not None
    assert uncacheable(["gcc", "-flto", "-frandom-seed=a.o", "-c", "a.c"]) is None
    assert uncacheable(["gcc", "-flto", "-fno-lto", "-c", "a.c"]) is None
    assert uncacheable(["gcc", "-flto-partition=none", "-c", "a.c"]) is None


def test_run_specific_options_are_uncacheable() -> None:
    for opt in (
        "-fprofile-arcs",
        "-fprofile-use",
        "--coverage",
        "-march=native",
        "-ftime-report",
        "-v",
        "-fdump-tree-all",
        "-save-temps",
    ):
        assert uncacheable(["gcc", opt, "-c", "a.c"]), opt
    assert uncacheable(ARGV) is None
    assert uncacheable(["gcc", "-O2", "-fdebug-prefix-map=/a=/b", "-g", "-c", "a.c"]) is None


def test_the_client_sends_the_servers_no_cache_marker() -> None:
    """meshcc-gcc may not import meshcc.cache (lean client): it spells the marker itself."""
    from pathlib import Path

    from meshcc.cache.service import NO_CACHE_ARG
    from meshcc.client import wrapper

    assert f'b"{NO_CACHE_ARG}"' in Path(wrapper.__file__).read_text()
