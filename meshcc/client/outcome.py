"""Tell the local daemon how this compile ended (``meshcc stats``): one datagram, no wait.

The compile client runs thousands of times per build, so reporting must cost next to
nothing and can never delay or fail a compile: one non-blocking ``sendto`` on a Unix
datagram socket (:mod:`meshcc.wire.outcome`), errors ignored. With no daemon socket on
disk it is a ``stat`` per candidate path and nothing else (``_socket`` is not even
imported); on the lease path ``_socket`` is already loaded. A full socket queue drops the
record (the count is a statistic, never a reason to block a build).

Where each outcome comes from (the wrapper calls these at its exit points):

- ``local``: :func:`meshcc.compiler.args.analyse`'s reason (``Job.reason``), or the host
  list choosing ``localhost``;
- ``refused`` / ``fallback``: the last host failure (:func:`failed_on`, the text of
  :class:`meshcc.client.decisions.TryNextHost`), else what the daemon said (a lease pool's
  ``local_reason`` / ``daemon_failure``), else the :class:`~.decisions.CompileLocally`
  message with the source name taken out (so reasons group across files);
- ``share``: the daemon gave this box's own share (the scheduler's choice, or every matching
  peer busy: its reason says which);
- ``remote`` / ``cpp_error``: the host that ran (or was about to run) the job.

Set ``MESHCC_STATS=0`` to send nothing.
"""

from __future__ import annotations

from meshcc import posixenv as os  # os without its import cost (see there)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping, Sequence

    from meshcc.client.decisions import CompileLocally, Fail

ROOT_SOCKET = "/run/meshcc/control.sock"  # == meshcc.wire.control.ROOT_SOCKET (tested)
# == meshcc.wire.outcome.SUFFIX (tested): that codec is imported only when a daemon's
# socket is there to send to (~0.5 M instructions saved on every compile without one).
STATS_SUFFIX = ".stats"

_last_failure: tuple[str, str] | None = None  # (host, why): one compile per process


def _plain_host(host: str) -> bool:
    """A host name the codec would send unchanged: printable ASCII (no tab, newline, NUL),
    at most MAX_HOST (128) bytes."""
    return len(host) <= 128 and host.isascii() and host.isprintable()


def control_paths(env: Mapping[str, str]) -> list[str]:
    """The control sockets a client tries, as :func:`meshcc.wire.control.client_socket_paths`
    (a test keeps them equal; importing that module would cost ~1 ms on local-only jobs)."""
    explicit = env.get("MESHCC_SOCKET")
    if explicit:
        return [explicit]
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and runtime.startswith("/"):
        user = f"{runtime.rstrip('/')}/meshcc/control.sock"
    else:
        user = f"/tmp/meshcc-{os.geteuid()}/control.sock"
    return [ROOT_SOCKET] if user == ROOT_SOCKET else [ROOT_SOCKET, user]


def _trusted(path: str, env: Mapping[str, str]) -> bool:
    """A socket there, and (a per-user guess under /tmp) in a private directory of ours:
    anyone could plant a socket in the shared /tmp to read our reports."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_mode & 0o170000 != 0o140000:
        return False
    if env.get("MESHCC_SOCKET") or not path.startswith("/tmp/"):
        return True
    try:
        d = os.lstat(os.path.dirname(path))
    except OSError:
        return False
    return d.st_mode & 0o170000 == 0o040000 and d.st_uid == os.geteuid() and not d.st_mode & 0o022


def report(outcome: str, host: str = "", reason: str = "") -> None:
    """Send one outcome record to the first daemon socket there; never raises or blocks."""
    _send(outcome, host, reason)


def _send(outcome: str | None, host: str, reason: str) -> None:
    """``outcome`` None: a failed attempt (:func:`meshcc.wire.outcome.encode_attempt`)."""
    env = os.environ
    if env.get("MESHCC_STATS") == "0":
        return
    try:
        for control in control_paths(env):
            path = control + STATS_SUFFIX
            if not _trusted(path, env):
                continue
            if outcome == "remote" and not reason and _plain_host(host):
                # The common record, built here: the codec's import is ~0.5 M instructions
                # (== meshcc.wire.outcome.encode("remote", host), tested).
                data = b"O1\tremote\t" + host.encode("ascii") + b"\t"
            else:
                from meshcc.wire.outcome import encode, encode_attempt

                if outcome is None:
                    data = encode_attempt(host, reason)
                else:
                    data = encode(outcome, host, reason)
            import _socket  # loaded already on the lease path; only paid when a daemon is up

            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            try:
                sock.sendto(data, _socket.MSG_DONTWAIT, path)
                return
            except OSError:
                continue
            finally:
                sock.close()
    except Exception:  # noqa: BLE001 - a statistic must never fail a compile
        pass


def without_files(reason: str, argv: Sequence[str]) -> str:
    """``reason`` with the file names of ``argv`` in it replaced by FILE ("x.o is a link
    input" -> "FILE is a link input"), so that counts group by reason, not by file."""
    for a in argv[1:]:
        if len(a) > 2 and a[0] != "-" and ("." in a or "/" in a) and a in reason:
            reason = reason.replace(a, "FILE")
    return reason


def host_name(host: object) -> str:
    """How a host is named in the counts: a lease's address, or a host-list entry's."""
    where = getattr(host, "where", None)
    if isinstance(where, str) and where:
        return where
    name = str(getattr(host, "host", "") or "")
    port = getattr(host, "port", None)
    return f"{name}:{port}" if port else name


def failed_on(host: object, why: str) -> None:
    """A host could not do the job (the wrapper tries the next one, or compiles here):
    remembered for this compile's outcome, and counted against the host at once."""
    global _last_failure
    _last_failure = (host_name(host), why)
    _send(None, *_last_failure)


def busy_on(host: object, why: str) -> None:
    """A full host answered BUSY: remembered for this compile's outcome (``busy`` if it
    ends here), never counted against the host (a full host is not a failing one)."""
    global _last_failure
    _last_failure = (host_name(host), f"busy: {why}")


def compiled_locally(act: CompileLocally | Fail, pool: object, source: str | None) -> None:
    """Report why a distributable job ends here (or, for a Fail, nowhere)."""
    from meshcc.client.decisions import Fail

    failure = _last_failure
    if isinstance(act, Fail):
        outcome, host, why = "failed", "", act.message
        if failure is not None:
            host, why = failure
    elif failure is not None:
        host, why = failure
        outcome = "fallback"
        if why.startswith("refused: "):
            outcome, why = "refused", why[len("refused: ") :]
        elif why.startswith("busy: "):
            outcome, why = "busy", why[len("busy: ") :]
    elif getattr(pool, "local_share", None) is not None:
        outcome, host, why = "share", "", f"meshcc daemon: {getattr(pool, 'local_reason', '')}"
    elif getattr(pool, "daemon_failure", ""):
        outcome, host, why = "fallback", "", str(getattr(pool, "daemon_failure", ""))
    elif getattr(pool, "local_reason", ""):
        outcome, host, why = "fallback", "", f"meshcc daemon: {getattr(pool, 'local_reason', '')}"
    else:
        outcome, host, why = "fallback", "", act.message
    if source:
        why = why.replace(source, "(source)")
    report(outcome, host, why)
