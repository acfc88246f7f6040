"""A client's compiler, fingerprinted: what the daemon matches peers against.

Light to import (``meshcc hosts`` and the mesh's matching use :class:`ClientCompiler`):
the prober and asyncio are imported where a probe actually runs.

A compile client names the compiler it was invoked as (``gcc-13``, ``g++``, a path); the
daemon probes that binary once (``-dumpfullversion``, ``-dumpmachine``, ``as --version``)
and remembers the answer per (real path, mtime, size, inode), so an upgraded gcc is probed
again and every later lease for the same compiler costs a ``stat``. Probes run in a worker
thread and concurrent requests for one binary share a probe; the cache is a bounded LRU.
"""

from __future__ import annotations

import collections
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from meshcc.compiler import toolchain


class FingerprintError(Exception):
    """The client's compiler could not be fingerprinted (not a file, not a gcc, ...)."""


@dataclass(frozen=True, slots=True)
class ClientCompiler:
    """The compiler a client was invoked as, and its fingerprint."""

    name: str  # as invoked: gcc-13, aarch64-linux-gnu-gcc, g++, cc
    version: str  # -dumpfullversion
    target: str  # -dumpmachine
    binutils: str | None
    driver: str = "gcc"  # gcc, g++ or cc (cc = unknown: any driver)

    @classmethod
    def from_toolchain(cls, tc: toolchain.Toolchain, invoked: str | None = None) -> ClientCompiler:
        """From one of the daemon's own probed toolchains, invoked as ``invoked``."""
        name = invoked or (tc.names[0] if tc.names else tc.path)
        return cls(name, tc.version, tc.target, tc.binutils, tc.driver.value)

    @classmethod
    def from_probe(cls, invoked: str, realpath: str, probe: toolchain.Probe) -> ClientCompiler:
        """From a probe of the binary at ``realpath``, invoked as ``invoked``."""
        from meshcc.compiler.toolchain import driver_for

        name = os.path.basename(invoked) or os.path.basename(realpath)
        driver = driver_for([name], realpath).value
        return cls(name, probe.version, probe.target, probe.binutils, driver)

    def describe(self) -> str:
        return (
            f"{self.name} (gcc {self.version}, {self.target}, "
            f"binutils {self.binutils or 'unknown'})"
        )


_CacheKey = tuple[str, int, int, int, int]


@dataclass(slots=True)
class FingerprintCache:
    """Probe results by (realpath, mtime, size, inode); an upgraded gcc is probed again."""

    max_entries: int = 64
    probe: Callable[[str], toolchain.Probe] | None = None  # None: toolchain.probe
    _cache: collections.OrderedDict[_CacheKey, toolchain.Probe | str] = field(
        default_factory=collections.OrderedDict
    )
    _inflight: dict[_CacheKey, asyncio.Future[toolchain.Probe | str]] = field(default_factory=dict)

    async def get(self, cc: str, cc_path: str) -> ClientCompiler:
        """The fingerprint of ``cc_path`` invoked as ``cc``; FingerprintError if unusable."""
        if not os.path.isabs(cc_path):
            raise FingerprintError(f"{cc_path}: not an absolute path")
        try:
            real = os.path.realpath(cc_path)
            st = os.stat(real)
        except OSError as e:
            raise FingerprintError(f"{cc_path}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise FingerprintError(f"{cc_path}: not a regular file")
        if not st.st_mode & 0o111:
            raise FingerprintError(f"{cc_path}: not executable")
        key = (real, st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        result = self._cache.get(key)
        if result is not None:
            self._cache.move_to_end(key)
        else:
            result = await self._probe_once(key, real)
        if isinstance(result, str):
            raise FingerprintError(result)
        return ClientCompiler.from_probe(cc or cc_path, real, result)

    async def _probe_once(self, key: _CacheKey, real: str) -> toolchain.Probe | str:
        """Probe ``real`` in a worker thread, sharing one probe among concurrent callers.

        The probe runs as its own task, so a caller that goes away (a client that closed
        its connection) cancels only its wait, never the probe the others wait for."""
        import asyncio  # only the daemon's loop gets here; `meshcc hosts` imports this module

        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._probe_and_cache(key, real))
            self._inflight[key] = pending
        return await asyncio.shield(pending)

    async def _probe_and_cache(self, key: _CacheKey, real: str) -> toolchain.Probe | str:
        import asyncio

        try:
            result = await asyncio.to_thread(self._probe, real)
        finally:
            del self._inflight[key]
        self._cache[key] = result
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return result

    def _probe(self, path: str) -> toolchain.Probe | str:
        from meshcc.compiler import toolchain

        try:
            return (self.probe or toolchain.probe)(path)
        except toolchain.ToolchainError as e:
            return f"not a usable gcc: {e}"
        except Exception as e:  # noqa: BLE001 - a strange binary must not take the daemon down;
            # the reason goes back to the client
            return f"cannot probe {path}: {e!r}"
