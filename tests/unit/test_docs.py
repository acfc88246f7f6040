"""The docs that are generated from code must match it: docs/reference.md is the output of
docs/gen_reference.py over the CLI's argparse parsers. After changing an option, run
``python docs/gen_reference.py``."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_is_generated_from_the_cli() -> None:
    committed = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert committed == _generator().render(), (
        "docs/reference.md is out of date: run `python docs/gen_reference.py` and commit it"
    )


def test_reference_covers_every_command_and_option() -> None:
    from meshcc.cli.main import build_parser

    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    gen = _generator()
    for name, _, sub in gen._subparsers(build_parser()):
        assert f"## meshcc {name}" in text
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for opt in action.option_strings:
                assert f"`{opt}" in text, f"meshcc {name} {opt} missing from reference.md"


def test_docs_link_to_existing_files() -> None:
    for md in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", md.read_text()):
            assert (md.parent / target).exists(), f"{md.name} links to missing {target}"
