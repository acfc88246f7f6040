"""The lease and masquerade paths' lean shapes: what they skip importing, and that the
lean versions decide exactly as the full ones do.

- ``wire.control_core`` is the one implementation of the lease path's protocol:
  ``wire.control`` re-exports it, and a leased client imports only the core.
- ``wrapper.which(skip=)`` finds the compiler ``hostos.which(skip_real=realpath(...))``
  finds, without ``os``; ``posixenv.path.samefile`` is ``os.path.samefile``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshcc import hostos, posixenv
from meshcc.client import wrapper
from meshcc.wire import control, control_core

ROOT = Path(__file__).resolve().parents[2]


def test_control_reexports_the_core_objects() -> None:
    names = [n for n in vars(control_core) if not n.startswith("__")]
    shared = [n for n in names if hasattr(control, n)]
    for name in (
        "encode",
        "MessageReader",
        "LeaseRequest",
        "LeaseGranted",
        "LeaseLocal",
        "DoneMessage",
        "ErrorReply",
        "ControlError",
        "decode_lease_reply",
        "client_socket_paths",
        "guessed_in_shared_tmp",
        "packb",
        "unpack_one",
        "_NeedData",
    ):
        assert name in shared, name
    for name in shared:
        if name in ("TYPE_CHECKING", "annotations", "os", "Frozen"):
            continue
        assert getattr(control, name) is getattr(control_core, name), name


def _imports_after(code: str, tmp_path: Path) -> set[str]:
    """The modules a fresh ``python -IS`` (as the launcher) holds after ``code``."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"{code}\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-IS", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_a_leased_client_imports_only_the_core(tmp_path: Path) -> None:
    """A lease round trip through control_client (against a stand-in socket) loads the
    core and not the status, hosts and direct-mode records."""
    sock = tmp_path / "c.sock"
    code = f"""
import _socket, threading
from meshcc.transport import control_client as cc
from meshcc.wire import control_core as core
srv = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
srv.bind({str(sock)!r}); srv.listen(1)
def serve():
    c, _ = srv._accept() if hasattr(srv, '_accept') else srv.accept()
    c = _socket.socket(fileno=c) if isinstance(c, int) else c
    r = core.MessageReader()
    while (m := r.next_message()) is None:
        r.feed(c.recv(4096))
    c.sendall(core.encode(core.LeaseLocal('test').to_message()))
    c.recv(4096)
t = threading.Thread(target=serve); t.start()
conn = cc.Control.connect({str(sock)!r})
answer = conn.lease('gcc', '/usr/bin/gcc', 'x.c', 5.0)
assert isinstance(answer, core.LeaseLocal), answer
conn.close(); t.join()
"""
    loaded = _imports_after(code, tmp_path)
    assert "meshcc.wire.control_core" in loaded
    assert "meshcc.wire.control" not in loaded


def test_the_masquerade_lookup_imports_no_os(tmp_path: Path) -> None:
    """A masquerade link first on PATH finds the real compiler after its directory with
    neither ``os`` nor ``hostos`` loaded (the launcher runs ``python -IS``)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "masq").mkdir()
    target = tmp_path / "bin" / "meshcc-gcc"
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)
    (tmp_path / "masq" / "gcc").symlink_to(target)
    real = tmp_path / "real"
    real.mkdir()
    (real / "gcc").write_text("#!/bin/sh\n")
    (real / "gcc").chmod(0o755)
    path = f"{tmp_path / 'masq'}:{real}"
    code = f"""
from meshcc import posixenv
posixenv.environ['PATH'] = {path!r}
from meshcc.client import wrapper
inv = wrapper._invocation([{str(tmp_path / "masq" / "gcc")!r}, '-c', 'x.c'], posixenv.environ)
assert inv.exec_path == {str(real / "gcc")!r}, inv.exec_path
assert posixenv.environ['PATH'] == {str(real)!r}
"""
    loaded = _imports_after(code, tmp_path)
    assert "os" not in loaded and "posixpath" not in loaded
    assert "meshcc.hostos" not in loaded


def _exe(p: Path, text: str = "#!/bin/sh\n") -> Path:
    p.write_text(text)
    p.chmod(0o755)
    return p


def test_which_skip_agrees_with_hostos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of candidate a masquerade lookup meets: the wrapper itself through
    another link, a hard link to it, a symlink chain to a real compiler, a directory, a
    file that is not executable, a skip path that names nothing, relative entries."""
    d = {n: tmp_path / n for n in ("masq", "masq2", "hard", "chain", "real", "dir", "noexec")}
    for p in d.values():
        p.mkdir()
    me = _exe(tmp_path / "meshcc-gcc")
    (d["masq"] / "gcc").symlink_to(me)
    (d["masq2"] / "gcc").symlink_to(d["masq"] / "gcc")  # a link to the link: itself again
    os.link(me, d["hard"] / "gcc")  # the same file, another real path: not skipped
    real = _exe(d["real"] / "gcc-12")
    (d["chain"] / "gcc").symlink_to(d["real"] / "gcc-12")
    _exe(d["real"] / "gcc")
    (d["dir"] / "gcc").mkdir()
    (d["noexec"] / "gcc").write_text("")
    assert real.exists()
    monkeypatch.chdir(d["masq2"])
    entries = [str(p) for p in d.values()]
    paths = [
        ":".join(entries),
        ":".join(reversed(entries)),
        f"{d['masq2']}:{d['chain']}",
        f":{d['real']}",  # "" is the current directory (masq2: this wrapper again)
        f".:{d['hard']}",
        f"{d['dir']}:{d['noexec']}",
        "",
    ]
    skips = [
        str(d["masq"] / "gcc"),
        str(d["masq2"] / "gcc"),
        "gcc",  # relative: the current directory's
        str(me),
        str(tmp_path / "missing" / "gcc"),
        str(d["chain"] / "gcc"),
    ]
    for path in paths:
        for skip in skips:
            want = hostos.which("gcc", path, skip_real=os.path.realpath(skip))
            assert wrapper.which("gcc", path, skip=skip) == want, (path, skip)
        assert wrapper.which("gcc", path) == hostos.which("gcc", path), path


def test_samefile_is_os_path_samefile(tmp_path: Path) -> None:
    a = _exe(tmp_path / "a")
    b = _exe(tmp_path / "b")
    (tmp_path / "link").symlink_to(a)
    os.link(a, tmp_path / "hard")
    (tmp_path / "d").mkdir()
    names = ["a", "b", "link", "hard", "d", ".", "d/.."]
    for x in names:
        for y in names:
            px, py = str(tmp_path / x), str(tmp_path / y)
            assert posixenv.path.samefile(px, py) == os.path.samefile(px, py), (x, y)
    with pytest.raises(OSError):
        posixenv.path.samefile(str(a), str(tmp_path / "missing"))
    with pytest.raises(OSError):
        os.path.samefile(str(a), str(tmp_path / "missing"))
    assert b.exists()


def _fields(n: int) -> bytes:
    """A map of ``n`` fields of every inlined kind (str, small int, bool) and others."""
    values: list[object] = ["s", 5, True, False, None, 300, b"x", [1], {"k": "v"}, -3]
    return control.packb({f"f{i}": values[i % len(values)] for i in range(n)})


def _objects(value: object) -> int:
    if isinstance(value, dict):
        return 1 + sum(1 + _objects(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_objects(v) for v in value)
    return 1


@pytest.mark.parametrize("n", [1, 3, 10, 15, 16, 40])
def test_map_decoding_keeps_the_object_budget(n: int) -> None:
    data = _fields(n)
    want, _ = control.unpack_one(data)
    assert isinstance(want, dict) and len(want) == n
    exact = _objects(want)
    reader = control.MessageReader(max_objects=exact)
    reader.feed(data)
    assert reader.next_message() == want
    short = control.MessageReader(max_objects=exact - 1)
    short.feed(data)
    with pytest.raises(control.ControlError, match="too many objects"):
        short.next_message()


def test_map_decoding_keeps_the_depth_bound() -> None:
    def nested(depth: int) -> bytes:  # {"a": {"a": ... 1}} with the 1 at ``depth``
        return b"\x81\xa1a" * depth + b"\x01"

    value, _ = control.unpack_one(nested(control.MAX_DEPTH))
    for _ in range(control.MAX_DEPTH):
        assert isinstance(value, dict)
        value = value["a"]
    assert value == 1
    with pytest.raises(control.ControlError, match="nested too deeply"):
        control.unpack_one(nested(control.MAX_DEPTH + 1))
    with pytest.raises(control.ControlError, match="nested too deeply"):
        control.unpack_one(nested(control.MAX_DEPTH + 1)[:-1] + b"\xa1x")  # a str there
    value, _ = control.unpack_one(nested(control.MAX_DEPTH)[:-1] + b"\xa1x")
    assert value


def test_map_decoding_waits_for_every_truncation_and_rejects_garbage() -> None:
    data = _fields(12)
    want, _ = control.unpack_one(data)
    for cut in range(len(data)):
        reader = control.MessageReader()
        reader.feed(data[:cut])
        assert reader.next_message() is None, cut
        reader.feed(data[cut:])
        assert reader.next_message() == want, cut
    bad_key = b"\x81\xa2\xff\xfe\x01"
    bad_value = b"\x81\xa1k\xa2\xff\xfe"
    for data in (bad_key, bad_value):
        with pytest.raises(control.ControlError, match="invalid UTF-8"):
            control.unpack_one(data)
    reader = control.MessageReader()
    reader.feed(b"\x81\x01\x02")  # {1: 2}
    with pytest.raises(control.ControlError, match="keys must be strings"):
        reader.next_message()


def test_map_encoding_is_the_generic_encoding_and_keeps_the_depth_bound() -> None:
    """The inlined fields of a map are packed byte for byte as _pack packs them alone,
    and a map at the depth bound is refused as any other object there."""
    fields: dict[str, object] = {
        "op": "lease",
        "é": "ü" * 3,  # not ASCII: packed by _pack
        "x" * 31: "y" * 31,
        "x" * 32: "y" * 32,  # too long to inline
        "t": True,
        "f": False,
        "n": None,
        "i": 127,
        "j": 128,
        "k": -1,
        "b": b"\x00",
        "l": [1, "a"],
    }
    packed = control.packb(fields)
    pieces = b"".join(control.packb(k) + control.packb(v) for k, v in fields.items())
    assert packed == bytes([0x80 | len(fields)]) + pieces
    assert control.unpack_one(packed)[0] == fields
    deep: object = {"v": 1}
    for _ in range(control.MAX_DEPTH - 1):
        deep = {"a": deep}
    control.packb(deep)  # the 1 at depth MAX_DEPTH: allowed
    with pytest.raises(control.ControlError, match="nested too deeply"):
        control.packb({"a": deep})


def test_untrusted_reason_with_the_callers_realpath_says_the_same(tmp_path: Path) -> None:
    """The fingerprint cache passes the real path it resolved already (one resolution of
    the compiler's path per lease, not two); the verdict must not change."""
    from meshcc.compiler.fingerprints import untrusted_reason

    tool = _exe(tmp_path / "tool")
    (tmp_path / "link").symlink_to(tool)
    loose = _exe(tmp_path / "loose")
    loose.chmod(0o777)
    for p in ("/usr/bin/gcc", "/bin/sh", str(tool), str(tmp_path / "link"), str(loose), "/none"):
        assert untrusted_reason(p, real=os.path.realpath(p)) == untrusted_reason(p), p
