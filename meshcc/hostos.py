"""Facts about this machine that every program asks: usable CPUs and where a command is.

Imported by the compile client, so it uses ``os`` only.
"""

from __future__ import annotations

import os


def cpu_count() -> int:
    """CPUs this process may run on: the affinity mask (taskset, cgroup cpusets), not the
    machine's total, so a confined daemon or build does not over-commit."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_jobs() -> int:
    """distccd's default number of concurrent compiles: usable CPUs + 2."""
    return cpu_count() + 2


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE (an unlimited one counted as 2**20): what connection caps
    are derived from."""
    import resource  # the compile client never asks

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def which(name: str, path: str | None = None, *, skip_real: str | None = None) -> str | None:
    """The first executable ``name`` on ``path`` (default ``$PATH``), as the shell finds it.

    A name with a slash is returned as it is (no lookup, like execvp). ``skip_real``: pass
    over candidates whose real path is this one (a masquerade link finding itself).
    """
    if "/" in name:
        return name
    if path is None:
        path = os.environ.get("PATH", os.defpath)
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if skip_real is not None and os.path.realpath(candidate) == skip_real:
                continue
            return candidate
    return None
