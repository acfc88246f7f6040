"""The ``meshcc`` command: subcommands go to the CLI, anything else is a compile.

``meshcc daemon ...`` (and ``--help``/``--version``) dispatch to
:mod:`meshcc.cli.main`; so does ``meshcc --inetd ...``, which is ``meshcc daemon --inetd
...``: the command line distcc runs over ssh for a host ``@HOST:meshcc`` (or for
``@HOST`` where ``distccd`` is a link to ``meshcc``). ``meshcc COMPILER ARGS...`` is the
compile wrapper,
imported lazily so a compile never pays for argparse or the daemon's imports.
"""

from __future__ import annotations

import sys

# Keep in sync with cli.COMMANDS (a test checks it); listed here so that
# dispatching a compile does not import the CLI.
COMMANDS = frozenset({"cache", "daemon", "doctor", "hosts", "setup", "stats", "top", "zipapp"})
_CLI_FLAGS = frozenset({"-h", "--help", "--version"})


def main() -> int:
    """Entry point of the ``meshcc`` console script and ``python -m meshcc``."""
    argv = sys.argv
    if len(argv) < 2 or argv[1] in COMMANDS or argv[1] in _CLI_FLAGS:
        from meshcc.cli import main as cli

        return cli.main(argv[1:])
    if argv[1] == "--inetd":  # distcc's SSH command line: `@host:meshcc`, or distccd -> meshcc
        from meshcc.cli import main as cli

        return cli.main(["daemon", *argv[1:]])
    from meshcc.client.wrapper import main as wrapper_main

    return wrapper_main(argv)
