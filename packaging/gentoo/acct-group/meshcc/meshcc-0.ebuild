# Copyright 2026 Gentoo Authors
# Distributed under the terms of the GNU General Public License v2

EAPI=8

inherit acct-group

DESCRIPTION="Group for the meshcc compile daemon"
# -1: the next free system GID (an overlay may; ::gentoo would assign a fixed one)
ACCT_GROUP_ID=-1
