"""Home peers (rendezvous hashing) and the bounded HTTP calls (meshcc.cache.remote),
against real loopback sockets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from meshcc.cache.remote import Home, RemoteError, choose_home, fetch, push

KEYS = [f"{i:064x}" for i in range(2000)]
NODES = [Home(f"node-{i}", "127.0.0.1", 1) for i in range(4)]


def test_every_daemon_agrees_and_the_order_of_candidates_does_not_matter() -> None:
    for k in KEYS[:200]:
        assert choose_home(k, NODES) == choose_home(k, list(reversed(NODES)))
    assert choose_home(KEYS[0], []) is None


def test_a_peer_leaving_moves_only_its_own_keys() -> None:
    before = {k: choose_home(k, NODES) for k in KEYS}
    gone = NODES[1]
    after = {k: choose_home(k, [n for n in NODES if n != gone]) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved and all(before[k] == gone for k in moved)
    share = Counter(h.node for h in before.values() if h is not None)
    assert min(share.values()) > len(KEYS) / 4 * 0.8, share  # spread evenly


async def _server(handler: object) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


def test_a_silent_home_delays_a_lookup_by_the_timeout_only() -> None:
    async def go() -> float:
        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)
            w.close()

        server, port = await _server(silent)
        async with server:
            t = time.monotonic()
            with pytest.raises(RemoteError):
                await fetch(Home("n", "127.0.0.1", port), KEYS[0], 0.2)
            return time.monotonic() - t

    assert asyncio.run(go()) < 1.0


def test_fetch_and_push_speak_http() -> None:
    seen: list[bytes] = []

    async def go() -> tuple[bytes | None, bytes | None, bool]:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            head = await r.readuntil(b"\r\n\r\n")
            seen.append(head)
            if head.startswith(b"PUT"):
                n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                seen.append(await r.readexactly(n))
                w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            elif KEYS[1].encode() in head:
                w.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n")
            else:
                w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nblob")
            await w.drain()
            w.close()

        server, port = await _server(handler)
        home = Home("n", "127.0.0.1", port)
        async with server:
            got = await fetch(home, KEYS[0], 2.0)
            missing = await fetch(home, KEYS[1], 2.0)
            stored = await push(home, KEYS[2], b"entry-bytes", 2.0)
            return got, missing, stored

    got, missing, stored = asyncio.run(go())
    assert got == b"blob" and missing is None and stored
    assert seen[0].startswith(f"GET /cache/{KEYS[0]} HTTP/1.0\r\n".encode())
    assert seen[-1] == b"entry-bytes"


def test_a_refused_home_is_an_error_not_a_crash() -> None:
    async def go() -> bool:
        server, port = await _server(lambda r, w: w.close())
        server.close()
        await server.wait_closed()
        with pytest.raises(RemoteError):
            await fetch(Home("n", "127.0.0.1", port), KEYS[0], 1.0)
        return await push(Home("n", "127.0.0.1", port), KEYS[0], b"x", 1.0)

    assert asyncio.run(go()) is False
