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
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" = 0 ]; then
    : "${PREFIX:=/opt/meshcc}" "${BINDIR:=/usr/local/bin}"
else
    : "${PREFIX:=$HOME/.local/share/meshcc}" "${BINDIR:=$HOME/.local/bin}"
fi
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: meshcc needs Python >= 3.11 ($python is $("$python" -V 2>&1))" >&2
    exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1; then
    echo "install.sh: '$python -m venv' is unavailable; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1
fi
"$python" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --upgrade "$here"
mkdir -p "$BINDIR"
for cmd in meshcc meshcc-gcc meshcc-g++ meshcc-cc meshcc-c++; do
    ln -sf "$PREFIX/bin/$cmd" "$BINDIR/$cmd"
done
echo "meshcc installed in $PREFIX; commands linked into $BINDIR"
case ":$PATH:" in *":$BINDIR:"*) ;; *) echo "note: $BINDIR is not on your PATH" >&2 ;; esac
