"""Direct mode's pure parts: the depfile parser, the absent-path list, the daemon's
manifest store (bounds, per-user isolation, LRU) and the control messages."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from meshcc.cache.direct import MAX_RECORDS, DirectCache, DirectError, parse_put
from meshcc.cache.store import DiskStore
from meshcc.client.direct import _absent, _search_dirs, _still_absent, parse_depfile
from meshcc.wire import control

KEY = "ab" * 32


def test_parse_depfile_first_rule_with_escapes_and_phony_rules() -> None:
    text = (
        "a.o: a.c /usr/include/stdio.h my\\ dir/h.h \\\n"
        " cost$$.h \\\n  inc/x\\#y.h\n"
        "/usr/include/stdio.h:\n"
        "my\\ dir/h.h:\n"
    )
    assert parse_depfile(text) == [
        "a.c",
        "/usr/include/stdio.h",
        "my dir/h.h",
        "cost$.h",
        "inc/x#y.h",
    ]
    assert parse_depfile("x.o y.o : a.c\n") == ["a.c"]  # several targets, spaced colon
    assert parse_depfile("no rule here\n") is None


def test_parse_depfile_plain_text_takes_the_split_and_agrees_with_the_escaped_parse() -> None:
    """No backslash or ``$`` in the first rule: split on space, tab and CR only (a
    no-break space is part of a file name), as the character-by-character parse does."""
    plain = "a.o: a.c  inc/h.h\t/usr/include/stdio.h \\\n x\u00a0y.h\r\nx\u00a0y.h:\n"
    want = ["a.c", "inc/h.h", "/usr/include/stdio.h", "x\u00a0y.h"]
    assert parse_depfile(plain) == want
    escaped = plain.replace("a.c", "a$$.c")  # the same, through the escaping parse
    assert parse_depfile(escaped) == ["a$.c", *want[1:]]
    assert parse_depfile("a.o :\n") == []
    assert parse_depfile("a.o\n") is None


def test_absent_lists_shadowing_candidates_that_do_not_exist(tmp_path: Path) -> None:
    inc1 = tmp_path / "inc1"
    inc2 = tmp_path / "inc2"
    inc1.mkdir()
    (inc2 / "sub").mkdir(parents=True)
    (inc2 / "sub" / "h.h").write_text("")
    (inc2 / "g.h").write_text("")
    (inc1 / "g.h").write_text("")  # exists now: not a candidate (cpp did not pick it)
    src = tmp_path / "a.c"
    src.write_text("")
    system = "/usr/include/stdio.h"
    paths = [str(src), str(inc2 / "sub" / "h.h"), str(inc2 / "g.h"), system]
    groups = _absent(paths, [str(inc1), str(inc2)], str(tmp_path), time.time_ns())
    absent = [f"{g[0]}/{rel}" for g in groups for rel in g[2]]  # type: ignore[attr-defined]
    assert _still_absent(list(groups))
    # <sub/h.h> found in inc2: inc1 comes first; and "sub/h.h" beside the includer a.c.
    # Neither directory has a sub/: "sub" alone stands for every name below it.
    assert str(inc1 / "sub") in absent
    assert str(tmp_path / "sub") in absent
    assert str(inc2 / "sub" / "g.h") in absent  # "g.h" from inc2/sub/h.h: its own dir first
    assert str(inc1 / "stdio.h") in absent  # a system header shadowed by a -I directory
    assert str(tmp_path / "a.c") not in absent and str(inc1 / "a.c") not in absent  # beside
    assert str(inc1 / "g.h") not in absent
    assert all(not Path(p).exists() for p in absent)
    assert not set(paths) & set(absent)
    assert not any(p.startswith("/usr/include/") for p in absent)  # system dirs: not watched
    # The shadow appears (its directory first, then the header): the record fails.
    (inc1 / "sub").mkdir()
    assert not _still_absent(list(groups))
    (inc1 / "sub" / "h.h").write_text("")
    assert not _still_absent(list(groups))
    # A shadow appears: its directory's mtime changed (or was too new to trust), so the
    # directory is listed and the new name found.
    (inc1 / "stdio.h").write_text("")
    assert not _still_absent(list(groups))


def test_search_dirs_from_argv_and_env() -> None:
    argv = ["gcc", "-Iinc", "-I", "/abs", "-iquote", "q", "-isystemsys", "-I-", "-c", "a.c"]
    env = {"CPATH": "/cp1::/cp2"}
    assert _search_dirs(argv, env, "/w") == [
        "/w/inc",
        "/abs",
        "/w/q",
        "/w/sys",
        "/cp1",
        "/w",
        "/cp2",
    ]


def _payload(n_inc: int = 1, **over: object) -> bytes:
    msg: dict[str, object] = {
        "inc": [[f"/src/f{i}.h", 10, 1, 2, b"\x01" * 32] for i in range(n_inc)],
        "absent": [["/src/inc1", 5, ["f0.h", "sub/f0.h"]]],
        "dep": "a.o: a.c\n",
        "status": 0,
        "stderr": b"warning\n",
        "stdout": b"",
        "obj": b"\x7fELF...",
    }
    msg.update(over)
    return control.packb(msg)


@pytest.mark.parametrize(
    "bad",
    [
        {"inc": []},
        {"inc": [["relative.h", 1, 1, 1, b"\0" * 32]]},
        {"inc": [["/a.h", -1, 1, 1, b"\0" * 32]]},
        {"inc": [["/a.h", 1, 1, 1, b"short"]]},
        {"absent": ["/flat/path.h"]},
        {"absent": [["/d", 1, ["/absolute.h"]]]},
        {"absent": [["/d", -2, ["x.h"]]]},
        {"status": 256},  # failures are never stored
        {"obj": b""},
        {"stderr": "text, not bytes"},
    ],
)
def test_parse_put_refuses_malformed_payloads(bad: dict[str, object]) -> None:
    with pytest.raises(DirectError):
        parse_put(_payload(**bad))
    with pytest.raises(DirectError):
        parse_put(_payload()[:-3])  # cut short


def test_store_is_per_user_and_bounded(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path / "results"))
    store.open()
    cache = DirectCache(store)
    rkey = cache.put(1000, KEY, _payload())
    got = cache.get(1000, KEY)
    assert got is not None
    [record] = control.unpack_one(got)[0]  # type: ignore[misc]
    assert record["result"] == rkey and record["dep"] == "a.o: a.c\n"
    result = cache.result(1000, rkey)
    assert result is not None
    assert control.unpack_one(result)[0] == {
        "status": 0,
        "stderr": b"warning\n",
        "stdout": b"",
        "obj": b"\x7fELF...",
    }
    # Another user sees neither the manifest nor the result, even knowing the keys.
    assert cache.get(1001, KEY) is None
    assert cache.result(1001, rkey) is None
    # Records per key are bounded, newest first.
    for i in range(MAX_RECORDS + 2):
        cache.put(1000, KEY, _payload(n_inc=i + 2))
    records = control.unpack_one(cache.get(1000, KEY) or b"")[0]
    assert isinstance(records, list) and len(records) == MAX_RECORDS
    assert len(records[0]["inc"]) == MAX_RECORDS + 3


def test_store_evicts_least_recently_used_manifests(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path / "results"))
    store.open()
    cache = DirectCache(store, limit=1)  # every new manifest pushes the older ones out
    cache.put(1, "01" * 32, _payload())
    cache.put(1, "02" * 32, _payload())
    assert cache.get(1, "01" * 32) is None
    assert cache.get(1, "02" * 32) is not None
    assert len(cache) == 1


def test_direct_requests_round_trip_and_are_checked() -> None:
    req = control.DirectRequest("direct_put", KEY, "a.c", b"part", more=True)
    assert control.decode_request(req.to_message()) == req
    get = control.DirectRequest("direct_get", KEY, "a.c")
    assert control.decode_request(get.to_message()) == get
    with pytest.raises(control.ControlError, match="64 lowercase hex"):
        control.decode_request({"op": "direct_get", "key": "../../etc"})
    with pytest.raises(control.ControlError, match="bytes"):
        control.decode_request({"op": "direct_put", "key": KEY, "data": "text"})
    # Every part fits the daemon's request bound.
    name = "x" * control.MAX_STRING  # the longest source name a request carries
    part = control.DirectRequest("direct_put", KEY, name, b"\0" * control.DIRECT_PART, True)
    assert len(control.encode(part.to_message())) <= control.MAX_REQUEST
    assert control.DirectReply(off=True).to_message() == {"ok": True, "manifest": None, "off": True}


def test_absent_name_below_an_existing_subdirectory_is_watched_there(tmp_path: Path) -> None:
    """``<sys/types.h>`` read from the system, and the -I directory already has a
    ``sys/`` of its own: a new ``inc/sys/types.h`` would be read instead, and creating it
    changes ``inc/sys``'s mtime, not ``inc``'s. (Before, the name was grouped under
    ``inc`` and the shadow went unseen while ``inc``'s mtime stood still.)"""
    inc = tmp_path / "inc"
    (inc / "sys").mkdir(parents=True)
    (inc / "sys" / "other.h").write_text("")
    src = tmp_path / "a.c"
    src.write_text("")
    old = time.time_ns() - 10 * 10**9
    for d in (inc, inc / "sys"):
        os.utime(d, ns=(old, old))
    system = "/usr/include/x86_64-linux-gnu/sys/types.h"
    groups = _absent([str(src), system], [str(inc)], str(tmp_path), time.time_ns())
    absent = {f"{g[0]}/{rel}" for g in groups for rel in g[2]}  # type: ignore[attr-defined]
    assert str(inc / "sys" / "types.h") in absent
    assert _still_absent(list(groups))
    (inc / "sys" / "types.h").write_text("")
    assert inc.stat().st_mtime_ns == old  # the group the name used to be in: unchanged
    assert not _still_absent(list(groups))


def test_absent_name_behind_a_dangling_symlink_is_always_checked(tmp_path: Path) -> None:
    """An -I directory that is a dangling symlink: what appears at its target changes no
    mtime the record could watch, so its group is listed at every lookup."""
    target = tmp_path / "later"
    (tmp_path / "inc").symlink_to(target)
    src = tmp_path / "a.c"
    src.write_text("")
    old = time.time_ns() - 10 * 10**9
    os.utime(tmp_path, ns=(old, old))
    groups = _absent(
        [str(src), "/usr/include/stdio.h"], [str(tmp_path / "inc")], str(tmp_path), time.time_ns()
    )
    assert _still_absent(list(groups))
    target.mkdir()
    (target / "stdio.h").write_text("")
    os.utime(tmp_path, ns=(old, old))  # the directory the symlink lives in: as it was
    assert not _still_absent(list(groups))


def test_absent_dotted_names_are_checked_where_they_lie(tmp_path: Path) -> None:
    """A file read as ``inc/../common/x.h`` gives the name ``../common/x.h`` in every
    other search directory; each is checked in its own directory (before, a ".." name
    was never found in a listing and counted absent even where the file exists)."""
    for d in ("inc", "lz", "common", "other/common"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "common" / "x.h").write_text("")
    (tmp_path / "common" / "y.h").write_text("")  # exists below lz/..: not absent
    (tmp_path / "other" / "lz").mkdir()
    src = tmp_path / "a.c"
    src.write_text("")
    read = [str(src), f"{tmp_path}/inc/../common/x.h", f"{tmp_path}/inc/../common/y.h"]
    search = [str(tmp_path / "other" / "lz"), str(tmp_path / "inc")]
    groups = _absent(read, search, str(tmp_path), time.time_ns())
    absent = {f"{g[0]}/{rel}" for g in groups for rel in g[2]}  # type: ignore[attr-defined]
    assert all(not Path(p).exists() for p in absent)
    assert f"{tmp_path}/other/common/x.h" in {os.path.normpath(p) for p in absent}
    assert _still_absent(list(groups))
    (tmp_path / "other" / "common" / "x.h").write_text("")  # other/lz/../common/x.h
    assert not _still_absent(list(groups))
