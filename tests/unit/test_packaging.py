"""The service files and packages as text: systemd unit, OpenRC conf.d, Gentoo ebuilds and
metadata (what the tools that read them say: integration/test_packaging_tools.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "meshcc.service"
GENTOO = ROOT / "packaging" / "gentoo"
CONFD = GENTOO / "dev-util" / "meshcc" / "files" / "meshcc.confd"
METADATA = sorted(GENTOO.rglob("metadata.xml"))


def _unit() -> dict[str, list[str]]:
    """The [Service] section's directives (a directive may repeat)."""
    section = ""
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}{key}", []).append(value)
    return out


def test_unit_hardening_directives() -> None:
    u = _unit()
    s = "[Service]"
    want = {
        "Type": "simple",
        "User": "meshcc",
        "Group": "meshcc",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "Restart": "on-failure",
        "RuntimeDirectory": "meshcc",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    }
    for key, value in want.items():
        assert u.get(s + key) == [value], key
    assert "-/etc/default/meshcc" in u[s + "EnvironmentFile"]
    (start,) = u[s + "ExecStart"]
    assert start == "/usr/bin/meshcc daemon --socket /run/meshcc/control.sock $MESHCC_OPTS"
    assert u["[Install]WantedBy"] == ["multi-user.target"]


def test_confd_examples_are_valid_daemon_options() -> None:
    from meshcc.cli import main as cli

    line = next(x for x in CONFD.read_text().splitlines() if x.startswith("#MESHCC_OPTS="))
    opts = line.split("=", 1)[1].strip('"').split()
    ns = cli.build_parser().parse_args(["daemon", "--socket", "/run/meshcc/control.sock", *opts])
    assert ns.write_hosts == "/etc/distcc/hosts" and ns.jobs == 8


def test_ebuild_dependencies_match_pyproject() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    main = (GENTOO / "dev-util/meshcc/meshcc-0.1.0.ebuild").read_text()
    for dep in deps:
        name, version = dep.split(";")[0].strip().split(">=")
        assert f">=dev-python/{name}-{version}[" in main, dep


def test_metadata_xml_well_formed() -> None:
    assert len(METADATA) == 3
    for path in METADATA:
        root = ET.parse(path).getroot()
        assert root.tag == "pkgmetadata"
        assert root.find("maintainer/email") is not None
    main = ET.parse(GENTOO / "dev-util/meshcc/metadata.xml").getroot()
    assert [f.get("name") for f in main.iter("flag")] == ["lzo"]
