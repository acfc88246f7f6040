"""The result cache's disk store (meshcc.cache.store): real files in a temp dir."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from meshcc.cache.store import CorruptEntry, DiskStore, Entry, parse_size

K1, K2, K3 = ("1" * 64, "2" * 64, "3" * 64)


def entry(n: int = 1000) -> Entry:
    return Entry(0, b"warning: x\n", b"", bytes(range(256)) * (n // 256) + b"o" * (n % 256))


def test_round_trip_and_survives_restart(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path))
    s.open()
    e = entry()
    assert s.put(K1, e)
    assert s.get(K1) == e
    again = DiskStore(str(tmp_path))
    again.open()
    assert again.get(K1) == e
    assert again.total == s.total > len(e.obj)


def test_corrupt_entry_is_discarded_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = DiskStore(str(tmp_path))
    s.open()
    s.put(K1, entry())
    path = s.path(K1)
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "meshcc.cache"):
        assert s.get(K1) is None
    assert len([r for r in caplog.records if "corrupt" in r.getMessage()]) == 1
    assert not os.path.exists(path) and K1 not in s and s.total == 0
    assert s.corrupt == 1


def test_truncated_and_foreign_entries_fail_the_check() -> None:
    blob = entry().encode(K1)
    for bad in (blob[:-1], blob[:20], b"", blob + b"x"):
        with pytest.raises(CorruptEntry):
            Entry.decode(K1, bad)
    with pytest.raises(CorruptEntry):
        Entry.decode(K2, blob)  # renamed into another key's place


def test_lru_eviction_keeps_recently_used(tmp_path: Path) -> None:
    one = len(entry().encode(K1))
    s = DiskStore(str(tmp_path), limit=2 * one)
    s.open()
    s.put(K1, entry())
    s.put(K2, entry())
    assert s.get(K1) is not None  # K1 is now the most recent
    s.put(K3, entry())
    assert K2 not in s and K1 in s and K3 in s
    assert not os.path.exists(s.path(K2))
    assert s.total <= s.limit and s.evicted == 1


def test_lru_order_survives_restart(tmp_path: Path) -> None:
    one = len(entry().encode(K1))
    s = DiskStore(str(tmp_path), limit=3 * one)
    s.open()
    for k in (K1, K2, K3):
        s.put(k, entry())
    old = time.time() - 100
    for i, k in enumerate((K2, K3, K1)):  # K2 oldest on disk
        os.utime(s.path(k), (old + i, old + i))
    smaller = DiskStore(str(tmp_path), limit=2 * one)
    smaller.open()
    assert K2 not in smaller and K1 in smaller and K3 in smaller


def test_crash_leftovers_are_removed_and_never_read(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path))
    s.open()
    s.put(K1, entry())
    sub = os.path.dirname(s.path(K1))
    leftover = os.path.join(sub, ".tmp-abc")
    Path(leftover).write_bytes(b"half")
    again = DiskStore(str(tmp_path))
    again.open()
    assert not os.path.exists(leftover) and len(again) == 1


def test_oversized_entry_is_not_stored(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path), limit=4000)
    s.open()
    assert not s.put(K1, entry(5000))
    assert K1 not in s and not os.path.exists(s.path(K1))


def test_put_blob_checks_what_a_peer_sends(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path))
    s.open()
    with pytest.raises(CorruptEntry):
        s.put_blob(K1, entry().encode(K2))
    with pytest.raises(CorruptEntry):
        s.put_blob("../../etc/passwd", entry().encode(K1))
    assert len(s) == 0
    assert s.put_blob(K1, entry().encode(K1))
    assert s.get_blob(K1) == entry().encode(K1)


def test_clear(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path))
    s.open()
    s.put(K1, entry())
    s.put(K2, entry())
    assert s.clear() == 2
    assert len(s) == 0 and s.get(K1) is None


def test_parse_size() -> None:
    assert parse_size("2G") == 2 * 1024**3
    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("1.5g") == int(1.5 * 1024**3)
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("4096") == 4096
    for bad in ("lots", "", "-1G"):
        with pytest.raises(ValueError):
            parse_size(bad)
