"""``meshcc daemon --ccache``: remote jobs run through ccache, in a cache the daemon owns.

What distcc's guide does by hand (a masquerade directory on distccd's PATH, CCACHE_DIR,
the cache tree's ownership), in one flag:

- jobs run ``ccache /abs/real/gcc ARGS``, so the compiler that runs and the one the mesh
  fingerprinted is the probed one (a masquerade directory would make it ccache);
- the cache directory is created mode 0700 for the user the compilers run as (as root:
  before the privilege drop, then owned by that user), and refused if another user owns it
  or others may write it: every object in it goes to clients unchecked;
- ``ccache.conf`` in that directory is written at every start and is the only config file
  the jobs read (``CCACHE_CONFIGPATH``), so the system's /etc/ccache.conf cannot change
  what remote jobs do. It sets the size and ``hash_dir = false``: a job's working directory
  is a fresh random temp dir, and with ``-g`` the directory recorded in the object comes
  from the client's preprocessed source (its ``# 1 "/client/cwd//"`` line), which ccache
  hashes, so the server's directory only ever prevented hits;
- hits and misses are counted per job from ccache's own per-job stats file (stats_log,
  ccache 4.4+), exact when jobs run concurrently.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess

from meshcc import hostos
from meshcc.compiler.toolchain import Skipped
from meshcc.daemon.settings import DaemonOptions
from meshcc.exitcodes import EXIT_BAD_ARGUMENTS, EXIT_COMPILER_MISSING, EXIT_DISTCC_FAILED
from meshcc.loglevels import NOTICE
from meshcc.transport.server import CcacheRun

__all__ = ["DEFAULT_SIZE", "CcacheError", "CcacheSetup", "default_dir", "discovery_hint"]

DEFAULT_SIZE = "5G"  # ccache's own default
MIN_VERSION = (4, 4)  # stats_log, the per-job hit/miss record
_VERSION = re.compile(r"ccache version (\d+)\.(\d+)(?:\.(\d+))?")
_CONF = "ccache.conf"

log = logging.getLogger("meshcc.daemon")


class CcacheError(Exception):
    """--ccache cannot work; str(e) is one line for the user, ``code`` the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def default_dir(euid: int | None = None) -> str:
    """Where the cache lives unless --ccache-dir says: systemd's CacheDirectory= (it sets
    $CACHE_DIRECTORY), /var/cache/meshcc as root, else the user's XDG cache dir."""
    systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd and os.path.isabs(systemd):
        return os.path.join(systemd, "ccache")
    if (os.geteuid() if euid is None else euid) == 0:
        return "/var/cache/meshcc/ccache"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "meshcc", "ccache")


def discovery_hint(skipped: tuple[Skipped, ...], enabled: bool) -> str | None:
    """A line for the log when discovery skipped ccache's masquerade links on PATH."""
    if enabled:
        return None
    dirs = sorted({os.path.dirname(s.path) for s in skipped if "--ccache" in s.reason})
    if not dirs:
        return None
    return (
        f"skipped ccache's masquerade links in {', '.join(dirs)} (the daemon offers real "
        "compilers only); `meshcc daemon --ccache` runs remote jobs through ccache"
    )


class CcacheSetup:
    """--ccache's settings, checked in two steps around the privilege drop."""

    def __init__(self, opts: DaemonOptions) -> None:
        if opts.ccache is None:
            given = "--ccache-dir" if opts.ccache_dir else "--ccache-size"
            raise CcacheError(f"{given} needs --ccache", EXIT_BAD_ARGUMENTS)
        self.program = opts.ccache
        self.size = opts.ccache_size or DEFAULT_SIZE
        # Decided now, as the user that started us: after the drop $HOME may be another's.
        self.dir = os.path.abspath(opts.ccache_dir or default_dir())

    def claim(self, uid: int, gid: int) -> None:
        """As root, before switching to ``uid``: create the cache dir for that user (its
        parents stay root's). An existing dir is left as it is; :meth:`ready` checks it."""
        try:
            os.makedirs(os.path.dirname(self.dir), mode=0o755, exist_ok=True)
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            return
        except OSError as e:
            raise CcacheError(
                f"--ccache: cannot create the cache directory {self.dir}: {e.strerror or e}",
                EXIT_DISTCC_FAILED,
            ) from None
        try:
            os.chown(self.dir, uid, gid)
        except OSError as e:
            raise CcacheError(
                f"--ccache: cannot give the cache directory {self.dir} to uid {uid}: "
                f"{e.strerror or e}",
                EXIT_DISTCC_FAILED,
            ) from None

    def ready(self) -> CcacheRun:
        """As the user compilers run as: find ccache, check the cache dir, write its
        config; what the compile server needs. CcacheError says what to fix."""
        path = self._find()
        version = self._version(path)
        self._own_dir()
        conf = os.path.join(self.dir, _CONF)
        text = (
            "# Written by `meshcc daemon --ccache` at every start (edits are lost): the\n"
            "# daemon's jobs read only this file. Size: --ccache-size.\n"
            f"max_size = {self.size}\n"
            "# Each job runs in a new random directory; -g objects take the client's\n"
            "# directory from the preprocessed source, which is hashed.\n"
            "hash_dir = false\n"
        )
        try:
            tmp = conf + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, conf)
        except OSError as e:
            raise CcacheError(
                f"--ccache: cannot write {conf}: {e.strerror or e}", EXIT_DISTCC_FAILED
            ) from None
        describe = f"ccache {version} at {path}, cache {self.dir}, max size {self.size}"
        log.log(NOTICE, "remote jobs run through %s", describe)
        return CcacheRun(path, (("CCACHE_DIR", self.dir), ("CCACHE_CONFIGPATH", conf)), describe)

    def _find(self) -> str:
        found = self.program if os.sep in self.program else hostos.which(self.program)
        if found is None:
            raise CcacheError(
                f"--ccache: no {self.program} on PATH ({os.environ.get('PATH', '')}); "
                "install ccache or give its path: --ccache /usr/bin/ccache",
                EXIT_COMPILER_MISSING,
            )
        # A masquerade link (/usr/lib/ccache/gcc) is ccache too, but invoked by that name it
        # would act as gcc: run the file itself.
        real = os.path.realpath(found)
        if not (os.path.isfile(real) and os.access(real, os.X_OK)):
            raise CcacheError(
                f"--ccache {self.program}: {found} is not an executable file",
                EXIT_COMPILER_MISSING,
            )
        return real

    def _version(self, path: str) -> str:
        try:
            out = subprocess.run(
                [path, "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=15,
                check=False,
            ).stdout.decode("utf-8", "replace")
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CcacheError(
                f"--ccache: cannot run {path} --version: {e}", EXIT_COMPILER_MISSING
            ) from None
        m = _VERSION.search(out.splitlines()[0] if out else "")
        if m is None:
            raise CcacheError(
                f"--ccache {self.program}: {path} is not ccache (`--version` printed "
                f"{(out.splitlines() or [''])[0]!r})",
                EXIT_COMPILER_MISSING,
            )
        found = (int(m[1]), int(m[2]))
        version = ".".join(g for g in m.groups() if g is not None)
        if found < MIN_VERSION:
            raise CcacheError(
                f"--ccache: {path} is ccache {version}; meshcc needs ccache "
                f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or newer (per-job statistics, stats_log)",
                EXIT_COMPILER_MISSING,
            )
        return version

    def _own_dir(self) -> None:
        """Create the dir (0700) if missing; refuse one another user owns or others may
        write: a planted object there would go to every client. Those refusals exit 101
        (bad options), which the systemd unit does not restart: only the admin fixes them."""
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            st = os.stat(self.dir)
        except OSError as e:
            raise CcacheError(
                f"--ccache: cannot create the cache directory {self.dir} as uid "
                f"{os.geteuid()}: {e.strerror or e}; create it for that user "
                f"(install -d -m 0700 -o USER {self.dir}) or choose --ccache-dir",
                EXIT_DISTCC_FAILED,
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise CcacheError(f"--ccache-dir {self.dir} is not a directory", EXIT_BAD_ARGUMENTS)
        if st.st_uid != os.geteuid():
            raise CcacheError(
                f"--ccache: the cache directory {self.dir} belongs to uid {st.st_uid}, not to "
                f"uid {os.geteuid()} that runs the compilers; chown -R it to that user or "
                "choose another --ccache-dir",
                EXIT_BAD_ARGUMENTS,
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise CcacheError(
                f"--ccache: others may write the cache directory {self.dir} (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), so anyone could plant objects that go to "
                f"every client; chmod 0700 {self.dir}",
                EXIT_BAD_ARGUMENTS,
            )
