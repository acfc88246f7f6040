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
    from concurrent.futures import ThreadPoolExecutor

    from meshcc.compiler import toolchain


class FingerprintError(Exception):
    """The client's compiler could not be fingerprinted (not a file, not a gcc, ...)."""


class UntrustedCompiler(FingerprintError):
    """The daemon will not run this path: someone other than root or the daemon's user
    could have changed it. ``str(e)`` names the culprit and what to do."""


class ProbeLimit(FingerprintError):
    """This user already has as many compilers being probed as one user may."""


def untrusted_reason(
    path: str, *, trusted_uids: frozenset[int] | None = None, real: str | None = None
) -> str | None:
    """Why the daemon must not execute ``path`` (None: it may), as sudo's secure path.

    The daemon runs what a local caller names (to fingerprint it) as its own user, the
    user that owns every job directory; so the file and every directory above it must be
    owned by root or the daemon's user and writable by nobody else, exactly what the
    daemon's own compilers in /usr/bin are. A private toolchain belongs to a per-user daemon.
    """
    uids = trusted_uids if trusted_uids is not None else frozenset({0, os.geteuid()})
    if real is None:  # ``real``: the caller's os.path.realpath(path), not resolved twice
        real = os.path.realpath(path)
    here = real
    while True:
        try:
            st = os.lstat(here)
        except OSError as e:
            return f"{here}: {e.strerror or e}"
        what = "it" if here == real else f"its directory {here}"
        if st.st_uid not in uids:
            return f"{what} belongs to uid {st.st_uid}, not root or this daemon's user"
        if st.st_mode & 0o022:
            return f"{what} is writable by {'others' if st.st_mode & 0o002 else 'its group'}"
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


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
    """Probe results by (realpath, mtime, size, inode); an upgraded gcc is probed again.

    Probes run on a small executor of their own, never on the event loop's default one,
    which does the compile server's LZO work: compiles never wait behind probes. One user
    (the kernel's SO_PEERCRED uid) has at most ``max_probes_per_user`` probes at a time."""

    max_entries: int = 64
    probe: Callable[[str], toolchain.Probe] | None = None  # None: toolchain.probe
    probe_workers: int = 2
    max_probes_per_user: int = 2
    check_trust: bool = True  # tests that fake probes on scratch files turn it off
    _cache: collections.OrderedDict[_CacheKey, toolchain.Probe | str] = field(
        default_factory=collections.OrderedDict
    )
    _inflight: dict[_CacheKey, asyncio.Future[toolchain.Probe | str]] = field(default_factory=dict)
    _probing: dict[int, int] = field(default_factory=dict)
    _executor: ThreadPoolExecutor | None = None

    async def get(self, cc: str, cc_path: str, uid: int | None = None) -> ClientCompiler:
        """The fingerprint of ``cc_path`` invoked as ``cc`` for local user ``uid``;
        FingerprintError (UntrustedCompiler, ProbeLimit) if unusable."""
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
        if self.check_trust:
            why = untrusted_reason(cc_path, real=real)
            if why is not None:
                raise UntrustedCompiler(
                    f"{cc_path}: not run by the daemon: {why}; a private toolchain needs a "
                    "per-user daemon (`meshcc daemon` as that user)"
                )
        key = (real, st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        result = self._cache.get(key)
        if result is not None:
            self._cache.move_to_end(key)
        else:
            result = await self._probe_once(key, real, uid)
        if isinstance(result, str):
            raise FingerprintError(result)
        return ClientCompiler.from_probe(cc or cc_path, real, result)

    async def _probe_once(
        self, key: _CacheKey, real: str, uid: int | None
    ) -> toolchain.Probe | str:
        """Probe ``real`` in a worker thread, sharing one probe among concurrent callers.

        The probe runs as its own task, so a caller that goes away (a client that closed
        its connection) cancels only its wait, never the probe the others wait for."""
        import asyncio  # only the daemon's loop gets here; `meshcc hosts` imports this module

        pending = self._inflight.get(key)
        if pending is None:
            owner = -1 if uid is None else uid
            if self._probing.get(owner, 0) >= self.max_probes_per_user:
                raise ProbeLimit(
                    f"uid {owner} already has {self._probing[owner]} compilers being probed; "
                    "this one compiles locally"
                )
            self._probing[owner] = self._probing.get(owner, 0) + 1
            pending = asyncio.ensure_future(self._probe_and_cache(key, real, owner))
            self._inflight[key] = pending
        return await asyncio.shield(pending)

    async def _probe_and_cache(
        self, key: _CacheKey, real: str, owner: int
    ) -> toolchain.Probe | str:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.probe_workers, "meshcc-probe")
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._probe, real
            )
        finally:
            del self._inflight[key]
            left = self._probing.get(owner, 1) - 1
            if left > 0:
                self._probing[owner] = left
            else:
                self._probing.pop(owner, None)
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
