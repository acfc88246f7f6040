"""Direct mode's hash cache (meshcc.client.hashcache) and its use when a manifest is
recorded (Direct._payload): real files, real stat, real modes and owners (as root, the
"other user" is made with chown).

What must hold: an entry is found only by the exact (device, inode, size, mtime_ns,
ctime_ns) it was written for, so a header changed with its size and mtime restored
(``touch -d``) is hashed again; a cache that another user could write (owner, modes,
symlink) is never read; a torn or mixed slot is ignored; the file never grows past its
bound whatever is put in it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshcc.client import hashcache
from meshcc.client.direct import Direct, _sha256
from meshcc.client.hashcache import SETS, SLOT, WAYS, HashCache, open_cache
from meshcc.wire import control

NOBODY = 65534


def _open(top: Path) -> HashCache:
    top.mkdir(exist_ok=True)
    hc = open_cache(str(top), _sha256)
    assert hc is not None
    return hc


def _old(path: Path) -> None:
    """Make a file look old (mtime an hour back; its ctime is now)."""
    t = time.time() - 3600
    os.utime(path, (t, t))


def _same_size_same_mtime_rewrite(path: Path, text: str) -> None:
    """Change the content, keep the size, and restore the mtime with `touch -d`."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    frac = f"{st.st_mtime_ns % 1_000_000_000:09d}"
    path.write_text(text)
    subprocess.run(["touch", "-d", f"{stamp}.{frac}", str(path)], check=True)
    again = path.stat()
    assert (again.st_size, again.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert again.st_ctime_ns != st.st_ctime_ns


def test_an_entry_is_found_by_its_exact_stat_only(tmp_path: Path) -> None:
    h = tmp_path / "h.h"
    h.write_text("#define A 1\n")
    hc = _open(tmp_path / "top")
    st = os.stat(h)
    digest = hashlib.sha256(h.read_bytes()).digest()
    assert hc.get(st) is None
    hc.put(st, digest)
    hc.close()
    hc = _open(tmp_path / "top")  # another process's view: from the file
    assert hc.get(os.stat(h)) == digest
    _same_size_same_mtime_rewrite(h, "#define A 2\n")
    assert hc.get(os.stat(h)) is None  # the new ctime: not the hashed file
    hc.close()


def test_the_cache_is_private_to_its_user(tmp_path: Path) -> None:
    top = tmp_path / "top"
    hc = _open(top)
    hc.close()
    d = top / f"direct-{os.geteuid()}"
    f = d / "hashes"
    assert d.stat().st_mode & 0o777 == 0o700
    assert f.stat().st_mode & 0o777 == 0o600
    f.chmod(0o620)
    assert open_cache(str(top), _sha256) is None  # group-writable file
    f.chmod(0o600)
    d.chmod(0o770)
    assert open_cache(str(top), _sha256) is None  # group-writable directory
    d.chmod(0o700)
    link = tmp_path / "link-top"
    link.mkdir()
    (link / f"direct-{os.geteuid()}").symlink_to(d)
    assert open_cache(str(link), _sha256) is None  # a symlink in place of the directory
    assert _open(top) is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's file needs root")
def test_another_users_planted_entry_is_ignored(tmp_path: Path) -> None:
    """Another user writes an entry claiming a wrong hash for a real header (in a
    cache file or directory of theirs where ours should be): the record made next holds
    the header's true hash."""
    h = tmp_path / "src" / "h.h"
    h.parent.mkdir()
    h.write_text("#define A 1\n")
    _old(h)
    top = tmp_path / "top"
    planted = _open(top)
    planted.put(os.stat(h), b"\x66" * 32)
    planted.close()
    true = hashlib.sha256(h.read_bytes()).digest()
    d = top / f"direct-{os.geteuid()}"
    os.chown(d / "hashes", NOBODY, NOBODY)
    assert open_cache(str(top), _sha256) is None
    assert _record(tmp_path, h, top)["inc"][1][4] == true
    os.chown(d / "hashes", 0, 0)
    os.chown(d, NOBODY, NOBODY)
    assert open_cache(str(top), _sha256) is None
    assert _record(tmp_path, h, top)["inc"][1][4] == true
    # Ours again: the planted entry is read (this is what the owner checks keep out).
    os.chown(d, 0, 0)
    assert _record(tmp_path, h, top)["inc"][1][4] == b"\x66" * 32


def test_torn_or_mixed_slots_are_ignored(tmp_path: Path) -> None:
    a = tmp_path / "a.h"
    b = tmp_path / "b.h"
    a.write_text("a\n")
    b.write_text("b\n")
    top = tmp_path / "top"
    hc = _open(top)
    sa, sb = os.stat(a), os.stat(b)
    hc.put(sa, b"\x01" * 32)
    hc.put(sb, b"\x02" * 32)
    hc.close()
    path = top / f"direct-{os.geteuid()}" / "hashes"
    data = bytearray(path.read_bytes())
    at = data.find(hashcache.stat_key(sa))
    data[at + 50] ^= 1  # a torn digest
    path.write_bytes(bytes(data))
    assert _open(top).get(sa) is None
    # a's key with b's (intact) digest and check: a slot mixed from two writes
    bt = data.find(hashcache.stat_key(sb))
    data[at + 40 : at + SLOT] = data[bt + 40 : bt + SLOT]
    path.write_bytes(bytes(data))
    hc = _open(top)
    assert hc.get(sa) is None
    assert hc.get(sb) == b"\x02" * 32


def test_the_file_stays_within_its_bound(tmp_path: Path) -> None:
    """More entries than slots: the file never grows past SETS x WAYS slots, the newest
    entries are found, and a file is never given another file's hash."""
    hc = _open(tmp_path / "top")
    n = SETS * WAYS + 5000
    fakes = [_fake_stat(dev=7, ino=i, size=i, mtime=i, ctime=i) for i in range(n)]
    for st in fakes:
        hc.put(st, hashlib.sha256(str(st.st_ino).encode()).digest())  # type: ignore[arg-type]
    size = (tmp_path / "top" / f"direct-{os.geteuid()}" / "hashes").stat().st_size
    assert size <= SETS * WAYS * SLOT
    hc.close()
    hc = _open(tmp_path / "top")
    found = 0
    for st in fakes:
        got = hc.get(st)  # type: ignore[arg-type]
        if got is not None:
            assert got == hashlib.sha256(str(st.st_ino).encode()).digest()
            found += 1
    assert SETS <= found <= SETS * WAYS
    assert all(hc.get(st) is not None for st in fakes[-100:])  # type: ignore[arg-type]


def _fake_stat(dev: int, ino: int, size: int, mtime: int, ctime: int) -> Any:
    return SimpleNamespace(
        st_dev=dev, st_ino=ino, st_size=size, st_mtime_ns=mtime, st_ctime_ns=ctime
    )


def _direct(tmp_path: Path, header: Path, late: bool = True) -> Direct:
    """A job compiling ``a.c`` beside ``header``, which it includes; ``late``: the job
    starts a minute from now, so files written just now are not too new for it."""
    src = header.parent / "a.c"
    if not src.exists():
        src.write_text('#include "h.h"\n')
    dep = tmp_path / "a.d"
    dep.write_text(f"a.o: {src} {header}\n")
    d = Direct("k", str(src), "a.o", str(header.parent), ["gcc", "-c", "a.c"], None, [])
    d.our_dep = str(dep)
    if late:
        d.start_ns = time.time_ns() + 60 * 10**9
    return d


def _record(tmp_path: Path, header: Path, top: Path) -> dict[str, Any]:
    """The manifest record Direct makes for a source including ``header``, with the hash
    cache of ``top`` (if it opens)."""
    d = _direct(tmp_path, header)
    top.mkdir(exist_ok=True)
    hc = open_cache(str(top), _sha256)
    try:
        payload = d._payload(b"", b"", b"obj", hc)
    finally:
        if hc is not None:
            hc.close()
    assert isinstance(payload, bytes), payload
    rec, _ = control.unpack_one(payload)
    assert isinstance(rec, dict)
    return rec


def test_record_hashes_a_header_changed_behind_an_equal_mtime(tmp_path: Path) -> None:
    """The first record fills the cache; a header rewritten with the same size and mtime
    (`touch -d`) is hashed again, so the next record holds its new hash."""
    h = tmp_path / "src" / "h.h"
    h.parent.mkdir()
    h.write_text("#define A 1\n")
    top = tmp_path / "top"
    first = _record(tmp_path, h, top)["inc"][1]
    assert first[4] == hashlib.sha256(b"#define A 1\n").digest()
    assert _open(top).get(os.stat(h)) == first[4]  # cached
    _same_size_same_mtime_rewrite(h, "#define A 2\n")
    second = _record(tmp_path, h, top)["inc"][1]
    assert second[2] == first[2] and second[1] == first[1]  # same size and mtime
    assert second[4] == hashlib.sha256(b"#define A 2\n").digest()


def test_a_too_new_or_clock_header_is_not_cached(tmp_path: Path) -> None:
    h = tmp_path / "src" / "h.h"
    h.parent.mkdir()
    h.write_text("#define A __TIME__\n")
    top = tmp_path / "top"
    hc = _open(top)
    assert "__TIME__" in str(_direct(tmp_path, h)._payload(b"", b"", b"obj", hc))
    assert hc.get(os.stat(h)) is None
    h.write_text("#define A 1\n")  # changed just before the compile: no record, no entry
    assert "changed less than" in str(
        _direct(tmp_path, h, late=False)._payload(b"", b"", b"obj", hc)
    )
    assert hc.get(os.stat(h)) is None
    hc.close()
