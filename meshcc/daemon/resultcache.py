"""The daemon's side of the result cache (meshcc.cache): its directory, its store, its homes.

- The directory: ``--cache-dir``, else systemd's ``CacheDirectory=``, ``/var/cache/meshcc``
  as root, or the user's cache dir (:func:`meshcc.cache.store.default_dir`). Started as
  root, the daemon creates it (0700) for the user it drops to, before the drop.
- A cache that cannot be opened is not fatal: the daemon logs one line and compiles
  every job, as before (the cache only saves work).
- Homes: this daemon and the live meshcc peers with the same toolchain at an allowed
  address (:meth:`meshcc.mesh.service.Mesh.cache_homes`); a peer's cache is reached on
  the status port it announces (``sport``), else on its compile port + 1 (distccd's pair).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from meshcc.cache.remote import Home
from meshcc.cache.service import LOOKUP_TIMEOUT, ResultCache
from meshcc.cache.store import DEFAULT_LIMIT, DiskStore, default_dir
from meshcc.compiler.toolchain import Toolchain
from meshcc.daemon.settings import DaemonOptions
from meshcc.loglevels import NOTICE

if TYPE_CHECKING:
    from meshcc.mesh.service import Mesh

__all__ = ["caps", "chain", "claim", "make_cache", "off_reason", "open_store"]

log = logging.getLogger("meshcc.daemon")


@functools.lru_cache(maxsize=4)
def _dir(opts: DaemonOptions) -> str:
    """Decided once per options, at the first call: :func:`claim`, before the privilege
    drop, so that root's default (/var/cache/meshcc) is kept after it, not the dropped
    user's home (seen running meshcc.pyz as root: the two differed)."""
    return opts.cache_dir or default_dir()


def off_reason(opts: DaemonOptions) -> str | None:
    """Why these options keep no result cache, or None when they ask for one."""
    if not opts.cache:
        return "--no-cache"
    if (opts.ccache or opts.ccache_dir or opts.ccache_size) and not opts.cache_dir:
        # ccache already answers repeats on this box; two caches would only hide each
        # other's counts. --cache-dir turns the result cache on beside it.
        return "--ccache caches this box's jobs"
    return None


def claim(opts: DaemonOptions) -> Callable[[int, int], None] | None:
    """As root, before the privilege drop: give the cache directory to the service user."""
    if off_reason(opts) is not None:
        return None
    path = _dir(opts)

    def give(uid: int, gid: int) -> None:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, 0o700)
        except OSError as e:
            log.warning("result cache: cannot prepare %s: %s", path, e.strerror or e)

    return give


def chain(
    *claims: Callable[[int, int], None] | None,
) -> Callable[[int, int], None] | None:
    """One ``before(uid, gid)`` hook for the privilege drop that runs each given one."""
    todo = [c for c in claims if c is not None]
    if not todo:
        return None

    def run(uid: int, gid: int) -> None:
        for c in todo:
            c(uid, gid)

    return run


def open_store(opts: DaemonOptions) -> DiskStore | None:
    """The opened store (after the privilege drop), or None: off or unusable (logged)."""
    off = off_reason(opts)
    if off is not None:
        log.log(NOTICE, "result cache: off (%s)", off)
        return None
    store = DiskStore(_dir(opts), opts.cache_size or DEFAULT_LIMIT)
    try:
        store.open()
    except OSError as e:
        log.warning(
            "result cache: off: cannot use %s: %s (choose --cache-dir, or --no-cache)",
            store.root,
            e.strerror or e,
        )
        return None
    log.log(
        NOTICE,
        "result cache: %s, %d entries, %.1f of %.0f MiB",
        store.root,
        len(store),
        store.total / 1024**2,
        store.limit / 1024**2,
    )
    return store


def caps(
    store: DiskStore | None, sock: socket.socket | None, status: socket.socket | None
) -> frozenset[str]:
    """``{"rcache"}`` when peers can use this daemon as a home: a cache, a compile port, and
    a status port (announced as ``sport``, where peers send their lookups and puts)."""
    if store is None or sock is None or status is None:
        return frozenset()
    return frozenset({"rcache"})


def make_cache(
    store: DiskStore,
    mesh: Mesh,
    toolchains: Sequence[Toolchain] = (),
    lookup_timeout: float = LOOKUP_TIMEOUT,
) -> ResultCache:
    """The cache the compile server and the status port share. Call it from the event
    loop: the toolchains' identities (hashing cc1, cc1plus, as: tens of ms each) are
    computed now in a worker thread, so the first job does not wait for them."""

    offered = "rcache" in mesh.config.extra_caps  # peers count this daemon as a home

    def homes(tc: Toolchain) -> Sequence[Home]:
        me = mesh.status.node_id
        out = [Home(me)] if me and offered else []
        out += [Home(n, a, p) for n, a, p in mesh.cache_homes(tc.fingerprint)]
        return out

    cache = ResultCache(store, homes=homes, lookup_timeout=lookup_timeout)
    loop = asyncio.get_running_loop()
    for tc in toolchains:
        fut = loop.run_in_executor(None, cache.identities.identity, tc)
        fut.add_done_callback(_log_identity_failure)
    return cache


def _log_identity_failure(fut: asyncio.Future[str]) -> None:
    e = None if fut.cancelled() else fut.exception()
    if e is not None:  # the jobs of that toolchain are then not cached, each saying why
        log.warning("result cache: %s", e)
