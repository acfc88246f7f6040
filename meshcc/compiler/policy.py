"""The compile server's rules: which received command lines it runs, and how it rewrites them.

The server runs the compiler on text the client already preprocessed, inside a per-job
temp dir. Anything that would load or run code, read files on the server, or write files
the protocol cannot return (or outside the job dir) is refused with a short sentence
naming the option. The client calls :func:`refusal` on what it would send, so it keeps
such jobs local up front with the same reason.

Public API::

    refusal(argv: list[str]) -> str | None
        None if the server may run argv (argv[0] is the compiler, not checked here: the
        toolchain map does that), else the reason.
    NATIVE_REFUSAL: str
        The server's reason for ``-march=native`` and friends (format with the option).
    rewrite_for_job(argv: list[str], input_path: str, output_path: str, *,
                    hide_source_lines: bool = True) -> list[str]
        The argv to execute: the source replaced by input_path, the -o value by output_path
        (appended if missing), -x c/c++/objective-c(++) forced to their *-cpp-output forms,
        and (by default) ``-fno-diagnostics-show-caret`` appended. Raises ValueError if argv
        has no source; call it only after refusal(argv) returned None.
    scan_source_refusal(data: bytes, directives: bool = True) -> str | None
        Cheap best-effort scan of the received preprocessed text for assembler directives
        and pragmas that read server files.

Deliberate choice: an absolute or '..' source or -o name is *not* refused. Those names are
never used for file access on the server (both are replaced by rewrite_for_job), and CMake
passes absolute source paths in every compile, so refusing them would make every CMake
build run locally. Options that derive other output names (-dumpdir, -dumpbase, -auxbase)
are not rewritten, so those are refused when absolute or containing '..'.

Why ``native`` is refused although meshcc clients distribute ``-march=native``: on the
server it would mean the *server's* CPU. A meshcc client resolves it before sending
(:mod:`meshcc.compiler.native`: the exact options the client's driver gives cc1), so only
an unresolved ``native`` (a stock distcc client with ``-mcpu=native``, say) reaches this
rule, and the client then compiles locally.

Why ``hide_source_lines``: gcc prints the source line under a diagnostic by reading the
file named in the line markers from disk, so a crafted ``# 1 "/home/x/.netrc"`` marker
followed by a syntax error would echo server files back in stderr. A received path that
does not exist on the server already shows no source line, so little is lost.
"""

from __future__ import annotations

from meshcc.compiler import cmdline

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - `typing` costs the compile client ~40 M instructions
    from typing import Any

__all__ = [
    "ALLOWED_LANGUAGES",
    "NATIVE_REFUSAL",
    "refusal",
    "rewrite_for_job",
    "scan_source_refusal",
    "vet",
]

NATIVE_REFUSAL = (
    "{} would select the server's CPU, not the client's; a meshcc client sends the "
    "options it resolves to instead"
)
_NATIVE = cmdline.NATIVE_OPTIONS

# Languages the server accepts after -x. The plain ones are rewritten to *-cpp-output.
ALLOWED_LANGUAGES = frozenset(
    (
        "cpp-output",
        "c++-cpp-output",
        "objective-c-cpp-output",
        "objective-c++-cpp-output",
        "none",
        "c",
        "c++",
        "objective-c",
        "objective-c++",
    )
)
_D_ALLOWED = frozenset(("-dA", "-dp", "-dP"))
_AUX_NAMES = frozenset(("-dumpdir", "-dumpbase", "-dumpbase-ext", "-auxbase", "-auxbase-strip"))
_PROFILE = cmdline.PROFILE_PREFIXES
_EXTRA_FILE = {
    "-gsplit-dwarf": "writes a .dwo file beside the object that the protocol cannot return",
    "-fstack-usage": "writes a .su file beside the object that the protocol cannot return",
    "-fcallgraph-info": "writes a .ci file beside the object that the protocol cannot return",
    "-fsave-optimization-record": "writes an optimization record file that the protocol "
    "cannot return",
}


def _assembler_option_refusal(opt: str, shown: str) -> str | None:
    """One option handed to the assembler (a piece of -Wa, or an -Xassembler value).

    GNU as reads its options with getopt_long_only: one dash or two, and any unambiguous
    prefix of a long name (``-MD``, ``--M``, ``--al=FILE`` all work). So the option's name
    is judged with its dashes and value stripped: a listing (``a...``), a dependency file
    (``M``/``MD``), an output (``o...``) or an include directory for ``.include``
    (``I...``), which all read or write files on the server."""
    if opt.startswith("@"):
        return f"{shown} makes the assembler read a response file from the server's disk"
    if not opt.startswith("-"):
        return None  # a value of the option before it (judged by that option's name)
    name = opt[2:] if opt.startswith("--") else opt[1:]
    name = name.split("=", 1)[0]
    if name[:1] in ("a", "o") or name in ("M", "MD"):
        return f"{shown} makes the assembler write a listing, dependency or output file"
    if name[:1] == "I":
        return f"{shown} makes the assembler read files from a directory on the server"
    return None


def _path_escapes(path: str) -> bool:
    return path.startswith("/") or ".." in path.split("/")


# Options that passed every rule of _option_refusal on their own and take no value (a
# build sends the same few dozen on every job): a later job checks each with one set lookup.
# Bounded in count and length, so a client cannot grow it (a long option is simply checked).
_PLAIN_OK: set[str] = set()
# Options that passed every rule and take the next argument as their value (-o, -I, ...):
# the walk skips that value unchecked, and so does the fast path.
_VALUE_OK: set[str] = set()
_PLAIN_MAX = 4096
_PLAIN_LEN = 128


def _option_refusal(argv: list[str]) -> str | None:
    """Refusals for single options, before the structural scan in cmdline.

    The fast path: when every argument is a known plain option, a known option with a value
    (whose value the walk skips unchecked too) or a non-option word, the full walk would
    refuse nothing (each of those passes every rule by itself), so it is skipped."""
    plain = _PLAIN_OK
    valued = _VALUE_OK
    n = len(argv)
    i = 1
    while i < n:
        a = argv[i]
        i += 1
        if a in plain:
            continue
        if a in valued:
            i += 1
            continue
        c = a[:1]
        if c in ("-", "@"):
            return _option_refusal_walk(argv)
    return None


def _option_refusal_walk(argv: list[str]) -> str | None:
    """The full walk of :func:`_option_refusal`; remembers the plain options it passed."""
    plain = _PLAIN_OK
    n = len(argv)
    i = 1
    while i < n:
        a = argv[i]
        i += 1
        nxt = argv[i] if i < n else ""
        if a[:1] == "@":
            return f"{a}: response files would be read from the server's disk"
        if a[:1] != "-":
            continue
        if a in _NATIVE:
            return NATIVE_REFUSAL.format(a)
        if a.startswith(("-fplugin=", "-fplugin-arg-", "-fplugin")):
            return f"{a} loads code into the compiler"
        if a.startswith("-iplugindir"):
            return f"{a} points the compiler at a plugin directory on the server"
        if a.startswith(("-specs", "--specs")):
            return f"{a} reads a specs file, which can run any program"
        if a == "-wrapper":
            return "-wrapper runs the compiler's programs through another command"
        if a.startswith("-fcompare-debug="):
            # gcc compiles a second time with these words as driver options: -wrapper,
            # -fplugin=, -B... inside them would run anything (plain -fcompare-debug is safe).
            return f"{a} hands its own options to a second compile, unchecked"
        if a.startswith(("-B", "--prefix")):
            return f"{a} makes the compiler run programs from another directory"
        if a.startswith("-Wa,"):
            for piece in a[4:].split(","):
                r = _assembler_option_refusal(piece, a)
                if r:
                    return r
            continue
        if a == "-Xassembler":
            r = _assembler_option_refusal(nxt, f"-Xassembler {nxt}")
            if r:
                return r
            i += 1
            continue
        if a == "-aux-info" or a.startswith("-aux-info"):
            return f"{a} writes an extra file"
        if a.startswith(("-save-temps", "--save-temps")):
            return f"{a} writes intermediate files"
        if a.startswith("-fdump-"):
            return f"{a} writes compiler dump files"
        if a in _AUX_NAMES:
            if _path_escapes(nxt):
                return f"{a} {nxt} would put auxiliary files outside the job directory"
            i += 1
            continue
        if a.startswith("-d") and len(a) > 2:
            if a in _D_ALLOWED:
                continue
            if a.startswith("-dump"):
                return f"{a} prints information instead of compiling"
            return f"{a} writes compiler dump files"
        if a.startswith("-fopt-info") and "=" in a:
            return f"{a} writes optimization notes to a file"
        if a.startswith(_PROFILE):
            return f"{a} reads or writes profile data files"
        if a in _EXTRA_FILE:
            return f"{a} {_EXTRA_FILE[a]}"
        if a.startswith("-fcallgraph-info"):
            return f"{a} writes a .ci file beside the object that the protocol cannot return"
        if a.startswith("-fdiagnostics-"):
            if "file" in a or "sarif" in a:
                return f"{a} writes diagnostics to a file"
            if a.startswith("-fdiagnostics-generate-patch"):
                return f"{a} prints patches built from files on the server"
            continue
        if a.startswith("-time="):
            return f"{a} writes a timing file"
        if a.startswith("-Wp,") or a == "-Xpreprocessor":
            return f"{a} passes options to the preprocessor, which runs on the client"
        if a.startswith(("-include", "-imacros", "--include", "--imacros")):
            return f"{a} reads a file; preprocessing happens on the client"
        if a == "-fno-preprocessed":
            return f"{a} would run the preprocessor on the server, reading server files"
        # -fdirectives-only is accepted: gcc then obeys every directive in the received text
        # (#include too), which scan_source_refusal -> directive_refusal refuses.
        if a.startswith(
            ("-fmodule-mapper", "-fmodules-ts", "-fmodule-header", "-fmodule-only", "-fdeps-")
        ):
            return f"{a}: C++ modules read and write files outside the job"
        if a.startswith("-fself-test"):
            return f"{a} reads files on the server"
        if a[1:2] == "M":
            return f"{a}: dependency options belong to the client's preprocessor run"
        if a == "-E":
            return "-E only preprocesses; preprocessing happens on the client"
        if a == "-x" or a.startswith("-x"):
            lang = nxt if a == "-x" else a[2:]
            if lang not in ALLOWED_LANGUAGES:
                return f"-x {lang}: only preprocessed C, C++ and Objective-C are compiled"
            if a == "-x":
                i += 1
            continue
        if a in cmdline.SEPARATE or a == "-o":
            i += 1
            if len(_VALUE_OK) < _PLAIN_MAX:
                _VALUE_OK.add(a)  # passed every rule above; its value is not checked
        elif len(plain) < _PLAIN_MAX and len(a) <= _PLAIN_LEN:
            plain.add(a)  # passed every rule above, takes no value
    return None


def refusal(argv: list[str]) -> str | None:
    """None if the server may run this command line, else a short reason naming the option.

    Covers the option rules above plus everything :func:`meshcc.compiler.args.analyse`
    would keep local (distcc's table: two sources, no -c, conftest.*, ...); an unresolved
    ``-march=native`` (or -mtune/-mcpu) is refused: see the module docstring.
    """
    return vet(argv)[0]


def vet(argv: list[str]) -> tuple[str | None, cmdline.Job | None]:
    """:func:`refusal`'s verdict, and the scanned job when there is no refusal (its source,
    mode and temp suffix: what the server needs, without scanning the argv again)."""
    if not argv:
        return "empty command line", None
    r = _option_refusal(argv)
    if r:
        return r, None
    job = cmdline.Job(list(argv), list(argv))
    why = cmdline.scan(job, client=False)
    if why:
        return why, None
    return None, job


def rewrite_for_job(
    argv: list[str], input_path: str, output_path: str, *, hide_source_lines: bool = True
) -> list[str]:
    """Point argv at the job's files and force the preprocessed-input languages.

    A stock distcc client sends ``-x c`` unchanged; compiling the received text as C would
    run the preprocessor on the server, and a crafted ``#include "/etc/shadow"`` would then
    read server files. Only the first source and every -o value are replaced (refusal()
    has already ensured there is at most one of each).
    """
    out = [argv[0]]
    n = len(argv)
    i = 1
    replaced_source = False
    saw_output = False
    while i < n:
        a = argv[i]
        i += 1
        if a[:1] != "-" or a == "-":
            if not replaced_source and cmdline.suffix(a) in cmdline.SOURCE_SUFFIXES:
                out.append(input_path)
                replaced_source = True
            else:
                out.append(a)
        elif a == "-o":
            out += ("-o", output_path)
            i += 1
            saw_output = True
        elif a.startswith("-o"):
            out += ("-o", output_path)
            saw_output = True
        elif a == "-x":
            if i < n:
                out += ("-x", cmdline.CPP_OUTPUT_LANGUAGE.get(argv[i], argv[i]))
            i += 1
        elif a.startswith("-x"):
            out.append("-x" + cmdline.CPP_OUTPUT_LANGUAGE.get(a[2:], a[2:]))
        else:
            out.append(a)
            if a in cmdline.SEPARATE:
                if i < n:
                    out.append(argv[i])
                i += 1
    if not replaced_source:
        raise ValueError("no source file in the command line")
    if not saw_output:
        out += ("-o", output_path)
    if hide_source_lines:
        out.append("-fno-diagnostics-show-caret")
    return out


# Assembler directives (case-insensitive in GNU as) and a pragma that open server files.
_INCLUDE_FOLLOW = frozenset(b' \t\\"')
# Compiled at the first scan, so the compile client (which imports this module for
# refusal() on every compile) never imports ``re``. Letter classes rather than IGNORECASE:
# the pattern then starts with the literal ".", which the regex engine finds with a fast
# scan, and the whole source is searched once without a lowercased copy of it.
_directive: Any = None
_INCBIN_REFUSAL = (
    "the source uses the assembler directive .incbin, which reads a file on the server"
)
_INCLUDE_REFUSAL = (
    "the source uses the assembler directive .include, which reads a file on the server"
)


def _directive_pattern() -> Any:
    global _directive
    if _directive is None:
        import re

        _directive = re.compile(rb"\.[iI][nN][cC](?:[bB][iI][nN]|[lL][uU][dD][eE])").search
    return _directive


_dependency: Any = None


def _dependency_pragma() -> Any:
    """The search for gcc's dependency pragma (compiled on first use: rare in sources)."""
    global _dependency
    if _dependency is None:
        import re

        _dependency = re.compile(rb"GCC[ \t]+dependency").search
    return _dependency


def scan_source_refusal(data: bytes, directives: bool = True) -> str | None:
    """Refuse preprocessed text that would make the compiler read files on the server.

    A best-effort substring test (string concatenation or assembler macros can hide a
    directive): ``.incbin`` copies any file into the object, ``.include`` echoes a file's
    lines in assembler errors, ``#pragma GCC pch_preprocess`` opens a file as a PCH.
    Running the compiler without access to private files is the real protection.

    ``directives``: whether the job's options may make gcc obey directives in the text
    (``-fdirectives-only``): only then is every directive checked (:func:`directive_refusal`,
    ~1.3-2.5 ms on a 300-750 KB body); a plain ``.i`` compile treats a stray ``#include``
    as an error.

    Runs on every job the daemon serves: two passes over the source (the pragma, whose
    case matters, and one regular-expression search for both directives in any case),
    without lowercasing the whole text first.
    """
    if directives:  # a -fdirectives-only job: gcc obeys the directives in the text
        why = directive_refusal(data)
        if why:
            return why
    if b"pch_preprocess" in data:
        return "the source uses #pragma GCC pch_preprocess, which opens a file on the server"
    # gcc obeys this pragma in a .i too (and in _Pragma("...") form): it stats the named
    # file, so a client could probe which files the server has, or hang cc1 on a FIFO.
    if b"dependency" in data and _dependency_pragma()(data):
        return "the source uses #pragma GCC dependency, which opens a file on the server"
    search = _directive_pattern()
    include = False
    m = search(data)
    while m is not None:
        end = m.end()
        if m.group()[4] in b"bB":  # .incbin, anywhere: the more serious, reported first
            return _INCBIN_REFUSAL
        nxt = data[end : end + 1]
        if not nxt or nxt[0] in _INCLUDE_FOLLOW:
            include = True
        m = search(data, end)
    if include:
        return _INCLUDE_REFUSAL
    return None


# --- directives in the received text (for -fdirectives-only jobs) ---------------------------

# Directives a directives-only body legitimately carries (a full body: line markers, #pragma
# and #ident only).  Everything else is refused: #include/#include_next/#import read files,
# and #if can probe them with __has_include.
_ALLOWED_DIRECTIVES = frozenset((b"", b"define", b"undef", b"pragma", b"ident", b"sccs", b"line"))
# A '#' inside a comment, a string, a character constant or a C++ raw string is not a
# directive (and a directives-only body keeps the headers' comments, which mention #if
# often), so those are blanked first, the way gcc's lexer skips them.
_LEXEMES = (b"/*", b"//", b'"', b"'")
_STRING = rb'"(?:\\.|[^"\\\n])*"'
_CHAR = rb"'(?:\\.|[^'\\\n])*'"
_RAW_OPEN = rb"([^()\\ \t\v\f\n]{0,16})\("
_DIRECTIVE = rb"[ \t\f\v\r]*(?:#|%:)[ \t\f\v\r]*(\w*)(.*)"
_SPLICE = rb"\\[ \t\f\v\r]*\n"


def _strip_literals(text: bytes) -> bytes:
    """text with comments as one blank and string, character and raw string literals as ""."""
    import re

    string, char, raw_open = re.compile(_STRING), re.compile(_CHAR), re.compile(_RAW_OPEN)
    out: list[bytes] = []
    pos = 0
    n = len(text)
    # bytes.find per lexeme (memchr speed) instead of one regex search over every byte.
    nxt = dict.fromkeys(_LEXEMES, -1)
    while True:
        i = n
        kind = b""
        for lex, seen in nxt.items():
            at = seen
            if at < pos and at != n:
                found = text.find(lex, pos)
                nxt[lex] = at = n if found < 0 else found
            if at < i:
                i, kind = at, lex
        if not kind:
            out.append(text[pos:])
            return b"".join(out)
        out.append(text[pos:i])
        if kind == b"/*":
            end = text.find(b"*/", i + 2)
            out.append(b" ")
            if end < 0:
                return b"".join(out)
            pos = end + 2
        elif kind == b"//":
            end = text.find(b"\n", i)
            out.append(b" ")
            pos = n if end < 0 else end
        else:
            # R"delim( ... )delim" (also u8R, uR, UR, LR): not a raw string after a longer
            # identifier such as fooR.
            if kind == b'"' and text[i - 1 : i] == b"R":
                start = i - 1  # where the literal's prefix starts
                if text[start - 2 : start] == b"u8":
                    start -= 2
                elif text[start - 1 : start] in (b"u", b"U", b"L"):
                    start -= 1
                before = text[start - 1 : start] if start > 0 else b""
                ro = raw_open.match(text, i + 1)
                if ro is not None and not (before.isalnum() or before == b"_"):
                    end = text.find(b")" + ro.group(1) + b'"', ro.end())
                    out.append(b'""')
                    if end < 0:
                        return b"".join(out)
                    pos = end + len(ro.group(1)) + 2
                    continue
            lit = (string if kind == b'"' else char).match(text, i)
            if lit is None:
                out.append(kind)  # unterminated: gcc lexes on from the next character
                pos = i + 1
            else:
                out.append(b'""')
                pos = lit.end()


def directive_refusal(data: bytes) -> str | None:
    """Refuse received text with a directive that could read or probe a file on the server.

    Backslash-newline splices are undone first, ``%:`` counts as ``#``, and text with
    ``??`` is read both with and without trigraphs (``??=`` is ``#``, ``??/`` a backslash),
    whatever -std the job uses: a false refusal only sends the job back to the client.
    Best effort like scan_source_refusal: a ``_Pragma`` built by macro pasting in a
    directives-only body is not seen here.

    Each reading first goes through :func:`_fast_accepts` (C-speed regular expressions and
    memchr loops, ~1-1.5 ms on a 300-750 KB body); only text it cannot vouch for is lexed by
    :func:`_directive_in` (a Python loop per comment and literal, ~40 ms).
    """
    if b"#" not in data and b"%" not in data and b"??=" not in data:
        return None  # (``%`` not ``%:``: a splice can join ``%\<newline>:`` into ``%:``)
    # Whether trigraphs are on depends on -std and -trigraphs: read the text both ways.
    variants = [data]
    # (``??=`` or ``??/`` somewhere, found by memchr over the few '?': else the replaced text
    # would be the same text, read once; ``??`` alone is common in xz-utils' bodies)
    if _followed(data, b"?", (b"?=", b"?/")):
        variants.append(data.replace(b"??/", b"\\").replace(b"??=", b"#"))
    for variant in variants:
        spliced = _splice(variant)
        if _fast_accepts(spliced):
            continue
        why = _directive_in(spliced)
        if why:
            return why
    return None


# Cheap forms of two questions every directives-only body asks (profiled on zlib, lua and
# xz-utils bodies at -O2, 300-750 KB): a two-byte ``in`` test or a regular expression search
# runs at ~1-2.5 GB/s in CPython (0.3-1.1 ms per body each), while ``bytes.find`` of one byte
# is memchr, and a body holds only tens of ``?``, ``%`` and ``\\`` but hundreds of kilobytes.
# Each loop gives exactly the slow form's answer; past _LOOP_LIMIT hits (a crafted body full
# of them) it hands over to the slow form, so its cost stays bounded.
_LOOP_LIMIT = 4096
_splice_tail: Any = None


def _followed(data: bytes, first: bytes, follows: tuple[bytes, ...]) -> bool:
    """Whether the one byte ``first`` is anywhere directly followed by one of ``follows``
    (``any(first + f in data for f in follows)``), by memchr over ``first``."""
    find = data.find
    starts = data.startswith
    i = find(first)
    hits = 0
    while i >= 0:
        if starts(follows, i + 1):
            return True
        hits += 1
        if hits > _LOOP_LIMIT:
            return any(first + f in data for f in follows)
        i = find(first, i + 1)
    return False


def _splice(data: bytes) -> bytes:
    """``re.sub(_SPLICE, b"", data)``: every backslash-newline (blanks allowed between them,
    as gcc allows) removed in one left-to-right pass, without a copy when there is none."""
    global _splice_tail
    find = data.find
    i = find(b"\\")
    if i < 0:
        return data
    if _splice_tail is None:
        import re

        _splice_tail = re.compile(rb"[ \t\f\v\r]*\n").match
    tail = _splice_tail
    pieces: list[bytes] = []
    pos = 0
    hits = 0
    last = len(data) - 1
    while i >= 0:
        hits += 1
        if hits > _LOOP_LIMIT:
            import re

            return re.sub(_SPLICE, b"", data)
        # (most backslashes are escapes in literals: one byte says so, without a match)
        after = data[i + 1] if i < last else 0
        if after == 10:
            end = i + 2
        elif after in _BLANKS:
            m = tail(data, i + 1)
            end = -1 if m is None else m.end()
        else:
            end = -1
        if end < 0:
            i = find(b"\\", i + 1)
        else:
            pieces.append(data[pos:i])
            pos = end
            i = find(b"\\", pos)
    if not pieces:
        return data
    pieces.append(data[pos:])
    return b"".join(pieces)


def directive_refusal_full(data: bytes) -> str | None:
    """directive_refusal without the fast path: the reference the property tests compare with."""
    if b"#" not in data and b"%" not in data and b"??=" not in data:
        return None
    import re

    variants = [data]
    if b"??" in data:
        variants.append(data.replace(b"??/", b"\\").replace(b"??=", b"#"))
    for variant in variants:
        why = _directive_in(re.sub(_SPLICE, b"", variant))
        if why:
            return why
    return None


# The fast path: C-speed regular expressions instead of _directive_in's Python loop per
# comment and literal (a directives-only body keeps its headers' comments: ~2,000 in lua's
# lvm.c), in three steps.
# 1. Suspects in the spliced text: every '#' (or '%:') not followed by an allowed name, a
#    line number or nothing (_SUSPECT; a '/' after it counts as "something": a comment could
#    hide a name, as in #/**/include) that could start a line once comments are blanks, i.e.
#    whose nearest non-blank before it is a newline, the text's start or a comment's '*/'.
#    A directive _directive_in refuses is always one of these; none at all: accepted.
# 2. Else the text up to the end of the last suspect's line (or, if a comment is open there,
#    of the line where it closes: it could hide the name after a '#') is lexed by _WALK, as
#    _strip_literals lexes it (strings, characters, raw strings, unterminated ones too) but
#    with literals left in place and each comment found as one match.  Every match is a
#    possessive run of non-comment tokens and then a comment (or the end), so the walk never
#    backtracks into another reading and each match starts where the last one ended.  Whether
#    a '#' is inside a comment or literal depends only on the text up to the end of its own
#    line (strings cannot span lines; an unterminated comment or raw string covers the rest
#    either way), so lexing that prefix is enough.
# 3. Joined with a blank per comment, the result's lines are the lexer's lines (plus a raw
#    string's own newlines: more lines to judge, never fewer), and _LEADING_BAD looks for a
#    line starting with a # that names no allowed directive.  None: accepted.  Otherwise
#    _directive_in decides.
_IDENT = rb"[A-Za-z0-9_]"
_WS = rb"[ \t\f\v\r]"
# A #pragma is fine unless its line could go on to name "dependency" (#pragma GCC dependency
# reads a file): after the name on that line, or after a comment or raw string that opens
# on it and may carry the lexer's logical line past a newline.
_PRAGMA_OK = rb"pragma(?![^\n]*?(?:dependency|/\*|R\"))"
_NAME_OK = rb"(?:define|undef|" + _PRAGMA_OK + rb"|ident|sccs|line|[0-9]+)(?!" + _IDENT + rb")"
# (after a '#' or '%:': what makes it a suspect)
_SUSPECT = rb"(?!" + _WS + rb"*+(?:" + _NAME_OK + rb"|(?![A-Za-z0-9_/])))"
_LEADING_BAD = _WS + rb"*+(?:#|%:)(?!" + _WS + rb"*+(?:" + _NAME_OK + rb"|(?!" + _IDENT + rb")))"
# A '"' opens a raw string after R, uR, UR, LR or u8R that does not end a longer
# identifier: _strip_literals' test, as lookbehinds (tried only at a '"').
_RAW_QUOTE = (
    rb'"(?:(?<=u8R")(?<!' + _IDENT + rb'u8R")'
    rb'|(?<=[uUL]R")(?<!' + _IDENT + rb'[uUL]R")'
    rb'|(?<=R")(?<!' + _IDENT + rb'R"))'
)
_RAW_DELIM = rb"[^()\\ \t\v\f\n]{0,16}"
_TOKEN = (
    rb"(?>[^/\"']++"  # code, newlines included
    + rb"|"
    + _RAW_QUOTE
    + rb"("
    + _RAW_DELIM
    + rb")\((?s:.*?)\)\2\""
    + rb"|("  # group 3: an unterminated raw string (the lexer stops there)
    + _RAW_QUOTE
    + _RAW_DELIM
    + rb"\((?s:.*))"
    + rb"|"
    + _STRING
    + rb"|"
    + _CHAR
    + rb"|/(?![*/])|[\"'])"  # a lone slash; an unterminated quote (kept as text)
)
_COMMENT_OR_END = (
    # "/*" to the first "*/" after it, unrolled (a lazy .*? costs ~10x more in sre);
    # an unterminated one (group 4) runs to the end, as the lexer drops the rest.
    rb"(?:/\*[^*]*+\*++(?:[^/*][^*]*+\*++)*+/|(/\*(?s:.*))|//[^\n]*+|\Z)"
)
_WALK = rb"((?:" + _TOKEN + rb")*+)" + _COMMENT_OR_END
_BLANKS = frozenset(b" \t\f\v\r")
_fast: Any = None


def _fast_accepts(spliced: bytes) -> bool:
    """True only if _directive_in(spliced) is None; False means "lex it fully"."""
    global _fast
    if _fast is None:
        import re

        _fast = (
            # one search per spelling, each with a literal prefix that sre skips to (an
            # alternation, or a search per line start, tries far more places: 2-7x slower)
            re.compile(rb"#" + _SUSPECT).finditer,
            re.compile(rb"%:" + _SUSPECT).finditer,
            re.compile(_WALK).findall,
            re.compile(_LEADING_BAD).match,
            re.compile(rb"\n" + _LEADING_BAD).search,
        )
    hashes, digraphs, walk, first_bad, bad = _fast
    last = -1
    # (a body without "%:" skips the digraph search: memchr over its few '%' is ~0.3-0.8 ms
    # cheaper than the search itself)
    for suspects in (hashes, digraphs) if _followed(spliced, b"%", (b":",)) else (hashes,):
        for m in suspects(spliced):
            at = m.start()
            # Only a '#' whose nearest non-blank before it ends a line or a comment (or
            # nothing is before it) can start a line once comments are blanks.
            start = at
            while start and spliced[start - 1] in _BLANKS:
                start -= 1
            if not start or spliced[start - 1] == 10 or spliced[start - 2 : start] == b"*/":
                last = max(last, at)
    if last < 0:
        return True
    n = len(spliced)
    kept: list[bytes] = []
    pos = 0
    cut = last
    while True:
        cut = spliced.find(b"\n", cut)
        cut = n if cut < 0 else cut + 1
        parts = walk(spliced, pos, cut)
        kept += [p[0] for p in parts]
        if cut == n:
            break
        # A comment left open at the cut may go on to hide the name of a '#' before it
        # (#/*<newline>*/include): lex on from where it opens to the line where it closes.
        # An unterminated comment or raw string runs to the cut, so only the last match
        # (or the one before the empty match findall may add at the cut) can hold one:
        # looking at those two, not at every comment's match, saves ~0.4 ms per body.
        tail = parts[-2:]
        open_comment = max([len(p[3]) for p in tail], default=0)
        if max([len(p[2]) for p in tail], default=0):
            kept, pos, cut = [], 0, n - 1  # a raw string left open: lex the whole text
        elif open_comment:
            pos = cut - open_comment  # its "/*": a comment, lexed again whole
            end = spliced.find(b"*/", pos + 2)
            cut = n - 1 if end < 0 else end + 2
        else:
            break
    text = b" ".join(kept)
    return first_bad(text) is None and bad(text) is None


def _directive_in(text: bytes) -> str | None:
    """The refusal for the first disallowed directive in spliced text, or None."""
    import re

    text = _strip_literals(text)
    directive = re.compile(_DIRECTIVE)
    for hit in re.finditer(rb"#|%:", text):
        at = hit.start()
        line = text.rfind(b"\n", 0, at) + 1
        if text[line:at].strip(b" \t\f\v\r"):
            continue  # not the first token on its line
        m = directive.match(text, line)
        if m is None:
            continue
        name, rest = m.group(1), m.group(2)
        if name.isdigit():
            continue  # a line marker
        if name not in _ALLOWED_DIRECTIVES:
            shown = name.decode("ascii", "replace")[:40]
            return f"the source has a #{shown} directive, which the server will not obey"
        if name == b"pragma" and b"dependency" in rest:
            return "the source uses #pragma GCC dependency, which reads a file on the server"
    return None
