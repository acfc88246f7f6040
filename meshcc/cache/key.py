"""The content key of a compile job, and which jobs must never be cached. Pure functions.

Two jobs with the same key must give the same result: the same object, the same stderr
and stdout, the same exit status. So the key holds everything the output depends on:

- the **toolchain identity** of the serving daemon (:mod:`meshcc.cache.identity`): gcc's
  full version, target triplet and binutils version *and* the SHA-256 of the driver, of
  ``cc1``/``cc1plus`` and of the assembler binaries. Two boxes with the same distribution
  package share keys; a rebuilt gcc of the same version does not;
- the **driver kind** (gcc or g++) and the preprocessed language (``.i``/``.ii``...);
- the **command line as the server runs it**, normalised: the source and the ``-o`` name
  are replaced by fixed names (:func:`meshcc.compiler.policy.rewrite_for_job`), so the
  output file name never splits keys, while every other argument stays, in its order
  (gcc's options are order-sensitive: ``-O2 -O0`` is not ``-O0 -O2``). Checked: gcc 12
  writes the same object for the same ``.i`` under another file name, with and without
  ``-g`` (the names recorded in the object come from the line markers in the text);
- the **daemon environment that reaches the output**: the locale (translated diagnostics),
  ``GCC_COLORS``/``GCC_URLS``/``TERM_URLS`` (escape sequences in stderr), ``COLUMNS``,
  ``GCC_COMPARE_DEBUG``, ``GCC_EXEC_PREFIX``/``COMPILER_PATH`` (which programs run) and
  ``SOURCE_DATE_EPOCH``;
- the **preprocessed source bytes** as received (after decompression). Everything the
  preprocessor decided is in them: ``__DATE__``/``__TIME__``/``__FILE__`` are already
  expanded, and with ``-g`` the build directory is in the ``# 1 "/dir//"`` line, so the
  same tree at the same path on two boxes has the same key, and at another path not.

Uncacheable jobs (:func:`uncacheable` says why) are those whose output differs from run
to run for the same key, or depends on something outside the key:

- ``-flto`` (any form, unless a later ``-fno-lto``) without ``-frandom-seed=``: the LTO
  section names carry a per-run random number (measured: two runs of gcc 12 on the same
  input differ); with ``-frandom-seed=X`` they are reproducible and cached;
- ``-fprofile-*``, ``--coverage``, ``-ftest-coverage``, ``-fauto-profile``,
  ``-fbranch-probabilities``: read ``.gcda`` files or stamp the object with a run-specific
  checksum matched by a ``.gcno`` beside it (the server refuses these anyway);
- ``-march=native``/``-mtune=native``/``-mcpu=native``: the serving box's CPU decides
  the code, and the CPU is not in the key (the server refuses these too);
- ``-ftime-report``, ``-fmem-report``, ``-fstats``, ``-Q``, ``-time``, ``-v``, ``-###``:
  stderr holds timings, memory figures or temporary file names of that run;
- ``-fdump-*``, ``-save-temps``, ``-fcompare-debug=``/``-fcompare-debug-second``: extra
  files or runs the protocol does not carry (refused by the server's policy as well).

Options that are order-sensitive or change code but are deterministic
(``-fdebug-prefix-map``, ``-g``, ``-O``, ``-D`` after preprocessing, warnings) need
nothing: they are in the key.
"""

from __future__ import annotations

from meshcc.compiler import cmdline, policy

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import hashlib
    from collections.abc import Iterable, Mapping, Sequence

# hashlib is imported where a key is computed: the compile client imports this
# module for uncacheable() alone (direct mode, meshcc.client.direct), and hashlib's OpenSSL
# binding costs a compile client process milliseconds.

__all__ = [
    "ENV_IN_KEY",
    "KEY_VERSION",
    "content_key",
    "is_key",
    "normalised_args",
    "uncacheable",
]

KEY_VERSION = b"meshcc-result-key 1"
# The daemon's environment variables that change what gcc writes (see the docstring).
ENV_IN_KEY = (
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_MESSAGES",
    "LC_CTYPE",
    "GCC_COLORS",
    "GCC_URLS",
    "TERM_URLS",
    "COLUMNS",
    "GCC_COMPARE_DEBUG",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "SOURCE_DATE_EPOCH",
)
_INPUT = "meshcc-input"  # the fixed names the key uses for the job's files
_OUTPUT = "meshcc-output"

_PROFILE = cmdline.PROFILE_PREFIXES
_NATIVE = cmdline.NATIVE_OPTIONS
_RUN_SPECIFIC_STDERR = frozenset(
    ("-ftime-report", "-ftime-report-details", "-fmem-report", "-fstats", "-Q", "-v", "-###")
)


def uncacheable(argv: Sequence[str]) -> str | None:
    """Why this job's result must not be cached (None: it may be). ``argv[0]`` is the
    compiler. Reasons are short phrases for the log and the docs."""
    lto = False
    seeded = False
    for a in argv[1:]:
        if a == "-flto" or a.startswith("-flto="):  # not -flto-partition= etc.: tuning only
            lto = True
        elif a == "-fno-lto":
            lto = False
        elif a.startswith("-frandom-seed="):
            seeded = True
        elif a.startswith(_PROFILE):
            return f"{a}: profile data is read or stamped per run"
        elif a in _NATIVE:
            return f"{a}: the serving box's CPU decides the code"
        elif a in _RUN_SPECIFIC_STDERR or a.startswith(("-time", "-ftime-report")):
            return f"{a}: the output holds figures of that run"
        elif a.startswith(("-fdump-", "-save-temps", "--save-temps", "-fcompare-debug")):
            return f"{a}: writes files or runs the protocol does not carry"
    if lto and not seeded:
        return "-flto without -frandom-seed=: LTO section names differ per run"
    return None


def normalised_args(argv: Sequence[str], suffix: str, output_suffix: str) -> list[str]:
    """The command line as the server runs it, minus the compiler, with fixed file names:
    the arguments that decide the output, and nothing that only names it."""
    job = policy.rewrite_for_job(list(argv), _INPUT + suffix, _OUTPUT + output_suffix)
    return job[1:]


def _field(h: hashlib._Hash, data: bytes) -> None:
    """Length-prefixed, so no two different field lists hash the same bytes."""
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def content_key(
    identity: str,
    driver: str,
    argv: Sequence[str],
    suffix: str,
    output_suffix: str,
    data: bytes,
    env: Mapping[str, str],
) -> str:
    """The job's key: 64 lowercase hex digits (SHA-256 over the fields above, in order)."""
    import hashlib

    h = hashlib.sha256()
    _field(h, KEY_VERSION)
    _field(h, identity.encode())
    _field(h, driver.encode())
    _field(h, suffix.encode())
    _field(h, output_suffix.encode())
    args = normalised_args(argv, suffix, output_suffix)
    _field(h, len(args).to_bytes(4, "big"))
    for a in args:
        _field(h, a.encode("utf-8", "surrogateescape"))
    _field(h, b"\0".join(_env_items(env)))
    _field(h, data)
    return h.hexdigest()


def _env_items(env: Mapping[str, str]) -> Iterable[bytes]:
    for name in ENV_IN_KEY:
        value = env.get(name)
        if value is not None:
            yield f"{name}={value}".encode("utf-8", "surrogateescape")


def is_key(text: str) -> bool:
    """A well-formed key (what the store and the HTTP paths accept)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
