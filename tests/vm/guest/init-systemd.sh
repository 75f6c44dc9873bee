#!/bin/bash
# PID 1 of a lab guest that boots a real systemd (tests/vm/lab.py picks
# it for jobs marked "# lab-init: systemd").
#
# Started by the initramfs after switch_root, like guest/init.sh: the
# root is the host's / (read-only 9p) under a tmpfs overlay.  This script
# only prepares what systemd cannot (the kernel's modules, a machine id of
# the guest's own, the lab's units) and execs /lib/systemd/systemd, which
# mounts /run, /sys/fs/cgroup, ... itself and boots lab.target: basic.target
# plus lab-job.service, which runs this script again with "job" to run the
# job script and power off.
# shellcheck source=tests/vm/guest/common.sh
source "${0%/*}/common.sh"

if [[ ${1:-} == job ]]; then
    # lab-job.service: the job, under systemd.
    load_job_env
    # Two loopback portals, as guest/init.sh sets up.
    add_portals
    run_job
fi

say "guest init started"
load_job_env

mkdir -p /lib/modules
mount --bind "$LAB_KDIR/lib/modules" /lib/modules
echo lab-guest >/etc/hostname
tr -d - </proc/sys/kernel/random/uuid >/etc/machine-id
# The host is a container; its marker, seen through the 9p root, would
# make systemd take the guest for one too and skip units conditioned on
# ConditionVirtualization=!container (multipathd.service).
rm -f /.dockerenv /run/.containerenv

# systemd-tmpfiles-setup empties /tmp at boot ("D /tmp" in tmp.conf),
# which through the overlay means deleting the host's files one by one
# over 9p (40 s and more).  A tmpfs on /tmp would hide the repository
# when it is itself under /tmp (a CI clone): an empty tmp.conf in /etc
# overrides the rule instead.
mkdir -p /etc/tmpfiles.d
: >/etc/tmpfiles.d/tmp.conf

# Generators run at boot and at every daemon-reload; only fstab's and the
# debug one (systemd.mask= & co.) matter here.  An empty file of the same
# name in /etc masks a generator, as it does a unit: one touch, builtins
# for the rest (forks are slow under TCG).
drop=()
for gen in /usr/lib/systemd/system-generators/*; do
    case "${gen##*/}" in
    systemd-fstab-generator | systemd-debug-generator) ;;
    *) drop+=("${gen##*/}") ;;
    esac
done
mkdir -p /etc/systemd/system-generators
(cd /etc/systemd/system-generators && touch "${drop[@]}")

units=/etc/systemd/system
# What the host enabled is not the guest's business: no timers, gettys,
# databases; iscsid and multipathd are started by the job once it has
# written their configuration.
rm -f "$units"/*.target.wants/*
# Units of a normal boot that only cost time here: hwdb, ldconfig and
# catalog rebuilds of a "changed" /etc or /usr, clock sync, a root file
# system check on 9p, the host's modules-load.d list (jobs load what they
# use), AoE discovery, utmp, the random seed.  An empty unit file masks
# the unit (systemd.unit(5)): one touch where a loop of ln would fork
# twenty times.
masked=(
    systemd-hwdb-update.service
    ldconfig.service
    systemd-journal-catalog-update.service
    systemd-update-done.service
    systemd-timesyncd.service
    systemd-pstore.service
    systemd-fsck-root.service
    systemd-remount-fs.service
    systemd-binfmt.service
    systemd-firstboot.service
    systemd-modules-load.service
    aoe-discover.service
    systemd-update-utmp.service
    systemd-random-seed.service
    open-iscsi.service
    getty.target
    serial-getty@ttyS0.service
)
(cd "$units" && rm -f "${masked[@]}" && touch "${masked[@]}")

# The journal in memory only: nothing to flush to /var/log at boot.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' >/etc/systemd/journald.conf.d/lab.conf

cat >"$units/lab.target" <<EOF
[Unit]
Description=lab job target
Requires=basic.target lab-job.service
After=basic.target
EOF
cat >"$units/lab-job.service" <<EOF
[Unit]
Description=lab job $LAB_SCRIPT
After=basic.target systemd-udevd.service systemd-udev-trigger.service

[Service]
Type=oneshot
Environment=HOME=/root LANG=C.UTF-8
ExecStart=/bin/bash $0 job
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
EOF

say "exec systemd"
exec /lib/systemd/systemd --unit=lab.target --show-status=error
