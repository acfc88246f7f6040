"""Tests for meshcc.compiler.hostspec: distcc 3.4's host grammar (checked against real distcc
in integration/test_hostspec_distcc.py)."""

import pytest

from meshcc.compiler.hostspec import HostSpecError, load_hosts, parse_hosts
from meshcc.defaults import DISTCC_PORT


def P(text: str):
    return parse_hosts(text, "DISTCC_HOSTS")


def test_man_page_example_one_line():
    hl = P(
        "localhost/2 @bigman/16:/opt/bin/distccd oldmachine:4200/1 # cartman is down distant/3,lzo"
    )
    assert [h.spec for h in hl.hosts] == [
        "localhost/2",
        "@bigman/16:/opt/bin/distccd",
        "oldmachine:4200/1",
    ]
    lo, ssh, tcp = hl.hosts
    assert (lo.kind, lo.limit, lo.lock_name) == ("localhost", 2, "localhost")
    assert (ssh.kind, ssh.user, ssh.host, ssh.limit, ssh.command) == (
        "ssh",
        "",
        "bigman",
        16,
        "/opt/bin/distccd",
    )
    assert ssh.lock_name == "ssh_bigman" and ssh.supported and not ssh.unsupported_reason
    assert (tcp.kind, tcp.host, tcp.port, tcp.limit, tcp.protocol) == (
        "tcp",
        "oldmachine",
        4200,
        1,
        1,
    )
    assert tcp.lock_name == "tcp_oldmachine_4200"
    assert hl.total_limit == 19


def test_man_page_example_multi_line():
    hl = P(
        "localhost/2 @bigman/16:/opt/bin/distccd oldmachine:4200/1\n"
        "  # cartman is down\n  distant/3,lzo\n"
    )
    assert len(hl.hosts) == 4
    d = hl.hosts[3]
    assert (d.host, d.limit, d.lzo, d.protocol, d.port) == ("distant", 3, True, 2, DISTCC_PORT)
    assert hl.total_limit == 22


def test_ipv6_pump():
    (h,) = P("[::1]:4000/3,lzo,cpp").hosts
    assert (h.kind, h.host, h.port, h.limit, h.lzo, h.cpp, h.protocol) == (
        "tcp",
        "::1",
        4000,
        3,
        True,
        True,
        3,
    )
    assert h.lock_name == "tcp_::1_4000"


def test_oldstyle_limit_before_port():
    (h,) = P("10.0.0.1/5:4000,lzo").hosts
    assert (h.host, h.port, h.limit, h.protocol) == ("10.0.0.1", 4000, 5, 2)


@pytest.mark.parametrize(
    "spec,limit,port",
    [
        ("box", 4, 3632),
        ("box/7", 7, 3632),
        ("box=7", 7, 3632),
        ("box:99", 4, 99),
        ("box:99/7", 7, 99),
        ("box/7:99", 7, 99),
        ("box=7:99", 7, 99),
        ("box:99=7", 7, 99),
        ("[fe80::1]", 4, 3632),
        ("[fe80::1]/2", 2, 3632),
        ("[fe80::1]:1/2", 2, 1),
        ("127.0.0.1", 4, 3632),
        ("localhost:3632", 4, 3632),
        ("localhost,lzo", 4, 3632),
    ],
)
def test_tcp_forms(spec, limit, port):
    (h,) = P(spec).hosts
    assert (h.kind, h.limit, h.port, h.spec) == ("tcp", limit, port, spec)


def test_j_sum_example():
    hl = P("localhost red green/8 @blue [::1]:4000/3")
    assert [h.limit for h in hl.hosts] == [2, 4, 8, 4, 3]
    assert hl.total_limit == 21


def test_options():
    (h,) = P("box,down,auth=svc,lzo").hosts
    assert h.down and h.auth and h.auth_name == "svc" and h.lzo and h.protocol == 2
    assert not h.supported and "auth" in h.unsupported_reason
    (h,) = P("box,auth").hosts
    assert h.auth and h.auth_name is None


def test_ssh_forms():
    (h,) = P("me@box/3:/usr/bin/distccd,lzo").hosts
    assert (h.kind, h.user, h.host, h.limit, h.command, h.lzo) == (
        "ssh",
        "me",
        "box",
        3,
        "/usr/bin/distccd",
        True,
    )
    (h,) = P("@box").hosts
    assert (h.user, h.host, h.limit, h.command) == ("", "box", 4, None)
    (h,) = P("@box:").hosts  # distcc: an empty command is the default one
    assert (h.host, h.command) == ("box", None)
    (h,) = P("u@box=5,down").hosts
    assert (h.user, h.host, h.limit, h.down, h.protocol) == ("u", "box", 5, True, 1)
    (h,) = P("@box:/opt/bin/distccd/3").hosts  # the command runs to ',': '/3' is in it
    assert (h.limit, h.command) == (4, "/opt/bin/distccd/3")


def test_global_options():
    hl = P("--randomize --localslots=6 --localslots_cpp/12 a +zeroconf b")
    assert hl.randomize and hl.localslots == 6 and hl.localslots_cpp == 12
    assert hl.zeroconf and hl.zeroconf_index == 1
    assert [h.host for h in hl.hosts] == ["a", "b"]
    hl = P("a")
    assert (hl.localslots, hl.localslots_cpp, hl.randomize, hl.zeroconf) == (4, 8, False, False)


def test_zeroconf_alone_is_a_list():
    assert P("+zeroconf").zeroconf


def test_comments_and_whitespace():
    hl = P("a#comment b\n\tc\r\n# whole line\fd")
    assert [h.host for h in hl.hosts] == ["a", "c", "d"]


@pytest.mark.parametrize(
    "text,problem",
    [
        ("", "contained no hosts"),
        ("  # only a comment\n", "contained no hosts"),
        ("box:99999", "port must be 1-65535"),
        ("box:0", "port must be 1-65535"),
        ("box:", "port must be a number"),
        ("box:12x", "unexpected"),
        ("box,cpp", "needs ',lzo'"),
        ("box,gzip", "unknown option ',gzip'"),
        ("box,,lzo", "unknown option"),
        ("box/0", "at least 1"),
        ("box/x", "must be a number"),
        ("box/2:1/3", "given twice"),
        ("fe80::1", "brackets"),
        ("[::1", "missing ']'"),
        ("[]", "IPv6"),
        ("u@", "missing host name"),
        ("@-oProxyCommand=x", "cannot start with '-'"),
        ("a@b@c", "more than one '@'"),
        ("@h/0", "at least 1"),
        ("@h,gzip", "unknown option"),
        ("localhost/0", "at least 1"),
        ("localhost/2x", "localhost/N"),
        ("--localslots", "needs a value"),
        ("--localslots=0", "at least 1"),
        ("--bogus", "unknown option"),
        ("box,auth=", "service name"),
    ],
)
def test_errors(text, problem):
    with pytest.raises(HostSpecError) as ei:
        parse_hosts(text, "DISTCC_HOSTS")
    msg = str(ei.value)
    assert msg.startswith("DISTCC_HOSTS: ") and problem in msg, msg
    if text.strip() and not text.strip().startswith("#"):
        assert repr(text.split()[0]) in msg


def test_error_names_file_source(tmp_path):
    with pytest.raises(HostSpecError, match=r"^/x/hosts: 'box:99999': port must be 1-65535$"):
        parse_hosts("a box:99999", "/x/hosts")


# --- lookup order -----------------------------------------------------------------------------


def test_load_prefers_env_even_empty(tmp_path):
    (tmp_path / "hosts").write_text("fromfile")
    assert load_hosts({"DISTCC_HOSTS": "a", "DISTCC_DIR": str(tmp_path)}).hosts[0].host == "a"
    with pytest.raises(HostSpecError, match="DISTCC_HOSTS: contained no hosts"):
        load_hosts({"DISTCC_HOSTS": "", "DISTCC_DIR": str(tmp_path)})


def test_load_distcc_dir_file(tmp_path):
    (tmp_path / "hosts").write_text("# mine\nfromfile/3\n")
    hl = load_hosts({"DISTCC_DIR": str(tmp_path)})
    assert hl.hosts[0].host == "fromfile" and hl.source == str(tmp_path / "hosts")


def test_load_home_default(tmp_path):
    (tmp_path / ".distcc").mkdir()
    (tmp_path / ".distcc" / "hosts").write_text("homebox")
    assert load_hosts({"HOME": str(tmp_path)}).hosts[0].host == "homebox"


def test_load_error_in_file_names_file(tmp_path):
    (tmp_path / "hosts").write_text("a:70000")
    with pytest.raises(HostSpecError, match=str(tmp_path / "hosts") + ": 'a:70000'"):
        load_hosts({"DISTCC_DIR": str(tmp_path)})


def test_load_system_file(tmp_path):
    (tmp_path / "sys").write_text("sysbox")
    hl = load_hosts({"DISTCC_DIR": str(tmp_path)}, system_file=str(tmp_path / "sys"))
    assert hl.hosts[0].host == "sysbox"


def test_load_nothing(tmp_path):
    with pytest.raises(HostSpecError, match=r"no hosts: set DISTCC_HOSTS.*meshcc daemon"):
        load_hosts({"DISTCC_DIR": str(tmp_path)}, system_file=str(tmp_path / "none"))


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    _name = st.from_regex(r"[a-z][a-z0-9.-]{0,15}", fullmatch=True).filter(
        lambda s: s != "localhost"
    )
    _opts = st.lists(st.sampled_from([",lzo", ",down", ",auth", ",auth=svc"]), max_size=3)

    @settings(max_examples=200, deadline=None)
    @given(
        _name,
        st.one_of(st.none(), st.integers(1, 65535)),
        st.one_of(st.none(), st.integers(1, 999)),
        st.booleans(),
        _opts,
    )
    def test_property_tcp_roundtrip(name, port, limit, before, opts):
        spec = name
        lim = f"/{limit}" if limit else ""
        if before:
            spec += lim + (f":{port}" if port else "")
        else:
            spec += (f":{port}" if port else "") + lim
        spec += "".join(opts)
        (h,) = P(spec).hosts
        assert (h.kind, h.host, h.port, h.limit, h.spec) == (
            "tcp",
            name,
            port or 3632,
            limit or 4,
            spec,
        )
        assert h.lzo == (",lzo" in opts) and h.protocol == (2 if h.lzo else 1)
        assert h.lock_name == f"tcp_{name}_{port or 3632}"

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet="ab:/=,[]@#-+0123456789 \nlocahstzrdpuvw_", max_size=30))
    def test_property_never_crashes(text):
        try:
            hl = parse_hosts(text, "T")
        except HostSpecError as e:
            assert str(e).startswith("T: ")
        else:
            assert hl.hosts or hl.zeroconf
            for h in hl.hosts:
                assert h.limit >= 1 and h.kind in ("tcp", "ssh", "localhost")
