#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): install what the tests need on a
# Debian/Ubuntu box, then run, stopping at the first failing step:
#   ruff check, ruff format --check, mypy --strict meshcc, the layer contracts (lint-imports),
#   tests/unit, tests/integration.
# Needs root (apt-get, network namespaces). Arguments go to pytest: options (-x, -k EXPR,
# -m "not netns") go to both test steps; naming test files or directories runs just those.
# A run with no arguments ends with the fresh-machine check, tests/fresh_root.sh (the README's
# two commands and this whole run again, inside a minimal Debian root; about 8 minutes more):
#   MESHCC_FRESH_ROOT=0 bash tests/run.sh      skips it (a developer's loop)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then exec sudo -E bash "$0" "$@"; fi
    cat >&2 <<'EOF'
tests/run.sh needs root (it installs Debian packages and builds network namespaces) and sudo is
not installed. Run it as root:

    su -c 'bash tests/run.sh'

Or, as this user, the checks and tests that need no root (once the venv exists:
python3 -m venv .venv && .venv/bin/pip install -e '.[test]' --config-settings editable_mode=compat):

    .venv/bin/ruff check && .venv/bin/ruff format --check && .venv/bin/mypy --strict meshcc \
        && .venv/bin/lint-imports && .venv/bin/python -m pytest tests/unit
EOF
    exit 1
fi

step() { printf '\n=== %s\n' "$*"; }

# ------------------------------------------------------------------ system packages
# distcc: the real protocol peer (client and distccd); liblzo2-2: LZO interop check;
# dpkg-dev: apt-get source; iproute2: network namespaces for the mesh tests;
# systemd, shellcheck: checking the service files (systemd-analyze verify, sysusers).
# ccache: the daemon's --ccache; openssh-server: a real sshd for @host specs and --inetd;
# tmux: `meshcc top` driven in a real terminal; curl: docs/bootstrap.md's fetch, as a user
# types it, and the status port's /metrics read from inside a namespace; microsocks, socat:
# a real SOCKS5 proxy on a UNIX socket, as Portage's network sandbox offers distcc.
packages=(distcc gcc g++ make dpkg-dev liblzo2-2 iproute2 python3-venv systemd shellcheck ccache
    openssh-server tmux curl microsocks socat)
missing=()
for pkg in "${packages[@]}"; do
    # "ii": wanted and installed; anything else (absent, removed, half-installed) installs
    if [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != "ii " ]; then
        missing+=("$pkg")
    fi
done

export DEBIAN_FRONTEND=noninteractive
need_update=$((${#missing[@]} > 0))
# The real-project tests fetch a Debian source package (zlib) with `apt-get source`, once:
# tests/harness.py keeps it in $MESHCC_TEST_CACHE. That needs a deb-src entry and its index.
if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # shellcheck source=/dev/null
    . /etc/os-release
    cat > /etc/apt/sources.list.d/meshcc-tests-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME:-bookworm}
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    need_update=1
fi
source_cache="${MESHCC_TEST_CACHE:-/var/cache/meshcc-tests}"
if [ ! -e "$source_cache/zlib/.complete" ] && ! compgen -G '/var/lib/apt/lists/*_Sources*' >/dev/null; then
    need_update=1 # zlib not fetched yet and no source index to fetch it with
fi
if [ "$need_update" = 1 ]; then
    step "apt-get update"
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ------------------------------------------------------------------ the venv
python3 -m venv .venv
# compat mode: a plain .pth path entry, no import-hook finder on every start-up
.venv/bin/pip install --quiet --upgrade -e '.[test]' --config-settings editable_mode=compat

# ------------------------------------------------------------------ cheap checks first
step "ruff check"
.venv/bin/ruff check
step "ruff format --check"
.venv/bin/ruff format --check
step "mypy --strict meshcc"
.venv/bin/mypy --strict meshcc
step "layer contracts (lint-imports)"
.venv/bin/lint-imports

# ------------------------------------------------------------------ tests
# Same examples on every run, whatever .hypothesis/ holds (see tests/conftest.py).
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"

# Arguments naming files or directories (tests/unit/test_wire.py, path::test) choose the
# tests: run exactly those, once.
for arg in "$@"; do
    if [ -e "${arg%%::*}" ]; then
        step "pytest $(printf '%q ' "$@")"
        exec .venv/bin/python -m pytest "$@"
    fi
done

# pytest's exit status 5 means "no tests collected". Without arguments that is a failure (a
# tree that collects nothing is broken); with -k/-m one of the two trees may well have no
# match, and only both having none is.
collected=0
run_tests() {
    local status=0
    step "pytest $(printf '%q ' "$@")"
    .venv/bin/python -m pytest "$@" || status=$?
    if [ "$status" = 0 ]; then
        collected=1
    elif [ "$status" = 5 ] && [ $# -gt 1 ]; then
        echo "(no test in $1 matches $(printf '%q ' "${@:2}"))"
    else
        exit "$status"
    fi
}
run_tests tests/unit "$@"
run_tests tests/integration "$@"
if [ "$collected" = 0 ]; then
    echo "no test matches $(printf '%q ' "$@")" >&2
    exit 5
fi

# ------------------------------------------------------------------ the fresh-machine check
# Only on a full run: arguments choose some tests, and the check reruns them all. Inside the
# fresh root, tests/fresh_root.sh runs this script with MESHCC_FRESH_ROOT=0 (no nesting).
if [ $# = 0 ] && [ "${MESHCC_FRESH_ROOT:-1}" != 0 ]; then
    step "fresh machine: tests/fresh_root.sh"
    bash tests/fresh_root.sh
fi
