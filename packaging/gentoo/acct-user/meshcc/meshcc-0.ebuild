# Copyright 2026 Gentoo Authors
# Distributed under the terms of the GNU General Public License v2

EAPI=8

inherit acct-user

DESCRIPTION="User for the meshcc compile daemon and the compilers it runs"
# -1: the next free system UID (an overlay may; ::gentoo would assign a fixed one)
ACCT_USER_ID=-1
ACCT_USER_GROUPS=( meshcc )

acct-user_add_deps
