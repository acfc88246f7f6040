"""Direct mode, the compile client's side: a cache hit without running the preprocessor.

The result cache (:mod:`meshcc.cache`) keys a job by its preprocessed text, so a hit
still costs the local preprocessor run, which caps what a warm rebuild can save. Direct
mode (ccache's idea) keys the job by what the client sees *before* preprocessing, the
*manifest key*:

- the compiler: the path run and its stat (size, mtime, ctime, inode, device): a gcc
  upgrade changes it;
- the whole command line (``-D``, ``-I``, ``-o``, ``-MF``... in order) and the working
  directory (relative ``-I`` and the names in the depfile depend on it);
- the preprocessor's environment (``CPATH`` and friends, the locale of its diagnostics);
- the source file's SHA-256.

The local daemon (:mod:`meshcc.cache.direct`) keeps what earlier compiles with that key
read: each include file's (size, mtime, ctime, SHA-256), the paths that must stay absent,
the depfile text, and a result. A record holds when each file still has the same size and
either the same mtime and ctime or the same hash (a fresh copy of the tree has new times
and the same bytes), and none of the absent paths exists. Then the client writes the
object, the depfile, stderr and stdout exactly as the first compile gave them: no
preprocessor, no remote job.

**Absent paths** (a header that would shadow one the compile read): for each file read,
for each search directory it lies under (its relative name there), the same relative name
in every other search directory (the -I/-iquote/-isystem/-idirafter directories, CPATH's,
and the directories of the files read, which quote includes search first) that did not
exist when the record was made. A new ``include/zlib.h`` ahead of ``./zlib.h`` then
misses. ccache does not check this (its manual says so); what stays uncovered here is a
header whose ``__has_include`` was false (not read, so not listed), as in ccache.

**Recording** (after a successful remote compile that this client preprocessed): the
preprocessor wrote the dependency list in the same run (the user's ``-MD`` file, or ours
with ``-MD -MF <temp>``, which changes neither the ``.i`` nor the user's outputs). No
record is made when a file read changed less than :data:`TOO_NEW_S` before the compile
started or while it was hashed (it may have changed under the preprocessor, and the stat
would not show it: ccache's rule), or when a file read holds ``__DATE__``, ``__TIME__``
or ``__TIMESTAMP__`` (the output depends on the clock).

Never direct: ``MESHCC_CACHE=0`` or ``MESHCC_DIRECT=0``, jobs the result cache refuses
(:func:`meshcc.cache.key.uncacheable`), preprocessed or stdin input, ``-MMD`` (its
depfile leaves out system headers), ``-Wp,``/``-Xpreprocessor`` options,
``DEPENDENCIES_OUTPUT``/``SUNPRO_DEPENDENCIES``, ``@file`` arguments.

Imports: only on this path (the wrapper imports this module when a local daemon answers).
"""

from __future__ import annotations

import posix
import time

from meshcc import posixenv as os
from meshcc.wire import control
from meshcc.wire.control import ControlError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, Protocol

    from meshcc.client.hashcache import HashCache
    from meshcc.transport.control_client import Control

    class _Hash(Protocol):
        def update(self, data: bytes, /) -> None: ...
        def digest(self) -> bytes: ...
        def hexdigest(self) -> str: ...


__all__ = ["Direct", "attempt", "parse_depfile"]

TOO_NEW_S = 2  # seconds: coarse file system clocks (ccache uses the same kind of margin)
TIMEOUT = 5.0  # a direct-mode answer from the local daemon (it reads memory or one file)
# The environment the preprocessor reads (its search path, its diagnostics' language).
ENV_IN_KEY = (
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "SOURCE_DATE_EPOCH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "GCC_COLORS",
    "GCC_URLS",
    "TERM_URLS",
    "COLUMNS",
)
_CLOCK = (b"__DATE__", b"__TIME__", b"__TIMESTAMP__")
_NOT_DIRECT = frozenset(("-MMD", "-M", "-MM", "-MG", "-E", "-save-temps", "--save-temps"))
_SEARCH_OPTS = ("-I", "-iquote", "-isystem", "-idirafter")
_VERSION = b"meshcc-direct-manifest 2\0"
_MESH_PART = b"meshcc-direct-mesh-part 1\0"


def _sha256(data: bytes = b"") -> _Hash:
    """SHA-256 from the builtin C module (``hashlib`` imports OpenSSL: ~2 ms a process)."""
    try:
        import _sha256 as impl  # type: ignore[import-not-found]  # Python 3.11
    except ImportError:
        import hashlib as impl
    h: _Hash = impl.sha256(data)
    return h


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _field(h: _Hash, text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def _clean(path: str) -> str:
    """``path`` without ``/./`` parts (what ``-I.`` puts in cpp's names); ``..`` stays
    (it is not ours to resolve: symlinks)."""
    while "/./" in path:
        path = path.replace("/./", "/")
    if path.endswith("/."):
        path = path[:-2] or "/"
    return path


def _absolute(cwd: str, path: str) -> str:
    return _clean(path if path.startswith("/") else f"{cwd}/{path}")


def _dirname(path: str) -> str:
    return path[: path.rfind("/")] or "/"


def parse_depfile(text: str) -> list[str] | None:
    """The prerequisites of the first rule of a make depfile as gcc writes it (``\\ `` for a
    space, ``$$`` for ``$``, backslash-newline continuations); None if it is not one."""
    first = text.replace("\\\r\n", " ").replace("\\\n", " ").split("\n", 1)[0]
    if "\\" not in first and "$" not in first:  # nothing escaped (the usual case): split
        tokens = [t for t in first.replace("\t", " ").replace("\r", " ").split(" ") if t]
        return _prerequisites(tokens)
    tokens = []
    cur: list[str] = []
    i = 0
    n = len(first)
    while i < n:
        c = first[i]
        nxt = first[i + 1] if i + 1 < n else ""
        if c == "\\" and nxt in (" ", "#", "\\"):
            cur.append(nxt)
            i += 2
            continue
        if c == "$" and nxt == "$":
            cur.append("$")
            i += 2
            continue
        if c in " \t\r":
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        tokens.append("".join(cur))
    return _prerequisites(tokens)


def _prerequisites(tokens: list[str]) -> list[str] | None:
    for at, tok in enumerate(tokens):
        if tok.endswith(":"):  # "a.o:" or a lone ":"
            return tokens[at + 1 :]
    return None


class Direct:
    """One job's direct-mode state: its manifest key, and what recording needs."""

    mesh = ""  # the box-independent part of the key (mesh_part), for the mesh's lookups
    cc = ""  # the compiler's absolute path: the daemon names its toolchain by it

    def __init__(
        self,
        key: str,
        source: str,
        output: str,
        cwd: str,
        argv: list[str],
        dep_path: str | None,
        search: list[str],
    ) -> None:
        self.key = key
        self.source = source
        self.output = output
        self.cwd = cwd
        self.argv = argv
        self.dep_path = dep_path  # the user's depfile (-MD), replayed on a hit
        self.our_dep: str | None = None  # our -MD -MF temp file when the user asked none
        self.search = search  # -I and friends, absolute
        self.start_ns = time.time_ns()

    # ---------------------------------------------------------------- the miss path

    def cpp_extra(self, run: Any) -> list[str]:
        """Options added to the preprocessor's command line: ``-MD -MF <temp>`` when the
        user's own -MD does not already give the list of files read."""
        if self.dep_path is not None:
            return []
        tmpdir = run.env.get("TMPDIR") or "/tmp"
        try:
            path, fd = run.temp(tmpdir, "meshcc_deps_", ".d")
        except OSError:
            return []
        os.close(fd)
        self.our_dep = path
        return ["-MD", "-MF", path]

    def record(self, run: Any, stderr: bytes, stdout: bytes, obj: bytes) -> None:
        """Hand the local daemon this compile's manifest record and result (best effort:
        any doubt and nothing is recorded)."""
        hashes = _hash_cache(run)
        try:
            payload = self._payload(stderr, stdout, obj, hashes)
        except OSError as e:
            run.log.debug(f"direct mode: not recorded: {e}")
            return
        finally:
            if hashes is not None:
                hashes.close()
        if isinstance(payload, str):
            run.log.debug(f"direct mode: not recorded: {payload}")
            return
        from meshcc.transport import control_client as cc

        try:
            conn = cc.connect(run.env)
        except (cc.NoDaemon, cc.ControlError) as e:
            run.log.debug(f"direct mode: not recorded: {e}")
            return
        part = control.DIRECT_PART
        try:
            for at in range(0, len(payload), part):
                msg = control.DirectRequest(
                    "direct_put",
                    self.key,
                    self.source,
                    payload[at : at + part],
                    more=at + part < len(payload),
                )
                conn.tell(msg.to_message())
        except cc.ControlError as e:
            run.log.debug(f"direct mode: not recorded: {e}")
        finally:
            conn.close()

    def _payload(
        self, stderr: bytes, stdout: bytes, obj: bytes, hashes: HashCache | None = None
    ) -> bytes | str:
        """The record for the daemon, or why there is none. Raises OSError.

        ``hashes``: this user's hash cache (:mod:`meshcc.client.hashcache`): a file whose
        stat it knows is not read, hashed or searched again."""
        dep_file = self.dep_path if self.dep_path is not None else self.our_dep
        if dep_file is None:
            return "no dependency list"
        text = _read(_absolute(self.cwd, dep_file)).decode("utf-8", "surrogateescape")
        deps = parse_depfile(text)
        if not deps:
            return "cannot read the dependency list"
        limit = self.start_ns - TOO_NEW_S * 1_000_000_000
        inc: list[list[object]] = []
        paths: list[str] = []
        seen: set[str] = set()
        for dep in deps:
            path = _absolute(self.cwd, dep)
            if path in seen:
                continue
            seen.add(path)
            st = os.stat(path)
            if st.st_mtime_ns >= limit or st.st_ctime_ns >= limit:
                return f"{dep} changed less than {TOO_NEW_S}s before the compile"
            digest = hashes.get(st) if hashes is not None else None
            if digest is None:
                data = _read(path)
                again = os.stat(path)
                if (again.st_size, again.st_mtime_ns, again.st_ctime_ns) != (
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                ) or len(data) != st.st_size:
                    return f"{dep} changed while it was read"
                if any(word in data for word in _CLOCK):
                    return f"{dep} uses __DATE__, __TIME__ or __TIMESTAMP__"
                digest = _sha256(data).digest()
                if hashes is not None:  # old enough, unchanged while read, no clock macro
                    hashes.put(st, digest)
            inc.append([path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest])
            paths.append(path)
        absent = _absent(paths, self.search, self.cwd, self.start_ns)
        record: dict[str, object] = {
            "inc": inc,
            "absent": absent,
            "dep": text if self.dep_path is not None else None,
            "status": 0,
            "stderr": stderr,
            "stdout": stdout,
            "obj": obj,
        }
        return control.packb(record)

    # ---------------------------------------------------------------- the hit path

    def lookup(self, run: Any, conn: Control) -> int | None:
        """Answer the job from a manifest if one holds: the exit code, else None."""
        get = control.DirectRequest("direct_get", self.key, self.source, mesh=self.mesh, cc=self.cc)
        answer = conn.request(get.to_message(), TIMEOUT)
        if answer.get("ok") is not True:  # a daemon without direct mode, which then closes
            raise ControlError(f"direct mode: {answer.get('error') or 'refused'}")
        if answer.get("off") is True:  # the daemon keeps no manifests: record nothing
            run.log.debug("direct mode: off (the daemon answered that it keeps no result cache)")
            run.direct = None
            return None
        manifest = answer.get("manifest")
        if not isinstance(manifest, bytes):
            return None
        records, _ = control.unpack_one(manifest)
        if not isinstance(records, list):
            return None
        for rec in records:
            if not isinstance(rec, dict) or not _holds(rec):
                continue
            rkey = rec.get("result")
            if not isinstance(rkey, str):
                continue
            result = _fetch(conn, rkey, self.source)
            if result is None:
                continue
            return self._deliver(run, rec, result)
        return None

    def _deliver(
        self, run: Any, rec: Mapping[object, object], result: dict[object, object]
    ) -> int | None:
        obj, err, out = result.get("obj"), result.get("stderr"), result.get("stdout")
        dep = rec.get("dep")
        if not isinstance(obj, bytes) or not isinstance(err, bytes) or not isinstance(out, bytes):
            return None
        if self.dep_path is not None and not isinstance(dep, str):
            return None
        try:
            run.write_output(self.output, obj)
            if self.dep_path is not None and isinstance(dep, str):
                run.write_output(self.dep_path, dep.encode("utf-8", "surrogateescape"))
        except OSError as e:
            run.log.debug(f"direct mode: cannot write the result: {e}")
            return None
        if err:
            _write_all(2, err)
        if out:
            _write_all(1, out)
        run.log.debug(f"direct mode: {self.source}: hit, {self.output} ({len(obj)} bytes)")
        return 0


def _hash_cache(run: Any) -> HashCache | None:
    """This user's hash cache in distcc's top directory (next to ``lock``), or None
    (``MESHCC_HASH_CACHE=0``, no top directory, or not private to this user)."""
    lockdir = run.lockdir
    if not lockdir or run.env.get("MESHCC_HASH_CACHE") == "0":
        return None
    from meshcc.client import hashcache

    return hashcache.open_cache(_dirname(lockdir), _sha256)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _holds(rec: Mapping[object, object]) -> bool:
    """Every file read is unchanged (stat, else hash) and every absent path still absent."""
    inc = rec.get("inc")
    absent = rec.get("absent")
    if not isinstance(inc, list) or not isinstance(absent, list):
        return False
    for item in inc:
        if not isinstance(item, list) or len(item) != 5:
            return False
        path, size, mtime, ctime, digest = item
        if not isinstance(path, str):
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size != size:
            return False
        if st.st_mtime_ns == mtime and st.st_ctime_ns == ctime:
            continue
        try:
            data = _read(path)
        except OSError:
            return False
        if _sha256(data).digest() != digest or any(word in data for word in _CLOCK):
            return False
    return _still_absent(absent)


def _fetch(conn: Control, rkey: str, source: str) -> dict[object, object] | None:
    """The packed result of a record from the daemon (in parts), or None if it is gone."""
    answer = conn.request(
        control.DirectRequest("direct_result", rkey, source).to_message(), TIMEOUT
    )
    parts = []
    while True:
        data = answer.get("data")
        if answer.get("ok") is not True or not isinstance(data, bytes):
            return None
        parts.append(data)
        if answer.get("more") is not True:
            break
        answer = conn.answer(TIMEOUT)
    result, _ = control.unpack_one(b"".join(parts))
    return result if isinstance(result, dict) else None


_DOTS = frozenset((".", ".."))
SYSTEM_DEPTH = 2  # a system header's spellings checked: <stdio.h>, <sys/types.h>


def _existing(directory: str) -> tuple[str, str]:
    """The nearest existing ancestor of ``directory`` (itself if it exists), and the rest
    of the path below it ("" or "missing/sub/")."""
    rest = ""
    while directory not in ("", "/"):
        try:
            os.stat(directory)
            return directory, rest
        except OSError:
            cut = directory.rfind("/")
            rest = directory[cut + 1 :] + "/" + rest
            directory = directory[:cut] or "/"
    return "/", rest


def _home(
    parent: str, listed: bool, group_of: Callable[[str, posix.stat_result], list[object]]
) -> tuple[list[object], str] | None:
    """The group a name created in ``parent`` belongs to, and the name's prefix in it:
    ``parent``'s own if it could be listed; else its nearest existing ancestor's (with
    mtime -1 when a component on the way is listed but cannot be stat'ed)."""
    base, rest = (parent, "") if listed else _existing(parent)
    try:
        st = os.stat(base)
    except OSError:
        return None
    group = group_of(base, st)
    if rest and _lexists(f"{base.rstrip('/')}/{rest.split('/', 1)[0]}"):
        group[1] = -1
    return group, rest


def _lexists(path: str) -> bool:
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def _listing(directory: str) -> set[str] | None:
    try:
        return set(posix.listdir(directory))
    except OSError:
        return None


def _missing(directory: str, rel: str, names: set[str] | None) -> bool:
    """``directory/rel`` does not exist; ``names``: the directory's listing (one getdents
    for all the names of a group instead of an access() each)."""
    if names is not None and rel.split("/", 1)[0] not in names:
        return True
    return not os.access(f"{directory}/{rel}", 0)  # F_OK


def _absent(paths: list[str], search: list[str], cwd: str, start_ns: int) -> list[list[object]]:
    """What must stay absent: names that, had they existed, the preprocessor might have
    read instead of one of ``paths``, as groups ``[directory, mtime_ns, [relative names]]``.

    Where a shadow can appear: the user's search directories (``search``) and the
    directories of the project's files read (quote includes search the includer's
    directory first). System directories are left out (a package install, as for ccache).
    Under which names: a file below a user search directory, its name relative to it; a
    system header, its last one or two path components (``stdio.h``, ``sys/types.h``). A
    file found beside its includer needs none: that directory is searched first.

    One name per missing first component: where ``sys/`` does not exist in a directory,
    ``sys`` alone is listed for every ``sys/...`` name (nothing can appear below it
    without ``sys`` appearing first), and a missing search directory is listed by its
    first missing component. A record then fails for a new ``sys/`` that holds none of
    the names (a needless miss, never a wrong hit), and is a fraction of the size to
    pack, send, store and check (xz-utils: ~3600 names a job before).

    Why groups with a directory mtime: creating any of a group's names creates an entry in
    its directory (the nearest one that exists), which changes the directory's mtime. So a
    lookup stats each directory once and lists only those that changed (the build
    directory, where objects come and go). A directory changed less than TOO_NEW_S before
    the compile is stored with mtime -1: its listing is always checked (a creation in the
    same clock tick would not change the mtime)."""
    roots = list(dict.fromkeys(search))
    # Each directory once as a prefix: the loops below run per file read and per name
    # (xz-utils: ~140 files, 13 directories, ~3600 names a job), so no call per pair.
    root_pf = [d if d.endswith("/") else d + "/" for d in roots]
    local_pf = (*root_pf, cwd if cwd.endswith("/") else cwd + "/")
    project = {p for p in paths if p.startswith(local_pf)}
    dirs = list(dict.fromkeys([*roots, *(_dirname(p) for p in project)]))
    names: list[str] = []
    any_root = tuple(root_pf)
    for path in paths:
        if path in project:
            if path.startswith(any_root):
                names += [path[len(pf) :] for pf in root_pf if path.startswith(pf)]
        else:
            parts = path.split("/")
            names += ["/".join(parts[-n:]) for n in range(1, SYSTEM_DEPTH + 1) if n < len(parts)]
    names = [n for n in dict.fromkeys(names) if n]
    by_head: dict[str, list[str]] = {}  # first component -> names (one test for all)
    for n in names:
        by_head.setdefault(n.split("/", 1)[0], []).append(n)
    known = set(paths)
    limit = start_ns - TOO_NEW_S * 1_000_000_000
    groups: dict[str, list[object]] = {}
    listings: dict[str, set[str] | None] = {}  # directory -> its listing (None: cannot)
    deep: list[str] = []  # names whose first component exists: checked where they lie

    def group_of(base: str, st: posix.stat_result) -> list[object]:
        mtime = st.st_mtime_ns if st.st_mtime_ns < limit else -1
        return groups.setdefault(base, [base, mtime, []])

    for d in dirs:
        base, rest = _existing(d)
        try:
            st = os.stat(base)
        except OSError:
            continue
        listing = listings[base] = _listing(base)
        group = group_of(base, st)
        rels = group[2]
        assert isinstance(rels, list)
        prefix = (base if base.endswith("/") else base + "/") + rest
        if listing is not None and not rest:
            # A name whose first component is not listed is absent (no syscall), and its
            # nearest existing directory is base: no other group can list it. (".." and
            # "." are never listed but exist: "../common/x.h" below an -I directory.)
            listing |= _DOTS
            rels += [h for h in by_head if h not in listing]  # see "One name per"
            fresh = [n for h, ns in by_head.items() if h in listing for n in ns]
        elif listing is not None and rest.split("/", 1)[0] not in listing:
            rels.append(rest.split("/", 1)[0])  # d is missing below base: its first
            continue  # missing component stands for every name below it
        else:  # unreadable, or d is a dangling symlink: each name where it lies
            fresh = names
        fresh = [n for n in fresh if prefix + n not in known]
        known.update(prefix + n for n in fresh)
        deep += [prefix + n for n in fresh]
    # A name under an existing subdirectory ("sys/types.h" where "sys/" exists, or
    # "../common/x.h"): creating it changes that subdirectory's mtime, not the group's, so
    # it belongs to the group of the directory it would be created in (one listing per
    # directory). If that directory is missing or unreadable, the group of its nearest
    # existing ancestor, always listed at lookup (mtime -1) when a component on the way is
    # listed but cannot be stat'ed (a dangling symlink: what appears behind it does not
    # change the ancestor's mtime).
    homes: dict[str, tuple[list[object], str] | None] = {}  # parent -> (group, rest)
    by_inode: dict[tuple[int, int], set[str] | None] = {}
    for full in deep:
        cut = full.rfind("/")
        parent, name = full[:cut] or "/", full[cut + 1 :]
        if parent not in listings:
            try:  # one spelling of a directory listed, e.g. "a/../b" and "b": by inode
                st = os.stat(parent)
                inode = (st.st_dev, st.st_ino)
                if inode not in by_inode:
                    by_inode[inode] = _listing(parent)
                listings[parent] = by_inode[inode]
            except OSError:
                listings[parent] = None
        listing = listings[parent]
        if listing is not None and name in listing and os.access(full, 0):
            continue  # it exists: not a shadow to watch, a file that was not read
        if parent not in homes:
            homes[parent] = _home(parent, listing is not None, group_of)
        home = homes[parent]
        if home is None:
            continue
        group, rest = home
        if listing is not None and name in listing:  # a dangling symlink: its target
            group[1] = -1  # may appear anywhere
        rels = group[2]
        assert isinstance(rels, list)
        rels.append(rest + name)
    for group in groups.values():  # one name reached from two spellings: listed once
        rels = group[2]
        assert isinstance(rels, list)
        group[2] = list(dict.fromkeys(rels))
    return [g for g in groups.values() if g[2]]


def _still_absent(groups: list[object]) -> bool:
    """Every group's names are still absent (see :func:`_absent`)."""
    for group in groups:
        if not isinstance(group, list) or len(group) != 3:
            return False
        base, mtime, rels = group
        if not isinstance(base, str) or not isinstance(rels, list):
            return False
        try:
            st = os.stat(base)
        except OSError:
            return False  # the directory went away: the record's picture is stale
        if st.st_mtime_ns == mtime:
            continue
        listing = _listing(base)
        for rel in rels:
            if not isinstance(rel, str) or not _missing(base, rel, listing):
                return False
    return True


def _search_dirs(argv: list[str], env: Mapping[str, str], cwd: str) -> list[str]:
    """The directories the command line and environment add to the include search."""
    found: list[str] = []
    i = 1
    while i < len(argv):
        a = argv[i]
        i += 1
        for opt in _SEARCH_OPTS:
            if a == opt:
                if i < len(argv):
                    found.append(argv[i])
                    i += 1
                break
            if a.startswith(opt) and a != "-I-":
                found.append(a[len(opt) :])
                break
    for name in ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH"):
        found += [d or "." for d in env.get(name, "").split(":") if name in env]
    return [_absolute(cwd, d) for d in found]


def _dep_path(cpp: list[str]) -> str | None:
    """The depfile the preprocessor writes for the user's -MD (cpp_argv makes -MF explicit)."""
    if "-MD" not in cpp:
        return None
    for i, a in enumerate(cpp):
        if a == "-MF" and i + 1 < len(cpp):
            return cpp[i + 1]
        if a.startswith("-MF") and len(a) > 3:
            return a[3:]
    return None


def _why_not(argv: list[str], env: Mapping[str, str]) -> str | None:
    if env.get("MESHCC_CACHE") == "0" or env.get("MESHCC_DIRECT") == "0":
        return "turned off"
    if "DEPENDENCIES_OUTPUT" in env or "SUNPRO_DEPENDENCIES" in env:
        return "DEPENDENCIES_OUTPUT/SUNPRO_DEPENDENCIES"
    for a in argv[1:]:
        if a in _NOT_DIRECT or a.startswith(("-Wp,", "-Xpreprocessor", "@")):
            return f"{a}"
    from meshcc.cache.key import uncacheable

    return uncacheable(argv)


def prepare(run: Any) -> Direct | None:
    """The job's direct-mode state, or None when direct mode does not apply to it."""
    from meshcc.compiler import args

    job = run.job
    argv = list(run.inv.argv)
    source = job.source
    if job.preprocessed or not source or source == "-" or job.output is None:
        return None
    why = _why_not(argv, run.env)
    if why is not None:
        run.log.debug(f"direct mode: not for this job: {why}")
        return None
    cpp = args.cpp_argv(job)
    if any(a in ("-MD", "-MMD") for a in job.orig_argv[1:]) and "-MD" not in cpp:
        return None
    cwd = posix.getcwd()
    try:
        text = _read(source)
        cc = run.inv.exec_path if "/" in run.inv.exec_path else _which(run)
        st = os.stat(cc)
    except (OSError, ValueError) as e:
        run.log.debug(f"direct mode: not for this job: {e}")
        return None
    if any(word in text for word in _CLOCK):
        run.log.debug("direct mode: not for this job: the source uses the clock")
        return None
    part = mesh_part(argv, cwd, run.env, source, text)
    h = _sha256(_VERSION)
    _field(h, run.inv.exec_path)
    for n in (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev):
        _field(h, str(n))
    _field(h, part)
    direct = Direct(
        h.hexdigest(),
        source,
        job.output,
        cwd,
        argv,
        _dep_path(cpp),
        _search_dirs(argv, run.env, cwd),
    )
    direct.mesh = part
    direct.cc = cc if cc.startswith("/") else f"{cwd}/{cc}"
    return direct


def mesh_part(argv: list[str], cwd: str, env: Mapping[str, str], source: str, text: bytes) -> str:
    """The box-independent part of the manifest key (hex): the whole command line, the
    working directory, the preprocessor's environment, the source's name and SHA-256.
    The local key adds the compiler's stat to it; the daemon, for the mesh, the
    toolchain's identity and the uid (:func:`meshcc.cache.direct.mesh_key` says why)."""
    h = _sha256(_MESH_PART)
    _field(h, str(len(argv)))
    for a in argv:
        _field(h, a)
    _field(h, cwd)
    _field(h, "\0".join(_env_items(env)))
    _field(h, source)
    _field(h, _sha256(text).digest())
    return h.hexdigest()


def _which(run: Any) -> str:
    """The compiler's path on PATH (the search :func:`meshcc.client.wrapper.which` does;
    not imported from there: the wrapper imports this module)."""
    import _stat

    name = run.inv.exec_path
    for directory in run.env.get("PATH", os.defpath).split(os.pathsep):
        candidate = f"{directory or '.'}/{name}"
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if _stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
    raise ValueError(f"{name} not found on PATH")


def _env_items(env: Mapping[str, str]) -> Iterable[str]:
    for name in ENV_IN_KEY:
        value = env.get(name)
        if value is not None:
            yield f"{name}={value}"


def attempt(run: Any, leases: Any, probed: tuple[Any, str] | None = None) -> int | None:
    """The wrapper's call before it preprocesses: set ``run.direct`` (so the miss path
    records the manifest) and answer from a manifest if one holds (the exit code).

    ``leases``: the daemon's lease pool, whose first connection serves the lookup (if the
    lookup broke it, the pool connects again for its lease); None (``DISTCC_HOSTS`` is
    set): a connection of our own, if a local daemon answers. ``probed``: the connection
    the wrapper's probe made (:func:`meshcc.transport.control_client.connect`)."""
    if run.env.get("MESHCC_DIRECT") == "0" or run.env.get("MESHCC_CACHE") == "0":
        if probed is not None:
            probed[0].close()
        return None  # turned off: no request to the daemon
    from meshcc.transport import control_client as cc

    own = leases is None
    conn: Control | None = None
    if own:
        try:
            conn = cc.connect(run.env, probed=probed)
        except (cc.NoDaemon, cc.ControlError):
            return None
    else:
        conn = leases.next_conn
    if conn is None:
        return None
    direct = prepare(run)
    run.direct = direct
    if direct is None:
        if own:
            conn.close()
        return None
    try:
        code = direct.lookup(run, conn)
    except (cc.ControlError, OSError) as e:
        run.log.debug(f"direct mode: lookup failed: {e}")
        code = None
        own = True
    if own or code is not None:
        conn.close()
        if leases is not None:
            leases.next_conn = None
    return code
