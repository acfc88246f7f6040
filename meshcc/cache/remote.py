"""A key's home peer, and the two HTTP calls to it (GET and PUT on its status port).

Every daemon that serves a toolchain agrees on one home per key by rendezvous (highest
random weight) hashing: the home is the candidate with the largest SHA-256(key, node
id). Candidates are this daemon and the live meshcc peers with the same toolchain
fingerprint inside the allowed subnets, i.e. those it would accept compile results from.
When a peer leaves, only the keys it was home for move (to their second choice), so the
mesh loses only that peer's share of the hits; a newcomer takes only its share.

The calls are plain HTTP/1.0 on the peer's status port (``GET /cache/<key>``, ``PUT
/cache/<key>``; direct mode's mesh records the same on ``/direct/<key>``), bounded in
size (:data:`meshcc.cache.store.MAX_ENTRY`) and time: a lookup waits at most ``timeout``
(default 0.25 s, many LAN round trips, far less than a compile) for the whole answer,
so a miss is delayed by at most that, and by one round trip when the peer is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from meshcc.cache.store import MAX_ENTRY

__all__ = ["Home", "RemoteError", "choose_home", "fetch", "push"]

_HEAD_MAX = 4096


class RemoteError(Exception):
    """The home peer did not answer usefully (refused, timed out, malformed)."""


@dataclass(frozen=True, slots=True)
class Home:
    """A candidate home: a node id the whole mesh knows it by, and where to reach it
    (``host`` None: this daemon itself)."""

    node: str
    host: str | None = None
    port: int = 0


def _weight(key: str, node: str) -> bytes:
    return hashlib.sha256(f"{key}\0{node}".encode()).digest()


def choose_home(key: str, candidates: Sequence[Home]) -> Home | None:
    """The candidate with the highest weight for ``key`` (ties by node id); None if none."""
    if not candidates:
        return None
    return max(candidates, key=lambda h: (_weight(key, h.node), h.node))


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _exchange(home: Home, request: bytes, limit: int) -> tuple[int, bytes]:
    assert home.host is not None
    reader, writer = await asyncio.open_connection(home.host, home.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_MAX:
            raise RemoteError("reply header too long")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise RemoteError(f"bad status line {lines[0]!r}")
        code = int(parts[1])
        length = -1
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        if length > limit:
            raise RemoteError(f"reply of {length} bytes exceeds {limit}")
        body = await (reader.readexactly(length) if length >= 0 else reader.read(limit + 1))
        if len(body) > limit:
            raise RemoteError(f"reply exceeds {limit} bytes")
        return code, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def fetch(home: Home, key: str, timeout: float, *, kind: str = "cache") -> bytes | None:
    """The entry bytes the home holds for ``key`` (unchecked: the caller checks), None
    if it has none; raises RemoteError if it could not say within ``timeout``. ``kind``:
    ``cache`` (results, /cache/<key>) or ``direct`` (direct mode's mesh records,
    /direct/<key>: :mod:`meshcc.cache.direct`)."""
    req = f"GET /{kind}/{key} HTTP/1.0\r\nHost: {_hostport(home.host or '', home.port)}\r\n\r\n"
    try:
        code, body = await asyncio.wait_for(
            _exchange(home, req.encode("ascii"), MAX_ENTRY), timeout
        )
    except TimeoutError:
        raise RemoteError(f"no answer within {timeout:g}s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        raise RemoteError(str(e) or type(e).__name__) from None
    if code == 404:
        return None
    if code != 200:
        raise RemoteError(f"HTTP {code}")
    return body


async def push(home: Home, key: str, blob: bytes, timeout: float, *, kind: str = "cache") -> bool:
    """Offer an entry to its home (PUT /<kind>/<key>, as :func:`fetch`); True if it
    stored it. Never raises."""
    req = (
        f"PUT /{kind}/{key} HTTP/1.0\r\nHost: {_hostport(home.host or '', home.port)}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(blob)}\r\n\r\n"
    ).encode("ascii")
    try:
        code, _ = await asyncio.wait_for(_exchange(home, req + blob, _HEAD_MAX), timeout)
    except (TimeoutError, OSError, RemoteError, asyncio.IncompleteReadError):
        return False
    except asyncio.LimitOverrunError:
        return False
    return code in (200, 201, 204)
