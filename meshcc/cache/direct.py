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
used out first), and on disk as entries of the result store (one per (user, manifest
key), under a key of their own: :func:`local_store_key`), so they survive a restart and
share the store's size bound, LRU and hash check (a corrupt one is discarded with the
store's one log line, and the job records its manifest again).

**Across the mesh** (a second box building the same tree at the same path): the
manifest key above names the compiler by its stat, which differs on every box, so a
record is also filed under a *mesh manifest key* (:func:`mesh_key`) that two boxes agree
on exactly when they would preprocess the same way; see its docstring for what is in it
and why. After a compile records a manifest, the daemon pushes a *mesh record*
(:func:`encode_mesh`) to the home peer of the mesh key (rendezvous hashing over the live
``rcache`` peers with the same toolchain, :mod:`meshcc.cache.remote`, the result cache's
homes); on a local miss it asks that home once, within the result cache's lookup
timeout. A mesh record carries the result itself (object, stderr, stdout, depfile):

- one lookup, one round trip, as the result cache's own; no second fetch that could
  miss on its own;
- the result cache's content key cannot be used: it is computed by the server that
  compiled the job, over the preprocessed text, which the recording box's daemon never
  sees (and a job compiled locally, or by a stock distccd, has none);
- a foreign record is checked on arrival like any entry (hash, key, bounds: the
  envelope is a result store entry) and by the client like any record, except that a
  file's stat cannot match on another box: the record is kept with unmatchable times
  (-1), so the client accepts it only when every file matches by hash and every absent
  name is still absent (the directory times are unmatchable too, so each is listed).

Trust: a record from a peer is taken only from the home the mesh chose for its key, one
of the peers inside the allowed subnets with our toolchain, i.e. a peer whose compile
results we would accept; a peer pushing to us must be inside the allowed subnets too
(the status port checks). Per-user isolation does not weaken: the mesh key holds the uid
the kernel gave for the recording connection, and a record from the mesh is filed, and
its result handed, only under that same uid here. So one local user can never plant a
record that another local user's lookup finds, here or on another box; across boxes,
uid N's records reach uid N (as NFS home directories assume: one uid, one person in the
mesh; Portage's ``portage`` and a developer's uid 1000 are the cases the mesh serves).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshcc.cache import remote
from meshcc.cache.identity import IdentityError
from meshcc.cache.key import is_key
from meshcc.cache.store import CorruptEntry, DiskStore, Entry
from meshcc.compiler.toolchain import Toolchain
from meshcc.wire import control

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from meshcc.cache.service import ResultCache

__all__ = [
    "DirectCache",
    "DirectError",
    "decode_mesh",
    "encode_mesh",
    "local_store_key",
    "mesh_key",
    "mesh_store_key",
    "result_key",
]

log = logging.getLogger("meshcc.cache")

MAX_RECORDS = 4  # per manifest key: e.g. a header switched back and forth between builds
MAX_INCLUDES = 20_000  # files one compile reads (a large C++ unit reads a few thousand)
MAX_ABSENT = 100_000
MAX_PATH = 4096
MAX_MANIFEST = 768 * 1024  # one manifest, packed: its reply must fit in one message
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # all manifests, packed
MAX_PENDING = 4096  # mesh keys of recent lookups, kept for the put that follows a miss
MAX_PUSH_BYTES = 64 * 1024 * 1024  # mesh records on their way to their homes, at most
PUSH_TIMEOUT = 5.0
# A home's answer is awaited at most the result cache's lookup timeout (0.25 s by
# default), and never longer than this: the client waits 5 s for the daemon's whole reply.
MESH_LOOKUP_CAP = 3.0
_PUT_OBJECTS = 8 + 6 * MAX_INCLUDES + 2 * MAX_ABSENT + 16  # what a valid payload can hold
_MESH_OBJECTS = _PUT_OBJECTS
_VERSION = b"meshcc-direct 1\0"
_MESH_VERSION = b"meshcc-direct-mesh 1\0"
_MESH_STORE = b"meshcc-direct-mesh-entry 1\0"
_LOCAL_STORE = b"meshcc-direct-local 1\0"
UNMATCHABLE = -1  # a foreign record's file and directory times: never equal to a stat's


class DirectError(Exception):
    """A client's direct-mode payload is malformed or over a bound; ``str`` says which."""


def result_key(uid: int, manifest_key: str, record: bytes) -> str:
    """Where a record's result is stored: the user, the manifest key and the record's
    packed bytes (so two records of one manifest never share a result)."""
    h = hashlib.sha256(_VERSION)
    h.update(f"{uid}\0{manifest_key}\0".encode())
    h.update(record)
    return h.hexdigest()


def _fields(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def mesh_key(identity: str, realpath: str, uid: int, part: str) -> str:
    """The mesh manifest key: what two boxes must agree on before one's record may answer
    the other's job. SHA-256 over, each length-prefixed:

    - ``identity``: the toolchain's identity (:mod:`meshcc.cache.identity`: gcc's version,
      target, binutils, and the bytes of the driver, cc1, cc1plus and as). It replaces the
      local key's compiler stat, which differs per box for the same package: what
      preprocesses the source (which built-in macros, which search order) is the binaries;
    - ``realpath``: where that driver is installed. gcc finds its own headers, specs and
      cc1 relative to its location, and a record does not check system directories for
      absent names (:mod:`meshcc.client.direct`), so the same bytes installed under
      another prefix must not share records;
    - ``uid``: the user the kernel named for the recording connection (see the module's
      note on trust: a record reaches only the same uid);
    - ``part``: the client's hash (64 hex digits) of the whole command line, the working
      directory, the preprocessor's environment (:data:`meshcc.client.direct.ENV_IN_KEY`:
      CPATH and friends, the locale of diagnostics, SOURCE_DATE_EPOCH), the source's
      name and its SHA-256. The command line and directory fix every relative ``-I``, the
      names in the depfile and the object's recorded directory (``-g``); the rest is what
      the preprocessor reads besides files, and the files read are in the record itself,
      checked by hash on the asking box.

    Not in it: the host's name or addresses, file times, inodes, the PATH (the compiler
    run is named by ``realpath`` and ``identity``), anything of the server that compiled
    the job (the result came from the mesh's matching toolchain, as any remote result)."""
    return hashlib.sha256(
        _MESH_VERSION
        + _fields(
            identity.encode(),
            realpath.encode("utf-8", "surrogateescape"),
            str(uid).encode(),
            part.encode(),
        )
    ).hexdigest()


def mesh_store_key(mkey: str) -> str:
    """Where a home keeps the mesh record of ``mkey``: a key of its own domain, so no
    content key (the result cache's) can ever name a mesh record, nor the reverse."""
    return hashlib.sha256(_MESH_STORE + mkey.encode()).hexdigest()


def local_store_key(uid: int, key: str) -> str:
    """Where this daemon persists the manifest of (``uid``, ``key``) in its store."""
    return hashlib.sha256(_LOCAL_STORE + f"{uid}\0{key}".encode()).hexdigest()


def encode_mesh(mkey: str, record: dict[str, object], entry: Entry) -> bytes:
    """A record (as :func:`parse_put` gives it) and its result as the bytes a home stores:
    a result store entry under :func:`mesh_store_key` whose object is the packed mesh
    record (paths, sizes and hashes; no times, no inodes: they are this box's)."""
    inc = record["inc"]
    absent = record["absent"]
    assert isinstance(inc, list) and isinstance(absent, list)
    mesh = {
        "inc": [[i[0], i[1], i[4]] for i in inc],
        "absent": [[g[0], g[2]] for g in absent],
        "dep": record.get("dep"),
        "stderr": entry.stderr,
        "stdout": entry.stdout,
        "obj": entry.obj,
    }
    return Entry(0, b"", b"", control.packb(mesh)).encode(mesh_store_key(mkey))


def decode_mesh(mkey: str, blob: bytes) -> tuple[dict[str, object], Entry]:
    """A mesh record's bytes as (a local record with unmatchable times, its result);
    DirectError if they do not check out (envelope hash, key, structure, bounds)."""
    try:
        envelope = Entry.decode(mesh_store_key(mkey), blob)
    except CorruptEntry as e:
        raise DirectError(f"mesh record: {e}") from None
    try:
        msg, end = control.unpack_one(envelope.obj, 0, 0, [_MESH_OBJECTS])
    except Exception as e:  # noqa: BLE001  # short (control's _NeedData) or ControlError
        raise DirectError(f"malformed mesh record: {e or type(e).__name__}") from None
    if end != len(envelope.obj) or not isinstance(msg, dict):
        raise DirectError("malformed mesh record")
    inc, absent = msg.get("inc"), msg.get("absent")
    if not isinstance(inc, list) or not isinstance(absent, list):
        raise DirectError("a mesh record needs 'inc' and 'absent' lists")
    local_inc: list[object] = []
    for item in inc:
        if not isinstance(item, list) or len(item) != 3:
            raise DirectError("a mesh 'inc' item must be [path, size, hash]")
        local_inc.append([item[0], item[1], 0, 0, item[2]])
    local_absent: list[object] = []
    for group in absent:
        if not isinstance(group, list) or len(group) != 2:
            raise DirectError("a mesh 'absent' item must be [directory, [names]]")
        local_absent.append([group[0], UNMATCHABLE, group[1]])
    put = {
        "inc": local_inc,
        "absent": local_absent,
        "dep": msg.get("dep"),
        "status": 0,
        "stderr": msg.get("stderr"),
        "stdout": msg.get("stdout"),
        "obj": msg.get("obj"),
    }
    record, entry = parse_put(control.packb(put))  # the same checks and bounds as a put
    files = record["inc"]
    assert isinstance(files, list)
    for f in files:  # a foreign stat never matches here: the client checks every hash
        f[2] = f[3] = UNMATCHABLE
    record["foreign"] = True
    return record, entry


@dataclass(slots=True)
class DirectCounts:
    hit: int = 0  # a result handed to a client (its own record, or one from the mesh)
    miss: int = 0  # no manifest for the key here (memory or disk)
    stored: int = 0  # records (with their results) stored
    refused: int = 0  # payloads refused (malformed, too large)
    loaded: int = 0  # manifests read back from disk (after a restart, or out of memory)
    mesh_hit: int = 0  # records the home peer had for a local miss
    mesh_miss: int = 0  # ...and had not
    mesh_failed: int = 0  # the home did not answer in time, or sent a bad record
    mesh_pushed: int = 0  # records taken by their home peers
    mesh_push_failed: int = 0  # ...not taken, or not offered (too many bytes on their way)
    mesh_received: int = 0  # records peers pushed to this daemon (it is their home)

    def as_dict(self) -> dict[str, int]:
        return {f"direct_{name}": getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class _Mesh:
    """A job's mesh manifest key, and the toolchain whose homes hold it."""

    key: str
    toolchain: Toolchain


@dataclass(slots=True)
class _Pushes:
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    bytes: int = 0


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
    """Manifests in memory (LRU by bytes) and in the daemon's :class:`DiskStore` (with
    their results), and the mesh's copies of them at their homes.

    Thread-safe: the control server calls the blocking parts from worker threads; the
    ``async`` methods run on the daemon's event loop."""

    what = "direct-mode record"  # as the status port names what it serves peers

    def __init__(
        self,
        store: DiskStore,
        limit: int = MAX_MANIFEST_BYTES,
        *,
        results: ResultCache | None = None,
        toolchains: Sequence[Toolchain] = (),
    ) -> None:
        self.store = store
        self.limit = limit
        self.results = results  # the mesh's homes, identities and lookup timeout
        self.toolchains = tuple(toolchains)
        self.counts = DirectCounts()
        self._lock = threading.Lock()
        self._manifests: OrderedDict[tuple[int, str], list[dict[str, object]]] = OrderedDict()
        self._sizes: dict[tuple[int, str], int] = {}
        self._owners: dict[str, int] = {}  # result key -> uid (only its user may read it)
        # (uid, key) -> the mesh key of a recent lookup (or its part and compiler, when
        # the lookup hit here and did not need it): the put after a miss shares with it
        self._pending: OrderedDict[tuple[int, str], _Mesh | tuple[str, str]] = OrderedDict()
        self._pushes = _Pushes()
        self.total = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._manifests)

    # -- the control socket's calls

    def get(self, uid: int, key: str) -> bytes | None:
        """The packed records for (uid, key) in memory, newest first, or None."""
        with self._lock:
            records = self._manifests.get((uid, key))
            if records is None:
                return None
            self._manifests.move_to_end((uid, key))
            return control.packb(records)

    async def lookup(self, uid: int, key: str, part: str = "", cc: str = "") -> bytes | None:
        """The packed records for (uid, key): from memory, else from disk, else (when the
        client sent its mesh part and compiler) from the mesh key's home peer; None.

        Also notes the job's mesh key, for the put that follows a miss."""
        packed = self.get(uid, key)
        if packed is None and local_store_key(uid, key) in self.store:  # no thread hop else
            packed = await asyncio.to_thread(self._load, uid, key)
        if part and cc:
            self._note(uid, key, (part, cc))
        if packed is not None:
            return packed
        self.counts.miss += 1
        mesh = await self._mesh(uid, part, cc) if part and cc else None
        if mesh is None:
            return None
        self._note(uid, key, mesh)
        got = await self._ask_home(mesh)
        if got is None:
            return None
        record, entry = got
        try:
            await asyncio.to_thread(self._keep, uid, key, record, entry)
        except DirectError as e:
            self.counts.mesh_failed += 1
            log.info("direct: a record from the mesh was not kept: %s", e)
            return None
        self.counts.mesh_hit += 1
        return self.get(uid, key)

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
        return self._keep(uid, key, record, entry)

    async def put_and_share(self, uid: int, key: str, payload: bytes) -> str:
        """:meth:`put`, then offer the record to its mesh home (in the background) when the
        lookup before the compile gave the job a mesh key. DirectError as put."""
        try:
            record, entry = parse_put(payload)
        except DirectError:
            self.counts.refused += 1
            raise
        rkey = await asyncio.to_thread(self._keep, uid, key, record, entry)
        with self._lock:
            noted = self._pending.pop((uid, key), None)
        mesh = await self._mesh(uid, *noted) if isinstance(noted, tuple) else noted
        if mesh is not None:
            self._share(mesh, record, entry)
        return rkey

    # -- the status port's calls (a peer asking this daemon as a mesh key's home)

    async def serve_get(self, mkey: str) -> bytes | None:
        """The mesh record this daemon holds as ``mkey``'s home, or None."""
        if not is_key(mkey):
            return None
        return await asyncio.to_thread(self.store.get_blob, mesh_store_key(mkey))

    async def serve_put(self, mkey: str, blob: bytes) -> bool:
        """Store a mesh record a peer pushed (the caller checked its address); DirectError
        if it does not check out (envelope, structure, bounds), False if not stored."""
        if not is_key(mkey):
            raise DirectError("not a key")
        decode_mesh(mkey, blob)
        ok = await asyncio.to_thread(self.store.put_blob, mesh_store_key(mkey), blob)
        if ok:
            self.counts.mesh_received += 1
        return ok

    # -- figures

    def figures(self) -> dict[str, int]:
        d = self.counts.as_dict()
        with self._lock:
            d.update(direct_manifests=len(self._manifests), direct_manifest_bytes=self.total)
        return d

    def line(self) -> str:
        c = self.counts
        return (
            f"direct mode: {c.hit} hits ({c.mesh_hit} records from home peers), {c.miss} "
            f"misses, {c.stored} stored, {c.mesh_pushed} pushed to home peers, "
            f"{c.mesh_received} received from peers since start; {len(self)} manifests "
            "in memory"
        )

    async def close(self) -> None:
        """Wait briefly for pushes under way (they are bounded by PUSH_TIMEOUT)."""
        if self._pushes.tasks:
            await asyncio.wait(list(self._pushes.tasks), timeout=1.0)

    # -- internals: this box

    def _keep(self, uid: int, key: str, record: dict[str, object], entry: Entry) -> str:
        """Store a parsed record and its result, in memory and on disk. Blocking."""
        packed = control.packb(record)
        if len(packed) > MAX_MANIFEST // 2:
            self.counts.refused += 1
            raise DirectError(f"a record of {len(packed)} bytes is over the bound")
        rkey = result_key(uid, key, packed)
        if not self.store.put(rkey, entry):
            raise DirectError("the result store did not take the result (too large?)")
        record["result"] = rkey
        with self._lock:
            old = self._manifests.get((uid, key), [])
            same = [r for r in old if r.get("result") != rkey]
            records = [record, *same][:MAX_RECORDS]
            self._install_locked(uid, key, records, old)
            if not record.get("foreign"):
                self.counts.stored += 1
        self._save(uid, key, records)
        return rkey

    def _install_locked(
        self,
        uid: int,
        key: str,
        records: list[dict[str, object]],
        old: list[dict[str, object]],
    ) -> None:
        size = len(control.packb(records))
        while size > MAX_MANIFEST and len(records) > 1:
            records.pop()
            size = len(control.packb(records))
        self._manifests.pop((uid, key), None)
        self.total -= self._sizes.pop((uid, key), 0)
        self._manifests[(uid, key)] = records
        self._sizes[(uid, key)] = size
        self.total += size
        for r in records:
            self._owners[str(r.get("result"))] = uid
        for r in old:
            if r not in records:
                self._owners.pop(str(r.get("result")), None)
        while self.total > self.limit and len(self._manifests) > 1:
            victim, gone = self._manifests.popitem(last=False)
            self.total -= self._sizes.pop(victim, 0)
            for r in gone:
                self._owners.pop(str(r.get("result")), None)

    def _save(self, uid: int, key: str, records: list[dict[str, object]]) -> None:
        """Persist the manifest of (uid, key) in the store (best effort: only a miss is
        lost). Blocking."""
        blob = control.packb(records)
        self.store.put(local_store_key(uid, key), Entry(0, b"", b"", blob))

    def _load(self, uid: int, key: str) -> bytes | None:
        """The manifest of (uid, key) from disk into memory (packed), or None. A stored
        manifest that does not decode is dropped with one log line. Blocking."""
        skey = local_store_key(uid, key)
        if skey not in self.store:
            return None
        entry = self.store.get(skey)  # a corrupt entry: the store logs it and drops it
        if entry is None:
            return None
        try:
            records, end = control.unpack_one(entry.obj, 0, 0, [_PUT_OBJECTS * MAX_RECORDS])
        except Exception as e:  # noqa: BLE001  # short (control's _NeedData) or ControlError
            records, end = None, 0
            log.warning("direct: discarding a stored manifest that does not decode: %s", e)
        ok = (
            end == len(entry.obj)
            and isinstance(records, list)
            and 0 < len(records) <= MAX_RECORDS
            and all(isinstance(r, dict) and is_key(str(r.get("result"))) for r in records)
        )
        if not ok or not isinstance(records, list):
            if records is not None:
                log.warning("direct: discarding a stored manifest of the wrong shape")
            with contextlib.suppress(OSError):
                os.unlink(self.store.path(skey))
            self.store.get_blob(skey)  # gone: the store forgets it
            return None
        kept = [r for r in records if isinstance(r, dict)]
        with self._lock:
            old = self._manifests.get((uid, key), [])
            self._install_locked(uid, key, kept, old)
            self.counts.loaded += 1
        return control.packb(kept)

    # -- internals: the mesh

    def _note(self, uid: int, key: str, mesh: _Mesh | tuple[str, str]) -> None:
        """Remember a lookup's mesh key (or what makes it) for the put after a miss."""
        with self._lock:
            self._pending[(uid, key)] = mesh
            self._pending.move_to_end((uid, key))
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)

    async def _mesh(self, uid: int, part: str, cc: str) -> _Mesh | None:
        """The job's mesh key, or None: no mesh, or a compiler that is not one of this
        daemon's toolchains (its identity is then unknown)."""
        if self.results is None or not is_key(part) or not os.path.isabs(cc):
            return None
        try:
            return await asyncio.to_thread(self._mesh_key, uid, part, cc)
        except (OSError, IdentityError) as e:
            log.debug("direct: no mesh key for %s: %s", cc, e)
            return None

    def _mesh_key(self, uid: int, part: str, cc: str) -> _Mesh | None:
        assert self.results is not None
        real = os.path.realpath(cc)
        for tc in self.toolchains:
            if tc.realpath == real:
                identity = self.results.identities.identity(tc)
                return _Mesh(mesh_key(identity, tc.realpath, uid, part), tc)
        return None

    def _home(self, mesh: _Mesh) -> remote.Home | None:
        if self.results is None or self.results.homes is None:
            return None
        try:
            candidates = self.results.homes(mesh.toolchain)
        except Exception:  # a bug in the peer view must not fail the job
            log.exception("direct: cannot list home candidates")
            return None
        return remote.choose_home(mesh.key, candidates)

    async def _ask_home(self, mesh: _Mesh) -> tuple[dict[str, object], Entry] | None:
        """The mesh record at the key's home (one bounded lookup), or None."""
        assert self.results is not None
        home = self._home(mesh)
        if home is None:
            return None
        try:
            if home.host is None:  # this daemon is the home
                blob = await self.serve_get(mesh.key)
            else:
                wait = min(self.results.lookup_timeout, MESH_LOOKUP_CAP)
                blob = await remote.fetch(home, mesh.key, wait, kind="direct")
        except remote.RemoteError as e:
            self.counts.mesh_failed += 1
            log.info("direct: home %s did not answer: %s", home.host, e)
            return None
        if blob is None:
            self.counts.mesh_miss += 1
            return None
        try:
            return decode_mesh(mesh.key, blob)
        except DirectError as e:
            self.counts.mesh_failed += 1
            log.warning("direct: home %s sent a bad record: %s", home.host or "(here)", e)
            return None

    def _share(self, mesh: _Mesh, record: dict[str, object], entry: Entry) -> None:
        """Offer a record to its home: stored here if this daemon is the home, else pushed
        in the background (bounded bytes on their way; more are dropped and counted)."""
        home = self._home(mesh)
        if home is None:
            return
        blob = encode_mesh(mesh.key, record, entry)
        if home.host is None:
            task = asyncio.ensure_future(self._store_here(mesh.key, blob))
        elif self._pushes.bytes + len(blob) > MAX_PUSH_BYTES:
            self.counts.mesh_push_failed += 1
            log.info("direct: too much on its way to home peers; not pushing %s", mesh.key)
            return
        else:
            self._pushes.bytes += len(blob)
            task = asyncio.ensure_future(self._push(home, mesh.key, blob))
        self._pushes.tasks.add(task)
        task.add_done_callback(self._pushes.tasks.discard)

    async def _store_here(self, mkey: str, blob: bytes) -> None:
        if await asyncio.to_thread(self.store.put_blob, mesh_store_key(mkey), blob):
            self.counts.mesh_pushed += 1

    async def _push(self, home: remote.Home, mkey: str, blob: bytes) -> None:
        try:
            if await remote.push(home, mkey, blob, PUSH_TIMEOUT, kind="direct"):
                self.counts.mesh_pushed += 1
            else:
                self.counts.mesh_push_failed += 1
                log.info("direct: home %s did not take %s", home.host, mkey)
        finally:
            self._pushes.bytes -= len(blob)
