#!/bin/bash
# PID 1 of a lab guest, started by the initramfs after switch_root.
#
# The root is the host's / (read-only 9p) under a tmpfs overlay, so every
# write lands in guest memory.  /lab is the per-run read-write share: the
# harness (tests/vm/lab.py) put job.env there; the job script writes its
# results there, and this script writes exit_status before powering off.
# shellcheck source=tests/vm/guest/common.sh
source "${0%/*}/common.sh"

say "guest init started"

# Fresh state where the host's copy would be wrong or stale.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

load_job_env

# The kernel's modules live in the host's (git-ignored) cache.
mkdir -p /lib/modules
mount --bind "$LAB_KDIR/lib/modules" /lib/modules
# Targets (LIO, nvmet) are configured through configfs.
modprobe configfs && mount -t configfs configfs /sys/kernel/config

hostname lab-guest
echo lab-guest >/etc/hostname
ip link set lo up
add_portals

# A machine-id of its own: some tools (nvme hostnqn) derive from it.
tr -d - </proc/sys/kernel/random/uuid >/etc/machine-id

# udev: the device nodes, symlinks (/dev/disk/by-*, /dev/mapper) and
# multipath's rules behave as on a real host.
if [[ -x /lib/systemd/systemd-udevd ]]; then
    /lib/systemd/systemd-udevd --daemon
    udevadm trigger --action=add --type=subsystems
    udevadm trigger --action=add --type=devices
    udevadm settle --timeout=30
    say "udevd running"
else
    say "no systemd-udevd on the host; run tests/vm/setup.sh"
fi

run_job
