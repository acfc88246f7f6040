"""Client-side analysis of a compile command line (distcc 3.4's ``dcc_scan_args`` and more).

This module sits on the compile wrapper's hot path, so it imports only meshcc's small
:mod:`meshcc.compiler.cmdline` (the option walk it shares with the server) and, lazily,
:mod:`meshcc.compiler.policy` (the server's refusals, applied up front).

Public API::

    analyse(argv: list[str]) -> Job
        argv[0] is the compiler. Never raises on odd input: anything not understood makes
        the job local-only, with ``Job.reason`` saying why.
    cpp_argv(job: Job) -> list[str]
        The local preprocessor command: ``-c``/``-S`` become ``-E`` (output on stdout), ``-o``
        is removed, and with ``-MD``/``-MMD`` the ``-MF``/``-MQ`` that plain gcc's driver would
        have implied are added, so the .d file has the same path and bytes as a local build.
    remote_argv(job: Job) -> list[str]
        What is sent to the server: distcc's strip rules, ``-x c`` -> ``-x cpp-output`` (and
        the C++/Objective-C forms), and ``-o <output>`` appended when it was implied.
    directives_only(job: Job) -> bool
        Whether cpp_argv and remote_argv both carry ``-fdirectives-only`` (C/C++ jobs whose
        options gcc does not record): the server's gcc then expands the macros, so the
        object is byte-identical to a local one (a fully preprocessed .i loses macro
        locations, which changes -O0 code and -g columns).
    host_macro_use(body: bytes) -> str | None
        For a directives-only body: a builtin macro (__DATE__, __BASE_FILE__ ...) that the
        server would expand differently; the wrapper then compiles locally.
    expand_wp(args: list[str]) -> list[str]
        ``-Wp,`` expansion as distcc does it (``-Wp,-MD,f`` -> ``-MD -MF f``).

    class Job:  (plain slotted class; fields are read-only by convention)
        argv: list[str]        argv after -Wp, expansion (argv[0] is the compiler)
        orig_argv: list[str]   argv as given (used for the local preprocessor run)
        distributable: bool
        reason: str            why it must run locally; '' when distributable
        source: str | None     the source file as named on the command line
        output: str | None     the -o value, or the implied name (basename.o / .s, in cwd)
        output_given: bool     True when -o was on the command line
        mode: str | None       '-c' or '-S' (-S wins when both are given)
        preprocessed: bool     the source is already preprocessed (.i .ii .mi .mii, or
                               -x *-cpp-output): the client sends it without running cpp
        temp_suffix: str       suffix for the preprocessed temp file ('.i' '.ii' '.mi' '.mii')
        language: str | None   the -x language in effect for the source, if any

Differences from distcc 3.4, on purpose: ``-flto`` is distributable (master reverted the
3.4 rule; ``-flto -c`` emits GIMPLE that an identical toolchain builds the same anywhere);
joined ``-xc`` is handled (3.4 inspects the *next* argument); ``-mcpu=native`` is local
too; bare non-source inputs (``bar.s``, ``lib.a``) make the job local instead of being
ignored; long option spellings (``--output=``, ``--include=`` ...) other than a few known
ones are not analysed and run locally; and anything :func:`meshcc.compiler.policy.refusal`
would refuse on the server stays local with the server's reason. A reason is a short clause
naming the option (``-E only preprocesses``); the wrapper and ``meshcc doctor`` say that
the job therefore runs locally.
"""

from meshcc.compiler.cmdline import (
    CPP_OUTPUT_LANGUAGE,
    SEPARATE,
    Job,
    expand_wp,
    replace_suffix,
    scan,
)

__all__ = [
    "DIRECTIVES_ONLY",
    "Job",
    "analyse",
    "cpp_argv",
    "directives_only",
    "expand_wp",
    "host_macro_use",
    "remote_argv",
]

#: Added to both the client's preprocessor run and the server's compile of eligible jobs:
#: the client expands #include and #if but leaves macros (and their #defines) in the text,
#: and the server's gcc expands them itself, so every token keeps the virtual location that
#: an integrated compile gives it.  At -O0 gcc's block merging depends on those locations
#: (zlib's inflate.c gets different code from a fully preprocessed .i), and with -g the
#: columns in .debug_line do too.
DIRECTIVES_ONLY = "-fdirectives-only"

# Options after which the client keeps full preprocessing: gcc records -fdirectives-only
# where it records options (-frecord-gcc-switches; -g's DW_AT_producer, see _debug_info),
# the preprocessor's output would change meaning (-C/-CC keep comments, -traditional*,
# -d<letters> dumps, -fpch-preprocess), or the user already chose a mode.
_DIRONLY_BLOCKERS = frozenset(
    (
        "-frecord-gcc-switches",
        "-C",
        "-CC",
        "-traditional",
        "-traditional-cpp",
        "-fpch-preprocess",
        "-fdirectives-only",
        "-fno-directives-only",
        "-fpreprocessed",
        "-fno-preprocessed",
        "-Xpreprocessor",
        "-gtoggle",
        "-save-temps",
        "-Wunused-macros",  # cc1: "-fdirectives-only is incompatible with -Wunused-macros"
    )
)

_DUMPS = frozenset("DMNIU")

# Builtin macros whose value depends on where or when the compiler runs (the server's
# clock, time zone and SOURCE_DATE_EPOCH; the server's temp file name and mtime).  A
# directives-only body that names one of them is compiled locally instead.
_HOST_MACROS = (b"__DATE__", b"__TIME__", b"__TIMESTAMP__", b"__BASE_FILE__", b"__INCLUDE_LEVEL__")

_STRIP_WITH_ARG = frozenset(
    (
        "-D",
        "-I",
        "-U",
        "-L",
        "-l",
        "-MF",
        "-MT",
        "-MQ",
        "-include",
        "-imacros",
        "-iprefix",
        "-iwithprefix",
        "-isystem",
        "-iwithprefixbefore",
        "-idirafter",
        "-Xpreprocessor",
    )
)
_STRIP_PREFIXES = (
    "-Wp,",
    "-Wl,",
    "-D",
    "-U",
    "-I",
    "-l",
    "-L",
    "-MF",
    "-MT",
    "-MQ",
    "-isystem",
    "-stdlib",
    "-include",
    "-imacros",
    "-iprefix",
    "-iwithprefix",
    "-idirafter",
)
_STRIP_EXACT = frozenset(("-undef", "-nostdinc", "-nostdinc++", "-MD", "-MMD", "-MG", "-MP"))


def analyse(argv: list[str]) -> Job:
    """Analyse a compile command; argv[0] is the compiler.

    The reason for a local-only verdict is a short sentence naming the option.
    """
    argv = list(argv)
    job = Job([argv[0], *expand_wp(argv[1:])] if argv else [], argv)
    if not argv:
        job.reason = "empty command line"
        return job
    reason = scan(job, client=True)
    if not reason:
        from meshcc.compiler import policy  # only for commands that pass the client's rules

        reason = policy.refusal(remote_argv(job)) or ""
    job.reason = reason
    job.distributable = not reason
    return job


def _driver_dep_flags(args: list[str]) -> tuple[bool, bool, bool]:
    """(-MD/-MMD, -MF, -MT/-MQ) as gcc's *driver* sees them (not inside -Wp,)."""
    md = mf = mt = False
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-MD", "-MMD"):
            md = True
        elif a.startswith("-MF"):
            mf = True
            skip = a == "-MF"
        elif a.startswith(("-MT", "-MQ")):
            mt = True
            skip = len(a) == 3
        elif a in SEPARATE or a in ("-o", "-x"):
            skip = True
        elif a.startswith("-Wp,"):
            # cc1 sees a -MF given here too; the driver's own %b.d loses to it, as to ours.
            mf = mf or ",-MF" in a or a.startswith(("-Wp,-MD,", "-Wp,-MMD,"))
    return md, mf, mt


def _debug_info(args: list[str]) -> tuple[bool, bool]:
    """(debug info on, gcc records its switches in DW_AT_producer) for these arguments.

    Any -g option other than -g0 and the record switches counts as turning debug info on
    (conservative: -gsplit-dwarf or -gz alone do not, but then full preprocessing is merely
    the old behaviour).  gcc 12 records switches by default.
    """
    debug = False
    record = True
    for a in args:
        if not a.startswith("-g"):
            continue
        if a == "-g0":
            debug = False
        elif a == "-grecord-gcc-switches":
            record = True
        elif a == "-gno-record-gcc-switches":
            record = False
        else:
            debug = True
    return debug, record


def _optimizing(args: list[str]) -> bool:
    """True when the last -O option asks for -O1 or more (-O, -O1..3, -Os, -Oz, -Ofast);
    False for none, -O0 and -Og."""
    level = "0"
    for a in args:
        if a.startswith("-O"):
            level = a[2:] or "1"
    return level not in ("0", "g")


# Optimizing jobs are preprocessed with -fdirectives-only only when asked
# (MESHCC_DIRECTIVES_ONLY=1, read by meshcc-gcc's main). Measured again after the server's
# scan was made 1.5-2x cheaper (bench_serial --directives-only-way and
# bench_dirsonly_server, Nov 2026, lua 5.4 and xz-utils at -O2, protocol 2): the client's
# CPU per job did not move (0.99x and 1.02x of full preprocessing: gcc -E's median lua file
# costs 14.4 ms of CPU against 15.9 ms, and LZO-compressing plus vetting for __DATE__ a 3.9x
# larger body eats that), while the daemon's CPU per job was 1.8x (lua) and 2.4x (xz) its
# full-preprocessing figure (the scan, ~1.3-2.5 ms per 300-750 KB body, and decoding 5x the
# LZO bytes). Worth it only where macro expansion dominates cpp (lua's lvm.c: 279 M -> 118 M
# instructions); not as a default.
directives_only_when_optimizing = False


def directives_only(job: Job) -> bool:
    """Whether the job is preprocessed with ``-fdirectives-only`` (client and server).

    The one place meshcc-gcc decides how to preprocess; other policies (a slow link, say,
    where the 2-4x larger body costs more than the client's cpp saves) belong here.

    Why: the client's cpp then only runs directives and leaves macro expansion to the
    server's gcc, which costs the client 2-3x fewer instructions (lua's lvm.c 235 M -> 72 M).
    And without optimization (no -O, -O0, -Og), or with debug info whose switches are not
    recorded (the columns in .debug_line), gcc keeps statements from different source
    locations apart, so where a macro's tokens came from changes the code, and a fully
    preprocessed body has lost that (zlib's inflate.c and 11 of lua 5.4's 33 files at -O0).
    Optimizing jobs gave byte-identical objects both ways in every file surveyed (zlib,
    lua 5.4 and xz's liblzma at -O2: 129 of 129), and the server's directive scan costs
    ~1.3-2.5 ms on a 300-750 KB body (policy._fast_accepts, memchr loops); they are sent
    that way only with :data:`directives_only_when_optimizing` (see there).  Optimizing -flto
    jobs keep full preprocessing: their objects differ from local ones either way (the
    LTO stream names the input), so nothing shows the two ways give the same IR.

    Only distributable C and C++ sources that are not preprocessed yet, and only when
    nothing on the command line makes gcc record its options or changes what the
    preprocessor prints (see _DIRONLY_BLOCKERS).  ``-Wp,`` is allowed only for the
    dependency forms (``-Wp,-MD,f``/``-Wp,-MMD,f``) that kernel-style builds use.
    """
    if job.reason or job.source is None:
        return False  # a local-only job (e.g. a .S file): nothing is preprocessed for a server
    if job.preprocessed or job.temp_suffix not in (".i", ".ii"):
        return False
    args = job.orig_argv[1:]
    for a in args:
        if a in _DIRONLY_BLOCKERS:
            return False
        if a.startswith("-Wp,") and not a.startswith(("-Wp,-MD,", "-Wp,-MMD,")):
            return False
        if a[:2] == "-d" and a[2:].isalpha() and not a.startswith("-dump") and set(a) & _DUMPS:
            return False  # -dD -dM -dN -dI -dU change the preprocessor's output
    debug, record = _debug_info(job.argv[1:])
    if debug and record:
        return False  # DW_AT_producer would name -fdirectives-only
    optimizing = _optimizing(job.argv[1:])
    if optimizing and any(a.startswith("-flto") for a in job.argv[1:]):
        return False
    if debug:  # switches not recorded: columns in .debug_line need the macros' locations
        return True
    return directives_only_when_optimizing or not optimizing


def host_macro_use(body: bytes) -> str | None:
    """The first host-dependent builtin macro named in a directives-only body, or None.

    With full preprocessing the client expanded these; left to the server they would take
    the server's date, time zone and temp file name.  The test is a substring test, so a
    mention in a string literal also counts: a false positive only costs a local compile.
    """
    for name in _HOST_MACROS:
        if name in body:
            return name.decode()
    return None


def cpp_argv(job: Job) -> list[str]:
    """The local preprocessor command line (preprocessed text goes to stdout).

    Built from the original argv so that ``-Wp,`` options reach cc1 exactly as in a local
    compile. gcc's driver derives the .d file and its target from ``-o`` (``-MD`` ->
    ``-MF <o minus suffix>.d`` and, unless -MT/-MQ is given, ``-MQ <o>``); without ``-o``
    and with ``-E`` it would not, so the same options are added explicitly.
    """
    args = job.orig_argv
    out = [args[0]]
    n = len(args)
    i = 1
    saw_mode = False
    while i < n:
        a = args[i]
        i += 1
        if a in ("-c", "-S"):
            if not saw_mode:
                out.append("-E")
                saw_mode = True
        elif a == "-o":
            i += 1
        elif a.startswith("-o"):
            pass
        else:
            out.append(a)
            if a in SEPARATE or a == "-x":
                if i < n:
                    out.append(args[i])
                i += 1
    md, mf, mt = _driver_dep_flags(args[1:])
    if md:
        if not mf:
            if job.output_given and job.output is not None:
                dep = replace_suffix(job.output, ".d")
            elif job.source is not None:
                base = job.source[job.source.rfind("/") + 1 :]
                dep = replace_suffix(base, ".d")
            else:
                dep = None
            if dep is not None:
                out += ("-MF", dep)
        if not mt and job.output_given and job.output is not None:
            out += ("-MQ", job.output)
    if directives_only(job):
        out.append(DIRECTIVES_ONLY)
    return out


def remote_argv(job: Job) -> list[str]:
    """The argv sent to the server (distcc's strip.c rules, then meshcc's -x rewrite).

    ``-x c`` becomes ``-x cpp-output`` (and likewise for C++/Objective-C, joined or not)
    because the server receives preprocessed text; ``-o <output>`` is appended when the
    command line only implied it, as distcc does.
    """
    args = job.argv
    out = [args[0]] if args else []
    n = len(args)
    i = 1
    while i < n:
        a = args[i]
        i += 1
        if a in _STRIP_WITH_ARG:
            i += 1
        elif a in _STRIP_EXACT or a.startswith(_STRIP_PREFIXES):
            pass
        elif a == "-x":
            if i < n:
                out += ("-x", CPP_OUTPUT_LANGUAGE.get(args[i], args[i]))
            i += 1
        elif a.startswith("-x"):
            out.append("-x" + CPP_OUTPUT_LANGUAGE.get(a[2:], a[2:]))
        elif a == "-o":
            out.append(a)
            if i < n:
                out.append(args[i])
            i += 1
        else:
            out.append(a)
            if a in SEPARATE:
                if i < n:
                    out.append(args[i])
                i += 1
    if not job.output_given and job.output is not None:
        out += ("-o", job.output)
    if directives_only(job):
        out.append(DIRECTIVES_ONLY)
    return out
