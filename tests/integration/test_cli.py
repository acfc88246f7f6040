"""The ``meshcc`` CLI: option parsing and ``meshcc hosts`` output against a fake daemon.

The fake daemon is a thread answering one canned reply per connection on a Unix socket,
so these tests need no namespace, no multicast and no root.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcc.cli import entry
from meshcc.cli import hosts as hosts_cmd
from meshcc.cli import main as cli
from meshcc.wire import control


def test_daemon_mesh_options_parse() -> None:
    ns = cli.build_parser().parse_args(
        [
            "daemon",
            "--interface",
            "eth0",
            "-i",
            "eth1",
            "--accept-unverified",
            "--socket",
            "/tmp/x.sock",
            "--write-hosts",
            "/etc/distcc/hosts",
            "--allow",
            "10.0.0.0/8",
        ]
    )
    from meshcc.daemon.settings import DaemonOptions

    opts = DaemonOptions.from_namespace(ns)
    assert opts.interfaces == ("eth0", "eth1") and opts.accept_unverified
    assert opts.socket == "/tmp/x.sock" and opts.write_hosts == "/etc/distcc/hosts"
    assert opts.discovery and not opts.loopback_only()
    assert DaemonOptions(listen="127.0.0.1").loopback_only()
    assert DaemonOptions(listen="::1").loopback_only()


def test_hosts_options_and_entry_table() -> None:
    ns = cli.build_parser().parse_args(["hosts", "--cc", "gcc-12", "--explain"])
    assert ns.cc == "gcc-12" and ns.explain and not ns.json and ns.browse_time == 2.5
    assert "hosts" in entry.COMMANDS and entry.COMMANDS == frozenset(cli.COMMANDS)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["hosts", "--explain", "--json"])


def test_resolve_cc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "gcc-77"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin")
    assert hosts_cmd.resolve_cc("gcc-77") == str(tool)
    with pytest.raises(hosts_cmd.HostsError, match="not found on PATH"):
        hosts_cmd.resolve_cc("no-such-gcc")
    with pytest.raises(hosts_cmd.HostsError, match="no such file"):
        hosts_cmd.resolve_cc(str(tmp_path / "missing"))


def _verdict(host: str, addr: str, included: bool, reason: str) -> dict[str, Any]:
    return {
        "peer": {
            "host": host,
            "kind": "meshcc",
            "addresses": [addr],
            "key": f"m:{host}",
            "toolchains": [
                {
                    "driver": "gcc",
                    "version": "12.2.0",
                    "target": "x86_64-linux-gnu",
                    "binutils": "2.40",
                }
            ],
        },
        "included": included,
        "reason": reason,
        "host_spec": f"{addr}:3632/4,lzo" if included else None,
    }


STATUS = {
    "ok": True,
    "discovery": True,
    "off_reason": None,
    "interfaces": ["eth0"],
    "allowed": ["10.0.0.0/24"],
    "allowed_source": "interfaces",
}


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]], list[Any]]]:
    """(socket path, replies to give (one per connection), requests received)."""
    path = str(tmp_path / "control.sock")
    replies: list[dict[str, Any]] = []
    got: list[Any] = []
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                r = control.MessageReader()
                while (msg := r.next_message()) is None:
                    data = conn.recv(65536)
                    if not data:
                        break
                    r.feed(data)
                got.append(msg)
                conn.sendall(control.encode(replies.pop(0)))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, replies, got
    srv.close()


def _hosts(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MESHCC_SOCKET=path)
    return subprocess.run(
        [sys.executable, "-m", "meshcc", "hosts", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_hosts_prints_line_explain_and_json(fake_daemon: Any) -> None:
    path, replies, got = fake_daemon
    vs = [
        _verdict("b", "10.0.0.2", True, "matches"),
        _verdict("c", "10.0.0.3", False, "gcc 12.2.0 ≠ 13.1.0"),
    ]
    reply = {
        "ok": True,
        "line": "10.0.0.2:3632/4,lzo",
        "verdicts": vs,
        "status": STATUS,
        "compiler": "gcc (gcc 12.2.0, x86_64-linux-gnu, binutils 2.40)",
        "note": None,
    }
    replies += [reply, reply, reply]
    p = _hosts(path, "--cc", "gcc")
    # the peers, then this box's own share, as distcc users list it
    assert p.returncode == 0 and p.stdout == "10.0.0.2:3632/4,lzo localhost/2\n"
    assert p.stderr == ""
    assert got[0]["op"] == "hosts" and got[0]["cc"] == "gcc"
    assert os.path.isabs(got[0]["cc_path"])
    p = _hosts(path, "--explain")
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert any(ln.startswith("HOST") and "REASON" in ln for ln in lines)
    assert any("10.0.0.3" in ln and " out " in ln and "13.1.0" in ln for ln in lines)
    assert "DISTCC_HOSTS: 10.0.0.2:3632/4,lzo localhost/2" in p.stdout
    p = _hosts(path, "--json")
    js = json.loads(p.stdout)
    assert js["line"] == "10.0.0.2:3632/4,lzo"  # the peers alone
    assert js["distcc_hosts"] == "10.0.0.2:3632/4,lzo localhost/2"


def test_hosts_empty_line_exits_1_with_reason(fake_daemon: Any) -> None:
    path, replies, _ = fake_daemon
    vs = [_verdict("b", "10.0.0.2", False, "x"), _verdict("c", "10.0.0.3", False, "y")]
    replies.append({"ok": True, "line": "", "verdicts": vs, "status": STATUS})
    p = _hosts(path)
    assert p.returncode == 1
    assert "no matching peers: 2 seen, both excluded; see --explain" in p.stderr
    replies.append(control.ErrorReply("gcc: not a usable gcc").to_message())
    p = _hosts(path)
    assert p.returncode == 1 and "not a usable gcc" in p.stderr and "Traceback" not in p.stderr


def test_hosts_fast_path_imports_neither_zeroconf_nor_asyncio(fake_daemon: Any) -> None:
    path, replies, _ = fake_daemon
    replies.append({"ok": True, "line": "10.0.0.2:3632/4", "verdicts": [], "status": STATUS})
    code = (
        "import sys; from meshcc.cli.entry import main; sys.argv=['meshcc','hosts'];"
        "rc = main(); bad = [m for m in ('zeroconf', 'asyncio', 'ifaddr', 'logging', "
        "'dataclasses', 'meshcc.mesh.peers', 'meshcc.daemon.settings') "
        "if m in sys.modules]; print(bad, file=sys.stderr); sys.exit(rc)"
    )
    env = dict(os.environ, MESHCC_SOCKET=path)
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0 and p.stderr.strip() == "[]", p.stderr


def test_python_dash_m_meshcc_is_the_explicit_wrapper(tmp_path: Path) -> None:
    """`python -m meshcc gcc -c x.c` compiles like `meshcc gcc -c x.c` (argv[0] is
    __main__.py there, which must not be taken for a compiler or masquerade link)."""
    (tmp_path / "x.c").write_text("int x(void) { return 1; }\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    env.update(DISTCC_HOSTS="localhost", DISTCC_DIR=str(tmp_path), MESHCC_VERBOSE="1")
    res = subprocess.run(
        [sys.executable, "-m", "meshcc", "gcc", "-c", "x.c", "-o", "x.o"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "picked localhost" in res.stderr, res.stderr
    subprocess.run(["gcc", "-c", "x.c", "-o", "ref.o"], cwd=tmp_path, check=True)
    assert (tmp_path / "x.o").read_bytes() == (tmp_path / "ref.o").read_bytes()


def test_explain_groups_toolchains_and_tells_cloned_hosts_apart() -> None:
    import io

    def tc(driver: str, version: str = "12.2.0") -> dict[str, object]:
        return {
            "driver": driver,
            "version": version,
            "target": "x86_64-linux-gnu",
            "binutils": "2.40",
        }

    def verdict(node: str, tcs: list[dict[str, object]], included: bool) -> dict[str, object]:
        peer = {"host": "box", "node_id": node, "addresses": ["10.0.0.1"], "toolchains": tcs}
        return {
            "peer": peer,
            "included": included,
            "reason": "why",
            "host_spec": f"10.0.0.{len(node)}:3632/4,lzo",
        }

    reply = {
        "ok": True,
        "status": {"discovery": True, "interfaces": ["eth0"], "allowed": ["10.0.0.0/24"]},
        "line": "10.0.0.6:3632/4,lzo",
        "verdicts": [
            verdict("abcdef0123", [tc("gcc"), tc("g++"), tc("gcc"), tc("gcc")], True),
            verdict("123456789a", [tc("gcc", "13.2.0")], False),
        ],
    }
    out = io.StringIO()
    decoded = control.decode_hosts_reply(reply)
    assert isinstance(decoded, control.HostsReply)
    hosts_cmd.print_explain(decoded, "test", out)
    text = out.getvalue()
    assert "gcc, g++ 12.2.0 x86_64-linux-gnu bu 2.40  in" in text
    assert text.count("12.2.0") == 1  # c89-gcc/c99-gcc style duplicates folded
    assert "box#abcdef" in text and "box#123456" in text  # same hostname, distinct peers


@pytest.mark.parametrize(
    "listen, loopback",
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_loopback_listen_turns_discovery_off(listen: str, loopback: bool) -> None:
    """A daemon listening on loopback only (IPv4-mapped included) announces nothing."""
    from meshcc.daemon.settings import DaemonOptions

    ns = cli.build_parser().parse_args(["daemon", "--listen", listen])
    assert DaemonOptions.from_namespace(ns).loopback_only() is loopback


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """`meshcc doctor | head -1`: the pipe closes under the command; it must end quietly."""
    env = dict(os.environ, MESHCC_SOCKET=str(tmp_path / "none.sock"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcc", "doctor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the child has written anything: its first write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
