"""Client-side analysis of a compile command line (distcc 3.4's ``dcc_scan_args`` and more).

This module sits on the compile wrapper's hot path, so it imports only ``os`` (already loaded
by the interpreter) and, lazily, :mod:`meshcc.compiler.policy`.

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
would refuse on the server stays local with the server's reason.
"""

__all__ = [
    "CPP_OUTPUT_LANGUAGE",
    "PREPROCESSED_SUFFIXES",
    "SOURCE_SUFFIXES",
    "Job",
    "analyse",
    "cpp_argv",
    "expand_wp",
    "remote_argv",
]

# distcc's filename.c:dcc_is_source list; case-sensitive. .s/.S are never distributed.
SOURCE_SUFFIXES = frozenset(
    (
        ".i",
        ".ii",
        ".c",
        ".cc",
        ".cpp",
        ".cxx",
        ".cp",
        ".c++",
        ".C",
        ".m",
        ".mm",
        ".mi",
        ".mii",
        ".M",
    )
)
PREPROCESSED_SUFFIXES = frozenset((".i", ".ii", ".mi", ".mii"))
# distcc's dcc_preproc_exten.
_TEMP_SUFFIX = {
    ".c": ".i",
    ".i": ".i",
    ".cc": ".ii",
    ".cpp": ".ii",
    ".cxx": ".ii",
    ".cp": ".ii",
    ".c++": ".ii",
    ".C": ".ii",
    ".ii": ".ii",
    ".m": ".mi",
    ".mi": ".mi",
    ".mm": ".mii",
    ".M": ".mii",
    ".mii": ".mii",
}
# The language a server must use for text that has already been preprocessed.
CPP_OUTPUT_LANGUAGE = {
    "c": "cpp-output",
    "c++": "c++-cpp-output",
    "objective-c": "objective-c-cpp-output",
    "objective-c++": "objective-c++-cpp-output",
}
_LANG_TEMP_SUFFIX = {
    "c": ".i",
    "cpp-output": ".i",
    "c++": ".ii",
    "c++-cpp-output": ".ii",
    "objective-c": ".mi",
    "objective-c-cpp-output": ".mi",
    "objective-c++": ".mii",
    "objective-c++-cpp-output": ".mii",
}
_OK_LANGUAGES = frozenset(_LANG_TEMP_SUFFIX) | {"none"}

# Options whose value is the next argument (so that value is not an input file).
_SEPARATE = frozenset(
    (
        "-D",
        "-U",
        "-I",
        "-L",
        "-l",
        "-A",
        "-MF",
        "-MT",
        "-MQ",
        "-include",
        "-imacros",
        "-iprefix",
        "-iwithprefix",
        "-iwithprefixbefore",
        "-isystem",
        "-idirafter",
        "-iquote",
        "-isysroot",
        "-imultilib",
        "-imultiarch",
        "-Xpreprocessor",
        "-Xassembler",
        "-Xlinker",
        "-aux-info",
        "-T",
        "-u",
        "-e",
        "-z",
        "--param",
        "-wrapper",
        "-dumpdir",
        "-dumpbase",
        "-dumpbase-ext",
        "-B",
        "-specs",
        "--sysroot",
        "--specs",
        "--prefix",
        "-auxbase",
    )
)
# Long options we understand; any other '--' spelling is not analysed and runs locally.
_KNOWN_LONG = (
    "--param",
    "--sysroot",
    "--no-sysroot-suffix",
    "--coverage",
    "--save-temps",
    "--specs",
    "--prefix",
)

_ALLOWED_M = frozenset(("-MD", "-MMD", "-MG", "-MP"))
_PROFILE_PREFIXES = (
    "-fprofile-arcs",
    "-ftest-coverage",
    "--coverage",
    "-fprofile-generate",
    "-fprofile-use",
    "-fauto-profile",
    "-fprofile-correction",
    "-fbranch-probabilities",
)
_NATIVE = frozenset(("-march=native", "-mtune=native", "-mcpu=native"))
_PRINT_ONLY = (
    "-###",
    "-print-",
    "--print-",
    "-dumpversion",
    "-dumpfullversion",
    "-dumpmachine",
    "-dumpspecs",
    "--help",
    "--version",
    "--target-help",
)

# strip.c:dcc_strip_local_args, plus preprocessor-only joined forms and -Xpreprocessor.
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


class Job:
    """The result of :func:`analyse`; see the module docstring for the fields."""

    __slots__ = (
        "argv",
        "distributable",
        "language",
        "mode",
        "orig_argv",
        "output",
        "output_given",
        "preprocessed",
        "reason",
        "source",
        "temp_suffix",
    )

    def __init__(self, argv: list[str], orig_argv: list[str]) -> None:
        self.argv = argv
        self.orig_argv = orig_argv
        self.distributable = False
        self.reason = ""
        self.source: str | None = None
        self.output: str | None = None
        self.output_given = False
        self.mode: str | None = None
        self.preprocessed = False
        self.temp_suffix = ".i"
        self.language: str | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Job({fields})"


def _suffix(path: str) -> str:
    """The suffix of the last path component, from its last dot ('' if none)."""
    base = path[path.rfind("/") + 1 :]
    dot = base.rfind(".")
    return base[dot:] if dot >= 0 else ""


def _replace_suffix(path: str, new: str) -> str:
    """gcc's ``%.SUFFIX%*`` rule: cut at the last dot of the last component, then add new."""
    slash = path.rfind("/")
    dot = path.rfind(".")
    if dot > slash:
        path = path[:dot]
    return path + new


def expand_wp(args: list[str]) -> list[str]:
    """Split ``-Wp,a,b`` into ``a b``, turning ``-MD f``/``-MMD f`` into ``-MD -MF f``.

    gcc hands ``-Wp`` pieces to cc1, where ``-MD FILE`` takes a file; the driver spelling of
    that is ``-MD -MF FILE``. Splitting on every comma is what gcc itself does.
    """
    if not any(a.startswith("-Wp,") for a in args):
        return list(args)
    out: list[str] = []
    for a in args:
        if not a.startswith("-Wp,"):
            out.append(a)
            continue
        parts = [p for p in a[4:].split(",") if p]
        j = 0
        while j < len(parts):
            p = parts[j]
            if p in ("-MD", "-MMD") and j + 1 < len(parts):
                out += (p, "-MF", parts[j + 1])
                j += 2
            else:
                out.append(p)
                j += 1
    return out


def _wa_local(a: str) -> bool:
    """distcc's rule: -Wa with ',-a' (listings) or '--MD' (deps) must be local."""
    return ",-a" in a or "--MD" in a


def _scan(job: Job, client: bool) -> str:
    """Walk job.argv once, fill job's fields, and return a local-only reason or ''.

    ``client`` adds the client-only rules (response files, -gsplit-dwarf, ...) whose
    server-side counterparts live in policy.py with server-phrased reasons.
    """
    argv = job.argv
    n = len(argv)
    reason = ""
    sources: list[str] = []
    others: list[str] = []
    outputs: list[str] = []
    lang: str | None = None
    c_flag = s_flag = False
    i = 1
    while i < n:
        a = argv[i]
        i += 1
        if a[:1] != "-" or a == "-":
            if a == "-":
                reason = (
                    reason or "the source is read from standard input ('-'), so it runs locally"
                )
            elif not a:
                reason = reason or "an empty argument is not a file name, so it runs locally"
            elif a[0] == "@" and client:
                reason = reason or (
                    f"{a} is a response file; meshcc does not expand response "
                    "files for remote compiles, so it runs locally"
                )
            elif _suffix(a) in SOURCE_SUFFIXES:
                if not sources:
                    job.language = lang
                sources.append(a)
            else:
                others.append(a)
            continue
        if reason:
            # Keep scanning only to skip option values; the first reason wins.
            if a in _SEPARATE or a in ("-o", "-x"):
                i += 1
            continue
        c1 = a[1]
        if a == "-c":
            c_flag = True
        elif a == "-S":
            s_flag = True
        elif c1 == "o":
            if a == "-o":
                if i >= n:
                    reason = "-o has no file name, so it runs locally"
                    continue
                out = argv[i]
                i += 1
            else:
                out = a[2:]
            outputs.append(out)
            if out == "-":
                reason = "-o - writes the object to standard output, so it runs locally"
        elif c1 == "x":
            if a == "-x":
                if i >= n:
                    reason = "-x has no language, so it runs locally"
                    continue
                lang = argv[i]
                i += 1
            else:
                lang = a[2:]
            if lang not in _OK_LANGUAGES:
                reason = (
                    f"-x {lang}: only C, C++ and Objective-C are compiled remotely, "
                    "so it runs locally"
                )
            elif lang == "none":
                lang = None
        elif a == "-E":
            reason = "-E only preprocesses, so it runs locally"
        elif c1 == "M":
            if a in ("-MF", "-MT", "-MQ"):
                i += 1
            elif a in _ALLOWED_M or a[:3] in ("-MF", "-MT", "-MQ"):
                pass
            else:
                reason = f"{a} writes dependencies instead of compiling, so it runs locally"
        elif a in _NATIVE:
            reason = f"{a} depends on this machine's CPU, so it runs locally"
        elif a.startswith("-Wa,"):
            if _wa_local(a):
                reason = (
                    f"{a} asks the assembler for a listing or dependency file, so it runs locally"
                )
        elif a.startswith(("-specs", "--specs")):
            reason = f"{a} reads a local specs file, so it runs locally"
            if a in _SEPARATE:
                i += 1
        elif a.startswith(_PROFILE_PREFIXES):
            reason = f"{a} reads or writes profile data, so it runs locally"
        elif a == "-frepo":
            reason = "-frepo writes .rpo files, so it runs locally"
        elif a.startswith("-dr"):
            reason = f"{a} writes RTL dump files, so it runs locally"
        elif a.startswith(_PRINT_ONLY):
            reason = f"{a} prints information instead of compiling, so it runs locally"
        elif a == "-fsyntax-only":
            reason = "-fsyntax-only produces no object, so it runs locally"
        elif client and a == "-gsplit-dwarf":
            reason = (
                "-gsplit-dwarf writes a .dwo file beside the object that the protocol "
                "cannot return, so it runs locally"
            )
        elif client and a.startswith(("-save-temps", "--save-temps")):
            reason = f"{a} keeps intermediate files beside the output, so it runs locally"
        elif client and a.startswith("-fplugin"):
            reason = (
                f"{a}: servers refuse options that load code into the compiler, so it runs locally"
            )
        elif c1 == "-" and not a.startswith(_KNOWN_LONG):
            reason = f"{a}: long option spellings are not analysed, so it runs locally"
        elif a in _SEPARATE:
            i += 1

    if not reason:
        if len(outputs) > 1:
            reason = "more than one -o, so it runs locally"
        elif len(sources) > 1:
            reason = f"more than one source file ({sources[0]}, {sources[1]}), so it runs locally"
        elif others:
            o = others[0]
            if _suffix(o) in (".s", ".S", ".sx"):
                reason = f"{o} is assembler source, which is never distributed, so it runs locally"
            elif _suffix(o) in (".o", ".a", ".so", ".obj", ".lo"):
                reason = f"{o} is a link input, so it runs locally"
            else:
                reason = f"{o} is not a C, C++ or Objective-C source, so it runs locally"
        elif not (c_flag or s_flag):
            reason = "no -c or -S, so this links and runs locally"
        elif not sources:
            reason = "no C, C++ or Objective-C source file, so it runs locally"

    job.mode = "-S" if s_flag else ("-c" if c_flag else None)
    if sources:
        src = job.source = sources[0]
        sfx = _suffix(src)
        base = src[src.rfind("/") + 1 :]
        if not reason and base.startswith(("conftest.", "tmp.conftest.")):
            reason = f"{src} is an autoconf test, so it runs locally"
        src_lang = job.language
        if src_lang is not None:
            job.temp_suffix = _LANG_TEMP_SUFFIX.get(src_lang, ".i")
            job.preprocessed = src_lang.endswith("cpp-output")
        else:
            job.temp_suffix = _TEMP_SUFFIX.get(sfx, ".i")
            job.preprocessed = sfx in PREPROCESSED_SUFFIXES
        if outputs:
            job.output = outputs[0]
            job.output_given = True
        elif job.mode is not None:
            job.output = _replace_suffix(base, ".s" if job.mode == "-S" else ".o")
    elif outputs:
        job.output = outputs[0]
        job.output_given = True
    return reason


def analyse(argv: list[str]) -> Job:
    """Analyse a compile command; argv[0] is the compiler.

    The reason for a local-only verdict is a short sentence naming the option.
    """
    argv = list(argv)
    job = Job([argv[0], *expand_wp(argv[1:])] if argv else [], argv)
    if not argv:
        job.reason = "empty command line"
        return job
    reason = _scan(job, client=True)
    if not reason:
        from meshcc.compiler import policy  # lazy: policy imports this module

        refused = policy.refusal(remote_argv(job))
        if refused:
            reason = refused if refused.endswith("locally") else refused + ", so it runs locally"
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
        elif a in _SEPARATE or a in ("-o", "-x"):
            skip = True
        elif a.startswith("-Wp,"):
            # cc1 sees a -MF given here too; the driver's own %b.d loses to it, as to ours.
            mf = mf or ",-MF" in a or a.startswith(("-Wp,-MD,", "-Wp,-MMD,"))
    return md, mf, mt


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
            if a in _SEPARATE or a == "-x":
                if i < n:
                    out.append(args[i])
                i += 1
    md, mf, mt = _driver_dep_flags(args[1:])
    if md:
        if not mf:
            if job.output_given and job.output is not None:
                dep = _replace_suffix(job.output, ".d")
            elif job.source is not None:
                base = job.source[job.source.rfind("/") + 1 :]
                dep = _replace_suffix(base, ".d")
            else:
                dep = None
            if dep is not None:
                out += ("-MF", dep)
        if not mt and job.output_given and job.output is not None:
            out += ("-MQ", job.output)
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
            if a in _SEPARATE:
                if i < n:
                    out.append(args[i])
                i += 1
    if not job.output_given and job.output is not None:
        out += ("-o", job.output)
    return out
