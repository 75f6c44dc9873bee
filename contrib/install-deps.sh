#!/bin/sh
# Install the Debian packages hostagent needs.
# Usage: contrib/install-deps.sh [--list] [run|test|PACKAGE ...]
#   run   what `make run` needs: the tools the daemon calls on a
#         hypervisor, and what pip needs to build the venv
#   test  run, plus the tools of `make test`/`make check` and `make rpm`
#         (the default)
#   --list  print the packages of the set, one a line, and install nothing
# Only calls apt-get when something is missing, so it is cheap to re-run.
set -eu

# The daemon's own tools: iscsiadm, multipath, blockdev/lsblk (os-brick).
# gcc, pkg-config, libsystemd-dev and python3-dev build systemd-python,
# which PyPI has only as source; python3-venv makes the venv.
RUN="open-iscsi multipath-tools util-linux \
python3-venv python3-dev gcc pkg-config libsystemd-dev"
# systemd: systemd-analyze, -tmpfiles, -sysusers, -socket-activate for the
# unit tests (no systemd as PID 1 needed); rpm and cpio: make rpm and its
# test; socat, openssl: the tests' clients and certificates; aoetools: the
# AoE tests; groff-base: the man page check; lvm2: lvmconfig and
# lvmdevices for the LVM checks (tests/test_lvmcheck.py); fdisk: sfdisk
# writes partition tables in the device tests; strace: the power-loss
# test watches the daemon's fsyncs.
TEST="$RUN socat openssl systemd rpm cpio aoetools groff-base lvm2 fdisk \
strace"

list=""
if [ "${1-}" = "--list" ]; then
    list=1
    shift
fi
case "${1-test}" in
run) pkgs=$RUN ;;
test) pkgs=$TEST ;;
*) pkgs=$* ;;
esac
if [ -n "$list" ]; then
    printf '%s\n' $pkgs
    exit 0
fi

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
