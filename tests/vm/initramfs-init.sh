#!/bin/busybox sh
# /init of the lab's initramfs (run by busybox sh as PID 1).
#
# Mounts the host's root (virtio-9p tag "hostroot", read-only) under a
# tmpfs overlay so the guest can write anywhere while the host stays
# untouched, mounts the per-run share (tag "lab", read-write) at /lab,
# and hands over to the guest init named by lab.init= on the command line.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "lab-initramfs: $*" >/dev/console
    # Power off rather than panic-loop: the harness sees the exit quickly
    # and has the console log.
    echo o >/proc/sysrq-trigger
    sleep 10
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in $(cat /modules/order); do
    insmod "/modules/$m" || fail "insmod $m failed"
done

init=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    lab.init=*) init="${arg#lab.init=}" ;;
    esac
done
[ -n "$init" ] || fail "no lab.init= on the kernel command line"

# msize: bigger 9p messages, far fewer round trips under TCG.
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower ||
    fail "cannot mount hostroot"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "cannot mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay \
    -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    fail "cannot mount the overlay root"

mkdir -p /newroot/lab
mount -t 9p -o "$opts,cache=none" lab /newroot/lab || fail "cannot mount lab"

for d in proc sys dev; do
    mount --move "/$d" "/newroot/$d"
done
exec switch_root /newroot "$init"
