"""The part of ``os`` the compile client uses, on the builtin ``posix`` module alone.

Why: under ``python -IS`` nothing has imported ``os`` yet, and ``import os`` costs ~5.6 M
instructions (~2.5 ms on the test box) on every compile: ``os`` itself, ``posixpath``,
``stat``, and ``_collections_abc``'s ABCs for ``os.environ``. That is a fifth of what
``meshcc-gcc`` adds to a remote job beyond the interpreter's own start. The client's hot
modules import this one *as* ``os`` (``from meshcc import posixenv as os``), so their code
reads as before; every name here behaves as the ``os`` one does.

- The system calls are ``posix``'s own functions, re-exported.
- ``environ`` is ``os.environ`` when ``os`` is already loaded (the daemon, the CLI, tests);
  else a ``dict`` of the same ``str`` items that writes through as ``os.environ`` does
  (``putenv``, so an ``exec``'d compiler sees the change) and into ``posix.environ`` (so an
  ``os`` imported later, on a rare path, starts from the same values).
- ``path``: the few ``os.path`` functions of the hot path, with ``posixpath``'s exact
  semantics; the rare ones (``abspath`` of a path to normalise, ``realpath``, ``expanduser``) import
  the real ``posixpath`` when first called, as does :func:`makedirs`.

Foundation layer: imports nothing of meshcc.
"""

from __future__ import annotations

import sys
from posix import (
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_EXCL,
    O_RDONLY,
    O_TRUNC,
    O_WRONLY,
    POSIX_SPAWN_DUP2,
    POSIX_SPAWN_OPEN,
    WEXITSTATUS,
    WIFEXITED,
    WIFSIGNALED,
    WTERMSIG,
    X_OK,
    _exit,
    access,
    close,
    execv,
    fchmod,
    fstat,
    geteuid,
    getpid,
    kill,
    lstat,
    mkdir,
    open,
    pipe,
    posix_spawn,
    posix_spawnp,
    pwrite,
    read,
    replace,
    set_inheritable,
    stat,
    umask,
    unlink,
    urandom,
    waitpid,
    write,
)
from posix import environ as _DATA
from posix import putenv as _putenv
from posix import unsetenv as _unsetenv

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator, Mapping, MutableMapping

    Env = MutableMapping[str, str]  # what ``environ`` is, for annotations elsewhere

__all__ = [
    "O_APPEND",
    "O_CLOEXEC",
    "O_CREAT",
    "O_EXCL",
    "O_RDONLY",
    "O_TRUNC",
    "O_WRONLY",
    "POSIX_SPAWN_DUP2",
    "POSIX_SPAWN_OPEN",
    "WEXITSTATUS",
    "WIFEXITED",
    "WIFSIGNALED",
    "WTERMSIG",
    "X_OK",
    "_exit",
    "access",
    "close",
    "defpath",
    "environ",
    "environ_bytes",
    "execv",
    "fchmod",
    "fsencode",
    "fstat",
    "geteuid",
    "getpid",
    "kill",
    "lstat",
    "makedirs",
    "mkdir",
    "open",
    "path",
    "pathsep",
    "pipe",
    "posix_spawn",
    "posix_spawnp",
    "pwrite",
    "read",
    "replace",
    "sep",
    "set_inheritable",
    "stat",
    "umask",
    "unlink",
    "urandom",
    "waitpid",
    "write",
]

sep = "/"
pathsep = ":"
defpath = "/bin:/usr/bin"  # == posixpath.defpath (a test keeps them equal)

_ENCODING = sys.getfilesystemencoding()
_ERRORS = sys.getfilesystemencodeerrors()


def fsencode(filename: str | bytes) -> bytes:
    """``os.fsencode`` for ``str`` and ``bytes`` (the client never passes a PathLike)."""
    if isinstance(filename, bytes):
        return filename
    return filename.encode(_ENCODING, _ERRORS)


def _fsdecode(data: bytes) -> str:
    return data.decode(_ENCODING, _ERRORS)


class Environ:
    """``os.environ`` without ``os``: ``str`` items over the same store, ``posix.environ``
    (the ``bytes`` dict ``os.environ`` wraps too, so the two always agree, whichever
    is imported first). Changes go to the C environment as well (``putenv``), so a
    compiler started by ``exec`` sees them, and to that store."""

    __slots__ = ()

    def __getitem__(self, key: str) -> str:
        try:
            return _fsdecode(_DATA[fsencode(key)])
        except KeyError:
            raise KeyError(key) from None

    def get(self, key: str, default: str | None = None) -> str | None:
        value = _DATA.get(fsencode(key))
        return default if value is None else _fsdecode(value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and fsencode(key) in _DATA

    def __setitem__(self, key: str, value: str) -> None:
        k, v = fsencode(key), fsencode(value)
        _putenv(k, v)
        _DATA[k] = v

    def __delitem__(self, key: str) -> None:
        k = fsencode(key)
        if k not in _DATA:
            raise KeyError(key)
        _unsetenv(k)
        del _DATA[k]

    def pop(self, key: str, *default: str) -> str:
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def setdefault(self, key: str, default: str) -> str:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Mapping[str, str], **kw: str) -> None:
        for mapping in (*args, kw):
            for key, value in mapping.items():
                self[key] = value

    def keys(self) -> list[str]:
        return [_fsdecode(k) for k in _DATA]

    def values(self) -> list[str]:
        return [_fsdecode(v) for v in _DATA.values()]

    def items(self) -> list[tuple[str, str]]:
        return [(_fsdecode(k), _fsdecode(v)) for k, v in _DATA.items()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(_DATA)

    def copy(self) -> dict[str, str]:
        return dict(self.items())


def _environ() -> Env:
    loaded = sys.modules.get("os")
    if loaded is not None:
        env: Env = loaded.environ
        return env
    return Environ()  # type: ignore[return-value]  # duck-typed: no _collections_abc


environ = _environ()
# The store both views above share (``posix.environ``: ``bytes`` items). What the client
# hands ``posix_spawn``: the mapping goes to C as it is, where either view would be
# decoded to ``str`` item by item and encoded again (``os.environ``'s, in the zygote's
# workers, through the ``Mapping`` ABC: ~40 variables on every spawn).
environ_bytes: dict[bytes, bytes] = _DATA


def makedirs(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
    """``os.makedirs`` (a rare path: imports ``os``)."""
    import os

    os.makedirs(name, mode, exist_ok)


class path:
    """The ``os.path`` functions the compile client calls (POSIX semantics)."""

    sep = "/"

    @staticmethod
    def basename(p: str) -> str:
        return p[p.rfind("/") + 1 :]

    @staticmethod
    def dirname(p: str) -> str:
        head = p[: p.rfind("/") + 1]
        if head and head != "/" * len(head):
            head = head.rstrip("/")
        return head

    @staticmethod
    def join(a: str, *parts: str) -> str:
        out = a
        for b in parts:
            if b.startswith("/"):
                out = b
            elif not out or out.endswith("/"):
                out += b
            else:
                out += "/" + b
        return out

    @staticmethod
    def isdir(p: str) -> bool:
        try:
            return stat(p).st_mode & 0o170000 == 0o040000
        except (OSError, ValueError):
            return False

    @staticmethod
    def isfile(p: str) -> bool:
        try:
            return stat(p).st_mode & 0o170000 == 0o100000
        except (OSError, ValueError):
            return False

    @staticmethod
    def abspath(p: str) -> str:
        # An absolute path with nothing to normalise (what a PATH search of absolute
        # entries gives, e.g. the lease path's compiler) is its own abspath: returned
        # as it is, since importing posixpath imports os (~4 M instructions a compile).
        if (
            p.startswith("/")
            and not p.startswith("//")
            and "//" not in p
            and "/./" not in p
            and "/../" not in p
            and not p.endswith(("/.", "/.."))
            and (p == "/" or not p.endswith("/"))
        ):
            return p
        import posixpath

        return posixpath.abspath(p)

    @staticmethod
    def realpath(p: str) -> str:
        import posixpath

        return posixpath.realpath(p)

    @staticmethod
    def samefile(a: str, b: str) -> bool:
        # genericpath.samefile's own test (samestat), on posix.stat: the masquerade
        # lookup asks it for PATH entries, and posixpath would import os.
        s1, s2 = stat(a), stat(b)
        return s1.st_ino == s2.st_ino and s1.st_dev == s2.st_dev

    @staticmethod
    def expanduser(p: str) -> str:
        import posixpath

        return posixpath.expanduser(p)
