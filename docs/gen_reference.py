#!/usr/bin/env python3
"""Generate docs/reference.md from meshcc's argparse parsers, so the docs cannot drift.

    python docs/gen_reference.py            # rewrite docs/reference.md
    python docs/gen_reference.py --check    # exit 1 if docs/reference.md is out of date

Every subcommand of ``meshcc.cli.main.build_parser()`` and every option is rendered
from the parser itself; the compile client's environment variables (which no parser
knows about) are kept as data here. tests/test_docs.py fails when the committed file
differs from this script's output: after changing an option, rerun the script.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "reference.md"

# (variable, meaning). Read by the compile client (meshcc-gcc & co., `meshcc COMPILER …`).
CLIENT_ENVIRONMENT: list[tuple[str, str]] = [
    (
        "DISTCC_HOSTS",
        (
            "host list in distcc's grammar (`host[:port][/limit][,lzo]`, `[IPv6]`, "
            "`localhost/N`, `--localslots=N`, `--localslots_cpp=N`, `--randomize`, `#` comments). "
            "When set it always wins: the local daemon is not asked"
        ),
    ),
    (
        "MESHCC_SOCKET",
        (
            "the local daemon's control socket; when set, the only one tried "
            "(default: `/run/meshcc/control.sock`, then `$XDG_RUNTIME_DIR/meshcc/control.sock` or "
            "`/tmp/meshcc-$UID/control.sock`)"
        ),
    ),
    (
        "DISTCC_DIR",
        (
            "state directory (default `~/.distcc`): slot lock files shared with stock "
            "distcc clients, backoff files, and `hosts`, read when no daemon answers"
        ),
    ),
    (
        "DISTCC_FALLBACK",
        ("`0`: fail (exit 116) instead of compiling locally when no host can take a job"),
    ),
    ("DISTCC_SKIP_LOCAL_RETRY", "set: a failed remote compile is final, no local retry"),
    ("DISTCC_BACKOFF_PERIOD", "seconds a failed host is avoided (default 60)"),
    (
        "DISTCC_SSH",
        (
            "the ssh command for `[user]@host[/N][:COMMAND]` hosts, split on spaces (default "
            "`ssh`); the remote side runs `COMMAND --inetd --enable-tcp-insecure` (COMMAND "
            "default `distccd`; `@box:meshcc` for a meshcc box)"
        ),
    ),
    (
        "MESHCC_ZREF",
        (
            "`0`: never compress a zstd body against the previous body sent to that peer "
            "(default: on with peers announcing `zref`; kept bodies in `$DISTCC_DIR/zref/`)"
        ),
    ),
    (
        "MESHCC_HASH_CACHE",
        (
            "`0`: direct mode's recording hashes every header again (default: a per-user "
            "cache in `$DISTCC_DIR/direct-<uid>/hashes`, at most 3 MiB, keyed by device, "
            "inode, size, mtime and ctime, used only if you own it and others cannot write it)"
        ),
    ),
    (
        "MESHCC_DIRECTIVES_ONLY",
        (
            "`1`: preprocess optimizing C/C++ jobs with `-fdirectives-only` too (non-optimizing "
            "ones always are): the servers expand the macros and vet 4-6x larger bodies. "
            "Measured on lua and xz-utils at -O2 it did not lower the client's CPU per job "
            "(0.99-1.02x: gcc's start and header reading dominate) and cost the serving "
            "daemon 1.8-2.4x: worth it only where macro expansion dominates preprocessing"
        ),
    ),
    (
        "MESHCC_ZYGOTE",
        (
            "`0`: the C launcher (`meshcc-gcc` & co. when install.sh found a C compiler) runs "
            "each job in the Python launcher instead of handing it to the warm per-user "
            "zygote (default: on, except for root, under `LD_PRELOAD` or a Portage sandbox, "
            "or with a CPU-time limit)"
        ),
    ),
    (
        "MESHCC_ZYGOTE_IDLE",
        "seconds without a job after which a zygote started by this launcher exits (default 30)",
    ),
    (
        "DISTCC_SOCKS_PROXY",
        (
            "connect to TCP hosts through this SOCKS5 proxy, as Gentoo's distcc does (Portage "
            "sets it inside its network sandbox): an absolute path is a UNIX socket, else "
            "`host[:port]` (port 1080); host names are resolved by the proxy"
        ),
    ),
    (
        "DISTCC_IO_TIMEOUT",
        (
            "seconds of network silence, remote compile included, before giving "
            "up on a host (default 300); also bounds the wait for a daemon lease"
        ),
    ),
    (
        "DISTCC_PAUSE_TIME_MSEC",
        ("milliseconds between retries while every slot is busy (default 1000)"),
    ),
    ("MESHCC_VERBOSE, DISTCC_VERBOSE", "`1`: log every decision, e.g. why a job ran locally"),
    ("DISTCC_LOG", "write the verbose log and warnings to this file instead of stderr"),
    ("DISTCC_SAVE_TEMPS", "`1`: keep the preprocessed temp file"),
    (
        "MESHCC_STATS",
        "`0`: do not report this compile's outcome to the local daemon (`meshcc stats`)",
    ),
    (
        "_DISTCC_SAFEGUARD",
        (
            "set by the client for the compiler it runs; a nested client runs "
            "the compiler directly (no recursion through masquerade links)"
        ),
    ),
]

INTRO = """\
# meshcc command reference

<!-- GENERATED by docs/gen_reference.py from meshcc's argparse parsers: do not edit by hand.
     After changing an option, run `python docs/gen_reference.py`. -->

Every command and option of `meshcc`, as `meshcc COMMAND --help` shows them. Compiling is
not a subcommand: `meshcc COMPILER ARGS…` (e.g. `meshcc gcc -c x.c`), the `meshcc-gcc`,
`meshcc-g++`, `meshcc-cc`, `meshcc-c++` wrappers, or a symlink named after a compiler
pointing at `meshcc` compile as `distcc COMPILER ARGS…` would; they read the
[environment variables](#compile-client-environment) below.
"""


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        params = dict(vars(action), prog="meshcc")
        text = text % {k: v for k, v in params.items() if v is not argparse.SUPPRESS}
    # The daemon's --jobs help shows this machine's CPU count; the reference must not.
    return re.sub(r"CPUs \+ 2 = \d+", "CPUs + 2", " ".join(text.split()))


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    arg = ""
    if action.nargs != 0:
        arg = " " + str(action.metavar or action.dest.upper())
    return ", ".join(f"`{o}{arg}`" for o in action.option_strings)


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split()).removeprefix("usage: ")


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:  # argparse has no public accessor for subcommands
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _command(title: str, help_text: str, parser: argparse.ArgumentParser, level: str) -> list[str]:
    """One command's section: description, usage, options; then its own subcommands."""
    lines = [f"{level} {title}", ""]
    if help_text:
        lines += [help_text[:1].upper() + help_text[1:].rstrip(".") + ".", ""]
    lines += ["```", _usage(parser), "```", ""]
    rows = [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]
    if rows:
        lines += ["| option | meaning |", "| --- | --- |"]
        lines += [f"| {_flags(a)} | {_md(_help(a))} |" for a in rows]
        lines.append("")
    for name, sub_help, sub in _subparsers(parser):
        lines += _command(f"{title} {name}", sub_help, sub, level + "#")
    return lines


def render() -> str:
    """The whole reference.md text (deterministic: independent of the terminal and CPUs)."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"  # one-line usage, whatever the terminal
    try:
        from meshcc.cli.main import build_parser

        parser = build_parser()
        lines = [INTRO, "## Commands", "", "| command | what it does |", "| --- | --- |"]
        subs = _subparsers(parser)
        for name, help_text, _ in subs:
            lines.append(f"| [`meshcc {name}`](#meshcc-{name}) | {_md(help_text)} |")
        lines += ["", "Global options: `meshcc --version`, `meshcc --help`.", ""]
        for name, help_text, sub in subs:
            lines += _command(f"meshcc {name}", help_text, sub, "##")
        lines += [
            "## Compile client environment",
            "",
            (
                "Read by `meshcc-gcc`, `meshcc-g++`, `meshcc COMPILER …` and masquerade links; "
                "the names and meanings are distcc 3.4's where distcc has them."
            ),
            "",
            "| variable | meaning |",
            "| --- | --- |",
        ]
        for var, meaning in CLIENT_ENVIRONMENT:
            names = ", ".join(f"`{v.strip()}`" for v in var.split(","))
            lines.append(f"| {names} | {_md(meaning)} |")
        return "\n".join(lines).rstrip() + "\n"
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
