#!/bin/sh
# Build meshcc's C launcher for the venv at PREFIX (install.sh runs this; so do the tests).
#
#   packaging/launcher/build.sh PREFIX [EXTRA_SYS_PATH ...]
#
# Writes PREFIX/libexec/meshcc/{launcher,client,cli,zygote} and replaces PREFIX/bin/meshcc,
# meshcc-gcc, meshcc-g++, meshcc-cc and meshcc-c++ with the launcher. `client` and `cli`
# are the Python launchers (what meshcc-gcc & co. and meshcc were before), run by the C
# launcher whenever the fast path cannot be taken (and for meshcc's subcommands: `meshcc
# daemon` is Python as before; `meshcc gcc ...` and masquerade links take the fast path);
# `zygote` starts the warm process (meshcc/client/zygote.py). EXTRA_SYS_PATH
# directories go before the venv's site-packages (a source checkout, for the tests).
# Without a C compiler (CC, else cc) nothing is changed: the Python launchers stay.
# MESHCC_ZYGOTE_DEFAULT=0 builds a launcher that uses the zygote only with MESHCC_ZYGOTE=1.
set -eu
prefix=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "note: no C compiler ($cc): meshcc-gcc stays a Python launcher" >&2
    exit 0
fi
case $prefix in *[!A-Za-z0-9/._+@%=,:-]*) exit 0 ;; esac
libexec=$prefix/libexec/meshcc
mkdir -p "$libexec"
python=$prefix/bin/python3
site_dirs=$("$python" -c 'import sys, sysconfig
paths = sys.argv[1:] + [sysconfig.get_path(p) for p in ("purelib", "platlib")]
print(" ".join(dict.fromkeys(paths)))' "$@")
# Paths go into a C string and Python strings unquoted: the same safe set as the prefix.
for dir in $site_dirs; do
    case $dir in *[!A-Za-z0-9/._+@%=,:-]*) exit 0 ;; esac
done
# shellcheck disable=SC2086 # a list of directories
package=$("$python" -IS -c 'import sys
sys.path[:0] = sys.argv[1:]
import meshcc
print(meshcc.__file__)' $site_dirs)
# A new id per build: an upgrade (or a rebuild) never reaches an older install's zygote.
# shellcheck disable=SC2086 # a list of directories
install_id="$("$python" -IS -c 'import sys
sys.path[:0] = sys.argv[1:]
import meshcc
print(meshcc.__version__)' $site_dirs)-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
# `meshcc`'s own subcommands and options: the C launcher sends these straight to Python.
# shellcheck disable=SC2086 # a list of directories
cli_words=" $("$python" -IS -c 'import sys
sys.path[:0] = sys.argv[1:]
from meshcc.cli import entry
print(" ".join(sorted(entry.COMMANDS | entry._CLI_FLAGS | {"--inetd"})))' $site_dirs) "
for script in client cli zygote; do
    {
        echo "#!$python -IS"
        echo "# Written by meshcc's packaging/launcher/build.sh (run by meshcc's C launcher)."
        echo "import sys"
        for dir in $site_dirs; do
            echo "sys.path.append(\"$dir\")"
        done
        case $script in
            client)
                echo "del sys.argv[0]  # the launcher passes the name it was run as first"
                echo "from meshcc.client.wrapper import launch"
                echo "sys.exit(launch())"
                ;;
            cli)
                echo "del sys.argv[0]  # the launcher passes the name it was run as first"
                echo "from meshcc.cli.entry import main"
                echo "sys.exit(main())"
                ;;
            zygote)
                echo "from meshcc.client.zygote import main"
                echo "sys.exit(main(sys.argv[1:]))"
                ;;
        esac
    } > "$libexec/$script.new"
    chmod 755 "$libexec/$script.new"
    mv -f "$libexec/$script.new" "$libexec/$script"
done
"$cc" -std=c99 -O2 -Wall -Wextra -o "$libexec/launcher.new" \
    -DMESHCC_PYTHON="\"$python\"" -DMESHCC_LIBEXEC="\"$libexec\"" \
    -DMESHCC_INSTALL_ID="\"$install_id\"" -DMESHCC_PACKAGE="\"$package\"" \
    -DMESHCC_ZYGOTE_DEFAULT="${MESHCC_ZYGOTE_DEFAULT:-1}" \
    -DMESHCC_CLI_WORDS="\"$cli_words\"" \
    "$here/meshcc-launcher.c"
mv -f "$libexec/launcher.new" "$libexec/launcher"
for cmd in meshcc meshcc-gcc meshcc-g++ meshcc-cc meshcc-c++; do
    cp "$libexec/launcher" "$prefix/bin/$cmd.new"
    mv -f "$prefix/bin/$cmd.new" "$prefix/bin/$cmd"
done
