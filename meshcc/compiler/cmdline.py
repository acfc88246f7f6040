"""gcc command-line knowledge shared by the client's analysis and the server's policy.

One walk over a compile command (:func:`scan`, distcc 3.4's ``dcc_scan_args`` and more)
fills a :class:`Job` and says why the command cannot be distributed, as a short clause
naming the option (``"-E only preprocesses"``). The client (:mod:`meshcc.compiler.args`)
and the server (:mod:`meshcc.compiler.policy`) both use it; neither imports the other's
private names. On the compile client's hot path: imports nothing.
"""

__all__ = [
    "CPP_OUTPUT_LANGUAGE",
    "PREPROCESSED_SUFFIXES",
    "SEPARATE",
    "SOURCE_SUFFIXES",
    "Job",
    "expand_wp",
    "replace_suffix",
    "scan",
    "suffix",
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
TEMP_SUFFIX = {
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
_LANGTEMP_SUFFIX = {
    "c": ".i",
    "cpp-output": ".i",
    "c++": ".ii",
    "c++-cpp-output": ".ii",
    "objective-c": ".mi",
    "objective-c-cpp-output": ".mi",
    "objective-c++": ".mii",
    "objective-c++-cpp-output": ".mii",
}
_OK_LANGUAGES = frozenset(_LANGTEMP_SUFFIX) | {"none"}

# Options whose value is the next argument (so that value is not an input file).
SEPARATE = frozenset(
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
NATIVE_OPTIONS = frozenset(("-march=native", "-mtune=native", "-mcpu=native"))
# Profile options: they read or write .gcda/.gcno files beside the object, or tune code
# from them; the client keeps them local and the server refuses them, by this one list.
PROFILE_PREFIXES = (
    "-fprofile-",
    "--coverage",
    "-ftest-coverage",
    "-fauto-profile",
    "-fbranch-probabilities",
)
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


def suffix(path: str) -> str:
    """The suffix of the last path component, from its last dot ('' if none)."""
    base = path[path.rfind("/") + 1 :]
    dot = base.rfind(".")
    return base[dot:] if dot >= 0 else ""


def replace_suffix(path: str, new: str) -> str:
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


# Options that fell through every rule of scan() (no effect, no value), per side: a build
# sends the same few dozen on every job, and a long-running daemon then checks each with
# one set lookup. Bounded in count and length (a client cannot grow them).
_PLAIN: dict[bool, set[str]] = {False: set(), True: set()}
_PLAIN_MAX = 4096
_PLAIN_LEN = 128


def scan(job: Job, client: bool) -> str:
    """Walk job.argv once, fill job's fields, and return why it cannot be distributed, or ''.

    ``client`` adds the client-only rules (response files, -gsplit-dwarf, ...) whose
    server-side counterparts live in policy.py. A reason is a short clause naming the
    option ("-E only preprocesses"); callers say what follows from it.
    """
    argv = job.argv
    n = len(argv)
    reason = ""
    sources: list[str] = []
    others: list[str] = []
    outputs: list[str] = []
    lang: str | None = None
    c_flag = s_flag = False
    plain = _PLAIN[client]
    i = 1
    while i < n:
        a = argv[i]
        i += 1
        if a in plain:
            continue
        if a[:1] != "-" or a == "-":
            if a == "-":
                reason = reason or "the source is read from standard input ('-')"
            elif not a:
                reason = reason or "an empty argument is not a file name"
            elif a[0] == "@" and client:
                reason = reason or (
                    f"{a} is a response file; meshcc does not expand response "
                    "files for remote compiles"
                )
            elif suffix(a) in SOURCE_SUFFIXES:
                if not sources:
                    job.language = lang
                sources.append(a)
            else:
                others.append(a)
            continue
        if reason:
            # Keep scanning only to skip option values; the first reason wins.
            if a in SEPARATE or a in ("-o", "-x"):
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
                    reason = "-o has no file name"
                    continue
                out = argv[i]
                i += 1
            else:
                out = a[2:]
            outputs.append(out)
            if out == "-":
                reason = "-o - writes the object to standard output"
        elif c1 == "x":
            if a == "-x":
                if i >= n:
                    reason = "-x has no language"
                    continue
                lang = argv[i]
                i += 1
            else:
                lang = a[2:]
            if lang not in _OK_LANGUAGES:
                reason = f"-x {lang}: only C, C++ and Objective-C are compiled remotely, "
            elif lang == "none":
                lang = None
        elif a == "-E":
            reason = "-E only preprocesses"
        elif c1 == "M":
            if a in ("-MF", "-MT", "-MQ"):
                i += 1
            elif a in _ALLOWED_M or a[:3] in ("-MF", "-MT", "-MQ"):
                pass
            else:
                reason = f"{a} writes dependencies instead of compiling"
        elif a in NATIVE_OPTIONS:
            reason = f"{a} depends on this machine's CPU"
        elif a.startswith("-Wa,"):
            if _wa_local(a):
                reason = f"{a} asks the assembler for a listing or dependency file"
        elif a.startswith(("-specs", "--specs")):
            reason = f"{a} reads a local specs file"
            if a in SEPARATE:
                i += 1
        elif a.startswith(PROFILE_PREFIXES):
            reason = f"{a} reads or writes profile data"
        elif a == "-frepo":
            reason = "-frepo writes .rpo files"
        elif a.startswith("-dr"):
            reason = f"{a} writes RTL dump files"
        elif a.startswith(_PRINT_ONLY):
            reason = f"{a} prints information instead of compiling"
        elif a == "-fsyntax-only":
            reason = "-fsyntax-only produces no object"
        elif client and a == "-gsplit-dwarf":
            reason = (
                "-gsplit-dwarf writes a .dwo file beside the object that the protocol cannot return"
            )
        elif client and a.startswith(("-save-temps", "--save-temps")):
            reason = f"{a} keeps intermediate files beside the output"
        elif client and a.startswith("-fplugin"):
            reason = f"{a}: servers refuse options that load code into the compiler"
        elif c1 == "-" and not a.startswith(_KNOWN_LONG):
            reason = f"{a}: long option spellings are not analysed"
        elif a in SEPARATE:
            i += 1
        elif len(plain) < _PLAIN_MAX and len(a) <= _PLAIN_LEN:
            plain.add(a)

    if not reason:
        if len(outputs) > 1:
            reason = "more than one -o"
        elif len(sources) > 1:
            reason = f"more than one source file ({sources[0]}, {sources[1]})"
        elif others:
            o = others[0]
            if suffix(o) in (".s", ".S", ".sx"):
                reason = f"{o} is assembler source, which is never distributed"
            elif suffix(o) in (".o", ".a", ".so", ".obj", ".lo"):
                reason = f"{o} is a link input"
            else:
                reason = f"{o} is not a C, C++ or Objective-C source"
        elif not (c_flag or s_flag):
            reason = "no -c or -S: this links"
        elif not sources:
            reason = "no C, C++ or Objective-C source file"

    job.mode = "-S" if s_flag else ("-c" if c_flag else None)
    if sources:
        src = job.source = sources[0]
        sfx = suffix(src)
        base = src[src.rfind("/") + 1 :]
        if not reason and base.startswith(("conftest.", "tmp.conftest.")):
            reason = f"{src} is an autoconf test"
        src_lang = job.language
        if src_lang is not None:
            job.temp_suffix = _LANGTEMP_SUFFIX.get(src_lang, ".i")
            job.preprocessed = src_lang.endswith("cpp-output")
        else:
            job.temp_suffix = TEMP_SUFFIX.get(sfx, ".i")
            job.preprocessed = sfx in PREPROCESSED_SUFFIXES
        if outputs:
            job.output = outputs[0]
            job.output_given = True
        elif job.mode is not None:
            job.output = replace_suffix(base, ".s" if job.mode == "-S" else ".o")
    elif outputs:
        job.output = outputs[0]
        job.output_given = True
    return reason
