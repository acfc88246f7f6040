"""zstd body prefixes (``zref``): tokens, the server's store, prefix frames, kept bodies.

The end-to-end proof (real gcc, a real daemon, a restart in between) is
tests/integration/test_zref_gcc.py; here each piece is pinned on its own.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import meshcc.compression as comp
from meshcc.compression import kept
from meshcc.compression.prefixes import PrefixStore
from meshcc.wire import codecs
from meshcc.wire import protocol as wire

HEAD = wire.encode_request_head(1, [b"gcc", b"-c", b"x.c", b"-o", b"x.o"])
ID_A = "0123456789abcdef" * 2
ID_B = "fedcba9876543210" * 2
HEADERS = b"".join(b"extern int f%d(const char *, int);\n" % i for i in range(3000))


def _events(data: bytes) -> list[object]:
    rr = wire.RequestReader()
    rr.feed(data)
    rr.feed_eof()
    out: list[object] = []
    while True:
        event = rr.next_event()
        if event is wire.NEED_DATA:
            return out
        out.append(event)


# ---------------------------------------------------------------- tokens


def test_prefix_and_keep_ids_are_read_after_codc_zstd() -> None:
    body = comp.compress("zstd", b"int x;\n")
    req = HEAD + codecs.encode_codec_request("zstd") + codecs.encode_prefix_tokens(ID_B, ID_A)
    events = _events(req + wire.encode_source(body))
    assert wire.RequestCodec("zstd", ID_A, ID_B) in events
    assert events[-2] == wire.RequestSource(body)

    only_keep = HEAD + codecs.encode_codec_request("zstd") + codecs.encode_prefix_tokens(ID_B)
    assert wire.RequestCodec("zstd", "", ID_B) in _events(only_keep + wire.encode_source(body))
    # Without the tokens the event is what older servers and clients know.
    plain = HEAD + codecs.encode_codec_request("zstd") + wire.encode_source(body)
    assert wire.RequestCodec("zstd") in _events(plain)


@pytest.mark.parametrize(
    ("tokens", "why"),
    [
        (wire.string_token(b"ZREF", ID_A.upper().encode()), "is not a body id"),
        (wire.string_token(b"ZNEW", ID_A[:31].encode()), "is not a body id"),
        (wire.string_token(b"ZNEW", (ID_A + "0").encode()), "exceeds limit"),
        (wire.string_token(b"ZNEW", b"../../../../etc/passwd.........."), "is not a body id"),
        # ZNEW then ZREF: out of order, so ZREF stands where DOTI must.
        (codecs.encode_prefix_tokens(ID_A) + wire.string_token(b"ZREF", ID_B.encode()), "DOTI"),
    ],
)
def test_bad_ids_and_orders_are_protocol_errors(tokens: bytes, why: str) -> None:
    req = HEAD + codecs.encode_codec_request("zstd") + tokens + wire.encode_source(b"")
    with pytest.raises(wire.ProtocolError, match=why):
        _events(req)


def test_ids_only_after_zstd() -> None:
    req = HEAD + codecs.encode_codec_request("lz4") + codecs.encode_prefix_tokens(ID_A)
    with pytest.raises(wire.ProtocolError, match="only zstd takes it"):
        _events(req + wire.encode_source(b""))
    # Without CODC there is nothing to name: ZNEW stands where DOTI must.
    with pytest.raises(wire.ProtocolError, match="expected DOTI"):
        _events(HEAD + codecs.encode_prefix_tokens(ID_A) + wire.encode_source(b""))


def test_encoding_refuses_what_the_reader_would() -> None:
    with pytest.raises(ValueError, match="not a body id"):
        codecs.encode_prefix_tokens("x" * 32)
    with pytest.raises(ValueError, match="not a body id"):
        codecs.encode_prefix_tokens(ID_A, "é" * 32)
    assert codecs.encode_prefix_tokens(ID_A).startswith(b"ZNEW00000020")


def test_the_unknown_prefix_refusal_is_recognised() -> None:
    reason = codecs.unknown_prefix_reason(ID_A)
    assert codecs.is_unknown_prefix(reason) and ID_A not in reason  # not echoed whole
    assert not codecs.is_unknown_prefix("this server does not speak the body codec 'zstd'")
    assert not codecs.is_unknown_prefix("protocol error: " + reason)


def test_the_daemon_announces_zref_only_with_zstd() -> None:
    announced = comp.announced()
    assert "zstd" in comp.spoken() and announced == (*comp.spoken(), "zref")
    assert "zref" not in comp.spoken()  # never a CODC codec a server would accept


# ---------------------------------------------------------------- ids


def test_ids_are_random_128_bit_hex() -> None:
    ids = {kept.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(wire.is_body_id(i.encode()) for i in ids)
    # Every hex digit appears in every position over 2000 draws: no fixed part to guess.
    for at in range(32):
        assert len({i[at] for i in ids}) == 16


# ---------------------------------------------------------------- the server's store


def test_store_is_per_client_address() -> None:
    store = PrefixStore()
    assert store.put("10.0.0.1", ID_A, b"secret headers")
    assert store.get("10.0.0.1", ID_A) == b"secret headers"
    assert store.get("10.0.0.2", ID_A) is None  # another box naming the same id
    assert store.get("10.0.0.1", ID_B) is None


def test_store_is_lru_within_its_total_bound() -> None:
    store = PrefixStore(max_bytes=300, per_client=300)
    for n, ident in enumerate("abc"):
        assert store.put(f"c{n}", ident * 32, bytes(100))
    assert store.total_bytes == 300
    assert store.get("c0", "a" * 32) is not None  # a is now the most recently used
    store.put("c3", "d" * 32, bytes(100))
    assert store.get("c1", "b" * 32) is None  # the least recently used went
    assert store.get("c0", "a" * 32) is not None and store.get("c2", "c" * 32) is not None
    assert store.total_bytes == 300 and len(store) == 3


def test_store_bounds_each_client_first() -> None:
    store = PrefixStore(max_bytes=1000, per_client=250)
    store.put("other", "o" * 32, bytes(200))
    for ident in "abc":
        store.put("busy", ident * 32, bytes(100))
    # The busy client's own oldest went; the other client's body stayed.
    assert store.get("busy", "a" * 32) is None
    assert store.client_bytes("busy") == 200 and store.client_bytes("other") == 200
    assert store.get("other", "o" * 32) is not None
    assert not store.put("busy", "z" * 32, bytes(251))  # larger than a share: not kept
    assert store.get("busy", "z" * 32) is None and store.client_bytes("busy") == 200
    assert store.put("busy", "b" * 32, bytes(10))  # a repeated id replaces its body
    assert store.client_bytes("busy") == 110 and store.total_bytes == 310


# ---------------------------------------------------------------- prefix frames


def test_a_prefix_frame_round_trips_and_is_smaller() -> None:
    previous = HEADERS + b'int a(void) { return f1("a", 1); }\n'
    body = HEADERS + b'int b(void) { return f2("b", 2); }\n'
    plain = comp.compress("zstd", body, 3)
    prefixed = comp.compress("zstd", body, 3, previous)
    assert len(prefixed) * 5 < len(plain)
    info = codecs.zstd_frame(prefixed)  # the same walk as every body: no dictionary id
    assert info.content_size == len(body) and info.checksum
    assert comp.decompress("zstd", prefixed, len(body), previous) == body
    with pytest.raises(comp.CompressionError, match="corrupt zstd body"):
        comp.decompress("zstd", prefixed, len(body))  # without its prefix
    with pytest.raises(comp.CompressionError, match="corrupt zstd body"):
        # Another prefix: the output differs and its checksum says so.
        comp.decompress("zstd", prefixed, len(body), previous.replace(b"extern", b"EXTERN"))
    with pytest.raises(comp.CompressionError, match="over the limit"):
        comp.decompress("zstd", prefixed, len(body) - 1, previous)  # bound before decoding
    with pytest.raises(comp.CompressionError, match="takes no prefix"):
        comp.decompress("lz4", comp.compress("lz4", body), len(body), previous)


def test_a_frame_cannot_claim_more_than_the_limit_through_its_prefix() -> None:
    """The stated size is checked first, so a small frame copying a large prefix many
    times over is refused before anything is allocated."""
    previous = bytes(range(256)) * 4096  # 1 MiB
    frame = comp.compress("zstd", previous * 8, 3, previous)
    assert len(frame) < 4096
    with pytest.raises(comp.CompressionError, match="over the limit"):
        comp.decompress("zstd", frame, 4 * 1024 * 1024, previous)


# ---------------------------------------------------------------- kept bodies (client)


def _env(tmp_path: Path) -> dict[str, str]:
    top = tmp_path / "distcc"
    top.mkdir(exist_ok=True)
    return {"DISTCC_DIR": str(top)}


def test_kept_bodies_are_private_bounded_and_newest_first(tmp_path: Path) -> None:
    env = _env(tmp_path)
    first = kept.plan(env, "127.0.0.1:3632")
    assert first is not None and first.prefix_id == "" and first.prefix == b""
    first.keep_body(b"one" * 10)
    peer = tmp_path / "distcc" / "zref" / "127.0.0.1_3632"
    for d in (peer.parent, peer):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    (only,) = list(peer.iterdir())
    assert stat.S_IMODE(only.stat().st_mode) == 0o600 and only.name.endswith(first.keep)

    second = kept.plan(env, "127.0.0.1:3632")
    assert second is not None and second.prefix_id == first.keep
    assert second.prefix == b"one" * 10
    second.keep_body(b"two" * 10)
    third = kept.plan(env, "127.0.0.1:3632")
    assert third is not None and (third.prefix_id, third.prefix) == (second.keep, b"two" * 10)
    third.close()
    # Another peer has its own bodies.
    other = kept.plan(env, "[::1]:3632")
    assert other is not None and other.prefix_id == ""
    other.close()
    assert (tmp_path / "distcc" / "zref" / "___1__3632").is_dir()

    for n in range(kept.KEEP_COUNT + 3):
        p = kept.plan(env, "127.0.0.1:3632")
        assert p is not None
        p.keep_body(b"%d" % n * 100)
    assert len(list(peer.iterdir())) == kept.KEEP_COUNT
    p = kept.plan(env, "127.0.0.1:3632")
    assert p is not None and p.prefix == b"%d" % (kept.KEEP_COUNT + 2) * 100
    p.close()


def test_kept_bytes_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kept, "KEEP_BYTES", 250)
    env = _env(tmp_path)
    for n in range(4):
        p = kept.plan(env, "h:1")
        assert p is not None
        p.keep_body(bytes([n]) * 100)
    sizes = [f.stat().st_size for f in (tmp_path / "distcc" / "zref" / "h_1").iterdir()]
    assert sizes == [100, 100]


def test_planted_symlinks_are_not_followed(tmp_path: Path) -> None:
    env = _env(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"another user's file")
    p = kept.plan(env, "h:1")
    assert p is not None
    p.keep_body(b"mine")
    peer = tmp_path / "distcc" / "zref" / "h_1"
    # A newer "body" that is a symlink: skipped (O_NOFOLLOW), the real one is used.
    (peer / ("f" * 16 + "-" + ID_A)).symlink_to(secret)
    q = kept.plan(env, "h:1")
    assert q is not None and q.prefix == b"mine"
    q.keep_body(b"again")  # pruning removes the link itself, never its target
    assert secret.read_bytes() == b"another user's file"
    assert not (peer / ("f" * 16 + "-" + ID_A)).is_symlink()

    # The peer directory, or zref/ itself, replaced by a symlink: no plan at all.
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    for victim in (peer, peer.parent):
        for f in victim.iterdir():
            if f.is_file():
                f.unlink()
        os.rename(victim, tmp_path / "moved")
        victim.symlink_to(tmp_path / "elsewhere")
        assert kept.plan(env, "h:1") is None
        victim.unlink()
        os.rename(tmp_path / "moved", victim)


def test_a_directory_open_to_others_is_not_used(tmp_path: Path) -> None:
    env = _env(tmp_path)
    p = kept.plan(env, "h:1")
    assert p is not None
    p.keep_body(b"mine")
    peer = tmp_path / "distcc" / "zref" / "h_1"
    os.chmod(peer, 0o755)
    assert kept.plan(env, "h:1") is None
    os.chmod(peer, 0o700)
    assert kept.plan(env, "h:1") is not None
    if os.geteuid() == 0:  # a directory another user made (planted in a shared DISTCC_DIR)
        os.chown(peer, 65534, 65534)
        assert kept.plan(env, "h:1") is None
        os.chown(peer, 0, 0)
    assert kept.plan({"DISTCC_DIR": str(tmp_path / "missing")}, "h:1") is None
    (tmp_path / "link").symlink_to(tmp_path / "distcc")  # the user's own choice: followed
    linked = kept.plan({"DISTCC_DIR": str(tmp_path / "link")}, "h:1")
    assert linked is not None and linked.prefix == b"mine"
    linked.close()


def test_a_refusal_drops_the_prefix_once(tmp_path: Path) -> None:
    env = _env(tmp_path)
    p = kept.plan(env, "h:1")
    assert p is not None
    p.keep_body(HEADERS)
    q = kept.plan(env, "h:1")
    assert q is not None and q.prefix_id
    assert not q.refused("this server does not speak the body codec 'zstd'")
    assert q.refused(codecs.unknown_prefix_reason(q.prefix_id))
    assert q.prefix_id == "" and not q.refused(codecs.unknown_prefix_reason(ID_A))
    assert q.tokens() == codecs.encode_prefix_tokens(q.keep)  # ZNEW only now
    frame = q.compress(HEADERS, None)
    assert comp.decompress("zstd", frame, len(HEADERS)) == HEADERS and q.sent == len(frame)
    q.close()
