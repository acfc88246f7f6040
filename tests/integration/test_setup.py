"""``meshcc setup portage`` on scratch roots (against a fake control socket) and
``meshcc setup masquerade`` compiling through a loopback daemon."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import VENV_BIN, run
from meshcc.wire import control

MESHCC = str(VENV_BIN / "meshcc")
CHOST = "x86_64-pc-linux-gnu"

STAGE3_MAKE_CONF = b"""\
# These settings were set by the catalyst build script that automatically
# built this stage.
# Please consult /usr/share/portage/config/make.conf.example for a more
# detailed example.
COMMON_FLAGS="-O2 -pipe"
CFLAGS="${COMMON_FLAGS}"
CXXFLAGS="${COMMON_FLAGS}"
FCFLAGS="${COMMON_FLAGS}"
FFLAGS="${COMMON_FLAGS}"

# NOTE: This stage was built with the bindist USE flag enabled

# This sets the language of build output to English.
# Please keep this setting if you use the output for bug reports.
LC_MESSAGES=C.utf8
"""


def _peer(
    host: str, cpus: int, version: str, included: bool = True, binutils: str = "2.41"
) -> dict[str, object]:
    return {
        "peer": {
            "key": f"m:{host}",
            "host": host,
            "cpus": cpus,
            "verified": True,
            "kind": "meshcc",
            "addresses": ["127.0.0.1"],
            "toolchains": [
                {
                    "driver": d,
                    "version": version,
                    "target": CHOST,
                    "binutils": binutils,
                    "names": [d],
                }
                for d in ("gcc", "g++")
            ],
        },
        "included": included,
        "reason": "" if included else "backed off",
        "address": "127.0.0.1",
        "host_spec": f"10.0.0.{cpus}:3632/{cpus + 2}",
    }


PEERS = [
    _peer("a", 8, "13.2.1"),
    _peer("b", 4, "13.2.1"),
    _peer("c", 16, "12.3.1"),
    _peer("d", 32, "13.2.1", included=False),
]


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[str]:
    """A control socket answering ``hosts`` with :data:`PEERS` (msgpack, as the daemon)."""
    path = str(tmp_path / "control.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(0.05)  # close() does not wake a blocked accept(): poll the stop flag
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                reader = control.MessageReader()
                while (msg := reader.next_message()) is None:
                    data = conn.recv(65536)
                    if not data:
                        break
                    reader.feed(data)
                if msg is None:
                    continue
                line = " ".join(str(p["host_spec"]) for p in PEERS if p["included"])
                conn.sendall(
                    control.encode(
                        {
                            "ok": True,
                            "line": line,
                            "verdicts": PEERS,
                            "compiler": None,
                            "note": None,
                            "status": {"ok": True, "discovery": True, "peers": len(PEERS)},
                        }
                    )
                )

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path
    stop.set()
    t.join(5)
    srv.close()


def make_root(
    tmp_path: Path, gcc: str = "13.2.1", make_conf: bytes | None = STAGE3_MAKE_CONF
) -> Path:
    """A scratch stage3: make.conf and Gentoo's gcc/binutils layout (nothing runnable)."""
    root = tmp_path / "gentoo"
    (root / "etc/portage").mkdir(parents=True)
    if make_conf is not None:
        (root / "etc/portage/make.conf").write_bytes(make_conf)
    major = gcc.split(".", maxsplit=1)[0]
    (root / "etc/env.d/gcc").mkdir(parents=True)
    (root / f"etc/env.d/gcc/config-{CHOST}").write_text(f"CURRENT={CHOST}-{major}\n")
    (root / "etc/env.d/binutils").mkdir(parents=True)
    (root / f"etc/env.d/binutils/config-{CHOST}").write_text("CURRENT=2.41\n")
    (root / f"usr/lib/gcc/{CHOST}/{major}/include").mkdir(parents=True)
    (root / f"var/db/pkg/sys-devel/gcc-{gcc}_p20240210").mkdir(parents=True)
    (root / "var/db/pkg/sys-devel/gcc-config-2.11").mkdir(parents=True)
    (root / "var/db/pkg/sys-devel/binutils-2.41-r5").mkdir(parents=True)
    return root


def setup(root: Path, sock: str, *args: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    env["MESHCC_SOCKET"] = sock
    proc = run(
        [MESHCC, "setup", "portage", "--root", str(root), "--local-cpus", "4", *args],
        env=env,
        check=check,
    )
    return proc.stdout + proc.stderr


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root: bytes of files, None for directories."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


def test_block_diff_idempotent_undo(tmp_path: Path, fake_daemon: str) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    out = setup(root, fake_daemon)
    conf = (root / "etc/portage/make.conf").read_bytes()
    # N = 2 x (4 local + 8 + 4 on the two live 13.2.1 peers) + 1; M = 4 local cores.
    assert conf.startswith(STAGE3_MAKE_CONF)
    block = conf[len(STAGE3_MAKE_CONF) :].decode()
    lines = block.splitlines()
    assert lines[0] == ""
    assert lines[1] == "# BEGIN meshcc (managed by 'meshcc setup portage'; remove with --undo)"
    assert 'FEATURES="${FEATURES} distcc"' in lines
    assert 'MAKEOPTS="-j33 -l4"' in lines
    assert lines[-1] == "# END meshcc"
    assert "+++ b/etc/portage/make.conf" in out and '+MAKEOPTS="-j33 -l4"' in out
    assert "matches 2 peers" in out
    hosts = (root / "etc/distcc/hosts").read_text()
    assert "10.0.0.8:3632/10 10.0.0.4:3632/6 localhost/2\n" in hosts
    assert "--write-hosts" in out and "PORTAGE_TMPDIR" in out

    after = snapshot(root)
    out2 = setup(root, fake_daemon)
    assert snapshot(root) == after
    assert "+++" not in out2 and "nothing to change" in out2

    out3 = setup(root, fake_daemon, "--undo")
    assert "restored" in out3
    assert (root / "etc/portage/make.conf").read_bytes() == STAGE3_MAKE_CONF
    assert snapshot(root) == before  # hosts file and etc/distcc gone, no backups left
    assert "nothing to undo" in setup(root, fake_daemon, "--undo")


def test_block_replaced_in_place_when_mesh_changes(tmp_path: Path, fake_daemon: str) -> None:
    root = make_root(tmp_path)
    setup(root, fake_daemon)
    conf = root / "etc/portage/make.conf"
    conf.write_bytes(conf.read_bytes() + b'USE="X"\n')  # the user edits after us
    PEERS.append(_peer("e", 2, "13.2.1"))
    try:
        out = setup(root, fake_daemon)
    finally:
        PEERS.pop()
    text = conf.read_text()
    assert text.count("# BEGIN meshcc") == 1 and 'MAKEOPTS="-j37 -l4"' in text
    assert text.endswith('# END meshcc\nUSE="X"\n')
    assert '-MAKEOPTS="-j33 -l4"' in out and '+MAKEOPTS="-j37 -l4"' in out
    setup(root, fake_daemon, "--undo")
    assert conf.read_bytes() == STAGE3_MAKE_CONF  # the original, not the edited file


def test_dry_run_writes_nothing(tmp_path: Path, fake_daemon: str) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    out = setup(root, fake_daemon, "--dry-run")
    assert '+MAKEOPTS="-j33 -l4"' in out and "nothing written" in out
    assert snapshot(root) == before


def test_missing_make_conf_and_undo_removes_it(tmp_path: Path, fake_daemon: str) -> None:
    root = make_root(tmp_path, make_conf=None)
    shutil.rmtree(root / "etc/portage")
    before = snapshot(root)
    out = setup(root, fake_daemon)
    assert "--- /dev/null" in out
    assert 'MAKEOPTS="-j33 -l4"' in (root / "etc/portage/make.conf").read_text()
    setup(root, fake_daemon, "--undo")
    assert snapshot(root) == before


def test_legacy_make_conf(tmp_path: Path, fake_daemon: str) -> None:
    root = make_root(tmp_path, make_conf=None)
    (root / "etc/make.conf").write_bytes(b'CFLAGS="-O2"')  # no final newline
    setup(root, fake_daemon)
    assert not (root / "etc/portage/make.conf").exists()
    assert 'MAKEOPTS="-j33 -l4"' in (root / "etc/make.conf").read_text()
    setup(root, fake_daemon, "--undo")
    assert (root / "etc/make.conf").read_bytes() == b'CFLAGS="-O2"'


def test_toolchain_mismatch_names_the_mesh_versions(tmp_path: Path, fake_daemon: str) -> None:
    root = make_root(tmp_path, gcc="11.4.0")
    out = setup(root, fake_daemon)
    assert f"this root has gcc 11.4.0 ({CHOST}, binutils 2.41)" in out
    assert f"the mesh offers gcc 13.2.1 ({CHOST}, binutils 2.41) on 2 peers" in out
    assert f"the mesh offers gcc 12.3.1 ({CHOST}, binutils 2.41) on 1 peer" in out
    assert "emerge --oneshot =sys-devel/gcc-13.2.1*" in out
    # Still written: no matching peer, so local cores only.
    assert 'MAKEOPTS="-j9 -l4"' in (root / "etc/portage/make.conf").read_text()


def test_unreadable_root_gcc_writes_no_empty_host_list(tmp_path: Path, fake_daemon: str) -> None:
    """No gcc-config profile and no usr/lib/gcc (an unpacked-but-broken root, or not a
    stage3): with matching peers live, the hosts file is not replaced by an empty one,
    MAKEOPTS says it counted the local cores only, and the exit status says so too."""
    root = make_root(tmp_path)
    shutil.rmtree(root / "etc/env.d/gcc")
    shutil.rmtree(root / "usr/lib/gcc")
    (root / "etc/distcc").mkdir()
    old_hosts = b"# by hand\n10.0.0.9/8,lzo\n"
    (root / "etc/distcc/hosts").write_bytes(old_hosts)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC_", "MESHCC_"))}
    env["MESHCC_SOCKET"] = fake_daemon
    argv = [MESHCC, "setup", "portage", "--root", str(root), "--local-cpus", "4"]
    proc = run(argv, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "Traceback" not in out
    assert "warning: cannot check this root's toolchain (cannot tell the GCC of" in out
    assert "gcc-config) profile" in out
    assert "used instead: 4 local cores for MAKEOPTS and no host list" in out
    assert f"the mesh offers gcc 13.2.1 ({CHOST}, binutils 2.41) on 2 peers" in out
    assert "/etc/distcc/hosts: left as it was: this root's gcc could not be read" in out
    assert (root / "etc/distcc/hosts").read_bytes() == old_hosts
    conf = (root / "etc/portage/make.conf").read_text()
    assert 'MAKEOPTS="-j9 -l4"' in conf
    assert "-j from 4 local cores only (this root's gcc could not be read)" in conf
    # Without a hosts file: none is created (an empty one would read as "no peer matches").
    (root / "etc/distcc/hosts").unlink()
    proc = run(argv, env=env, check=False)
    assert proc.returncode == 3 and "/etc/distcc/hosts: not created" in proc.stdout
    assert not (root / "etc/distcc/hosts").exists()
    # Once the root's gcc is readable, the peers that match it are listed (exit 0).
    fixed = make_root(tmp_path / "fixed")
    proc = run([*argv[:4], str(fixed), *argv[5:]], env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10.0.0.8:3632/10 10.0.0.4:3632/6" in (fixed / "etc/distcc/hosts").read_text()


def test_no_daemon_uses_local_cores(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    out = setup(root, str(tmp_path / "nobody.sock"))
    assert 'MAKEOPTS="-j9 -l4"' in (root / "etc/portage/make.conf").read_text()
    assert "no meshcc daemon" in out and "run this again" in out
    assert not (root / "etc/distcc").exists()


def test_errors_are_one_line(tmp_path: Path, fake_daemon: str) -> None:
    proc = run([MESHCC, "setup", "portage", "--root", str(tmp_path / "nope")], check=False)
    assert proc.returncode == 1 and "no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    root = make_root(tmp_path)
    if os.geteuid() == 0:
        # root ignores permissions: make the target a directory instead
        (root / "etc/portage/make.conf").unlink()
        (root / "etc/portage/make.conf").mkdir()
    else:
        os.chmod(root / "etc/portage", 0o555)
    out = setup(root, fake_daemon, check=False)
    assert "Traceback" not in out and "meshcc setup portage:" in out


# ---------------------------------------------------------------- masquerade


def test_masquerade_links_and_compile(tmp_path: Path, meshcc_daemon, client_env) -> None:  # type: ignore[no-untyped-def]
    masq = tmp_path / "masq"
    proc = run([MESHCC, "setup", "masquerade", str(masq)], env=client_env)
    assert f"export PATH={masq}:$PATH" in proc.stdout
    names = set(os.listdir(masq))
    assert {"gcc", "cc"} <= names
    for n in names:
        assert os.readlink(masq / n) == MESHCC
    again = run([MESHCC, "setup", "masquerade", str(masq)], env=client_env)
    assert "up to date" in again.stdout

    (masq / "gcc").unlink()
    (masq / "gcc").write_text("not a link")
    refused = run([MESHCC, "setup", "masquerade", str(masq)], env=client_env, check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    run([MESHCC, "setup", "masquerade", str(masq), "--force"], env=client_env)
    assert os.readlink(masq / "gcc") == MESHCC

    daemon = meshcc_daemon()
    src = tmp_path / "hello.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    env = dict(
        client_env, DISTCC_HOSTS=daemon.host_spec(), PATH=f"{masq}{os.pathsep}{client_env['PATH']}"
    )
    run(["gcc", "-O2", "-c", str(src), "-o", str(tmp_path / "mesh.o")], env=env, cwd=tmp_path)
    assert len(daemon.wait_for_jobs(1)) == 1, daemon.diagnostics()
    plain = shutil.which("gcc", path=client_env["PATH"])
    assert plain is not None
    run(
        [plain, "-O2", "-c", str(src), "-o", str(tmp_path / "plain.o")],
        env=client_env,
        cwd=tmp_path,
    )
    assert (tmp_path / "mesh.o").read_bytes() == (tmp_path / "plain.o").read_bytes()


def test_setup_without_subcommand() -> None:
    proc = run([sys.executable, "-m", "meshcc", "setup"], check=False)
    assert proc.returncode == 2 and "portage" in proc.stderr
