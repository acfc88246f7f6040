"""What the compile server calls: recall a job's result, or remember one it computed.

For each job the server has read (any client: a stock distcc client's job is keyed and
answered the same way), :meth:`ResultCache.recall`:

1. decides whether the job may be cached (:func:`meshcc.cache.key.uncacheable`, and a
   client that asked for no cache, :data:`NO_CACHE_ARG`);
2. computes its key (toolchain identity, normalised arguments, the received bytes);
3. looks in this daemon's store; on a miss, asks the key's home peer
   (:mod:`meshcc.cache.remote`) within a short timeout. A result from the home is
   checked (hash and key) and kept here too.

After a successful compile, :meth:`ResultCache.remember` stores the result here and
offers it to the home peer in the background (at most :data:`MAX_PUSH_BYTES` on their
way at once; more are dropped and counted, they are only an optimisation). Failures are
never stored: the server calls remember only for exit status 0 with an object.

Disk work runs in worker threads; the event loop only waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from meshcc.cache import key as ckey
from meshcc.cache import remote
from meshcc.cache.identity import IdentityError, ToolchainIdentities
from meshcc.cache.store import CorruptEntry, DiskStore, Entry
from meshcc.compiler.toolchain import Resolved, Toolchain

__all__ = ["NO_CACHE_ARG", "CacheJob", "ResultCache"]

log = logging.getLogger("meshcc.cache")

# A client turns the cache off for its job by sending this argument (meshcc-gcc does when
# MESHCC_CACHE=0). gcc ignores -D on preprocessed input, so a stock distccd, or a daemon
# with no cache, compiles the job unchanged.
NO_CACHE_ARG = "-D__MESHCC_NO_CACHE__"
MAX_PUSH_BYTES = 64 * 1024 * 1024  # entries on their way to their homes, at most
LOOKUP_TIMEOUT = 0.25
PUSH_TIMEOUT = 5.0

Homes = Callable[[Toolchain], Sequence[remote.Home]]

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from meshcc.cache.direct import DirectCache


@dataclass(slots=True)
class CacheJob:
    """One job as the cache sees it: its key, or why it has none."""

    key: str | None
    why_not: str | None = None
    toolchain: Toolchain | None = None
    verdict: str = "miss"  # hit, remote-hit, miss, off (uncacheable or opted out)


@dataclass(slots=True)
class Counts:
    hit: int = 0
    remote_hit: int = 0
    miss: int = 0
    off: int = 0
    stored: int = 0
    pushed: int = 0
    received: int = 0  # entries peers pushed to this daemon (it is their home)
    lookup_failed: int = 0  # the home did not answer in time
    push_failed: int = 0  # the home did not take an entry
    push_dropped: int = 0  # not offered: too many bytes already on their way

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class _Pending:
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    bytes: int = 0  # of the entries being pushed


class ResultCache:
    """The daemon's result cache: a :class:`DiskStore` plus the mesh's homes."""

    what = "cache entry"  # as the status port names what it serves peers

    def __init__(
        self,
        store: DiskStore,
        *,
        homes: Homes | None = None,
        env: Mapping[str, str] | None = None,
        identities: ToolchainIdentities | None = None,
        lookup_timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        self.store = store
        self.homes = homes
        self.env = dict(os.environ if env is None else env)
        self.identities = identities or ToolchainIdentities()
        self.lookup_timeout = lookup_timeout
        self.counts = Counts()
        self._pending = _Pending()
        # direct mode's manifests (the control socket's), whose figures are reported
        # with this cache's: /status.json's result_cache, /metrics, `meshcc stats`
        self.direct: DirectCache | None = None

    # -- the server's calls

    async def recall(
        self, resolved: Resolved, argv: list[str], suffix: str, output_suffix: str, data: bytes
    ) -> tuple[CacheJob, Entry | None]:
        """The job's cache view and, on a hit, the stored result."""
        why = "the client asked for no cache" if NO_CACHE_ARG in argv else None
        why = why or ckey.uncacheable(argv)
        tc = resolved.toolchain
        if why is None:
            try:
                k = await asyncio.to_thread(self._key, tc, argv, suffix, output_suffix, data)
            except IdentityError as e:
                why = str(e)
        if why is not None:
            self.counts.off += 1
            return CacheJob(None, why, tc, "off"), None
        job = CacheJob(k, None, tc)
        entry = await asyncio.to_thread(self.store.get, k)
        if entry is not None:
            self.counts.hit += 1
            job.verdict = "hit"
            return job, entry
        entry = await self._ask_home(job)
        if entry is not None:
            self.counts.remote_hit += 1
            job.verdict = "remote-hit"
            return job, entry
        self.counts.miss += 1
        return job, None

    async def remember(self, job: CacheJob, entry: Entry) -> None:
        """Store a successful compile's result here and offer it to its home."""
        if job.key is None or entry.wait_status != 0:
            return
        k = job.key
        blob = entry.encode(k)
        if not await asyncio.to_thread(self.store.put_blob, k, blob):
            return
        self.counts.stored += 1
        home = self._home(job)
        if home is None or home.host is None:
            return
        if self._pending.bytes + len(blob) > MAX_PUSH_BYTES:
            self.counts.push_dropped += 1
            log.info("result cache: too much on its way to home peers; not pushing %s", k)
            return
        self._pending.bytes += len(blob)
        task = asyncio.ensure_future(self._push(home, k, blob))
        self._pending.tasks.add(task)
        task.add_done_callback(self._pending.tasks.discard)

    # -- the status port's calls (a peer asking this daemon as a key's home)

    async def serve_get(self, k: str) -> bytes | None:
        return await asyncio.to_thread(self.store.get_blob, k)

    async def serve_put(self, k: str, blob: bytes) -> bool:
        """Store what a trusted peer pushed (the caller checked its address); raises
        CorruptEntry if the bytes do not check out."""
        ok = await asyncio.to_thread(self.store.put_blob, k, blob)
        if ok:
            self.counts.received += 1
        return ok

    # -- figures

    def line(self) -> str:
        c = self.counts
        s = self.store
        return (
            f"result cache: {c.hit} hits, {c.remote_hit} from home peers, {c.miss} misses, "
            f"{c.off} uncacheable since start; {len(s)} entries, "
            f"{s.total / 1024**2:.1f} of {s.limit / 1024**2:.0f} MiB ({s.root})"
        )

    def figures(self) -> dict[str, int]:
        d = self.counts.as_dict()
        d.update(
            entries=len(self.store),
            bytes=self.store.total,
            limit_bytes=self.store.limit,
            evicted=self.store.evicted,
            corrupt=self.store.corrupt,
        )
        if self.direct is not None:
            d.update(self.direct.figures())
        return d

    async def close(self) -> None:
        """Wait briefly for pushes under way (they are bounded by PUSH_TIMEOUT)."""
        if self._pending.tasks:
            await asyncio.wait(list(self._pending.tasks), timeout=1.0)

    # -- internals

    def _key(
        self, tc: Toolchain, argv: list[str], suffix: str, output_suffix: str, data: bytes
    ) -> str:
        identity = self.identities.identity(tc)
        return ckey.content_key(
            identity, tc.driver.value, argv, suffix, output_suffix, data, self.env
        )

    def _home(self, job: CacheJob) -> remote.Home | None:
        if self.homes is None or job.key is None or job.toolchain is None:
            return None
        try:
            candidates = self.homes(job.toolchain)
        except Exception:  # a bug in the peer view must not fail the job
            log.exception("result cache: cannot list home candidates")
            return None
        return remote.choose_home(job.key, candidates)

    async def _ask_home(self, job: CacheJob) -> Entry | None:
        home = self._home(job)
        if home is None or home.host is None or job.key is None:
            return None
        try:
            blob = await remote.fetch(home, job.key, self.lookup_timeout)
        except remote.RemoteError as e:
            self.counts.lookup_failed += 1
            log.info("result cache: home %s did not answer: %s", home.host, e)
            return None
        if blob is None:
            return None
        try:
            entry = Entry.decode(job.key, blob)
        except CorruptEntry as e:
            log.warning("result cache: home %s sent a bad entry: %s", home.host, e)
            return None
        await asyncio.to_thread(self.store.put_blob, job.key, blob)  # keep a copy here
        return entry

    async def _push(self, home: remote.Home, k: str, blob: bytes) -> None:
        try:
            if await remote.push(home, k, blob, PUSH_TIMEOUT):
                self.counts.pushed += 1
            else:
                self.counts.push_failed += 1
                log.info("result cache: home %s did not take %s", home.host, k)
        finally:
            self._pending.bytes -= len(blob)
