"""Discover and probe the compilers a daemon offers; map request names to them.

The daemon runs only compilers it found and probed at start-up: a request's
``argv[0]`` is resolved here to an absolute path (or refused with a reason that
lists what is offered). Probing records the fingerprint the mesh matches on:
gcc full version, target triplet and the binutils version of the assembler that
compiler really uses. Stdlib only; probes run in parallel threads because
daemon start-up time matters.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from meshcc import hostos

__all__ = [
    "CompilerRefused",
    "Driver",
    "Probe",
    "Resolved",
    "Skipped",
    "Toolchain",
    "ToolchainError",
    "ToolchainRegistry",
    "find_compilers",
    "is_compiler_name",
    "masquerade_reason",
    "probe",
]

PROBE_TIMEOUT = 15.0
"""Seconds one probe command may take (a cold cache on a slow disk is slow)."""

# gcc, g++, gcc-12, g++-12.2, x86_64-linux-gnu-gcc, aarch64-linux-gnu-g++-13 ...
# The triplet needs at least two dash-separated parts, so "c89-gcc" is not one.
_GCC_NAME = re.compile(
    r"(?:(?P<triplet>[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+){1,4})-)?"
    r"(?P<driver>gcc|g\+\+)(?:-(?P<ver>[0-9]+(?:\.[0-9]+)*))?"
)
_PLAIN_NAMES = frozenset({"cc", "c++", "c89-gcc", "c99-gcc"})
# Wrappers that would run the compile through themselves (and so recurse).
_WRAPPER_NAMES = frozenset({"distcc", "ccache", "sccache", "icecc", "buildcache"})
_MASQ_DIR_PARTS = frozenset({"distcc", "ccache", "sccache", "icecc", "buildcache"})
_CACHE_WRAPPERS = frozenset({"ccache", "sccache", "buildcache"})  # run the real compiler
_VERSION_IN_TEXT = re.compile(r"\d+\.\d+(?:\.\d+)*")  # "2.40" in `as --version`
_GCC_VERSION = re.compile(r"\d+(?:\.\d+)*")  # gcc 7+ -dumpversion may print just "12"


class ToolchainError(Exception):
    """A compiler could not be probed (not a working gcc); str(e) is for the user."""


class CompilerRefused(Exception):
    """A requested compiler is not offered; ``reason`` says why and what is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Driver(enum.Enum):
    """Which language driver a compiler is: decides nothing on the wire, informs users."""

    GCC = "gcc"
    GXX = "g++"
    CC = "cc"  # not recognisably named (a --compiler wrapper script, say)


@dataclass(frozen=True, slots=True)
class Probe:
    """What a compiler says about itself."""

    version: str  # -dumpfullversion (or -dumpversion)
    target: str  # -dumpmachine
    binutils: str | None  # `as --version` of the assembler it uses; None if unknown
    assembler: str | None  # that assembler's path


@dataclass(frozen=True, slots=True)
class Toolchain:
    """One probed compiler binary and every name/path under which it is offered."""

    path: str  # absolute path as first found (what the daemon runs by default)
    realpath: str  # symlinks resolved: the identity used to group names
    names: tuple[str, ...]  # bare request names mapping here (gcc, cc, gcc-12, ...)
    version: str
    target: str
    binutils: str | None
    driver: Driver
    paths: tuple[str, ...] = ()  # every absolute path found that resolves here
    assembler: str | None = None

    @property
    def fingerprint(self) -> tuple[str, str, str | None]:
        """(version, target, binutils): what must match exactly between peers."""
        return (self.version, self.target, self.binutils)

    def describe(self) -> str:
        """One line for logs and `meshcc doctor`."""
        binutils = self.binutils or "unknown"
        return (
            f"{self.path} (gcc {self.version}, target {self.target}, binutils {binutils}; "
            f"names: {', '.join(self.names)})"
        )


@dataclass(frozen=True, slots=True)
class Skipped:
    """A compiler-looking PATH entry that is not offered, and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resolved:
    """A request's compiler mapped to what the daemon will run."""

    toolchain: Toolchain
    exec_path: str  # absolute path to execute (argv[0] of the job)
    requested: str  # argv[0] as the client sent it


# ---------------------------------------------------------------- discovery


def is_compiler_name(name: str) -> bool:
    """True for the gcc-family names the daemon offers (never gcc-ar/-nm/-ranlib)."""
    if name in _PLAIN_NAMES:
        return True
    m = _GCC_NAME.fullmatch(name)
    if m is None:
        return False
    triplet = m.group("triplet")
    # A "triplet" that itself names a gcc tool is not a triplet (gcc-ar-gcc...).
    return triplet is None or not any(p in ("gcc", "g++") for p in triplet.split("-"))


def _is_meshcc_script(path: str) -> bool:
    """A console script (or symlink to one) generated for meshcc."""
    if os.path.basename(path).startswith("meshcc"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return False
    return head.startswith(b"#!") and b"meshcc" in head


def masquerade_reason(path: str) -> str | None:
    """Why ``path`` is a wrapper, not a compiler the daemon can offer (None if it is one).

    Distributing wrappers (distcc, icecc) would send the job on again. Compiler caches
    (ccache, sccache, buildcache) find the real compiler themselves and do not recurse; the
    daemon must not offer them because it would probe and announce the cache's identity,
    not the compiler's (``meshcc daemon --ccache`` runs the real compiler through ccache).
    """
    real = os.path.realpath(path)
    base = os.path.basename(real)
    if base == "ccache":
        return (
            f"it is ccache's masquerade link (to {real}), not a compiler: the daemon would "
            "run and fingerprint ccache instead of the gcc behind it; offer the real compiler "
            "and add --ccache to cache remote jobs with ccache"
        )
    if base in _CACHE_WRAPPERS:
        return (
            f"it is the {base} compiler cache ({real}), not a compiler: the daemon would run "
            f"and fingerprint {base} instead of the gcc behind it; offer the real compiler"
        )
    if base in _WRAPPER_NAMES:
        return f"it is the {base} wrapper ({real}), running it would recurse"
    parts = set(os.path.dirname(os.path.abspath(path)).split(os.sep))
    masq = parts & _MASQ_DIR_PARTS
    if "ccache" in masq:
        return (
            f"it is in a ccache masquerade directory ({os.path.dirname(path)}): the daemon "
            "would fingerprint the wrapper, not the gcc behind it; offer the real compiler "
            "and add --ccache to cache remote jobs with ccache"
        )
    if masq:
        return f"it is in a {sorted(masq)[0]} masquerade directory"
    if _is_meshcc_script(real):
        return f"it is a meshcc wrapper script ({real}), running it would recurse"
    return None


def _path_dirs(path_env: str | None) -> list[str]:
    raw = os.environ.get("PATH", os.defpath) if path_env is None else path_env
    seen: set[str] = set()
    dirs = []
    for entry in raw.split(os.pathsep):
        if not entry or not os.path.isabs(entry):  # "" and relative entries mean the cwd: never
            continue
        d = os.path.normpath(entry)
        if d not in seen:
            seen.add(d)
            dirs.append(d)
    return dirs


def find_compilers(path_env: str | None = None) -> tuple[list[tuple[str, str]], list[Skipped]]:
    """gcc-family executables on PATH as (name, absolute path), first on PATH wins.

    Masquerade wrappers are skipped (with a reason) and hide nothing: a later
    directory's real compiler of the same name is still found.
    """
    found: dict[str, str] = {}
    skipped: list[Skipped] = []
    for d in _path_dirs(path_env):
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for name in entries:
            if name in found or not is_compiler_name(name):
                continue
            full = os.path.join(d, name)
            if not (os.path.isfile(full) and os.access(full, os.X_OK)):
                continue
            reason = masquerade_reason(full)
            if reason is not None:
                skipped.append(Skipped(full, reason))
                continue
            found[name] = full
    return list(found.items()), skipped


def _real_compiler_hint(wrapper: str, reason: str) -> str:
    """For a ccache masquerade: the command that offers the compiler behind it, cached."""
    if "--ccache" not in reason:
        return ""
    name = os.path.basename(wrapper)
    real = dict(find_compilers()[0]).get(name)
    if real is None:
        return ""
    return f" (e.g. meshcc daemon --ccache --compiler {real})"


# ---------------------------------------------------------------- probing


def _run(argv: Sequence[str], timeout: float) -> str:
    """stdout of a short probe command; ToolchainError with the reason if it fails."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=_probe_env(),
            check=False,  # the return code is checked below, with stderr in the message
        )
    except FileNotFoundError:
        raise ToolchainError(f"{argv[0]}: no such file") from None
    except PermissionError:
        raise ToolchainError(f"{argv[0]}: not executable") from None
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"`{' '.join(argv)}` took longer than {timeout:g}s") from None
    except OSError as e:
        raise ToolchainError(f"{argv[0]}: cannot run: {e.strerror or e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {err[-1]}" if err else ""
        raise ToolchainError(f"`{' '.join(argv)}` failed (exit {proc.returncode}){detail}")
    return proc.stdout.decode("utf-8", "replace").strip()


def _probe_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"  # parseable, untranslated output
    # Tell distcc-like wrappers that might still be on the way not to distribute.
    env["_DISTCC_SAFEGUARD"] = str(_safeguard_level(env) + 1)
    return env


def _safeguard_level(env: dict[str, str]) -> int:
    try:
        return max(0, int(env.get("_DISTCC_SAFEGUARD", "0")))
    except ValueError:
        return 0


def _assembler_of(compiler: str, timeout: float) -> str | None:
    """The assembler the compiler runs: -print-prog-name=as, bare names via PATH, else
    beside the compiler (a client's gcc under a scratch or chroot root, probed by a daemon
    whose PATH has no binutils, e.g. a LiveCD's: its own ``as`` is the one it runs)."""
    try:
        name = _run([compiler, "-print-prog-name=as"], timeout)
    except ToolchainError:
        return None
    if not name:
        return None
    if os.sep in name:
        return os.path.normpath(name) if os.access(name, os.X_OK) else None
    found = hostos.which(name)
    if found is None:
        beside = os.path.join(os.path.dirname(compiler), name)
        if os.path.isabs(beside) and os.path.isfile(beside) and os.access(beside, os.X_OK):
            return beside
    return found


def _binutils_version(assembler: str, timeout: float) -> str | None:
    try:
        out = _run([assembler, "--version"], timeout)
    except ToolchainError:
        return None
    first = out.splitlines()[0] if out else ""
    versions = _VERSION_IN_TEXT.findall(first)
    return versions[-1] if versions else None


def probe(path: str, timeout: float = PROBE_TIMEOUT) -> Probe:
    """Ask a compiler for its version, target and binutils; ToolchainError if it is no gcc."""
    try:
        version = _run([path, "-dumpfullversion"], timeout)
    except ToolchainError:
        version = _run([path, "-dumpversion"], timeout)
    target = _run([path, "-dumpmachine"], timeout)
    if not version or not _GCC_VERSION.fullmatch(version.split()[0]):
        raise ToolchainError(f"{path}: printed version {version!r}, not a gcc version")
    if not target or any(c.isspace() for c in target):
        raise ToolchainError(f"{path}: -dumpmachine printed {target!r}, not a target triplet")
    assembler = _assembler_of(path, timeout)
    binutils = _binutils_version(assembler, timeout) if assembler else None
    return Probe(version.split()[0], target, binutils, assembler)


def driver_for(names: Iterable[str], realpath: str) -> Driver:
    """gcc, g++ or cc, from the names a compiler is invoked as and its real file name."""
    candidates = [os.path.basename(realpath), *names]
    for n in candidates:
        if n == "c++" or "g++" in n or n.endswith("++"):
            return Driver.GXX
    for n in candidates:
        if "gcc" in n:
            return Driver.GCC
    return Driver.CC


# ---------------------------------------------------------------- registry


@dataclass
class _Group:
    path: str  # first found; probed
    names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    name_path: dict[str, str] = field(default_factory=dict)

    def representative(self, realpath: str) -> str:
        """The path logs and announcements show: plain gcc/g++ if found, else the real name."""
        base = os.path.basename(realpath)

        def rank(name: str) -> tuple[int, str]:
            if name in ("gcc", "g++"):
                return (0, name)
            if name == base:
                return (1, name)
            return (3 if name in ("cc", "c++") else 2, name)

        if not self.names:
            return self.path
        return self.name_path[min(self.names, key=rank)]


class ToolchainRegistry:
    """The probed toolchains, and the mapping from a requested argv[0] to one of them."""

    def __init__(
        self,
        toolchains: Sequence[Toolchain],
        name_paths: dict[str, str] | None = None,
        skipped: Sequence[Skipped] = (),
    ) -> None:
        self.toolchains: tuple[Toolchain, ...] = tuple(toolchains)
        self.skipped: tuple[Skipped, ...] = tuple(skipped)
        self._by_name: dict[str, tuple[Toolchain, str]] = {}
        self._by_path: dict[str, Toolchain] = {}
        for tc in self.toolchains:
            for p in tc.paths or (tc.path,):
                self._by_path[p] = tc
            for n in tc.names:
                exec_path = (name_paths or {}).get(n, tc.path)
                self._by_name.setdefault(n, (tc, exec_path))

    # -- construction

    @classmethod
    def discover(
        cls, path_env: str | None = None, *, timeout: float = PROBE_TIMEOUT
    ) -> ToolchainRegistry:
        """The gcc family on PATH; compilers that fail their probe are skipped."""
        found, skipped = find_compilers(path_env)
        return cls._probe_all(found, skipped, timeout=timeout, strict=False)

    @classmethod
    def offered(cls, paths: Sequence[str]) -> ToolchainRegistry:
        """What a daemon offers: exactly ``--compiler``'s paths if any were given (one that
        is unusable raises ToolchainError), else the gcc family found on PATH."""
        return cls.from_paths(paths) if paths else cls.discover()

    @classmethod
    def from_paths(
        cls, paths: Sequence[str], *, timeout: float = PROBE_TIMEOUT
    ) -> ToolchainRegistry:
        """Exactly the given compilers (``--compiler``); ToolchainError if one is unusable."""
        found: list[tuple[str, str]] = []
        for p in paths:
            full = p if os.sep in p else hostos.which(p)
            if full is None:
                raise ToolchainError(f"--compiler {p}: not found on PATH")
            full = os.path.abspath(full)
            if not os.path.isfile(full):
                raise ToolchainError(f"--compiler {p}: no such file")
            if not os.access(full, os.X_OK):
                raise ToolchainError(f"--compiler {p}: not executable")
            reason = masquerade_reason(full)
            if reason is not None:
                raise ToolchainError(f"--compiler {p}: {reason}{_real_compiler_hint(full, reason)}")
            found.append((os.path.basename(full), full))
        return cls._probe_all(found, [], timeout=timeout, strict=True)

    @classmethod
    def _probe_all(
        cls,
        found: Sequence[tuple[str, str]],
        skipped: list[Skipped],
        *,
        timeout: float,
        strict: bool,
    ) -> ToolchainRegistry:
        groups: dict[str, _Group] = {}
        name_paths: dict[str, str] = {}
        for name, full in found:
            real = os.path.realpath(full)
            g = groups.setdefault(real, _Group(full))
            if name not in g.names and name not in name_paths:
                g.names.append(name)
                g.name_path[name] = full
                name_paths[name] = full
            if full not in g.paths:
                g.paths.append(full)
        if not groups:
            return cls([], name_paths, skipped)
        with ThreadPoolExecutor(max_workers=min(16, len(groups))) as pool:
            futures = {real: pool.submit(probe, g.path, timeout) for real, g in groups.items()}
        toolchains = []
        for real, fut in futures.items():
            g = groups[real]
            try:
                pr = fut.result()
            except ToolchainError as e:
                if strict:
                    raise ToolchainError(f"{g.path} is not a working gcc: {e}") from None
                skipped.append(Skipped(g.path, f"probe failed: {e}"))
                for n in g.names:
                    name_paths.pop(n, None)
                continue
            toolchains.append(
                Toolchain(
                    path=g.representative(real),
                    realpath=real,
                    names=tuple(g.names),
                    version=pr.version,
                    target=pr.target,
                    binutils=pr.binutils,
                    driver=driver_for(g.names, real),
                    paths=tuple(g.paths),
                    assembler=pr.assembler,
                )
            )
        return cls(toolchains, name_paths, skipped)

    # -- lookup

    def offered_names(self) -> list[str]:
        """Every bare name a request may use, sorted."""
        return sorted(self._by_name)

    def _refuse(self, requested: str, why: str) -> CompilerRefused:
        offered = ", ".join(self.offered_names()) or "none"
        return CompilerRefused(f"compiler {requested!r} {why}; this server offers: {offered}")

    def resolve(self, requested: str | bytes) -> Resolved:
        """Map a request's argv[0] to what to run; CompilerRefused says why not.

        Bare names map by name. An absolute path is accepted if it is a path the
        daemon probed, or /usr/bin/NAME or /bin/NAME for an offered NAME (what
        distccd accepts for QtCreator). Anything else with a '/' is refused.
        """
        if isinstance(requested, bytes):
            requested = os.fsdecode(requested)
        if not requested or "\0" in requested:
            raise self._refuse(requested, "is not a valid compiler name")
        if "/" not in requested:
            hit = self._by_name.get(requested)
            if hit is None:
                raise self._refuse(requested, "is not offered")
            return Resolved(hit[0], hit[1], requested)
        if not requested.startswith("/"):
            raise self._refuse(requested, "is a relative path; send a bare compiler name")
        tc = self._by_path.get(requested)
        if tc is not None:
            return Resolved(tc, requested, requested)
        for prefix in ("/usr/bin/", "/bin/"):
            if requested.startswith(prefix):
                name = requested[len(prefix) :]
                hit = self._by_name.get(name) if "/" not in name else None
                if hit is not None:
                    return Resolved(hit[0], hit[1], requested)
        raise self._refuse(requested, "is not a compiler this server probed")

    def refusal(self, requested: str | bytes) -> str | None:
        """The reason ``requested`` is refused, or None if it resolves."""
        try:
            self.resolve(requested)
        except CompilerRefused as e:
            return e.reason
        return None

    def __len__(self) -> int:
        return len(self.toolchains)

    def __iter__(self) -> Iterator[Toolchain]:
        return iter(self.toolchains)
