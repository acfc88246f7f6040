#!/usr/bin/env bash
# The fresh-machine check (issue 9, "a bare box works from the README alone"): proves that
# nothing the README's two commands and the test suite need was installed on this box by hand.
#
# As root on a Debian/Ubuntu host it
#   1. builds a minimal Debian root (`debootstrap --variant=minbase`: no python3, gcc, git,
#      sudo or iproute2), cached as a tarball in $MESHCC_TEST_CACHE (/var/cache/meshcc-tests),
#      rebuilt when missing or older than $MESHCC_FRESH_ROOT_MAX_AGE days (7);
#   2. unpacks a fresh copy of it under /var/tmp, copies this checkout in as /root/meshcc
#      (a 0700 directory owned by root, no .venv, .git or caches);
#   3. enters it (chroot in its own mount namespace: proc, sysfs, /dev, a tmpfs /run) with a
#      clean environment (env -i: none of this host's PIP_*, proxy or CA variables), and runs
#        ./install.sh                       (the README's first command; it apt-installs
#        meshcc daemon                       python3, python3-venv and gcc itself)
#      the daemon in a network namespace made for it, until `meshcc hosts` answers, then
#        bash tests/run.sh                  (the README's second command, the whole suite)
#      printing the packages apt installed and the time of each phase;
#   4. removes the copy (processes, mounts, namespace, files), on failure too, and what a
#      killed run left.
# Time (2 cores): debootstrap about 50 s when the cache is cold, unpacking 2 s; inside,
# install.sh 30-50 s, the daemon 1 s, tests/run.sh 7.5 min: about 8 minutes in all.
#
# The one thing it adds to the root that a fresh box would not have: this host's extra CA
# certificates (/usr/local/share/ca-certificates), because here the registries are reached
# through an HTTPS proxy that this host trusts that way. No package is added: the
# ca-certificates package that python3-venv depends on picks them up when install.sh
# installs it (and update-ca-certificates runs now if the root already has it).
#
# tests/run.sh runs this as its last step; MESHCC_FRESH_ROOT=0 skips it there. Run alone:
#     bash tests/fresh_root.sh
set -euo pipefail
cd "$(dirname "$0")/.."

inside_mark=/run/meshcc-fresh-root # exists only inside the root (its tmpfs /run)
netns_file=/run/meshcc-fresh-root.netns

clock() { date +%s; }
phase_name=""
phase_start=$(clock)
phase_log=()
# phase NAME: end the current phase (recording its time), start the next one.
phase() {
    local now
    now=$(clock)
    if [ -n "$phase_name" ]; then
        phase_log+=("$(printf '%5ss  %s' "$((now - phase_start))" "$phase_name")")
    fi
    phase_name=$1
    phase_start=$now
    if [ -n "$phase_name" ]; then printf '\n=== fresh root: %s\n' "$phase_name"; fi
}
print_times() {
    phase ""
    printf '\n=== fresh root (%s): time of each phase\n' "$1"
    printf '%s\n' "${phase_log[@]}"
}

# ============================================================ inside the fresh root
if [ "${1:-}" = --inside ]; then
    [ -e "$inside_mark" ] || {
        echo "fresh_root.sh --inside runs only inside the root fresh_root.sh builds" >&2
        exit 2
    }
    dpkg-query -W -f='${Package}\n' | sort > /tmp/packages.pristine
    installed_since_pristine() {
        dpkg-query -W -f='${Package}\n' | sort | comm -13 /tmp/packages.pristine -
    }
    trap 'print_times inside' EXIT

    phase "./install.sh (as root, PATH=$PATH)"
    ./install.sh
    installed_since_pristine > /tmp/packages.install
    echo "packages install.sh had apt install: $(paste -sd' ' /tmp/packages.install)"

    # The README's `meshcc daemon`, with no option, in a network namespace of its own
    # (made by fresh_root.sh on the host: lo and a veth pair standing in for a LAN, nothing
    # that leaves it), until its control socket answers `meshcc hosts`.
    phase "meshcc daemon (network namespace), until meshcc hosts answers"
    nsenter --net="$netns_file" meshcc daemon > /tmp/meshcc-daemon.log 2>&1 &
    daemon=$!
    # With no daemon, `meshcc hosts` browses the network itself and says so: only a reply
    # whose source is the daemon's control socket counts. Alone, the daemon sees no peer,
    # so the DISTCC_HOSTS line is empty and the exit status 1: --explain shows the rest.
    answered=""
    for _ in $(seq 300); do
        if ! kill -0 "$daemon" 2>/dev/null; then break; fi
        if [ -S /run/meshcc/control.sock ]; then
            meshcc hosts --explain > /tmp/meshcc-hosts.out 2>&1 || true
            if grep -q '^source: *daemon on /run/meshcc/control.sock' /tmp/meshcc-hosts.out; then
                answered=1
                break
            fi
        fi
        sleep 0.2
    done
    if kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon"
        for _ in $(seq 150); do
            kill -0 "$daemon" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$daemon" 2>/dev/null; then
            echo "meshcc daemon still runs 30 s after SIGTERM: killing it" >&2
            kill -KILL "$daemon"
        fi
    fi
    daemon_status=0
    wait "$daemon" || daemon_status=$?
    sed 's/^/    daemon: /' /tmp/meshcc-daemon.log
    if [ -f /tmp/meshcc-hosts.out ]; then sed 's/^/    meshcc hosts --explain: /' /tmp/meshcc-hosts.out; fi
    if [ -z "$answered" ]; then
        echo "meshcc daemon did not come up or its control socket did not answer" \
            "(exit status $daemon_status); its log is above" >&2
        exit 1
    fi
    if [ "$daemon_status" != 0 ]; then
        echo "meshcc daemon exited with status $daemon_status on SIGTERM" >&2
        exit 1
    fi
    echo "meshcc daemon came up, answered meshcc hosts, and stopped on SIGTERM"

    phase "bash tests/run.sh"
    MESHCC_FRESH_ROOT=0 bash tests/run.sh
    echo "packages tests/run.sh had apt install:" \
        "$(installed_since_pristine | comm -13 /tmp/packages.install - | paste -sd' ')"
    exit 0
fi

# ============================================================ on the host
if [ "$(id -u)" != 0 ]; then
    echo "tests/fresh_root.sh needs root (debootstrap, chroot, mount and network namespaces)" >&2
    exit 1
fi
if [ -e "$inside_mark" ]; then
    echo "tests/fresh_root.sh: already inside a fresh root; not nesting another" >&2
    exit 1
fi
checkout=$PWD
suite=${MESHCC_FRESH_ROOT_SUITE:-bookworm}
mirror=${MESHCC_FRESH_ROOT_MIRROR:-http://deb.debian.org/debian}
cache=${MESHCC_TEST_CACHE:-/var/cache/meshcc-tests}
max_age_days=${MESHCC_FRESH_ROOT_MAX_AGE:-7}
# Bump when the way the pristine root is made changes, so every cache rebuilds it.
recipe=1
tarball=$cache/fresh-root-$suite-minbase-r$recipe.tar

export DEBIAN_FRONTEND=noninteractive
apt_wait=(-o DPkg::Lock::Timeout=600) # other apt users on this box: wait, do not fail

phase "debootstrap on the host"
if ! command -v debootstrap >/dev/null; then
    apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends debootstrap >/dev/null ||
        { apt-get "${apt_wait[@]}" update -qq &&
            apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

# ------------------------------------------------------------ the pristine root (cached)
mkdir -p "$cache"
exec {lock}> "$cache/fresh-root.lock"
flock "$lock" # two runs on one box: one builds, the other waits for it
if [ ! -s "$tarball" ] || [ -n "$(find "$tarball" -mtime "+$max_age_days" 2>/dev/null)" ]; then
    phase "debootstrap --variant=minbase $suite (cache missing or older than $max_age_days days)"
    build=$(mktemp -d "$cache/fresh-root-build.XXXXXX")
    if ! debootstrap --variant=minbase "$suite" "$build" "$mirror" > "$build.log" 2>&1; then
        tail -n 30 "$build.log" >&2
        rm -rf --one-file-system "$build" "$build.log"
        echo "tests/fresh_root.sh: debootstrap failed (log above)" >&2
        exit 1
    fi
    rm -f "$build"/var/cache/apt/archives/*.deb "$build.log"
    chmod 0755 "$build" # mktemp made it 0700: the tarball's "." is the root's /
    tar -C "$build" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$build"
else
    echo "cached: $tarball ($(date -r "$tarball" -u '+%F %H:%M UTC'))"
fi
flock -u "$lock"

# ------------------------------------------------------------ a fresh copy for this run
# kill_inside ROOT: stop every process whose root directory is ROOT, by PID.
kill_inside() {
    local sig proc
    for sig in TERM KILL; do
        for proc in /proc/[0-9]*; do
            if [ "$(readlink "$proc/root" 2>/dev/null)" = "$1" ]; then
                kill "-$sig" "${proc#/proc/}" 2>/dev/null || true
            fi
        done
        [ "$sig" = KILL ] || sleep 1
    done
}
# What a run killed outright (SIGKILL, power) left: its copy and namespace, known by the
# dead pid recorded in them. A live run's are left alone.
for old in /var/tmp/meshcc-fresh-root.*; do
    owner=$(cat "$old/owner" 2>/dev/null) || continue
    if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then
        echo "removing $old and namespace meshcc-fresh-$owner (left by a killed run)"
        kill_inside "$old/root"
        ip netns delete "meshcc-fresh-$owner" 2>/dev/null || true
        rm -rf --one-file-system "$old"
    fi
done
work=$(mktemp -d /var/tmp/meshcc-fresh-root.XXXXXX)
echo $$ > "$work/owner"
root=$work/root
netns=meshcc-fresh-$$
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e +o pipefail # clean up all there is, whatever fails
    # Whatever still runs in the root (a daemon a failed test left behind), by PID.
    kill_inside "$root"
    # The mounts live in the unshare'd namespace and went with it; this is for a root
    # entered some other way.
    grep -F " $work/" /proc/self/mountinfo | awk '{print $5}' | sort -r |
        while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    ip netns delete "$netns" 2>/dev/null || true
    rm -rf --one-file-system "$work"
    print_times host
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase "unpack a fresh root, copy the checkout in"
mkdir -m 0755 "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"
chmod 0755 "$root" # its / (the daemon drops to nobody, apt downloads as _apt)
# What a box on a network has: name resolution, and the CA certificates this host's HTTPS
# proxy needs (see the header).
cp /etc/resolv.conf "$root/etc/resolv.conf"
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    if [ -x "$root/usr/sbin/update-ca-certificates" ]; then
        chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin update-ca-certificates
    fi
fi
mkdir -m 0700 "$root/root/meshcc"
tar -C "$checkout" -cf - --exclude=./.git --exclude=./.venv --exclude=build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' --exclude=.hypothesis . |
    tar -C "$root/root/meshcc" --no-same-owner -xf -
chown -R root:root "$root/root/meshcc"
chmod 0700 "$root/root/meshcc"
echo "checkout: $(du -sh "$root/root/meshcc" | cut -f1) in /root/meshcc (mode 0700, root)"

# The daemon's network namespace: lo, and a LAN card stand-in (the daemon announces on the
# subnets of its interfaces): a veth pair with both ends in the namespace, so nothing it
# sends leaves it.
ip netns add "$netns"
ip -n "$netns" link set lo up
ip -n "$netns" link add eth0 type veth peer name eth1
ip -n "$netns" addr add 10.78.0.1/24 dev eth0
ip -n "$netns" link set eth1 up
ip -n "$netns" link set eth0 up
ip -n "$netns" route add 224.0.0.0/4 dev eth0

phase "inside the fresh root"
# A mount namespace of its own (every mount below vanishes with it), the root bound onto
# itself so that it is a mount point (`ip netns exec` inside remounts /sys under it), and a
# clean environment.
# shellcheck disable=SC2016 # the script is expanded by the bash it is given to
unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1 netns=$2 mark=$3 netns_file=$4
    shift 4
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$root/run"
    mkdir -p "$root/run/lock" "$root/run/netns"
    chmod 1777 "$root/run/lock"
    touch "$root$mark" "$root$netns_file"
    mount --bind "/run/netns/$netns" "$root$netns_file"
    exec chroot "$root" "$@"
' fresh-root "$root" "$netns" "$inside_mark" "$netns_file" \
    /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
    /bin/bash -c 'cd /root/meshcc && exec bash tests/fresh_root.sh --inside' &
# In the background so that a SIGTERM or SIGINT runs the cleanup at once (bash runs traps
# only between commands; `wait` is interrupted, a foreground command is not).
wait $!
