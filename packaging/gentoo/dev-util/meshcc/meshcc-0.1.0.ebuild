# Copyright 2026 Gentoo Authors
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DISTUTILS_USE_PEP517=setuptools
PYTHON_COMPAT=( python3_{11..13} )

inherit distutils-r1 systemd

DESCRIPTION="Zeroconf peer-to-peer distributed C/C++ build mesh, wire-compatible with distcc"
HOMEPAGE="https://github.com/meshcc/meshcc"
# Adjust to where the release tarball is published.
SRC_URI="https://github.com/meshcc/meshcc/archive/refs/tags/v${PV}.tar.gz -> ${P}.gh.tar.gz"

LICENSE="GPL-2+"
SLOT="0"
KEYWORDS="~amd64 ~arm64 ~x86"
IUSE="lzo"
# The test suite needs root, network namespaces and a real distcc.
RESTRICT="test"

# gcc itself is not listed: it is in @system, and the daemon offers whichever gcc
# (and cross gcc) it finds at start.
#
# LZO (distcc protocol 2, ",lzo" hosts) is decompressed with lzallright, a Rust
# extension that ::gentoo does not package; with USE=lzo it comes from an overlay
# (or build it with: pip install --user lzallright). Without it, meshcc serves and
# speaks distcc protocol 1 only (uncompressed), and says so; stock distcc clients must
# use hosts without ",lzo". dev-libs/lzo speeds up LZO compression of large sources.
# zstandard and lz4: the body codecs meshcc peers negotiate with each other (not distcc).
RDEPEND="
	acct-group/meshcc
	acct-user/meshcc
	>=dev-python/ifaddr-0.2[${PYTHON_USEDEP}]
	>=dev-python/zeroconf-0.131[${PYTHON_USEDEP}]
	>=dev-python/zstandard-0.22[${PYTHON_USEDEP}]
	>=dev-python/lz4-4.0[${PYTHON_USEDEP}]
	lzo? (
		dev-libs/lzo:2
		>=dev-python/lzallright-0.2[${PYTHON_USEDEP}]
	)
"

python_install() {
	distutils-r1_python_install

	# The commands start Python with -I -S, as install.sh's launchers do: every compile
	# would otherwise pay for site and the .pth files of site-packages (setuptools'
	# distutils-precedence.pth), and a build's PYTHONPATH could break the wrapper. With
	# -S the script puts site-packages on sys.path itself.
	local cmd script
	for cmd in meshcc meshcc-gcc meshcc-g++ meshcc-cc meshcc-c++; do
		script=${D}$(python_get_scriptdir)/${cmd}
		sed -i -e '1s|^\(#!.*python[0-9.]*\)$|\1 -IS|' \
			-e "1a import sys; sys.path.append('$(python_get_sitedir)')" "${script}" || die
		grep -q '^#!.* -IS$' "${script}" || die "unexpected shebang in ${script}"
	done
}

python_install_all() {
	distutils-r1_python_install_all

	newinitd "${FILESDIR}"/meshcc.initd meshcc
	newconfd "${FILESDIR}"/meshcc.confd meshcc
	# The unit also reads /etc/conf.d/meshcc (MESHCC_OPTS), so both init systems share
	# one configuration. The meshcc user comes from acct-user/meshcc, whose eclass also
	# installs the sysusers.d entry: systemd/meshcc.sysusers is not needed here.
	systemd_dounit systemd/meshcc.service
}

pkg_postinst() {
	elog "Set the daemon's options in /etc/conf.d/meshcc (MESHCC_OPTS), then:"
	elog "  OpenRC:  rc-update add meshcc default && rc-service meshcc start"
	elog "  systemd: systemctl enable --now meshcc"
	elog "To let Portage use the mesh: meshcc setup portage (FEATURES, MAKEOPTS and"
	elog "/etc/distcc/hosts), and --write-hosts /etc/distcc/hosts in MESHCC_OPTS to keep"
	elog "the hosts file following the mesh. When nothing is distributed: meshcc doctor."
	if ! use lzo; then
		elog "Without USE=lzo, stock distcc clients must not use ',lzo' hosts."
	fi
}
