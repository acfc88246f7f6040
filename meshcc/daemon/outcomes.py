"""The daemon's end of the outcome channel: count how this box's compiles ended.

Compile clients send one datagram per compile (:mod:`meshcc.wire.outcome`,
:mod:`meshcc.client.outcome`); ``meshcc stats`` asks for the totals on the same socket.
The counts live in memory since the daemon started (or since the last
``meshcc stats --reset``): they describe what the mesh is doing now, and a restart is a
new mesh member. Everything a local user can send is bounded:

- a datagram larger than :data:`~meshcc.wire.outcome.MAX_DATAGRAM` is dropped (the kernel
  reports the truncation) and counted, as is anything that does not decode;
- each uid has a token bucket (:data:`RATE` records per second, :data:`BURST` at once);
  beyond it records are dropped and counted against that uid;
- at most :data:`MAX_KEYS` distinct (outcome, host, reason) keys are kept; later ones are
  folded into ``(other reasons)`` of their outcome, so totals stay exact;
- at most :data:`MAX_UIDS` uids are tracked (the oldest forgotten first);
- one wake-up of the loop reads at most :data:`BATCH` datagrams, so a flood cannot starve
  compiles; the socket's own kernel queue bounds memory (a full queue drops at the sender);
- queries are answered at most :data:`QUERY_RATE` per second per uid.

The sender's uid comes from the kernel (``SO_PASSCRED``), never from the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable

from meshcc.wire import outcome as wire

log = logging.getLogger("meshcc.stats")

MAX_KEYS = 200
MAX_UIDS = 256
RATE = 2000.0  # records per second per uid (a make -j64 of tiny files stays well below)
BURST = 20000.0
QUERY_RATE = 20.0
BATCH = 256
MAX_REPLY = 160 * 1024  # one datagram; the kernel's default socket buffer takes ~208 KiB
OTHER = "(other reasons)"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size)
SCHEMA = 1  # of the JSON snapshot (meshcc stats --json, /status.json "clients")


class _Bucket:
    __slots__ = ("accepted", "dropped", "last", "queries", "query_tokens", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = BURST
        self.query_tokens = QUERY_RATE
        self.last = now
        self.accepted = 0
        self.dropped = 0
        self.queries = 0

    def refill(self, now: float) -> None:
        dt = max(0.0, now - self.last)
        self.last = now
        self.tokens = min(BURST, self.tokens + dt * RATE)
        self.query_tokens = min(QUERY_RATE, self.query_tokens + dt * QUERY_RATE)


class OutcomeCounts:
    """The counts themselves (no I/O): fed by :class:`OutcomeReceiver`, read by
    ``meshcc stats``, ``/status.json`` and ``/metrics``."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self.since = time.time()
        self.counts: dict[tuple[str, str, str], int] = {}
        self.attempts: dict[tuple[str, str], int] = {}  # failed attempts: (host, kind)
        self.dropped: dict[str, int] = {}
        self.uids: dict[int, _Bucket] = {}

    def reset(self) -> None:
        self.since = time.time()
        self.counts.clear()
        self.attempts.clear()
        self.dropped.clear()
        for b in self.uids.values():
            b.accepted = b.dropped = 0

    def drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1

    def _bucket(self, uid: int) -> _Bucket:
        now = self._clock()
        b = self.uids.get(uid)
        if b is None:
            if len(self.uids) >= MAX_UIDS:
                del self.uids[next(iter(self.uids))]
            b = self.uids[uid] = _Bucket(now)
        else:
            b.refill(now)
        return b

    def allow_query(self, uid: int) -> bool:
        b = self._bucket(uid)
        if b.query_tokens < 1.0:
            self.drop("query-rate")
            return False
        b.query_tokens -= 1.0
        b.queries += 1
        return True

    def add(self, uid: int, outcome: str, host: str, reason: str) -> bool:
        """Count one record from ``uid``; False if its rate limit dropped it."""
        b = self._bucket(uid)
        if b.tokens < 1.0:
            b.dropped += 1
            self.drop("rate")
            return False
        b.tokens -= 1.0
        b.accepted += 1
        if outcome == wire.ATTEMPT:
            kind = "refused" if reason.startswith("refused: ") else "error"
            attempts = self.attempts
            akey = (
                (host, kind)
                if (host, kind) in attempts or len(attempts) < MAX_KEYS
                else (
                    OTHER,
                    kind,
                )
            )
            attempts[akey] = attempts.get(akey, 0) + 1
            return True
        key = (outcome, host, reason)
        counts = self.counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < MAX_KEYS:
            counts[key] = 1
        else:
            other = (outcome, "", OTHER)
            counts[other] = counts.get(other, 0) + 1
        return True

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(wire.OUTCOMES, 0)
        for (outcome, _, _), n in self.counts.items():
            out[outcome] += n
        return out

    def snapshot(self) -> dict[str, object]:
        """The JSON form (schema :data:`SCHEMA`): totals by outcome, then every
        (outcome, host, reason) with its count, largest first."""
        rows = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "schema": SCHEMA,
            "since": self.since,
            "totals": self.totals(),
            "entries": [
                {"outcome": o, "host": h, "reason": r, "count": n} for (o, h, r), n in rows
            ],
            "failed_attempts": [
                {"host": h, "kind": k, "count": n}
                for (h, k), n in sorted(self.attempts.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "dropped": dict(sorted(self.dropped.items())),
            "uids": {
                str(uid): {"accepted": b.accepted, "dropped": b.dropped}
                for uid, b in sorted(self.uids.items())
                if b.accepted or b.dropped
            },
        }


def open_report_socket(control_path: str) -> socket.socket | None:
    """Bind the outcome socket beside the control socket (before the privilege drop: the
    directory may be root's); None, with a warning, when it cannot be (stats are optional)."""
    path = wire.report_socket_path(control_path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("no compile statistics: cannot use %s: %s", path, e.strerror or e)
        return None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            log.warning("no compile statistics: %s exists and is not a socket", path)
            return None
        # The control socket was bound just before (a live daemon there stopped us): stale.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(path)
        os.chmod(path, 0o666)  # every local user's compiles report here
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        log.warning("no compile statistics: cannot bind %s: %s", path, e.strerror or e)
        return None
    return sock


class OutcomeReceiver:
    """Reads the outcome socket in the daemon's loop (``add_reader``: no task to die)."""

    def __init__(self, counts: OutcomeCounts, sock: socket.socket, path: str) -> None:
        self.counts = counts
        self.sock = sock
        self.path = path
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _on_readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, anc, flags, addr = self.sock.recvmsg(wire.MAX_DATAGRAM + 1, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("outcome socket: %s", e)
                return
            try:
                self._handle(data, anc, flags, addr)
            except Exception as e:  # noqa: BLE001 - one bad datagram must never stop counting
                self.counts.drop("error")
                log.debug("outcome socket: %r", e)

    def _handle(
        self, data: bytes, anc: list[tuple[int, int, bytes]], flags: int, addr: object
    ) -> None:
        uid = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                uid = _UCRED.unpack(payload[: _UCRED.size])[1]
        counts = self.counts
        if uid < 0:
            counts.drop("no-credentials")
            return
        if flags & socket.MSG_TRUNC:
            counts.drop("oversized")
            return
        try:
            msg = wire.decode(data)
        except wire.OutcomeError as e:
            counts.drop(str(e))
            return
        if isinstance(msg, tuple):
            counts.add(uid, *msg)
            return
        if not isinstance(addr, (str, bytes)) or not addr or not counts.allow_query(uid):
            return  # an unbound sender cannot be answered (an autobound one is abstract)
        if msg == wire.RESET:
            if uid in (0, os.geteuid()):
                counts.reset()
                log.info("compile statistics reset by uid %d", uid)
                reply: dict[str, object] = {"ok": True}
            else:
                reply = {"ok": False, "error": "only root or the daemon's user may reset"}
        else:
            reply = {"ok": True, **counts.snapshot()}
        with contextlib.suppress(OSError):
            self.sock.sendto(_fit(reply), socket.MSG_DONTWAIT, addr)


def _fit(reply: dict[str, object]) -> bytes:
    """``reply`` as JSON in one datagram: the smallest entries go first if it is too big
    (marked ``"truncated": true``; the totals are always whole)."""
    data = json.dumps(reply, ensure_ascii=False).encode()
    while len(data) > MAX_REPLY:
        reply["truncated"] = True
        for key in ("entries", "failed_attempts"):
            rows = reply.get(key)
            if isinstance(rows, list):
                reply[key] = rows[: len(rows) // 2]
        data = json.dumps(reply, ensure_ascii=False).encode()
    return data
