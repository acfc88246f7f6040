"""What the compile client does after each outcome: distcc's retry, backoff and fallback rules.

Sans-IO, in the manner of h11: no sockets, files, processes, clocks or environment reads.
The wrapper does the I/O, tells a :class:`Plan` what happened (a host failed, the server
refused, cpp failed, the remote compiler exited with a wait status, the local retry
exited with a code, the object could not be written, no host is left) and carries out the
action it gets back:

- :class:`TryNextHost`: tell the pool the host failed (``why``, ``connect_failed``), pick again;
- :class:`TryElsewhere`: the host is full (it answered BUSY), which is not a failure: free it
  with no backoff (``HostPool.busy``) and pick again at once;
- :class:`Deliver`: write the object, show cpp's and the server's diagnostics, then ask
  :meth:`Plan.delivered` (or :meth:`Plan.output_unwritable` if the write failed);
- :class:`RetryLocally`: keep what the pool says to keep, compile locally as a child, then
  ask :meth:`Plan.retried_locally` with its exit code;
- :class:`Finish`: give the pool ``verdict`` on the host, show ``show``, exit with ``code``;
- :class:`CompileLocally`: log ``message`` (a warning or a verbose line), give a held host
  ``verdict``, become the local compiler;
- :class:`Fail`: print ``message`` as an error, exit with distcc's ``code``.

Verdicts on a host are :data:`FORGIVE` (it worked: clear its backoff), :data:`BACK_OFF`
(avoid it for ``DISTCC_BACKOFF_PERIOD``) and :data:`NO_OPINION`; they are the booleans the
pools' ``finish`` has always taken.

The rules are distcc 3.4's (``compile.c:dcc_build_somewhere``) with the differences listed
in :mod:`meshcc.client.wrapper`: a cpp failure is final; a remote compile error is retried
locally and the host backed off only if the local result differs; with backoff disabled at
most :data:`MAX_REMOTE_ATTEMPTS_NO_BACKOFF` remote attempts are made.

Where hosts come from is the wrapper's business: distcc's host list and lock files, or
leases from the local daemon, both a :class:`meshcc.client.hostpool.HostPool`.

Imported only on the distributable path and kept as light as the wrapper: plain classes
with ``__slots__``, no dataclasses or enum.
"""

from __future__ import annotations

from meshcc import posixenv as os  # the pure W* wait-status macros, without importing os
from meshcc.exitcodes import (
    EXIT_CONNECT_FAILED,
    EXIT_DISTCC_FAILED,
    EXIT_IO_ERROR,
    EXIT_NO_HOSTS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping


# == meshcc.transport.client.DEFAULT_IO_TIMEOUT (a test keeps them equal): parsed here, so
# that the wrapper imports the transport (~2.5 ms of imports) only once cpp is running.
DEFAULT_IO_TIMEOUT = 300.0
MAX_REMOTE_ATTEMPTS_NO_BACKOFF = 3  # distcc master's cap when backoff is disabled (#438)
# BUSY answers taken for one job before it stops asking (the mesh stayed full all along:
# every answer came at once, and the daemon made us wait between them if all were busy).
MAX_BUSY_ANSWERS = 24

# Verdicts on a host, as the pools' finish() takes them.
FORGIVE = True  # it compiled the job: clear its backoff
BACK_OFF = False  # it crashed or disagreed with the local compiler: avoid it for a while
NO_OPINION = None  # the outcome says nothing about the host

# What Finish shows on our stderr/stdout.
SHOW_NOTHING = 0  # somebody else already did (the local compiler), or nothing to show
SHOW_CPP = 1  # the local preprocessor's stderr
SHOW_ALL = 2  # cpp's stderr, then the server's stderr and stdout


# --------------------------------------------------------------------------- settings


class Settings:
    """The environment settings the decisions depend on."""

    __slots__ = ("fallback", "skip_local_retry")

    def __init__(self, fallback: bool = True, skip_local_retry: bool = False) -> None:
        self.fallback = fallback  # DISTCC_FALLBACK is not "0": compile locally when stuck
        self.skip_local_retry = skip_local_retry  # DISTCC_SKIP_LOCAL_RETRY is set (any value)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            fallback=environ.get("DISTCC_FALLBACK", "1") != "0",
            skip_local_retry="DISTCC_SKIP_LOCAL_RETRY" in environ,
        )

    def __repr__(self) -> str:
        return f"Settings(fallback={self.fallback}, skip_local_retry={self.skip_local_retry})"


def parse_io_timeout(value: str | None) -> float:
    """``DISTCC_IO_TIMEOUT`` in seconds; ValueError (a user-facing message) if not > 0."""
    if value is None or value == "":
        return DEFAULT_IO_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"DISTCC_IO_TIMEOUT={value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):  # also false for NaN
        raise ValueError(f"DISTCC_IO_TIMEOUT={value!r} must be a positive number of seconds")
    return seconds


# --------------------------------------------------------------------------- actions


class TryNextHost:
    """The host failed us: report it to the pool (``HostPool.failed_on``), ask for another."""

    __slots__ = ("connect_failed", "why")

    def __init__(self, why: str, connect_failed: bool) -> None:
        self.why = why
        self.connect_failed = connect_failed

    def __repr__(self) -> str:
        return f"TryNextHost({self.why!r}, connect_failed={self.connect_failed})"


class TryElsewhere:
    """The host is full (BUSY): free it without backoff (``HostPool.busy``), pick again."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"TryElsewhere({self.why!r})"


class Deliver:
    """The remote compile worked: write the object atomically, show the diagnostics."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Deliver()"


class RetryLocally:
    """The remote compiler failed: compile locally as a child so the results can be
    compared (the user sees only the local run's diagnostics)."""

    __slots__ = ("remote_code",)

    def __init__(self, remote_code: int) -> None:
        self.remote_code = remote_code

    def __repr__(self) -> str:
        return f"RetryLocally(remote_code={self.remote_code})"


class Finish:
    """The job is over: give the pool ``verdict``, show ``show``, exit with ``code``.
    ``note`` (may be empty) says why the host is being backed off."""

    __slots__ = ("code", "note", "show", "verdict")

    def __init__(self, code: int, verdict: bool | None, show: int, note: str = "") -> None:
        self.code = code
        self.verdict = verdict
        self.show = show
        self.note = note

    def __repr__(self) -> str:
        return f"Finish({self.code}, verdict={self.verdict}, show={self.show}, note={self.note!r})"


class CompileLocally:
    """Become the local compiler. ``message`` (may be empty) is a warning if ``warn`` else a
    verbose-only line; a held host gets ``verdict`` first."""

    __slots__ = ("message", "verdict", "warn")

    def __init__(self, message: str, warn: bool, verdict: bool | None = NO_OPINION) -> None:
        self.message = message
        self.warn = warn
        self.verdict = verdict

    def __repr__(self) -> str:
        return f"CompileLocally({self.message!r}, warn={self.warn})"


class Fail:
    """Print ``message`` as an error and exit with distcc's ``code``; nothing runs locally."""

    __slots__ = ("code", "message")

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"Fail({self.code}, {self.message!r})"


# --------------------------------------------------------------------------- the plan


class Plan:
    """The decisions for one distributable compile of ``source``, one outcome at a time.

    State: the settings, and the remote wait status once a reply came (the local retry is
    judged against it).
    """

    __slots__ = ("busy_answers", "remote_status", "settings", "source")

    def __init__(self, settings: Settings, source: str) -> None:
        self.settings = settings
        self.source = source
        self.remote_status: int | None = None
        self.busy_answers = 0

    # ---------------------------------------------------------- before any host

    def _cannot_distribute(self, why: str) -> CompileLocally | Fail:
        # With fallback off, distcc 3.4 exits 116 (no hosts) whatever kept the job here:
        # an empty or unparsable host list, an unusable $DISTCC_DIR. Scripts test for it.
        if not self.settings.fallback:
            return Fail(
                EXIT_NO_HOSTS, f"{why}; not compiling {self.source} locally (DISTCC_FALLBACK=0)"
            )
        return CompileLocally(f"{why}; compiling {self.source} locally", warn=True)

    def distcc_dir_unusable(self, why: str) -> CompileLocally | Fail:
        """$DISTCC_DIR or its lock directory cannot be used (so no slot lock either)."""
        return self._cannot_distribute(why)

    def bad_host_list(self, why: str) -> CompileLocally | Fail:
        """The distcc host list does not parse (``why`` is its first line)."""
        return self._cannot_distribute(why)

    def no_host_left(self, why: str, quiet: bool) -> CompileLocally | Fail:
        """The pool has no (more) host for us; ``why`` and ``quiet`` come from the pool."""
        if not self.settings.fallback:
            return Fail(EXIT_NO_HOSTS, f"{why}; not compiling locally (DISTCC_FALLBACK=0)")
        if quiet:
            return CompileLocally(f"{why}; compiling locally", warn=False)
        return CompileLocally(f"{why}, compiling locally", warn=True)

    # ---------------------------------------------------------- on a host

    def transport_failed(self, why: str, exit_code: int) -> TryNextHost:
        """Connect, protocol or I/O failure (``exit_code``: distcc's, e.g. 103 for connect)."""
        return TryNextHost(why, connect_failed=exit_code == EXIT_CONNECT_FAILED)

    def refused(self, reason: str) -> TryNextHost:
        """The server said why it will not take the job (meshcc's ERRM)."""
        return TryNextHost(f"refused: {reason}", connect_failed=False)

    def busy(self, host: str, running: int) -> TryElsewhere | CompileLocally:
        """``host`` answered BUSY (all its job slots taken, ``running`` jobs): not a failure,
        so no backoff and no remote attempt used up; try elsewhere at once. After
        MAX_BUSY_ANSWERS the mesh has stayed full all along: compile here (in a local slot),
        unless that is not allowed (DISTCC_FALLBACK=0): then keep asking, as distcc waits
        for a slot; the host pool runs out of hosts, or the daemon makes us wait between
        answers."""
        self.busy_answers += 1
        why = f"{host} is busy ({running} jobs running)"
        if self.busy_answers < MAX_BUSY_ANSWERS or not self.settings.fallback:
            return TryElsewhere(why)
        return CompileLocally(
            f"{why}, the {self.busy_answers}th busy answer for {self.source}; compiling locally",
            warn=False,
        )

    def cpp_failed(self, code: int) -> Finish:
        """The local preprocessor failed: final (the local compile would fail the same way)."""
        return Finish(code, NO_OPINION, SHOW_CPP)

    def source_unreadable(self) -> CompileLocally:
        """The preprocessed source cannot be read back: the compiler will explain, locally."""
        return CompileLocally("", warn=False)

    def empty_object(self) -> TryNextHost:
        """The server said the compile worked but sent no object: a broken or hostile
        server (gcc never writes an empty object); never write a 0-byte output for it."""
        return TryNextHost(
            "the server reported success but sent an empty object file", connect_failed=False
        )

    def replied(self, wait_status: int) -> Deliver | Finish | RetryLocally:
        """The remote compiler ran and exited with ``wait_status`` (distcc's STAT)."""
        self.remote_status = wait_status
        if wait_status == 0:
            return Deliver()
        code = exit_code(wait_status)
        signalled = os.WIFSIGNALED(wait_status)  # a crashing remote compiler is suspect
        skip_retry = self.settings.skip_local_retry and not signalled
        if skip_retry or not self.settings.fallback:
            return Finish(code, BACK_OFF if signalled else NO_OPINION, SHOW_ALL)
        return RetryLocally(code)

    def delivered(self) -> Finish:
        """The object is written and the diagnostics shown."""
        return Finish(0, FORGIVE, SHOW_NOTHING)

    def output_unwritable(self, path: str, why: str) -> CompileLocally | Fail:
        """Writing the remote object to ``path`` failed (``why``: the OS error)."""
        if not self.settings.fallback:
            return Fail(EXIT_IO_ERROR, f"cannot write {path}: {why}")
        return CompileLocally(f"cannot write {path}: {why}; compiling locally", warn=True)

    def retried_locally(self, local_code: int) -> Finish:
        """The local retry after a :class:`RetryLocally` exited with ``local_code``.

        The same result locally means the source was at fault and the host is innocent; a
        different one means the host disagreed with the local compiler (distcc's "dislike").
        A remote compiler killed by a signal is suspect whatever happens locally.
        """
        status = self.remote_status
        assert status is not None, "retried_locally() before replied()"
        remote_code = exit_code(status)
        if os.WIFSIGNALED(status):
            return Finish(local_code, BACK_OFF, SHOW_NOTHING)
        if local_code != remote_code:
            note = f"local compile exited {local_code}, remote {remote_code}"
            return Finish(local_code, BACK_OFF, SHOW_NOTHING, note)
        return Finish(local_code, NO_OPINION, SHOW_NOTHING)


# --------------------------------------------------------------------------- host choice


def may_try_host(attempts: int, backoff_period: int) -> bool:
    """Whether a host-list pool may start remote attempt number ``attempts + 1``.

    A failed host is excluded for the rest of the job only while backoff is on; with
    ``DISTCC_BACKOFF_PERIOD=0`` distcc 3.4 retries the same dead host forever, distcc
    master stops after 3 attempts (#438), and so do we.
    """
    return backoff_period > 0 or attempts < MAX_REMOTE_ATTEMPTS_NO_BACKOFF


def backs_off(backoff_period: int) -> bool:
    """Whether a failed host is backed off (and skipped for the rest of the job)."""
    return backoff_period > 0


def host_list_exhausted(src: str, last_failure: str, had_hosts: bool) -> tuple[str, bool]:
    """Why a host-list pool has nothing left for ``src`` (never quiet: a user-made list)."""
    if last_failure:
        return f"failed to distribute {src} to {last_failure}", False
    if had_hosts:
        return f"no usable host for {src} (all down or backed off)", False
    return f"no hosts to distribute {src} to", False


def leases_exhausted(
    src: str, last_failure: str, daemon_failure: str, local_reason: str
) -> tuple[str, bool]:
    """Why the daemon's leases gave us nothing for ``src``. "No matching live peer" is the
    daemon's normal answer on a lone box, so that one is quiet (verbose only)."""
    if last_failure:
        return f"failed to distribute {src} to {last_failure}", False
    if daemon_failure:
        return f"{daemon_failure}; not distributing {src}", False
    return f"meshcc daemon: {local_reason} (for {src})", True


def wire_version(protocol: int, lzo_available: Callable[[], bool]) -> tuple[int, bool]:
    """The distcc protocol to speak to a host specified with ``protocol`` (1, 2 ``,lzo`` or 3
    ``,cpp,lzo``), and whether that is 1 only for want of an LZO codec.

    ``,cpp`` hosts get plain protocol 2 (no pump mode here). Without an LZO codec
    (meshcc.pyz has no lzallright) the same job goes uncompressed, which every distccd
    serves; ``lzo_available`` is asked only when it matters (it imports the codec).
    """
    version = min(protocol or 1, 2)
    if version == 2 and not lzo_available():
        return 1, True
    return version, False


def exit_code(wait_status: int) -> int:
    """Shell convention for a wait status: the exit code, or 128 + signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return EXIT_DISTCC_FAILED
