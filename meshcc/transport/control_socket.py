"""The daemon's end of the local control socket: bind it safely, say who is calling.

:func:`open_control_socket` runs *before* the daemon drops root (the directory may be
root-only to create). The socket is mode 0666 so every local user can connect; a per-user
daemon's directory in a shared ``/tmp`` must be a private directory of its own, the same
rule its clients apply before trusting a socket there
(:func:`meshcc.transport.control_client.is_private_dir`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct

from meshcc.transport.control_client import is_private_dir
from meshcc.wire.control_core import NO_CACHE_SUFFIX, guessed_in_shared_tmp


class ControlSocketError(Exception):
    """The control socket cannot be opened; ``str(e)`` says why (one line for the log)."""


def open_control_socket(path: str) -> socket.socket:
    """Bind and listen on ``path`` (creating its directory); replace a stale socket.

    A live daemon already answering on ``path`` is a ControlSocketError: two daemons must
    not fight over one socket (the second keeps serving compiles without one).
    """
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    # Root's daemon serves every local user: 0755. A user's own daemon: 0700.
    mode = 0o755 if os.geteuid() == 0 else 0o700
    try:
        os.makedirs(parent, mode=mode, exist_ok=True)
    except OSError as e:
        raise ControlSocketError(f"cannot create {parent}: {e.strerror or e}") from None
    if os.geteuid() != 0 and guessed_in_shared_tmp(path):
        # A per-user dir in a shared /tmp: must be ours and private, by the very rule our
        # clients apply before trusting a socket there (or someone could interpose one).
        st = os.lstat(parent)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            with contextlib.suppress(OSError):
                os.chmod(parent, 0o700)
        if not is_private_dir(parent):
            raise ControlSocketError(
                f"{parent} is not a private directory owned by uid {os.geteuid()}"
            )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ControlSocketError(f"cannot use {path}: {e.strerror or e}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: its daemon is gone
        else:
            raise ControlSocketError(f"another meshcc daemon is answering on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)  # any local user may ask for status or a lease
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ControlSocketError(f"cannot listen on {path}: {e.strerror or e}") from None
    return sock


def mark_no_cache(path: str, reason: str | None) -> str | None:
    """Say beside the control socket at ``path`` whether this daemon keeps a result cache:
    ``reason`` (why it keeps none) writes the marker its clients check before direct mode's
    lookup; None removes a marker an earlier daemon left. Runs with the socket, before the
    privilege drop. Returns what went wrong, for the log (a client then asks, as before)."""
    marker = path + NO_CACHE_SUFFIX
    try:
        if reason is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
            return None
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(marker, flags, 0o644)
        try:
            os.fchmod(fd, 0o644)  # readable by every client, whatever the umask
            text = (
                f"meshcc daemon (pid {os.getpid()}) keeps no result cache: {reason}.\n"
                "Compile clients skip direct-mode lookups while this file exists.\n"
            )
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        return f"{marker}: {e.strerror or e}"
    return None


def peer_credentials(sock: socket.socket | None) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel
    (SO_PEERCRED: the client cannot lie about it); None if unknown."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def describe_peer(credentials: tuple[int, int] | None) -> str:
    """``pid N uid U`` of a local client, for the log."""
    return "?" if credentials is None else f"pid {credentials[0]} uid {credentials[1]}"
