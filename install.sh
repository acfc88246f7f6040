#!/bin/sh
# Install meshcc into its own virtual environment and link its commands onto PATH.
#
# A private venv keeps meshcc's dependencies apart from the system's and keeps the
# compile wrapper's start-up fast: it does not process the base interpreter's
# site-packages .pth files, which it would pay for on every one of thousands of compiles.
#
#   ./install.sh            as root: /opt/meshcc, commands in /usr/local/bin
#                           as a user: ~/.local/share/meshcc, commands in ~/.local/bin
#   PREFIX=DIR BINDIR=DIR ./install.sh
#   ./install.sh --systemd  (or INSTALL_SYSTEMD=1; as root) also installs the systemd unit,
#                           its ExecStart pointing at this venv's meshcc, and the meshcc
#                           user (sysusers.d); then: systemctl enable --now meshcc
set -eu
here=$(cd "$(dirname "$0")" && pwd)
systemd=${INSTALL_SYSTEMD:-0}
for arg in "$@"; do
    case $arg in
        --systemd) systemd=1 ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done
if [ "$systemd" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: --systemd installs a system service: run it as root" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    : "${PREFIX:=/opt/meshcc}" "${BINDIR:=/usr/local/bin}"
else
    : "${PREFIX:=$HOME/.local/share/meshcc}" "${BINDIR:=$HOME/.local/bin}"
fi
python=${PYTHON:-python3}

# Prerequisites: python3 (>= 3.11) with venv/ensurepip, and gcc (the daemon offers the
# compilers it finds). As root on Debian/Ubuntu they are installed; otherwise the exact
# command is printed.
missing=""
if ! command -v "$python" >/dev/null 2>&1; then
    missing="python3 python3-venv"
elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing="python3-venv"
fi
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
# The C launcher (below) needs the C library's headers, which Debian's gcc only recommends;
# without them it is skipped and the Python launchers stay, so only root installs them.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ ! -e /usr/include/dirent.h ]; then
    missing="$missing libc6-dev"
fi
missing=${missing# }
if [ -n "$missing" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "install.sh: installing $missing (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            # shellcheck disable=SC2086 # a list of package names
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
        else
            echo "install.sh: meshcc needs $missing first; as root run:" >&2
            echo "    apt-get install -y $missing" >&2
            exit 1
        fi
    elif command -v emerge >/dev/null 2>&1; then
        echo "install.sh: meshcc needs dev-lang/python (3.11 or newer) and sys-devel/gcc:" \
            "emerge --ask --noreplace dev-lang/python sys-devel/gcc" >&2
        exit 1
    else
        echo "install.sh: meshcc needs $missing (Python >= 3.11 with venv, and gcc)" >&2
        exit 1
    fi
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: meshcc needs Python >= 3.11; $python is $("$python" -V 2>&1)" >&2
    exit 1
fi

# The commands' entry scripts, rewritten: pip's launchers start the interpreter normally, so
# every compile pays for `site` and the venv's .pth files (setuptools' _distutils_hack
# alone ~1 ms, ~3 ms in all) before meshcc runs. Ours start it with -I -S (as one shebang
# argument, "-IS"): -S skips site, and the script puts this venv's site-packages on
# sys.path itself; -I ignores PYTHON* variables (a build's PYTHONPATH or PYTHONHOME must not
# change or break the compiler wrapper; the compilers still see the whole environment) and
# the user's site directory. A prefix that cannot be written into a shebang and a Python
# string safely (blanks, quotes, backslashes, over 200 bytes) keeps pip's launchers.
write_launchers() {
    case $PREFIX in *[!A-Za-z0-9/._+@%=,:-]*) return 0 ;; esac
    [ "${#PREFIX}" -le 200 ] || return 0
    site_dirs=$("$PREFIX/bin/python3" -c 'import sysconfig
paths = [sysconfig.get_path(p) for p in ("purelib", "platlib")]
print(" ".join(dict.fromkeys(paths)))')
    for cmd in meshcc meshcc-gcc meshcc-g++ meshcc-cc meshcc-c++; do
        case $cmd in
            meshcc) entry="from meshcc.cli.entry import main" call="main()" ;;
            *) entry="from meshcc.client.wrapper import launch" call="launch()" ;;
        esac
        {
            echo "#!$PREFIX/bin/python3 -IS"
            echo "# Written by meshcc's install.sh: no site, no .pth files, no PYTHON* variables."
            # A compile client frees nothing before it exits (launch() says why): no cyclic
            # garbage collections during its imports either (~0.2 M instructions a compile).
            case $cmd in meshcc) ;; *) echo "import gc; gc.disable()" ;; esac
            echo "import sys"
            for dir in $site_dirs; do
                echo "sys.path.append(\"$dir\")"
            done
            echo "$entry"
            echo "sys.exit($call)"
        } > "$PREFIX/bin/$cmd.new"
        chmod 755 "$PREFIX/bin/$cmd.new"
        mv -f "$PREFIX/bin/$cmd.new" "$PREFIX/bin/$cmd"
    done
}

# Build out of the checkout (pip would write build/ and *.egg-info into it, which fails in
# a read-only or foreign checkout); a failed venv leaves nothing half-made behind.
build=$(mktemp -d "${TMPDIR:-/tmp}/meshcc-install.XXXXXX")
fresh_prefix=0
[ -e "$PREFIX" ] || fresh_prefix=1
cleanup() {
    status=$?
    rm -rf "$build"
    if [ "$status" != 0 ] && [ "$fresh_prefix" = 1 ]; then rm -rf "$PREFIX"; fi
}
trap cleanup EXIT
(cd "$here" && tar -cf - --exclude=.git --exclude=.venv --exclude=build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' --exclude=.hypothesis .) |
    tar -xf - -C "$build"
chmod -R u+w "$build" # a read-only checkout gives read-only copies
"$python" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --upgrade "$build"
write_launchers
# --- meshcc C launcher (zygote) begin ---------------------------------------------------
# meshcc-gcc, meshcc-g++, meshcc-cc, meshcc-c++ and meshcc become a small C program that
# hands each compile to a warm per-user Python process (meshcc/client/zygote.py) instead of
# starting an interpreter per compile, and runs the Python launchers above whenever it
# cannot, and for meshcc's subcommands (see packaging/launcher/). Needs a C compiler (cc); without one, or with MESHCC_LAUNCHER=python,
# the Python launchers stay. MESHCC_ZYGOTE=0 in a build's environment turns it off per job.
if [ "${MESHCC_LAUNCHER:-c}" != python ]; then
    "$build/packaging/launcher/build.sh" "$PREFIX" ||
        echo "note: the C launcher did not build; meshcc-gcc stays a Python launcher" >&2
fi
# --- meshcc C launcher (zygote) end -----------------------------------------------------
mkdir -p "$BINDIR"
for cmd in meshcc meshcc-gcc meshcc-g++ meshcc-cc meshcc-c++; do
    ln -sf "$PREFIX/bin/$cmd" "$BINDIR/$cmd"
done
echo "meshcc installed in $PREFIX; commands linked into $BINDIR"
case ":$PATH:" in
    *":$BINDIR:"*) ;;
    *)
        echo "note: $BINDIR is not on your PATH yet. For this shell:" >&2
        echo "    export PATH=\"$BINDIR:\$PATH\"" >&2
        echo "and for every login: echo 'export PATH=\"$BINDIR:\$PATH\"' >> ~/.profile" >&2
        echo "(or run it by its full path now: $BINDIR/meshcc daemon)" >&2
        ;;
esac

if [ "$systemd" = 1 ]; then
    unitdir=${SYSTEMD_UNITDIR:-/etc/systemd/system}
    sysusersdir=${SYSUSERSDIR:-/etc/sysusers.d}
    mkdir -p "$unitdir" "$sysusersdir"
    sed "s|^ExecStart=/usr/bin/meshcc |ExecStart=$PREFIX/bin/meshcc |" \
        "$here/systemd/meshcc.service" > "$unitdir/meshcc.service"
    chmod 644 "$unitdir/meshcc.service"
    install -m 644 "$here/systemd/meshcc.sysusers" "$sysusersdir/meshcc.conf"
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$sysusersdir/meshcc.conf"
    elif ! id meshcc >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir / \
            --shell /usr/sbin/nologin --comment "meshcc distributed compile daemon" meshcc
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    echo "systemd unit installed as $unitdir/meshcc.service; start it with:" \
        "systemctl enable --now meshcc"
fi
