"""meshcc.pyz: meshcc and the pure-Python parts of its dependencies in one zipapp.

A box with nothing but ``python3`` (>= 3.11) runs ``python3 meshcc.pyz daemon``. What
goes in: every ``.py`` of the ``meshcc`` package; ``zeroconf``'s ``.py`` sources (it
ships them beside its Cython modules and runs without them) and ``ifaddr`` (pure).
``lzallright`` is compiled only and stays out: a pyz daemon speaks distcc protocol 1
(no LZO) and says so.

The bytes are deterministic (sorted entries, fixed timestamps and modes, no caches), so
two builds of the same installation have the same sha256, and a daemon running from a
pyz serves that very file (:func:`artefact`) rather than a rebuild.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator

SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = b'''"""meshcc.pyz: `python3 meshcc.pyz daemon|hosts|gcc ...`, with a bare python3 >= 3.11."""

import sys

if sys.version_info < (3, 11):
    sys.exit("meshcc.pyz needs Python 3.11 or newer, not " + sys.version.split()[0])

# Any name.pyz is the explicit wrapper (`python3 x.pyz gcc -c a.c`); a link named after
# a compiler (gcc -> meshcc.pyz, run through the shebang) stays a masquerade.
if sys.argv and sys.argv[0].endswith(".pyz"):
    sys.argv[0] = "meshcc.pyz"

from meshcc.cli.entry import main

sys.exit(main())
'''
_EPOCH = (1980, 1, 1, 0, 0, 0)

# package -> keep(relative path) for its files; only .py files are ever considered.
_PACKAGES: dict[str, Callable[[str], bool]] = {
    "meshcc": lambda rel: True,
    "zeroconf": lambda rel: True,
    "ifaddr": lambda rel: not os.path.basename(rel).startswith("test_"),
}


class ZipappError(Exception):
    """The pyz cannot be built (a dependency is missing or lacks its Python sources)."""


def _package_dir(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ZipappError(f"cannot build meshcc.pyz: the {name} package is not installed")
    locations = list(spec.submodule_search_locations)
    if not os.path.isdir(locations[0]):
        raise ZipappError(
            f"cannot build meshcc.pyz: {name} is not installed as plain files ({locations[0]})"
        )
    return locations[0]


def _files() -> Iterator[tuple[str, str]]:
    """(archive name, file path) of every file that goes in, in no particular order."""
    for pkg, keep in _PACKAGES.items():
        root = _package_dir(pkg)
        found = False
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            for fn in filenames:
                if not fn.endswith(".py"):
                    continue
                path = os.path.join(dirpath, fn)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                if keep(rel):
                    found = True
                    yield f"{pkg}/{rel}", path
        if not found:
            raise ZipappError(f"cannot build meshcc.pyz: {pkg} at {root} has no .py sources")


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100644 << 16
    info.create_system = 3  # Unix, whatever the build box
    return info


def build_pyz() -> bytes:
    """The zipapp bytes, built from the running installation (deterministic)."""
    entries = sorted(_files())
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(_entry("__main__.py"), MAIN, compresslevel=9)
        for name, path in entries:
            with open(path, "rb") as f:
                zf.writestr(_entry(name), f.read(), compresslevel=9)
    return buf.getvalue()


def running_pyz() -> str | None:
    """The path of the zipapp this process runs from, or None for an ordinary install."""
    import meshcc

    loader = getattr(meshcc, "__loader__", None)
    archive = getattr(loader, "archive", None)  # zipimport.zipimporter
    if isinstance(archive, str) and os.path.isfile(archive):
        return archive
    return None


def artefact() -> tuple[bytes, str]:
    """(bytes, where from) of the meshcc.pyz to hand out: this very file when running from
    a pyz (peers then get exactly what this box runs), else a fresh build."""
    path = running_pyz()
    if path is not None:
        with open(path, "rb") as f:
            return f.read(), path
    return build_pyz(), "built from " + os.path.dirname(_package_dir("meshcc"))


def sha256_line(data: bytes, name: str = "meshcc.pyz") -> str:
    """``<hex>  meshcc.pyz``: the line ``sha256sum -c`` checks."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n"


def write_pyz(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0755 (it has a shebang)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
