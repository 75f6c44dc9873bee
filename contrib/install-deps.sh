#!/bin/sh
# Install the Debian packages hostagent needs to build, run and test.
# Usage: contrib/install-deps.sh [PACKAGE ...]   (default: the base set)
# Only calls apt-get when something is missing, so it is cheap to re-run.
set -eu

# systemd: systemd-analyze, -tmpfiles, -sysusers, -socket-activate for the
# unit tests (no systemd as PID 1 needed); rpm and cpio: make rpm; lvm2:
# lvmconfig and lvmdevices for the LVM checks (tests/test_lvmcheck.py);
# fdisk: sfdisk writes partition tables in the device tests.
BASE="libsystemd-dev pkg-config gcc open-iscsi util-linux socat \
multipath-tools python3-venv openssl systemd rpm cpio aoetools lvm2 fdisk"

pkgs=${*:-$BASE}
missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
            | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install:$missing" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# Package lists may be absent (fresh image) or stale (404s); refresh once
# and retry rather than failing on the first try.
if ! apt-get install -y -q --no-install-recommends $missing; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi
