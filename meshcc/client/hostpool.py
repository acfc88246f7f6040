"""The protocols between the compile client's decisions and its host sources.

For the type checker only: import this module under ``TYPE_CHECKING`` (as the wrapper
does), never at run time, so the compile client never loads ``typing``.

A :class:`HostPool` is where hosts come from: distcc's host list with its slot lock and
backoff files (``wrapper._ListPool``), or leases from the local meshcc daemon
(``wrapper._LeasePool``). It hands out a :class:`Target` to send the job to and a
:class:`Held` (a slot lock, a lease) that stays held while the job runs there, and it
takes the verdicts of :mod:`meshcc.client.decisions` on the hosts it handed out.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class Held(Protocol):
    """Something held for one job that others are waiting for: a distcc slot lock
    (``slots.Slot``) or a lease from the local daemon (``control_client.Control``)."""

    def release(self) -> None:
        """Give it back (idempotent)."""

    def keep_across_exec(self) -> None:
        """Let the compiler this process is about to exec hold it for its whole run."""


class Target(Protocol):
    """Where a job can be sent: a ``hostspec.Host`` or a leased peer."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def protocol(self) -> int: ...
    @property
    def spec(self) -> str: ...


TargetT = TypeVar("TargetT", bound=Target)
HeldT = TypeVar("HeldT", bound=Held)


class HostPool(Protocol[TargetT, HeldT]):
    """Where hosts come from: distcc's host list and lock files, or the daemon's leases."""

    @property
    def local_share(self) -> Held | None:
        """A slot of this box's own that the pool handed out for a local compile."""

    def localslots(self, cpp: bool = False) -> int:
        """How many local compiles (or local preprocessors) may run at once."""

    def acquire(self) -> tuple[TargetT, HeldT] | None:
        """The next host to try and what holds it; None when no host is left."""

    def failed_on(self, host: TargetT, held: HeldT, why: str, connect_failed: bool) -> None:
        """``host`` did not do the job (a ``decisions.TryNextHost``); free ``held``."""

    def busy(self, host: TargetT, held: HeldT) -> None:
        """``host`` answered BUSY (a ``decisions.TryElsewhere``): free ``held`` with no
        backoff and no remote attempt counted; the next ``acquire`` looks elsewhere."""

    def finish(self, host: TargetT, held: HeldT, verdict: bool | None) -> None:
        """The job is over on ``host``: record ``verdict`` (``decisions.FORGIVE``,
        ``BACK_OFF`` or ``NO_OPINION``), free ``held``."""

    def before_local_retry(self, held: HeldT) -> Held | None:
        """Free ``held`` before a ``decisions.RetryLocally``, or return it to keep it."""

    def nothing_left(self, src: str) -> tuple[str, bool]:
        """Why no host did the job, and whether that is normal (say it quietly)."""
