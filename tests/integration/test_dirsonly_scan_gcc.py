"""The directives-only scan's cheap forms (policy._splice, policy._followed, the #pragma rule)
against what real gcc obeys in a received body.

Why: the daemon vets every directive of a -fdirectives-only body because gcc executes them
(integration/test_dirsonly_gcc.py shows #include; test_dirsonly_opt_gcc.py the spliced
``%:include``). The scan's memchr loops replace slower forms that had those proofs; here each
construct a loop or the narrower #pragma rule must still catch is shown to be obeyed by gcc
on a server-side compile (``-fdirectives-only`` on a ``.i``, as rewrite_for_job runs it),
and refused by the scan. Each body reads a file the server must not reveal: its contents
end up in the object, or its existence and age in the diagnostics.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from meshcc.compiler import args, policy


def _compile(tmp: Path, body: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
    """gcc on a received body as the server runs it (-S: the assembly shows what was read)."""
    src = tmp / "in.i"
    src.write_bytes(body)
    return subprocess.run(
        ["gcc", *extra, args.DIRECTIVES_ONLY, "-S", str(src), "-o", str(tmp / "out.s")],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    header = tmp_path / "secret.h"
    header.write_text("int leaked_from_the_server;\n")
    return header


@pytest.mark.parametrize(
    "template,extra",
    [
        # a splice with blanks between the backslash and the newline (gcc warns, then splices)
        ('#inc\\ \t\nlude "{}"\nint a;\n', ()),
        # ??= is # and ??/ a backslash under -trigraphs (-std=c89/c99 turn them on too)
        ('??=include "{}"\nint a;\n', ("-trigraphs",)),
        ('#inc??/\nlude "{}"\nint a;\n', ("-trigraphs",)),
        # a digraph made by a splice with blanks
        ('%\\  \n:include "{}"\nint a;\n', ()),
    ],
)
def test_gcc_reads_the_file_and_the_scan_refuses(
    tmp_path: Path, secret: Path, template: str, extra: tuple[str, ...]
) -> None:
    body = template.format(secret).encode()
    res = _compile(tmp_path, body, *extra)
    assert res.returncode == 0, res.stderr
    assert "leaked_from_the_server" in (tmp_path / "out.s").read_text()  # the threat is real
    why = policy.scan_source_refusal(body)
    assert why is not None  # (as #include, or as the "#inc" of the reading without trigraphs)
    assert policy.directive_refusal_full(body) == why  # the reference lexer agrees


@pytest.mark.parametrize(
    "line",
    [
        '#pragma GCC dependency "{}"',
        '#pragma GCC /*\n*/ dependency "{}"',  # a comment carries the directive's line on
        '#  pragma GCC /* a\n b */ dependency "{}"',
        '%:pragma GCC dep\\\nendency "{}"',
    ],
)
def test_gcc_probes_a_pragma_dependency_and_the_scan_refuses(tmp_path: Path, line: str) -> None:
    """``#pragma GCC dependency`` stats a server file: gcc says whether it exists (a fatal
    error naming it) and whether it is newer than the source. The fast path must decline
    every spelling of it, comments between the words included, and the scan refuse it."""
    missing = tmp_path / "no-such-file.h"
    body = f"{line.format(missing)}\nint a;\n".encode()
    res = _compile(tmp_path, body)
    assert res.returncode != 0 and str(missing) in res.stderr  # a probe of the server's disk
    present = tmp_path / "present.h"
    present.write_text("")
    later = time.time() + 3600  # newer than the body gcc is about to get
    os.utime(present, (later, later))
    newer = _compile(tmp_path, body.replace(str(missing).encode(), str(present).encode()))
    assert newer.returncode == 0 and "older than" in newer.stderr
    assert not policy._fast_accepts(policy._splice(body))
    why = policy.scan_source_refusal(body)
    assert why is not None and "dependency" in why


def test_a_pragma_without_dependency_stays_on_the_fast_path(tmp_path: Path) -> None:
    """The #pragma lines real headers carry (diagnostic push/pop, once, pack) are accepted by
    the fast path: the narrower rule does not send real bodies to the slow lexer."""
    body = (
        b'# 1 "x.c"\n#pragma GCC diagnostic push\n#pragma GCC diagnostic ignored "-Wall"\n'
        b"#pragma pack(push, 1)\nstruct s { char c; int i; };\n#pragma pack(pop)\n"
        b"#pragma GCC diagnostic pop\nint a;\n"
    )
    assert _compile(tmp_path, body).returncode == 0
    assert policy._fast_accepts(policy._splice(body))
    assert policy.scan_source_refusal(body) is None


def test_real_bodies_splice_as_the_regular_expression_does(
    zlib_source: Path, tmp_path: Path
) -> None:
    """On real directives-only bodies (every zlib file at -O2), the splice loop gives the
    regular expression's text and the fast path vouches for the body."""
    sources = sorted(p.name for p in zlib_source.glob("*.c"))
    assert sources
    for name in sources:
        body = subprocess.run(
            ["gcc", "-O2", "-I.", args.DIRECTIVES_ONLY, "-E", name],
            cwd=zlib_source,
            capture_output=True,
            check=True,
        ).stdout
        assert b"#define" in body
        assert policy._splice(body) == re.sub(policy._SPLICE, b"", body), name
        assert policy._fast_accepts(policy._splice(body)), name
        assert policy.scan_source_refusal(body) is None, name
