"""The identity of a toolchain's binaries: what makes a key safe across boxes.

The mesh matches peers on gcc's full version, target and binutils version; the cache
needs more, since a distribution may rebuild the same version with other patches or
defaults. The identity is SHA-256 over those three strings and the bytes of the driver,
of the compilers proper (``cc1`` and ``cc1plus``, as ``gcc -print-prog-name`` names
them) and of the assembler (contents, not paths). Boxes installed from the same
packages get the same identity; anything else only misses.

Hashing ``cc1plus`` (~30-40 MB) takes tens of milliseconds, so each identity is computed
once per (binary path, size, mtime, inode) and remembered; an upgraded gcc changes the
stat and is hashed again. Runs in a worker thread (blocking: subprocess and file reads).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading

from meshcc.compiler.toolchain import Toolchain

__all__ = ["IdentityError", "ToolchainIdentities"]

_PROBE_TIMEOUT = 10.0
_CHUNK = 1024 * 1024


class IdentityError(Exception):
    """The toolchain's binaries could not be identified (the job is then not cached)."""


def _stat_key(path: str) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


class ToolchainIdentities:
    """Identities per (toolchain, compiler proper), computed once and remembered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[tuple[str, int, int, int], bytes] = {}
        self._progs: dict[tuple[str, str], str] = {}

    def identity(self, tc: Toolchain) -> str:
        """Hex identity of ``tc``. Blocking. Both compilers proper are in it, whichever the
        job runs (which one runs depends on the driver, the suffix and ``-x``: hashing
        both is simpler than getting that right, and each file is hashed once)."""
        try:
            parts = [tc.realpath]
            for prog in ("cc1", "cc1plus"):
                with contextlib.suppress(FileNotFoundError):  # a C-only gcc has no cc1plus
                    parts.append(self._prog_path(tc.realpath, prog))
            if tc.assembler:
                parts.append(tc.assembler)
            h = hashlib.sha256()
            for text in (tc.version, tc.target, tc.binutils or "-"):
                h.update(text.encode() + b"\0")
            for path in parts:
                h.update(self._digest(path))
        except OSError as e:
            raise IdentityError(f"cannot identify {tc.path}: {e.strerror or e}") from None
        return h.hexdigest()

    def _prog_path(self, driver: str, prog: str) -> str:
        with self._lock:
            known = self._progs.get((driver, prog))
        if known is not None:
            return known
        try:
            out = subprocess.run(
                [driver, f"-print-prog-name={prog}"],
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
            ).stdout.strip()
        except subprocess.TimeoutExpired:
            raise OSError(f"{driver} -print-prog-name={prog} timed out") from None
        if not os.path.isabs(out):  # gcc prints the bare name when it has no such program
            raise FileNotFoundError(f"{driver} has no {prog}")
        real = os.path.realpath(out)
        with self._lock:
            self._progs[(driver, prog)] = real
        return real

    def _digest(self, path: str) -> bytes:
        key = _stat_key(path)
        with self._lock:
            known = self._files.get(key)
        if known is not None:
            return known
        digest = _file_digest(path)
        with self._lock:
            self._files[key] = digest
        return digest
