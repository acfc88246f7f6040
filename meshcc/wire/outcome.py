"""Sans-IO codec of the outcome channel: compile clients tell the local daemon how each
compile ended, and ``meshcc stats`` asks for the totals.

Transport: a Unix datagram socket beside the daemon's control socket
(:func:`report_socket_path`: ``<control socket>.stats``, mode 0666). One datagram is one
message; this module does no I/O. Datagrams, not the control socket's stream: a client
reports with one non-blocking ``sendto`` and never waits, and the kernel stamps every
datagram with the sender's uid (``SO_PASSCRED``), so the daemon can bound each local user.

Messages (UTF-8, at most :data:`MAX_DATAGRAM` bytes; anything else is dropped and counted):

- ``O1<TAB>outcome<TAB>host<TAB>reason``: one compile's outcome (client -> daemon, no
  reply). ``outcome`` is one of :data:`OUTCOMES`; ``host`` the peer that did or failed the
  job (may be empty); ``reason`` why it ended so (may be empty). Tabs and line breaks in a
  field become spaces; fields are cut to :data:`MAX_HOST` / :data:`MAX_REASON` bytes.
- ``F1<TAB>host<TAB>reason``: one failed attempt on a host (refused, connect failed, lost
  connection...), sent as it happens: the compile may still succeed on another host, so
  this counts per-host failures, not compiles. ``reason`` starts with ``refused: `` for a
  server's refusal. Decoded as ``(ATTEMPT, host, reason)``.
- ``Q1``: the totals, please (``meshcc stats``; the reply is JSON, see
  :mod:`meshcc.daemon.outcomes`), sent from a bound (auto-bound) socket to get the answer.
- ``R1``: reset the totals (root or the daemon's own user only); the reply is JSON.

Outcomes (one per compile, the last thing that decided where it ran):

- ``remote``: a peer compiled it (its exit status, even a compile error, is the answer)
- ``local``: not distributable by its nature (``-E``, linking, ``-fplugin=``...): reason
  from :func:`meshcc.compiler.args.analyse`
- ``fallback``: distributable, but compiled here: no host, a host failed, the daemon said so
- ``refused``: a peer refused the job (its reason), so it was compiled here
- ``share``: the daemon gave this box's own share: the scheduler found it the best place
  (this box counts as a peer), or every matching peer was busy; its reason says which
- ``busy``: a full peer answered BUSY and nothing else could take it, so it was compiled here
- ``failed``: not compiled anywhere (``DISTCC_FALLBACK=0`` and no host did it)
- ``cpp_error``: the local preprocessor failed (an error in the code, reported as is)
"""

from __future__ import annotations

__all__ = [
    "ATTEMPT",
    "MAX_DATAGRAM",
    "MAX_HOST",
    "MAX_REASON",
    "OUTCOMES",
    "QUERY",
    "RESET",
    "OutcomeError",
    "decode",
    "encode",
    "encode_attempt",
    "report_socket_path",
]

MAX_DATAGRAM = 1024  # a record is a short line; the daemon reads no more
MAX_HOST = 128
MAX_REASON = 400
QUERY = b"Q1"
RESET = b"R1"
SUFFIX = ".stats"

ATTEMPT = "attempt"  # decode()'s first field for an F1 record (not an outcome)
OUTCOMES = ("remote", "share", "local", "fallback", "refused", "busy", "failed", "cpp_error")
_OUTCOME_SET = frozenset(OUTCOMES)
_TRANS = str.maketrans({"\t": " ", "\n": " ", "\r": " ", "\0": " "})


class OutcomeError(ValueError):
    """A datagram that is not a valid message; ``str(e)`` is the drop reason's label."""


def report_socket_path(control_path: str) -> str:
    """The outcome socket of the daemon whose control socket is ``control_path``."""
    return control_path + SUFFIX


def _field(text: str, limit: int) -> bytes:
    data = text.translate(_TRANS).encode("utf-8", "replace")
    if len(data) > limit:
        data = data[:limit].decode("utf-8", "ignore").encode()
    return data


def encode(outcome: str, host: str = "", reason: str = "") -> bytes:
    """One outcome record (``outcome`` must be one of :data:`OUTCOMES`)."""
    if outcome not in _OUTCOME_SET:
        raise ValueError(f"unknown outcome {outcome!r}")
    return (
        b"O1\t"
        + outcome.encode()
        + b"\t"
        + _field(host, MAX_HOST)
        + b"\t"
        + _field(reason, MAX_REASON)
    )


def encode_attempt(host: str, reason: str) -> bytes:
    """One failed attempt on ``host``."""
    return b"F1\t" + _field(host, MAX_HOST) + b"\t" + _field(reason, MAX_REASON)


def decode(data: bytes) -> tuple[str, str, str] | bytes:
    """(outcome, host, reason) of a record, (:data:`ATTEMPT`, host, reason) of a failed
    attempt, or :data:`QUERY` / :data:`RESET`.

    OutcomeError (with a short label: ``oversized``, ``malformed``, ``unknown-outcome``)
    for anything else: the daemon counts drops by that label."""
    if len(data) > MAX_DATAGRAM:
        raise OutcomeError("oversized")
    if data in (QUERY, RESET):
        return data
    parts = data.split(b"\t")
    if len(parts) == 3 and parts[0] == b"F1":
        parts.insert(1, ATTEMPT.encode())
    elif len(parts) != 4 or parts[0] != b"O1":
        raise OutcomeError("malformed")
    try:
        outcome, host, reason = (p.decode("utf-8") for p in parts[1:])
    except UnicodeDecodeError:
        raise OutcomeError("malformed") from None
    if outcome not in _OUTCOME_SET and (outcome != ATTEMPT or parts[0] != b"F1"):
        raise OutcomeError("unknown-outcome")
    if len(parts[2]) > MAX_HOST or len(parts[3]) > MAX_REASON:
        raise OutcomeError("oversized")
    return outcome, host, reason
