"""The compile client's lease pool: peers leased from the local meshcc daemon.

Part of :mod:`meshcc.client.wrapper`, kept in a module of its own so that a compile with
``DISTCC_HOSTS`` (no daemon asked) does not load it: every byte of the wrapper's ``.pyc``
is unmarshalled on every compile (~30 instructions a byte; this part is ~10 KB).
"""

from __future__ import annotations

import time

from meshcc.client import state as _state

MAX_LEASE_ATTEMPTS = 3  # leases tried per job before compiling locally

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from meshcc.client.slots import Slot
    from meshcc.client.wrapper import _Run
    from meshcc.transport.control_client import Control
    from meshcc.wire.control import LeaseGranted


class Leased:
    """A peer leased from the daemon, shaped like a ``hostspec.Host`` for ``_remote``."""

    __slots__ = (
        "busy",
        "compiler",
        "host",
        "lock",
        "peer",
        "port",
        "protocol",
        "slot",
        "spec",
        "where",
    )

    def __init__(self, grant: LeaseGranted) -> None:
        self.busy = grant.busy  # the peer speaks SLOT/BUSY
        self.host = host = grant.host
        self.port = port = grant.port
        self.protocol = grant.protocol
        self.compiler = grant.compiler
        self.peer = grant.peer
        self.where = where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.spec = f"{where} ({self.peer})" if self.peer and self.peer != where else where
        self.slot = 0  # distcc's slot number for the monitors (see LeasePool.acquire)
        self.lock: Slot | None = None  # the distcc lock file that number stands for


class LeasePool:
    """Peers leased from the local meshcc daemon (``meshcc.transport.control_client``).

    Each attempt is one control connection; a granted lease is held (as a slot in
    ``run.slots``) for the whole remote job, so the daemon counts the peer slot busy until
    ``done`` and close. A failed peer is reported (``ok`` false, ``connect_failed``) and
    another lease asked for, at most MAX_LEASE_ATTEMPTS times. Local compiles are not the
    daemon's business: they keep distcc's local slot locks.
    """

    def __init__(
        self,
        run: _Run,
        first: Control | None,
        path: str,
        cc: str,
        cc_path: str,
        io_timeout: float,
        begin_cpp: Callable[[LeasePool], None],
        hostlist_slots: Callable[[bool], int],
    ) -> None:
        # The wrapper's own functions, passed in: this module may not import it (no cycles).
        self.begin_cpp = begin_cpp  # start cpp while the daemon makes us wait
        self.hostlist_slots = hostlist_slots  # --localslots(_cpp) from the distcc host files
        self.run = run
        self.next_conn = first
        self.path = path
        self.cc = cc
        self.cc_path = cc_path
        self.io_timeout = io_timeout
        self.attempts = 0
        self.last_failure = ""  # a leased peer that failed
        self.local_reason = ""  # the daemon said: compile locally
        self.local_share: Control | None = None  # ...in one of this box's counted slots
        self.daemon_failure = ""  # the daemon itself failed us

    def localslots(self, cpp: bool = False) -> int:
        """--localslots from the distcc host files, if any set it (read only when needed)."""
        return self.hostlist_slots(cpp)

    def acquire(self) -> tuple[Leased, Control] | None:
        """Ask the daemon for a peer (waiting while all are busy); None: compile locally."""
        from meshcc.transport import control_client as cc
        from meshcc.wire.control import LeaseGranted, LeaseLocal

        run = self.run
        if self.attempts >= MAX_LEASE_ATTEMPTS:
            run.log.debug(f"giving up after {self.attempts} leased attempts")
            return None
        conn, self.next_conn = self.next_conn, None
        t0 = time.monotonic()
        _state.note(_state.BLOCKED)  # the daemon queues us while every matching slot is busy
        try:
            if conn is None:
                conn = cc.Control.connect(self.path)
            answer = conn.lease(
                self.cc,
                self.cc_path,
                run.job.source or "",
                self.io_timeout,
                local_ok=run.fallback,
                on_wait=lambda: self.begin_cpp(self),  # preprocess while we wait in line
            )
        except (cc.NoDaemon, cc.ControlError) as e:
            if conn is not None:
                conn.close()
            self.daemon_failure = f"meshcc daemon at {self.path}: {e}"
            return None
        ms = (time.monotonic() - t0) * 1000
        if isinstance(answer, LeaseGranted):
            target = Leased(answer)
            run.slots.append(conn)
            if _state.active():
                target.slot = self._slot_number(target)
            self.attempts += 1
            run.log.debug(
                f"leased {target.where} (compiler {target.compiler}) from the meshcc "
                f"daemon in {ms:.1f} ms (peer {target.peer or '?'})"
            )
            return target, conn
        if isinstance(answer, LeaseLocal):
            self.local_reason = answer.reason
            if answer.hold:  # this box's own share: held while we compile
                self.local_share = conn
                run.slots.append(conn)
                return None
            conn.close()
            return None
        conn.close()
        self.daemon_failure = f"meshcc daemon error: {answer.error}"
        return None

    def _slot_number(self, target: Leased) -> int:
        """A slot number for the monitors: the first free distcc lock ``cpu_tcp_HOST_PORT_N``
        of the peer, held with the lease, so jobs on one peer show distinct slots (and stock
        distcc clients on this box count the slot as busy, as it is)."""
        from meshcc.client import slots

        lockdir = self.run.lockdir
        if lockdir is None:
            return 0
        name = f"tcp_{target.host}_{target.port}"
        for index in range(1024):
            try:
                held = slots.try_lock(lockdir, name, index)
            except slots.DistccDirError:
                return 0
            if held is not None:
                self.run.slots.append(held)
                target.lock = held
                return index
        return 0

    def failed_on(self, host: Leased, lease: Control, why: str, connect_failed: bool) -> None:
        """Tell the daemon the peer failed (it may drop it at once) and end the lease."""
        self.last_failure = f"{host.spec} ({why})"
        lease.ok = False
        lease.connect_failed = connect_failed
        lease.reason = why
        self.run.release(lease)
        self.run.release(host.lock)

    def busy(self, host: Leased, lease: Control) -> None:
        """The peer is full: tell the daemon (it skips the peer for a moment, with no
        failure counted) and end the lease; not a leased attempt used up."""
        self.attempts -= 1
        lease.busy = True
        self.run.release(lease)
        self.run.release(host.lock)

    def finish(self, host: Leased, lease: Control, verdict: bool | None) -> None:
        """End the lease; ``verdict`` False reports the peer as bad (crash, wrong result)."""
        if verdict is False:
            lease.ok = False
            why = "the remote compiler crashed or disagreed with the local one"
            lease.reason = why
        self.run.release(lease)
        self.run.release(host.lock)

    def before_local_retry(self, lease: Control) -> Control:
        """Keep the lease through the local retry: only its result tells whether the peer
        was at fault (rare path: compile errors)."""
        return lease

    def nothing_left(self, src: str) -> tuple[str, bool]:
        """Why no lease did the job, and whether that is quiet (verbose-only)."""
        from meshcc.client.decisions import leases_exhausted

        return leases_exhausted(src, self.last_failure, self.daemon_failure, self.local_reason)
