#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu box, then run it.
# Needs root (apt-get, network namespaces). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then exec sudo -E bash "$0" "$@"; fi

export DEBIAN_FRONTEND=noninteractive
# The real-project tests fetch a Debian source package (zlib) with `apt-get source`.
if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    . /etc/os-release
    cat > /etc/apt/sources.list.d/meshcc-tests-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME:-bookworm}
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
# distcc: the real protocol peer (client and distccd); liblzo2-2: LZO interop check;
# dpkg-dev: apt-get source; iproute2: network namespaces for the mesh tests;
# systemd, shellcheck: checking the service files (systemd-analyze verify, sysusers).
apt-get install -y -qq --no-install-recommends \
    distcc gcc g++ make dpkg-dev liblzo2-2 iproute2 python3-venv systemd shellcheck >/dev/null

python3 -m venv .venv
# compat mode: a plain .pth path entry, no import-hook finder on every start-up
.venv/bin/pip install --quiet --upgrade -e '.[test]' --config-settings editable_mode=compat
exec .venv/bin/python -m pytest "$@"
