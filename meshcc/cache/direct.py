"""Direct mode, the daemon's side: manifests of include files, and the results they name.

A compile client that may use direct mode (:mod:`meshcc.client.direct`) keys its job by
what it can see without running the preprocessor: the compiler binary's stat, the whole
command line, the working directory, the preprocessor's environment and the source
file's hash (the *manifest key*). The local daemon keeps, per (user, manifest key), up to
:data:`MAX_RECORDS` records, newest first; each record is what one earlier compile found:

- ``inc``: every file the preprocessor read, as (path, size, mtime_ns, ctime_ns,
  SHA-256): the client accepts a record when each still has the same size and either the
  same mtime and ctime or (a fresh copy of the tree, say) the same hash;
- ``absent``: names that did not exist and would have been read before one of those
  files had they existed (a new header shadowing an old one earlier in the include
  search), grouped by directory with its mtime; the client accepts a record only while
  they are all still absent;
- ``dep``: the dependency file text the compile wrote (``-MD``), replayed on a hit;
- ``result``: the key under which the compile's result (object, stderr, stdout) is in the
  daemon's result store (:class:`~meshcc.cache.store.DiskStore`, hash-checked, LRU).

Why the client does the checking and hashing: the daemon may run as another user and
cannot read the user's files. Why per user: a manifest says "these files give that
object"; another local user must not be able to plant one for us (the key of a result
mixes in the uid the kernel gave for the connection, and a result is handed only to the
user whose manifest names it).

Manifests live in memory, bounded by :data:`MAX_MANIFEST_BYTES` in all (least recently
used out first); a restart forgets them, and the next compile of each job records its
manifest again (the results themselves stay in the result store).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from meshcc.cache.store import DiskStore, Entry
from meshcc.wire import control

__all__ = ["DirectCache", "DirectError", "result_key"]

log = logging.getLogger("meshcc.cache")

MAX_RECORDS = 4  # per manifest key: e.g. a header switched back and forth between builds
MAX_INCLUDES = 20_000  # files one compile reads (a large C++ unit reads a few thousand)
MAX_ABSENT = 100_000
MAX_PATH = 4096
MAX_MANIFEST = 768 * 1024  # one manifest, packed: its reply must fit in one message
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # all manifests, packed
_PUT_OBJECTS = 8 + 6 * MAX_INCLUDES + 2 * MAX_ABSENT + 16  # what a valid payload can hold
_VERSION = b"meshcc-direct 1\0"


class DirectError(Exception):
    """A client's direct-mode payload is malformed or over a bound; ``str`` says which."""


def result_key(uid: int, manifest_key: str, record: bytes) -> str:
    """Where a record's result is stored: the user, the manifest key and the record's
    packed bytes (so two records of one manifest never share a result)."""
    h = hashlib.sha256(_VERSION)
    h.update(f"{uid}\0{manifest_key}\0".encode())
    h.update(record)
    return h.hexdigest()


@dataclass(slots=True)
class DirectCounts:
    hit: int = 0  # a result handed to a client
    miss: int = 0  # no manifest for the key
    stored: int = 0  # records (with their results) stored
    refused: int = 0  # payloads refused (malformed, too large)

    def as_dict(self) -> dict[str, int]:
        return {f"direct_{name}": getattr(self, name) for name in self.__slots__}


def _check_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_PATH:
        raise DirectError("a path must be absolute and at most 4096 characters")
    if "\0" in value:
        raise DirectError("a path contains a NUL byte")
    return value


def _check_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DirectError("a size or time must be a non-negative integer")
    return value


def parse_put(payload: bytes) -> tuple[dict[str, object], Entry]:
    """A client's put payload as (record without its result key, result); DirectError."""
    try:
        msg, end = control.unpack_one(payload, 0, 0, [_PUT_OBJECTS])
    except Exception as e:  # noqa: BLE001  # short (control's _NeedData) or ControlError
        raise DirectError(f"malformed payload: {e or type(e).__name__}") from None
    if end != len(payload) or not isinstance(msg, dict):
        raise DirectError("malformed payload")
    inc = msg.get("inc")
    absent = msg.get("absent")
    dep = msg.get("dep")
    if not isinstance(inc, list) or not 0 < len(inc) <= MAX_INCLUDES:
        raise DirectError("'inc' must list 1 to 20000 files")
    if not isinstance(absent, list) or len(absent) > MAX_ABSENT:
        raise DirectError("'absent' must be a list of groups")
    if dep is not None and (not isinstance(dep, str) or len(dep) > MAX_MANIFEST):
        raise DirectError("'dep' must be text")
    files = []
    for item in inc:
        if not isinstance(item, list) or len(item) != 5:
            raise DirectError("an 'inc' item must be [path, size, mtime_ns, ctime_ns, hash]")
        path, size, mtime, ctime, digest = item
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise DirectError("an 'inc' hash must be 32 bytes")
        files.append(
            [_check_path(path), _check_int(size), _check_int(mtime), _check_int(ctime), digest]
        )
    groups = []
    count = 0
    for group in absent:
        if not isinstance(group, list) or len(group) != 3:
            raise DirectError("an 'absent' item must be [directory, mtime_ns, [names]]")
        base, mtime, rels = group
        if not isinstance(mtime, int) or isinstance(mtime, bool) or mtime < -1:
            raise DirectError("an 'absent' mtime must be an integer >= -1")
        if not isinstance(rels, list):
            raise DirectError("an 'absent' item's names must be a list")
        count += len(rels)
        for rel in rels:
            if not isinstance(rel, str) or not rel or rel.startswith("/"):
                raise DirectError("an 'absent' name must be a relative path")
            if len(rel) > MAX_PATH or "\0" in rel:
                raise DirectError("an 'absent' name is too long or has a NUL byte")
        groups.append([_check_path(base), mtime, rels])
    if count > MAX_ABSENT:
        raise DirectError(f"'absent' holds more than {MAX_ABSENT} names")
    record: dict[str, object] = {"inc": files, "absent": groups, "dep": dep}
    status, stderr, stdout, obj = (msg.get(k) for k in ("status", "stderr", "stdout", "obj"))
    if status != 0 or not isinstance(obj, bytes) or not obj:
        raise DirectError("only a successful compile with an object is stored")
    if not isinstance(stderr, bytes) or not isinstance(stdout, bytes):
        raise DirectError("'stderr' and 'stdout' must be bytes")
    return record, Entry(0, stderr, stdout, obj)


class DirectCache:
    """Manifests in memory (LRU by bytes), results in the daemon's :class:`DiskStore`.

    Thread-safe: the control server calls the blocking parts from worker threads."""

    def __init__(self, store: DiskStore, limit: int = MAX_MANIFEST_BYTES) -> None:
        self.store = store
        self.limit = limit
        self.counts = DirectCounts()
        self._lock = threading.Lock()
        self._manifests: OrderedDict[tuple[int, str], list[dict[str, object]]] = OrderedDict()
        self._sizes: dict[tuple[int, str], int] = {}
        self._owners: dict[str, int] = {}  # result key -> uid (only its user may read it)
        self.total = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._manifests)

    def get(self, uid: int, key: str) -> bytes | None:
        """The packed records for (uid, key), newest first, or None."""
        with self._lock:
            records = self._manifests.get((uid, key))
            if records is None:
                self.counts.miss += 1
                return None
            self._manifests.move_to_end((uid, key))
            return control.packb(records)

    def result(self, uid: int, rkey: str) -> bytes | None:
        """The packed result (status, stderr, stdout, obj) for ``uid``, or None. Blocking
        (reads and hash-checks the entry)."""
        with self._lock:
            if self._owners.get(rkey) != uid:
                return None
        entry = self.store.get(rkey)
        if entry is None:
            return None
        self.counts.hit += 1
        return control.packb(
            {
                "status": entry.wait_status,
                "stderr": entry.stderr,
                "stdout": entry.stdout,
                "obj": entry.obj,
            }
        )

    def put(self, uid: int, key: str, payload: bytes) -> str:
        """Store a record and its result; returns the result key. DirectError if the
        payload is malformed or too large. Blocking (writes the entry)."""
        try:
            record, entry = parse_put(payload)
        except DirectError:
            self.counts.refused += 1
            raise
        packed = control.packb(record)
        if len(packed) > MAX_MANIFEST // 2:
            self.counts.refused += 1
            raise DirectError(f"a record of {len(packed)} bytes is over the bound")
        rkey = result_key(uid, key, packed)
        if not self.store.put(rkey, entry):
            raise DirectError("the result store did not take the result (too large?)")
        record["result"] = rkey
        with self._lock:
            old = self._manifests.pop((uid, key), [])
            same = [r for r in old if r.get("result") != rkey]
            records = [record, *same][:MAX_RECORDS]
            size = len(control.packb(records))
            while size > MAX_MANIFEST and len(records) > 1:
                records.pop()
                size = len(control.packb(records))
            self.total -= self._sizes.pop((uid, key), 0)
            self._manifests[(uid, key)] = records
            self._sizes[(uid, key)] = size
            self.total += size
            self._owners[rkey] = uid
            for r in old:
                if r not in records:
                    self._owners.pop(str(r.get("result")), None)
            while self.total > self.limit and len(self._manifests) > 1:
                victim, gone = self._manifests.popitem(last=False)
                self.total -= self._sizes.pop(victim, 0)
                for r in gone:
                    self._owners.pop(str(r.get("result")), None)
            self.counts.stored += 1
        return rkey

    def figures(self) -> dict[str, int]:
        d = self.counts.as_dict()
        with self._lock:
            d.update(direct_manifests=len(self._manifests), direct_manifest_bytes=self.total)
        return d
