"""``-march=native``, ``-mtune=native`` and ``-mcpu=native``, resolved so the job can leave.

A server must never see ``native``: its own CPU would decide the code. But what gcc's
driver does with ``native`` is pure text: its spec (``%:local_cpu_detect``) replaces the
option with an explicit list (``-march=cooperlake -mmmx ... -mno-avx512er ... --param
l1-cache-size=48 ... -mtune=generic``) and hands that to cc1. The client reads that list
out of ``gcc -### `` once per (compiler, CPU, arch options), caches it, and sends it in
place of ``native``; a server with any CPU then runs cc1 with the same options.

Where the list goes matters. The driver puts the expansion *before* every option the user
typed (it comes from ``cc1_spec``, ``%1`` at the head of ``cc1_options``), so a user's
``-mno-avx512f`` anywhere on the line wins over it. The client therefore inserts the list
right after the compiler name: every -m option of the list then also precedes the user's.
One difference cannot be undone: the driver emits explicit ``--param`` options at the very
end of cc1's line (``%{-param*}``), after -g, -O, -f ..., whereas native's cache params
come first. cc1 does not care about that order, but the options are *recorded* in that
order where gcc records them (the DWARF producer string with -g, ``-frecord-gcc-switches``,
the LTO option section). So a job whose expansion carries ``--param`` and that records its
options stays local, with that reason; everything else gives byte-identical objects.

The assembler gets nothing native-specific from gcc 12 on x86 (``as --64``), so nothing is
lost there. ``-mcpu=native`` on x86 is a deprecated alias of ``-mtune=native`` (the driver
warns and expands it as such); the local preprocessor still runs the user's own command,
so that warning is printed once, as in a local build.

Public API::

    NATIVE: frozenset[str]      the three spellings
    split_line(line) -> list[str]           one ``-###`` command line, gcc's quoting undone
    cc1_argv(text) -> list[str]             the compiler proper's line in ``-###`` output
    expansion(with_native, without) -> list[str]
        what native added, as driver options (``--param=NAME=VALUE`` joined); raises
        NativeError if it is not the expected shape
    probe_args(argv) -> list[str]           the options that decide the expansion
    rewrite(argv, exp) -> list[str]         argv without native, the expansion after argv[0]
    records_options(argv) -> str | None     the option that makes gcc record its options
    resolve(exec_path, argv, environ) -> list[str]
        the cached or freshly probed expansion; raises NativeError saying why not
    analyse(exec_path, argv, environ, debug) -> Job
        :func:`meshcc.compiler.args.analyse` on the resolved command line

On the compile client's hot path: a cache hit costs a few ``stat`` calls, one read of
/proc/cpuinfo's first record and one small file read (about 0.1 ms in all); the module
imports only ``os`` and meshcc's argv modules, and subprocess only to probe.
"""

from __future__ import annotations

import os
import stat as _stat  # already loaded by os at start-up

from meshcc.compiler import args, cmdline

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping

__all__ = [
    "NATIVE",
    "NativeError",
    "analyse",
    "cc1_argv",
    "expansion",
    "probe_args",
    "records_options",
    "resolve",
    "rewrite",
    "split_line",
]

NATIVE = cmdline.NATIVE_OPTIONS
_CACHE_MAGIC = "meshcc-native 1"
_PROBE_TAIL = ("-###", "-c", "-x", "c", "/dev/null", "-o", "/dev/null")
# Options the probe keeps: any -march/-mtune/-mcpu (an explicit -mtune stops -march=native
# from adding its own) and the ABI ones, in case a target's detection looks at them.
_PROBE_PREFIXES = ("-march=", "-mtune=", "-mcpu=", "-mabi=")
_PROBE_EXACT = frozenset(("-m16", "-m32", "-m64", "-mx32"))
_PARAM_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_PROBE_OUTPUT = 1 << 20


class NativeError(Exception):
    """The expansion could not be found or trusted; ``str(e)`` says why (a short clause)."""


# --------------------------------------------------------------------------- sans-IO


def split_line(line: str) -> list[str]:
    """Undo gcc's ``-###`` quoting: a word with anything but ``[A-Za-z0-9_/.-]`` is printed
    in double quotes, with ``"``, ``\\`` and ``$`` escaped by a backslash."""
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == " ":
            i += 1
            continue
        if c == '"':
            i += 1
            word: list[str] = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                word.append(line[i])
                i += 1
            if i >= n:
                raise NativeError("unterminated quote in the driver's -### output")
            i += 1
            out.append("".join(word))
        else:
            j = line.find(" ", i)
            j = n if j < 0 else j
            out.append(line[i:j])
            i = j
    return out


def cc1_argv(text: str) -> list[str]:
    """The compiler proper's command (cc1, cc1plus, cc1obj ...) in ``gcc -###`` stderr."""
    for line in text.splitlines():
        if not line.startswith(" "):
            continue
        words = split_line(line)
        if words and os.path.basename(words[0]).startswith("cc1"):
            return words
    raise NativeError("the driver's -### output names no cc1 command")


def _check_token(tok: str) -> None:
    """Refuse anything but the shapes native produces (so nothing odd is ever sent)."""
    if "native" in tok or "\n" in tok or not tok.startswith(("-m", "--param=")):
        raise NativeError(f"unexpected option {tok!r} in the expansion")
    if tok.startswith("--param="):
        name, eq, value = tok[8:].partition("=")
        if not eq or not name or not set(name) <= _PARAM_NAME or not value.isdigit():
            raise NativeError(f"unexpected option {tok!r} in the expansion")


def expansion(with_native: list[str], without: list[str]) -> list[str]:
    """What the driver inserted for native: the run of cc1 words where the two lines part.

    ``with_native`` and ``without`` are the cc1 lines of the same probe with and without
    the native options. The expansion is one contiguous run (``cc1_spec``); the line
    without it resumes at the first word that followed it. ``--param NAME=V`` pairs are
    joined into ``--param=NAME=V``, the spelling cc1 itself receives either way.
    """
    n = min(len(with_native), len(without))
    i = 0
    while i < n and with_native[i] == without[i]:
        i += 1
    if i >= len(without):
        raise NativeError("the driver's -### output has no expansion of native")
    try:
        j = with_native.index(without[i], i)
    except ValueError:
        raise NativeError("cannot find where the expansion of native ends") from None
    words = with_native[i:j]
    out: list[str] = []
    k = 0
    while k < len(words):
        w = words[k]
        if w == "--param" and k + 1 < len(words):
            w = "--param=" + words[k + 1]
            k += 1
        _check_token(w)
        out.append(w)
        k += 1
    if not out:
        raise NativeError("the driver expanded native to nothing")
    if not any(w.startswith(("-march=", "-mtune=", "-mcpu=")) for w in out):
        # (-mcpu=: what AArch64's driver expands -mcpu=native to, e.g. -mcpu=neoverse-n1+crc)
        raise NativeError("the expansion names no -march=, -mtune= or -mcpu=")
    return out


def _words(argv: list[str]) -> list[tuple[str, bool]]:
    """argv[1:] as (word, is an option's separate value)."""
    out: list[tuple[str, bool]] = []
    skip = False
    for a in argv[1:]:
        out.append((a, skip))
        skip = not skip and (a in cmdline.SEPARATE or a in ("-o", "-x"))
    return out


def probe_args(argv: list[str]) -> list[str]:
    """The options of argv that decide what native expands to, in order."""
    return [
        a
        for a, value in _words(argv)
        if not value and (a.startswith(_PROBE_PREFIXES) or a in _PROBE_EXACT)
    ]


def rewrite(argv: list[str], exp: list[str]) -> list[str]:
    """argv with every native option removed and the expansion right after the compiler
    (where the driver puts it relative to the user's options; see the module docstring)."""
    return [argv[0], *exp, *(a for a, value in _words(argv) if value or a not in NATIVE)]


def records_options(argv: list[str]) -> str | None:
    """The option that makes gcc write its option list into the output, or None.

    -g (any level but 0) records them in DW_AT_producer unless -gno-record-gcc-switches
    comes later; -frecord-gcc-switches in a section; -flto in the LTO option section;
    -fverbose-asm in an "options passed" comment of -S output. Any -g option that is not
    a known off switch counts as debug info: when unsure, the job stays local.
    """
    debug: str | None = None
    record_dwarf = True
    record_section: str | None = None
    verbose_asm: str | None = None
    lto: str | None = None
    for a, value in _words(argv):
        if value or not a.startswith(("-g", "-f")):
            continue
        if a == "-gno-record-gcc-switches":
            record_dwarf = False
        elif a == "-grecord-gcc-switches":
            record_dwarf = True
        elif a in ("-g0", "-ggdb0", "-gdwarf0"):
            debug = None
        elif a.startswith("-g") and not a.startswith(("-gno-", "-gz", "-gcolumn", "-gstrict")):
            debug = a
        elif a == "-frecord-gcc-switches":
            record_section = a
        elif a == "-fno-record-gcc-switches":
            record_section = None
        elif a == "-fverbose-asm":
            verbose_asm = a
        elif a == "-fno-verbose-asm":
            verbose_asm = None
        elif a.startswith("-flto") and a != "-flto-report":
            lto = None if a == "-fno-lto" else a
        elif a == "-fno-lto":
            lto = None
    if debug is not None and record_dwarf:
        return debug
    return record_section or lto or verbose_asm


# --------------------------------------------------------------------------- I/O


def _cpu_signature() -> str:
    """The first processor's /proc/cpuinfo record without its clock (~20 µs to read)."""
    try:
        fd = os.open("/proc/cpuinfo", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 16384)
        finally:
            os.close(fd)
    except OSError:
        return "no /proc/cpuinfo"
    text = data.decode("utf-8", "replace").split("\n\n", 1)[0]
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(("cpu MHz", "bogomips")))


def _find(exec_path: str, environ: Mapping[str, str]) -> tuple[str, os.stat_result]:
    """The compiler file that will run, and its stat (the cache key's compiler identity)."""
    dirs = [""] if "/" in exec_path else environ.get("PATH", os.defpath).split(os.pathsep)
    for d in dirs:
        path = os.path.join(d, exec_path) if d else exec_path
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_mode & 0o111 and _stat.S_ISREG(st.st_mode):
            return path, st
    raise NativeError(f"cannot find {exec_path} to ask it what native means")


def cache_dir(environ: Mapping[str, str]) -> str:
    """``$DISTCC_DIR/native`` (``~/.distcc/native``): where distcc's clients keep state."""
    top = environ.get("DISTCC_DIR") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".distcc"
    )
    return os.path.join(top, "native")


def _key(exec_path: str, probe: list[str], environ: Mapping[str, str]) -> tuple[str, str]:
    """(the cache key, the compiler's path): the compiler file's identity (an upgraded gcc
    is another key), the probe options, and this CPU (a home directory shared by several
    boxes, or a disk moved to another one, must not reuse another CPU's answer)."""
    path, st = _find(exec_path, environ)
    ident = f"{path} {st.st_dev}:{st.st_ino} {st.st_size} {st.st_mtime_ns}"
    return "\0".join((ident, " ".join(probe), _cpu_signature())), path


def _cache_file(environ: Mapping[str, str], key: str) -> str:
    """The entry's file: the key as a number modulo the prime 2**61-1 (~20 µs for a 3 KB
    key, and no hashlib or zlib import, ~0.5 ms each); the file repeats the whole key, so
    a collision is a miss, never a wrong answer."""
    raw = key.encode("utf-8", "surrogateescape")
    n = int.from_bytes(raw, "little") % 0x1FFFFFFFFFFFFFFF
    return os.path.join(cache_dir(environ), f"{n:016x}{len(raw) & 0xFFFF:04x}")


def _read_cache(path: str, key: str) -> list[str] | None:
    """The cached expansion, or None if missing, for another key, or not well formed."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    head = f"{_CACHE_MAGIC}\n{key}\n\n"
    if not text.startswith(head) or not text.endswith("\n"):
        return None
    exp = text[len(head) :].splitlines()
    try:
        for tok in exp:
            _check_token(tok)
    except NativeError:
        return None
    return exp or None


def _write_cache(path: str, key: str, exp: list[str], *, make_top: bool = False) -> None:
    """Write atomically (temp file beside it, then rename); any failure only loses the cache.

    Like distcc, a missing ``$DISTCC_DIR`` is not created (only ``~/.distcc``, with
    ``make_top``): a typo must not scatter directories.
    """
    d = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        if make_top:
            try:
                os.mkdir(os.path.dirname(d), 0o777)
            except FileExistsError:
                pass
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(f"{_CACHE_MAGIC}\n{key}\n\n" + "".join(t + "\n" for t in exp))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _driver_cc1(exec_path: str, argv: list[str]) -> list[str]:
    """Run ``exec_path ARGV -### ...`` and return its cc1 line (cold path only)."""
    import subprocess

    env = dict(os.environ, LC_ALL="C")
    env.pop("_DISTCC_SAFEGUARD", None)
    try:
        p = subprocess.run(
            [exec_path, *argv, *_PROBE_TAIL],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeError(f"cannot run {exec_path} -###: {e}") from None
    err = p.stderr[:_MAX_PROBE_OUTPUT].decode("utf-8", "replace")
    if p.returncode != 0:
        first = next((ln for ln in err.splitlines() if "error" in ln), "")
        raise NativeError(f"{exec_path} -### failed: {first or f'exit {p.returncode}'}")
    return cc1_argv(err)


def probe(exec_path: str, argv: list[str]) -> list[str]:
    """Ask the driver (two ``-###`` runs, a few ms) what native expands to for argv."""
    probe_with = probe_args(argv)
    probe_without = [a for a in probe_with if a not in NATIVE]
    return expansion(_driver_cc1(exec_path, probe_with), _driver_cc1(exec_path, probe_without))


def resolve(
    exec_path: str, argv: list[str], environ: Mapping[str, str], *, use_cache: bool = True
) -> tuple[list[str], bool]:
    """(the expansion for argv's native options, whether it came from the cache)."""
    key, compiler = _key(exec_path, probe_args(argv), environ)
    path = _cache_file(environ, key)
    if use_cache:
        exp = _read_cache(path, key)
        if exp is not None:
            return exp, True
    exp = probe(compiler, argv)
    _write_cache(path, key, exp, make_top=not environ.get("DISTCC_DIR"))
    return exp, False


def analyse(
    exec_path: str,
    argv: list[str],
    environ: Mapping[str, str],
    debug: Callable[[str], None] | None = None,
) -> args.Job:
    """:func:`meshcc.compiler.args.analyse`, with native resolved when present.

    The command is analysed *without* its native options first: a job that is local for
    another reason (a link, -E) is never resolved, and its reason is the real one. The
    expansion is then put in front of the analysed argv without a second analysis: its
    words are only ``-m...`` and ``--param=NAME=N`` (checked when read), which neither the
    client's rules nor the server's policy treat specially, and re-walking ~100 words would
    cost more than the cache hit. ``orig_argv`` stays the user's command, so the local
    preprocessor (and any local compile) runs exactly what a local build runs.
    """
    words = _words(argv)
    natives = [a for a, value in words if not value and a in NATIVE]
    if not natives:
        return args.analyse(argv)
    job = args.analyse(rewrite(argv, []))
    job.orig_argv = list(argv)
    if job.reason:
        return job  # local anyway: the reason that is not native
    tok = natives[0]
    why = ""
    try:
        exp, cached = resolve(exec_path, argv, environ)
    except NativeError as e:
        why = f"{tok} cannot be resolved for a remote compile: {e}"
    else:
        rec = records_options(argv) if any(t.startswith("--param=") for t in exp) else None
        if rec is not None:
            why = (
                f"{tok} with {rec}: gcc records the options in the object, and the "
                "driver would record native's --param values in another order remotely"
            )
    if why:
        job.reason = why
        job.distributable = False
        return job
    job.argv = rewrite(job.argv, exp)
    if debug is not None:
        debug(f"{tok} resolved ({'cached' if cached else 'probed'}): {' '.join(exp)}")
    return job
