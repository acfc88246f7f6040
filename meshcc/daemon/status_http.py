"""The daemon's status port (distccd's stats port, 3633): a tiny HTTP/1.0 responder.

It exists so that a box with nothing but ``python3`` can join the mesh with one command:
any daemon hands out its own meshcc.pyz. Paths (GET only):

- ``/meshcc.pyz``         the zipapp bytes (built once at start, kept in memory)
- ``/meshcc.pyz.sha256``  ``<hex>  meshcc.pyz`` (``sha256sum -c`` format)
- ``/bootstrap``          a short Python script: fetch both, verify, write, say what next
- ``/``                   a plain-text status page
- ``/status.json``        this daemon's status as JSON (versioned schema:
                          :mod:`meshcc.daemon.metrics`)
- ``/metrics``            Prometheus text format, or OpenMetrics when ``Accept`` asks for
                          ``application/openmetrics-text`` (as Prometheus itself does)

The same allowed networks as the compile port guard it (a refused client is logged and
the connection closed without a byte, as distccd does); requests are bounded in size
and time. No new dependency: asyncio streams and a hand-written response.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from meshcc.cache.direct import DirectCache, DirectError
from meshcc.cache.key import is_key
from meshcc.cache.service import ResultCache
from meshcc.cache.store import MAX_ENTRY, CorruptEntry
from meshcc.daemon.metrics import OPENMETRICS, PROMETHEUS, Telemetry, wants_openmetrics
from meshcc.transport.addresses import IPNetwork, client_allowed, normalize_client_ip, peer_ip
from meshcc.wire.control import StatusReply

log = logging.getLogger("meshcc.status")

MAX_REQUEST = 8192  # request line + headers
REQUEST_TIMEOUT = 10.0  # to send the request
SEND_TIMEOUT = 120.0  # to take the whole reply (a pyz is ~250 KiB)
MAX_CONNECTIONS = 64  # a status page and a pyz download each take one; more is an attack

BOOTSTRAP = """\
# meshcc bootstrap, served by the meshcc daemon at {base}
# Fetches meshcc.pyz and its sha256 from that peer, checks one against the other,
# writes it (mode 0755) and prints the next command. The hash proves the download is
# intact, not who sent it: use this on a LAN you trust.
def _meshcc_bootstrap():
    import hashlib, os, sys, urllib.request
    base = {base!r}
    if sys.version_info < (3, 11):
        sys.exit("meshcc.pyz needs Python 3.11 or newer, this is " + sys.version.split()[0])
    dest = os.environ.get("MESHCC_PYZ")
    if not dest:
        bindir = "/usr/local/bin"
        dest = os.path.join(bindir, "meshcc.pyz") if os.access(bindir, os.W_OK) else "meshcc.pyz"
    try:
        data = urllib.request.urlopen(base + "/meshcc.pyz", timeout=60).read()
        line = urllib.request.urlopen(base + "/meshcc.pyz.sha256", timeout=60).read()
    except OSError as e:
        sys.exit(f"meshcc bootstrap: cannot download from {{base}}: {{e}}")
    want = line.decode("ascii", "replace").split()[0] if line.split() else ""
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        sys.exit(f"meshcc bootstrap: sha256 mismatch ({{got}} != {{want}}); nothing written")
    tmp = dest + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    print(f"meshcc.pyz ({{len(data)}} bytes, sha256 {{got}}) verified and written to {{dest}}")
    print(f"next: python3 {{dest}} daemon")
_meshcc_bootstrap()
"""


def _header(head: bytes, name: bytes) -> str:
    """The value of header ``name`` (lower case) in a request head, or ""."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


class _PeerStore(Protocol):
    """What peers reach on the status port: the result cache (``/cache/<key>``) and
    direct mode's mesh records (``/direct/<key>``), each with this daemon as a key's home."""

    what: str  # "cache entry", "direct-mode record": in replies and log lines

    async def serve_get(self, key: str, /) -> bytes | None: ...

    async def serve_put(self, key: str, blob: bytes, /) -> bool: ...


class StatusServer:
    """Serves the status page, meshcc.pyz, its hash and the bootstrap script."""

    def __init__(
        self,
        pyz: bytes | None,
        status: Callable[[], StatusReply],
        allowed: Sequence[IPNetwork],
        *,
        pyz_error: str = "",
        cache_line: Callable[[], str | None] | None = None,
        telemetry: Telemetry | None = None,
        result_cache: ResultCache | None = None,
        direct: DirectCache | None = None,
    ) -> None:
        self.result_cache = result_cache  # GET/PUT /cache/<key>: this daemon as a key's home
        self.direct = direct  # GET/PUT /direct/<key>: direct mode's mesh records (the same)
        self.pyz = pyz
        self.telemetry = telemetry or Telemetry(status)
        self.cache_line = cache_line  # --ccache: hits and misses (CompileServer.cache_line)
        self.pyz_error = pyz_error
        self.sha256 = hashlib.sha256(pyz).hexdigest() if pyz is not None else ""
        self.status = status
        self.allowed = tuple(allowed)
        self._server: asyncio.Server | None = None
        self._open = 0
        self._refused_logged = 0.0

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._on_connection, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._open >= MAX_CONNECTIONS:
            # Idle or slow status clients must never take the descriptors compiles need.
            now = time.monotonic()
            if now - self._refused_logged > 60:
                self._refused_logged = now
                log.warning("status port: %d connections open; closing new ones", self._open)
            writer.close()
            return
        self._open += 1
        try:
            await self._serve(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception as e:  # noqa: BLE001 - one bad request must not take the daemon down
            log.warning("status port: %s", e)
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        try:
            addr = peer_ip(peer)[0]
        except ValueError:
            addr = ipaddress.ip_address("0.0.0.0")
        client = f"[{addr}]:{peer[1]}" if addr.version == 6 else f"{addr}:{peer[1]}"
        if not client_allowed(addr, self.allowed):
            log.info("status port: refused %s (not in the allowed networks)", client)
            return
        head = await asyncio.wait_for(self._read_head(reader), REQUEST_TIMEOUT)
        if head is None:
            await self._reply(writer, 400, b"bad request\n")
            return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            await self._reply(writer, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1].decode("ascii", "replace").split("?", 1)[0]
        if target.startswith("/cache/") and self.result_cache is not None:
            store: _PeerStore = self.result_cache
            await self._peer_store_request(store, reader, writer, method, target[7:], head, client)
            return
        if target.startswith("/direct/") and self.direct is not None:
            store = self.direct
            await self._peer_store_request(store, reader, writer, method, target[8:], head, client)
            return
        if method != b"GET":
            await self._reply(writer, 405, b"only GET\n", extra="Allow: GET\r\n")
            return
        ctype = "text/plain; charset=utf-8"
        if target in ("/meshcc.pyz", "/meshcc.pyz.sha256") and self.pyz is None:
            await self._reply(
                writer, 503, f"meshcc.pyz is not available: {self.pyz_error}\n".encode()
            )
            return
        if target == "/meshcc.pyz":
            assert self.pyz is not None
            body, ctype = self.pyz, "application/zip"
        elif target == "/meshcc.pyz.sha256":
            body = f"{self.sha256}  meshcc.pyz\n".encode()
        elif target == "/bootstrap":
            body = BOOTSTRAP.format(base=self._base_url(writer)).encode()
            ctype = "text/x-python; charset=utf-8"
        elif target == "/":
            body = self._status_page().encode()
        elif target == "/status.json":
            body = (json.dumps(self.telemetry.status_json(), indent=1) + "\n").encode()
            ctype = "application/json"
        elif target == "/metrics":
            om = wants_openmetrics(_header(head, b"accept"))
            body = self.telemetry.exposition(openmetrics=om).encode()
            ctype = OPENMETRICS if om else PROMETHEUS
        else:
            await self._reply(
                writer,
                404,
                b"not found; try /, /status.json, /metrics, /meshcc.pyz, /meshcc.pyz.sha256 "
                b"or /bootstrap\n",
            )
            return
        await self._reply(writer, 200, body, ctype=ctype)
        level = logging.DEBUG if target in ("/metrics", "/status.json") else logging.INFO
        log.log(level, "status port: %s fetched %s (%d bytes)", client, target, len(body))

    async def _peer_store_request(
        self,
        store: _PeerStore,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: bytes,
        key: str,
        head: bytes,
        client: str,
    ) -> None:
        """A peer asks this daemon, the key's home, for a result or a direct-mode record
        (GET) or offers one (PUT). Only clients inside the allowed networks get here: the
        same trust as a compile client; a PUT's bytes are checked by the store (hash, key,
        structure, bounds) before they are kept."""
        if not is_key(key):
            await self._reply(writer, 404, b"not a key\n")
            return
        if method == b"GET":
            blob = await store.serve_get(key)
            if blob is None:
                await self._reply(writer, 404, f"no such {store.what}\n".encode())
            else:
                await self._reply(writer, 200, blob, ctype="application/octet-stream")
            return
        if method != b"PUT":
            await self._reply(writer, 405, b"GET or PUT\n", extra="Allow: GET, PUT\r\n")
            return
        length = _header(head, b"content-length")
        if not length.isdigit() or int(length) > MAX_ENTRY:
            await self._reply(writer, 400, b"bad or too large Content-Length\n")
            return
        blob = await asyncio.wait_for(reader.readexactly(int(length)), REQUEST_TIMEOUT)
        try:
            stored = await store.serve_put(key, blob)
        except (CorruptEntry, DirectError) as e:
            log.warning("status port: %s pushed a bad %s: %s", client, store.what, e)
            await self._reply(writer, 400, f"{store.what} does not check out\n".encode())
            return
        await self._reply(writer, 200 if stored else 503, b"stored\n" if stored else b"no\n")

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
        # Line by line, so a PUT's body (GET /cache/... and PUT: meshcc.cache) stays in
        # the stream for the handler; a line is bounded by the stream's limit.
        data = b""
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the stream's limit
                return None
            if not line:
                return data if data.endswith((b"\r\n", b"\n")) and data.strip() else None
            data += line
            if len(data) > MAX_REQUEST:
                return None
            if line in (b"\r\n", b"\n"):
                break
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    @staticmethod
    def _base_url(writer: asyncio.StreamWriter) -> str:
        """http://ADDR:PORT as the client reached us (never the client's Host header)."""
        sockname = writer.get_extra_info("sockname") or ("127.0.0.1", 3633)
        try:
            addr = normalize_client_ip(str(sockname[0]))
        except ValueError:
            addr = ipaddress.ip_address("127.0.0.1")
        host = f"[{addr}]" if addr.version == 6 else str(addr)
        return f"http://{host}:{sockname[1]}"

    def _status_page(self) -> str:
        st = self.status()
        lines = [f"meshcc {st.version} on {st.node}"]
        lines += [f"peers: {st.peers}", f"jobs: {st.jobs}", f"running: {st.running}"]
        lines += [f"port: {st.port}", f"discovery: {st.discovery}"]
        cache = self.cache_line() if self.cache_line is not None else None
        if cache is not None:
            lines.append(cache)
        if self.result_cache is not None:
            lines.append(self.result_cache.line())
        if self.direct is not None:
            lines.append(self.direct.line())
        lines += self.telemetry.summary_lines()
        lines.append("more: GET /status.json (JSON), /metrics (Prometheus)")
        if self.pyz is not None:
            lines.append(
                f"meshcc.pyz: {len(self.pyz)} bytes, sha256 {self.sha256} "
                "(GET /meshcc.pyz, /meshcc.pyz.sha256, /bootstrap)"
            )
        else:
            lines.append(f"meshcc.pyz: not available ({self.pyz_error})")
        return "\n".join(lines) + "\n"

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        *,
        ctype: str = "text/plain; charset=utf-8",
        extra: str = "",
    ) -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }[code]
        head = (
            f"HTTP/1.0 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
        )
        writer.write(head.encode("ascii") + body)
        await asyncio.wait_for(writer.drain(), SEND_TIMEOUT)
        if writer.can_write_eof():
            writer.write_eof()
