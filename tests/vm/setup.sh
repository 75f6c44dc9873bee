#!/bin/bash
# Prepare the qemu lab: host packages, a Debian kernel, an initramfs.
#
# Idempotent and fast when already done.  Everything downloaded or built
# goes to $REPO/.cache/vm (git-ignored); nothing here is ever committed.
#
#   tests/vm/setup.sh            # install what is missing, build what is stale
#   LAB_NO_APT=1 tests/vm/setup.sh   # skip the package step (offline re-run)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="${LAB_CACHE:-$repo/.cache/vm}"
mkdir -p "$cache"

log() { printf 'setup.sh: %s\n' "$*" >&2; }

# --- host packages ----------------------------------------------------------
# The guest runs the host's own binaries through a read-only 9p share of /,
# so every tool the guest needs is installed on the host.
packages=(
    qemu-system-x86 # the emulator (TCG)
    cpio            # to pack the initramfs
    kmod            # depmod/modprobe for the unpacked kernel
    iproute2        # addresses, veth pair for AoE
    udev            # systemd-udevd, udevadm, rules (incl. multipath's)
    open-iscsi      # iscsid, iscsiadm
    multipath-tools # multipathd, multipath; pulls dmsetup
    sg3-utils       # sg_* tools os-brick may call
    nvme-cli        # nvme connect/disconnect for the nvmeof connector
    nfs-kernel-server # rpc.nfsd, rpc.mountd, exportfs
    nfs-common      # mount.nfs for the NFS connector
    rpcbind         # NFSv3 mounts need it on both ends
    vblade          # AoE target
    aoetools        # aoe-discover, aoe-stat
    socat           # talking to the agent's socket by hand
    util-linux      # losetup, lsblk, blockdev
    e2fsprogs       # mkfs for NFS/AoE checks
    systemd         # PID 1 of the systemd guest (job_systemd.py)
)

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -gt 0 && -z ${LAB_NO_APT:-} ]]; then
    log "installing: ${missing[*]}"
    # Keep package scripts from starting host services (iscsid, nfs,
    # multipathd): they belong inside the guest, and the host kernel has
    # none of the modules they need.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        # A stale package index on a fresh machine: refresh once, retry.
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    if [[ -n $made_policy ]]; then rm -f "$policy"; fi
fi

# --- kernel -----------------------------------------------------------------
# linux-image-amd64 is a meta package; its dependency names the real one.
resolve_kernel() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' |
        head -n1 || true
}
kpkg=$(resolve_kernel)
if [[ -z $kpkg && -z ${LAB_NO_APT:-} && ! -s $cache/kernel.pkg ]]; then
    # A fresh machine may have no package index yet.
    apt-get update
    kpkg=$(resolve_kernel)
fi
if [[ -z $kpkg ]]; then
    # No index (offline re-run): keep whatever kernel is already cached.
    kpkg=$(cat "$cache/kernel.pkg" 2>/dev/null || true)
fi
[[ -n $kpkg ]] || {
    log "cannot resolve linux-image-amd64; run apt-get update"
    exit 1
}
kver=${kpkg#linux-image-}
kdir="$cache/kernel"

if [[ $(cat "$cache/kernel.pkg" 2>/dev/null || true) != "$kpkg" ||
    ! -f $kdir/boot/vmlinuz-$kver ||
    ! -f $kdir/lib/modules/$kver/modules.dep ]]; then
    log "fetching $kpkg"
    rm -rf "$kdir" "$cache"/linux-image-*.deb
    # apt-get download writes to the current directory, which the _apt
    # sandbox user cannot write to: download as root.
    (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$kpkg")
    mkdir -p "$kdir"
    dpkg-deb -x "$cache"/"$kpkg"_*.deb "$kdir"
    # The package ships no modules.dep (its postinst makes it): build it
    # so modprobe works inside the guest.
    depmod -b "$kdir" "$kver"
    rm -f "$cache"/linux-image-*.deb
    echo "$kpkg" >"$cache/kernel.pkg"
fi

# --- busybox for the initramfs ---------------------------------------------
# Downloaded, not installed: busybox-static conflicts with the host's
# busybox, which initramfs-tools depends on.
if [[ ! -x $cache/busybox ]]; then
    log "fetching busybox-static"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get -q -o APT::Sandbox::User=root download busybox-static)
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
    install -m 755 "$tmp/x/bin/busybox" "$cache/busybox"
    rm -rf "$tmp"
fi

# --- initramfs ----------------------------------------------------------------
# Only what is needed to mount the host root over virtio-9p and put an
# overlay on it; every other module is loaded later from the real tree.
boot_modules=(virtio_pci 9pnet_virtio 9p overlay)
stamp=$(
    {
        echo "$kver"
        echo "${boot_modules[*]}"
        cat "$here/initramfs-init.sh" "$cache/busybox"
    } | sha256sum | cut -c1-16
)
initrd="$cache/initrd-$kver.img"
if [[ $(cat "$cache/initrd.stamp" 2>/dev/null || true) != "$stamp" ||
    ! -f $initrd ]]; then
    log "building initramfs"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,dev,proc,sys,modules,lower,rw,newroot}
    install -m 755 "$cache/busybox" "$root/bin/busybox"
    install -m 755 "$here/initramfs-init.sh" "$root/init"
    : >"$root/modules/order"
    for m in "${boot_modules[@]}"; do
        modprobe -d "$kdir" -S "$kver" --show-depends "$m" |
            awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r ko; do
        cp "$ko" "$root/modules/"
        basename "$ko" >>"$root/modules/order"
    done
    (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) |
        gzip -1 >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    echo "$stamp" >"$cache/initrd.stamp"
fi

# lab.py reads these to find the kernel it should boot.
printf '%s\n' "$kver" >"$cache/kernel.version"
log "ready: kernel $kver, $(du -h "$initrd" | cut -f1) initramfs"
