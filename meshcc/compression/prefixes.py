"""The server's store of received bodies that later zstd frames may use as a prefix (``zref``).

A client sending zstd to a daemon that announces ``zref`` names each body with a fresh
``ZNEW`` id, and may compress the next one against an earlier body (``ZREF``), so the
shared headers cost almost nothing on the wire (``meshcc.wire.codecs``). This store holds
those bodies, decompressed, in memory:

- keyed by (client address, id): an id is only found from the address that sent it, so a
  box cannot name another box's body, and ids are 128 random bits, so another user of the
  same box cannot guess one (a frame may copy its whole prefix into the output, and the
  compile's result would show it);
- bounded in total bytes and per client address, least recently used first out; a body
  larger than a client's share is not kept at all;
- a body is put here only after its job's body decompressed and passed every check (the
  caller's part), so a refused body never becomes a prefix.

Forgetting is always safe: a ``ZREF`` naming a body no longer held is refused with
:func:`meshcc.wire.codecs.unknown_prefix_reason`, and the client sends the job once more
without a prefix. The daemon's event loop calls :meth:`get` and :meth:`put`; a lock makes
them safe from worker threads too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Total bytes of bodies kept (a few hundred .i files of a typical build)."""
DEFAULT_PER_CLIENT = 16 * 1024 * 1024
"""Bytes kept per client address: one busy box cannot push every other's bodies out."""


class PrefixStore:
    """Bodies by (client, id), LRU, within ``max_bytes`` in all and ``per_client`` each."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, per_client: int = DEFAULT_PER_CLIENT
    ) -> None:
        if max_bytes < 0 or per_client < 0:
            raise ValueError("PrefixStore bounds must be non-negative")
        self.max_bytes = max_bytes
        self.per_client = min(per_client, max_bytes)
        self._bodies: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # oldest first
        self._bytes = 0
        self._by_client: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._bodies)

    def client_bytes(self, client: str) -> int:
        return self._by_client.get(client, 0)

    def get(self, client: str, ident: str) -> bytes | None:
        """The body ``client`` kept as ``ident`` (now the most recently used), or None."""
        key = (client, ident)
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def put(self, client: str, ident: str, body: bytes) -> bool:
        """Keep ``body`` as ``client``'s ``ident``, evicting the least recently used bodies
        (that client's first) to stay within the bounds; False when it is too large to keep
        at all. A repeated id replaces the body it named."""
        size = len(body)
        key = (client, ident)
        with self._lock:
            self._drop(key)
            if not size or size > self.per_client:
                return False
            while self._by_client.get(client, 0) + size > self.per_client:
                self._drop(next(k for k in self._bodies if k[0] == client))
            while self._bytes + size > self.max_bytes:
                self._drop(next(iter(self._bodies)))
            self._bodies[key] = body
            self._bytes += size
            self._by_client[client] = self._by_client.get(client, 0) + size
            return True

    def _drop(self, key: tuple[str, str]) -> None:
        body = self._bodies.pop(key, None)
        if body is None:
            return
        self._bytes -= len(body)
        left = self._by_client[key[0]] - len(body)
        if left:
            self._by_client[key[0]] = left
        else:
            del self._by_client[key[0]]
