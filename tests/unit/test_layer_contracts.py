"""The layer contracts (pyproject.toml's [tool.importlinter]) catch what they promise to catch.

`lint-imports` checks the real tree (tests/run.sh runs it before the tests). Here the same
configuration is pointed at small fake `meshcc` trees: a clean one must pass, and one with
each kind of violation must fail with a message naming the offending import. Only the
fixture's own import statements are read; nothing of it is executed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# Every layer of the contract, each importing only layers below it; one module per line of
# imports the real tree makes (lazy ones inside functions, a type-only one under TYPE_CHECKING).
CLEAN = {
    "__init__.py": "",
    "__main__.py": "from meshcc.cli import main\n",
    "cli/__init__.py": "",
    "cli/main.py": (
        "import argparse\n\nfrom meshcc.daemon import server\n\n\n"
        "def compile_client():\n    from meshcc.client import wrapper\n"
    ),
    "daemon/__init__.py": "",
    "daemon/server.py": (
        "import asyncio\nimport logging\n\nimport msgpack\n\nfrom meshcc.mesh import peers\n"
    ),
    "client/__init__.py": "",
    "client/wrapper.py": (
        "import os\n\nfrom meshcc.transport import connect\n\n"
        "TYPE_CHECKING = False\nif TYPE_CHECKING:  # never runs: not counted\n"
        "    from meshcc.daemon import server\n"
    ),
    "mesh/__init__.py": "",
    "mesh/peers.py": "import ifaddr\nimport zeroconf\n\nfrom meshcc.transport import connect\n",
    "transport/__init__.py": "",
    "transport/connect.py": (
        "import socket\n\nfrom meshcc import compression\nfrom meshcc.compiler import args\n"
        "from meshcc.wire import protocol\n"
    ),
    "cache/__init__.py": "",
    "cache/key.py": "import hashlib\n\nfrom meshcc.compiler import policy\n",
    "compiler/__init__.py": "",
    "compiler/args.py": "from meshcc import defaults\n",
    "compiler/policy.py": "from meshcc.compiler import args\n",
    "compression/__init__.py": "from meshcc import wire\n",
    "wire/__init__.py": "",
    "wire/protocol.py": "from meshcc import exitcodes, hostos\n",
    "exitcodes.py": "",
    "defaults.py": "",
    "hostos.py": "",
    "loglevels.py": "",
    "supervisor.py": "import asyncio\nimport logging\n",
    "asyncwait.py": "import asyncio\n",
    "posixenv.py": "import sys\nfrom posix import environ\n",
}

# One of each violation, added to the clean tree (lazy imports, inside functions, on purpose).
BAD = {
    **CLEAN,
    # an upward import: wire (layer 1) reaches into transport
    "wire/protocol.py": CLEAN["wire/protocol.py"]
    + "\n\ndef upward():\n    from meshcc.transport import connect\n",
    # a cycle inside a package: args <-> policy
    "compiler/args.py": CLEAN["compiler/args.py"]
    + "\n\ndef lazy():\n    from meshcc.compiler import policy\n",
    # the daemon and the client are independent
    "daemon/server.py": CLEAN["daemon/server.py"] + "from meshcc.client import wrapper\n",
    # the client reaches logging through a lower layer's lazy import
    "transport/connect.py": CLEAN["transport/connect.py"] + "\n\ndef log():\n    import logging\n",
    # a top-level module nobody gave a layer
    "extra.py": "",
}


def lint_imports(tmp_path: Path, tree: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `lint-imports` with the project's configuration on a fake `meshcc` tree."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: install the test extra (pip install -e '.[test]')")
    for rel, text in tree.items():
        path = tmp_path / "meshcc" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    # The fixture tree comes first on sys.path, before the installed meshcc; a wide console
    # keeps every reported import on one line.
    env = dict(os.environ, PYTHONPATH=str(tmp_path), COLUMNS="300", NO_COLOR="1")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_clean_tree_keeps_every_contract(tmp_path: Path) -> None:
    res = lint_imports(tmp_path, CLEAN)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 kept, 0 broken" in res.stdout, res.stdout


def test_each_violation_is_reported_with_the_import(tmp_path: Path) -> None:
    res = lint_imports(tmp_path, BAD)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "0 kept, 3 broken" in out, out
    # layers: the upward import, the two independent programs, the unassigned module
    assert "meshcc.wire is not allowed to import meshcc.transport" in out, out
    assert "meshcc.wire.protocol -> meshcc.transport.connect (l.5)" in out, out
    assert "meshcc.daemon is not allowed to import meshcc.client" in out, out
    assert "meshcc.daemon.server -> meshcc.client.wrapper" in out, out
    assert "- meshcc.extra" in out, out
    # cycles: inside meshcc.compiler, and the one the upward import closes in meshcc
    # (which import of a two-module cycle is named as the one to remove is the tool's choice)
    assert "No cycles are allowed in meshcc.compiler." in out, out
    assert "- .policy -> .args" in out or "- .args -> .policy" in out, out
    assert "No cycles are allowed in meshcc." in out, out
    assert "- .wire -> .transport" in out or "- .transport -> .wire" in out, out
    # the client's ban, through a lazy import of a lower layer
    assert "meshcc.client is not allowed to import logging" in out, out
    assert "meshcc.transport.connect -> logging (l.9)" in out, out
