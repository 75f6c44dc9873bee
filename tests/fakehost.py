"""Run a command on a "fake storage host" in a private mount namespace.

    unshare -m --propagation private python fakehost.py SPEC -- CMD ...

This machine has no Fibre Channel HBA, no device-mapper, no udevd and no
Ceph, and its /dev and /sys are shared with everything else running here.
Inside a private mount namespace this helper gives CMD (the real
hostagentd):

* a private /dev: a directory holding copies of the host's device nodes, so
  what the fake kernel and the shims create there (``/dev/disk/by-path``
  links, ``/dev/sdX``, ``/dev/dm-N`` and ``/dev/rbd*`` nodes) is seen by
  nobody else;
* with ``"fc"`` in SPEC, a /sys/class and a /sys/block that are the host's
  (every entry is the same symlink into /sys/devices) plus ``fc_host``,
  ``fc_transport`` and ``scsi_host`` entries for fake HBAs, laid out like
  the kernel's (``fc_host/hostN`` resolves under the HBA's PCI function,
  whose name os-brick uses for ``/dev/disk/by-path``), and the fake
  block devices below;
* a fake kernel: a thread reading each HBA's ``scan`` file (a FIFO).  When
  "C T L" (or "- - L") is written to it, every LUN of SPEC that answers
  on that HBA, channel and target appears the way the SCSI midlayer and
  udev would make it appear: a SCSI device ``H:C:T:L`` under the HBA with
  its disk ``block/sdX`` (linked from /sys/block and /sys/class/block), a
  ``/dev/sdX`` block node (whose device numbers are those of a real loop
  device holding the data) and its
  ``/dev/disk/by-path/pci-<pci>-fc-0x<wwpn>-lun-<L>`` link.  Writing "1"
  to the SCSI device's ``delete`` (``/sys/block/sdX/device/delete``, a
  FIFO the fake kernel reads) removes it as the kernel and udev would:
  its sysfs entries, the node and the by-path link go; each delete is
  logged to ``<root>/delete.log`` as ``H:C:T:L sdX``;
* with ``"scsi_id"`` in SPEC, ``/lib/udev/scsi_id`` answering the VPD
  page 0x83 query with the LUN's WWN, as the real one does for a disk;
* with ``"multipathd": true`` in SPEC, multipath-tools as they behave with
  multipathd running (``user_friendly_names no``, ``find_multipaths
  off``): ``multipathd`` and ``multipath`` in ``<root>/bin``, first on
  CMD's PATH, logging every call to ``<root>/multipath.log``.  When a LUN
  with a WWN appears (and its SPEC entry has no ``"multipath": false``),
  multipathd makes its map: ``dm-N`` in sysfs (``dm/uuid`` is
  ``mpath-<wwn>``, ``dm/name`` the WWN, ``slaves/sdX`` and
  ``sdX/holders/dm-N`` links), a ``/dev/dm-N`` node with the loop
  device's numbers and udev's ``/dev/mapper/<wwn>`` and
  ``/dev/disk/by-id/dm-{uuid-mpath,name}-<wwn>`` links.  There is no udev
  database (/run/udev/data), as on this machine: readers take the
  ``dm/uuid`` attribute from sysfs (libudev, which pyudev wraps, is told
  by ``SYSTEMD_DEVICE_VERIFY_SYSFS=0`` to accept device directories that
  are not on sysfs).  ``multipath -f`` and ``multipathd
  del map`` remove a map; ``multipath -C dm-N`` succeeds for a map;
* with ``"hide": [PATH, ...]``, those paths absent: a top-level /dev entry
  is left out of the private /dev, a /sys/class entry out of the fake
  /sys/class, anything else (not in /sys or /proc) is hidden by an
  overlay of its directory with a whiteout (so a host with rbd, a
  StorPool config, the aoe driver or DMI looks like one without).

:class:`Sysfs` and the map functions work on the same files from outside
(a test, as ``Sysfs.outside(root)``): every link is relative, and
``<root>/class``, ``<root>/block`` and ``<root>/dev`` are what the
namespace sees as /sys/class, /sys/block and /dev.

Every write to a scan file is also appended to ``<root>/scan.log`` as
``hostN: C T L`` so a test can assert what the agent asked for.
CMD runs as a child; SIGTERM/SIGINT are passed on and it dies with this
helper (PR_SET_PDEATHSIG).  The exit status is CMD's.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
# Searched for tools to hide, besides PATH (hosttools searches them too).
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def tool_paths(tool: str, path: str | None = None) -> list[str]:
    """Every place ``tool`` is found on ``path`` (default PATH) or sbin."""
    dirs = (path or os.environ.get("PATH", "")).split(os.pathsep)
    found = []
    for d in [*dirs, *SBIN]:
        p = os.path.join(d, tool)
        if d and os.path.exists(p) and p not in found:
            found.append(p)
    return found


def hide(root: Path, paths: list[str]) -> None:
    """Make ``paths`` (outside /dev) absent in this namespace.

    Each one's directory is covered by an overlay whose upper layer holds
    a whiteout for it: the rest of the directory is the host's own.
    """
    by_dir: dict[str, set[str]] = {}
    for p in paths:
        parent = os.path.realpath(os.path.dirname(p))
        by_dir.setdefault(parent, set()).add(os.path.basename(p))
    for n, (d, names) in enumerate(sorted(by_dir.items())):
        below = [m for m in mount_points() if m.startswith(d + "/")]
        if below or d in ("/", "/sys", "/proc"):
            # An overlay would hide those mounts too.
            raise SystemExit(f"fakehost: cannot hide in {d} ({below})")
        layer = root / "hide" / str(n)
        if layer.exists():
            shutil.rmtree(layer)
        (layer / "upper").mkdir(parents=True)
        (layer / "work").mkdir()
        for name in names:
            os.mknod(layer / "upper" / name, stat.S_IFCHR, 0)  # whiteout
        opts = f"lowerdir={d},upperdir={layer}/upper,workdir={layer}/work"
        run("mount", "-t", "overlay", "overlay", "-o", opts, d)


def private_dev(root: Path, hidden: set[str]) -> None:
    """Replace /dev (in this namespace) with a private copy of it.

    The copy is a directory under ``root``, so what was created in it
    (mapped devices, links) outlives a restart of the daemon the way
    kernel state does; nodes that appeared on the host since (new loop
    devices) are copied in at every start.  ``hidden`` names top-level
    entries left out.
    """
    new = root / "dev"
    new.mkdir(exist_ok=True)
    for entry in sorted(os.listdir("/dev")):
        src = Path("/dev") / entry
        dst = new / entry
        if entry in hidden:
            if os.path.ismount(src):
                raise SystemExit(f"fakehost: cannot hide mount {src}")
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif os.path.lexists(dst):
                dst.unlink()
        elif os.path.ismount(src):
            dst.mkdir(exist_ok=True)
            run("mount", "--rbind", str(src), str(dst))
        elif not os.path.lexists(dst):
            run("cp", "-a", str(src), str(dst))
    for sub in ("disk/by-path", "disk/by-id", "mapper"):
        (new / sub).mkdir(parents=True, exist_ok=True)
    run("mount", "--rbind", str(new), "/dev")


class Sysfs:
    """The fake kernel's files: /sys/class, /sys/block and /dev.

    Inside the namespace they are at their usual places; from outside
    (a test) under the spec's root.  Fake devices live in
    ``<class>/.devices`` (the kernel's /sys/devices, which stays the
    host's): links into it are relative, so they resolve from both sides.
    """

    def __init__(self, cls: Path, block: Path, dev: Path) -> None:
        self.cls = cls
        self.block = block
        self.dev = dev
        self.devices = cls / ".devices"
        self.virtual = self.devices / "virtual" / "block"

    @classmethod
    def inside(cls) -> Sysfs:
        """The namespace's view."""
        return cls(Path("/sys/class"), Path("/sys/block"), Path("/dev"))

    @classmethod
    def outside(cls, root: Path) -> Sysfs:
        """The same files seen from outside the namespace."""
        return cls(root / "class", root / "block", root / "dev")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise changes: the kernel threads, tools and tests."""
        with open(self.cls / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def disk(self, name: str) -> Path:
        """The real sysfs directory of block device ``name``."""
        return Path(os.path.realpath(self.block / name))

    def publish(self, d: Path) -> None:
        """Link the block device at ``d`` from /sys/block and its class."""
        for where in (self.block, self.cls / "block"):
            link(d, where / d.name)

    def unpublish(self, name: str) -> None:
        for where in (self.block, self.cls / "block"):
            with contextlib.suppress(FileNotFoundError):
                (where / name).unlink()


def link(target: Path, at: Path) -> None:
    """A relative symlink ``at`` -> ``target``, as sysfs and udev make.

    Like udev, replaces a link left from an earlier device.
    """
    with contextlib.suppress(FileNotFoundError):
        at.unlink()
    os.symlink(os.path.relpath(target, at.parent), at)


def mknod(at: Path, number: int) -> None:
    """A block node, as devtmpfs makes (over a stale one)."""
    with contextlib.suppress(FileNotFoundError):
        at.unlink()
    os.mknod(at, stat.S_IFBLK | 0o660, number)


def free_name(fs: Sysfs, prefix: str, names: str | range) -> str:
    """The kernel's next name: the first one sysfs does not have."""
    return next(
        f"{prefix}{c}"
        for c in names
        if not os.path.lexists(fs.block / f"{prefix}{c}")
    )


def block_dir(fs: Sysfs, d: Path, number: int, subsystem: bool) -> None:
    """The attributes every block device has (and the kernel's size)."""
    maj, mnr = os.major(number), os.minor(number)
    (d / "holders").mkdir(parents=True)
    (d / "dev").write_text(f"{maj}:{mnr}\n")
    (d / "uevent").write_text(
        f"MAJOR={maj}\nMINOR={mnr}\nDEVNAME={d.name}\nDEVTYPE=disk\n"
    )
    size = Path(f"/sys/dev/block/{maj}:{mnr}/size").read_text()
    (d / "size").write_text(size)
    (d / "ro").write_text("0\n")
    if subsystem:
        link(fs.cls / "block", d / "subsystem")


def add_disk(
    fs: Sysfs, hba: dict[str, Any], target: dict[str, Any], lu: dict[str, Any]
) -> Path:
    """LUN ``lu`` of ``target`` behind ``hba`` appears; its SCSI device."""
    num = hba["host"][len("host") :]
    hctl = f"{num}:0:{target['id']}:{lu['lun']}"
    sdev = (
        hba_dir(fs, hba)
        / f"rport-{num}:0-0"
        / f"target{num}:0:{target['id']}"
        / hctl
    )
    name = free_name(fs, "sd", "abcdefghijklmnopqrstuvwxyz")
    number = os.stat(lu["device"]).st_rdev
    disk = sdev / "block" / name
    block_dir(fs, disk, number, subsystem=True)
    link(sdev, disk / "device")
    # The kernel's delete attribute; a FIFO the fake kernel reads.
    os.mkfifo(sdev / "delete", 0o200)
    fs.publish(disk)
    mknod(fs.dev / name, number)
    by_path = (
        fs.dev
        / "disk"
        / "by-path"
        / f"pci-{hba['pci']}-fc-{target['wwpn']}-lun-{lu['lun']}"
    )
    link(fs.dev / name, by_path)
    return sdev


def delete_disk(fs: Sysfs, sdev: Path) -> list[str]:
    """The kernel removing SCSI device ``sdev``, and udev its links."""
    names = [d.name for d in (sdev / "block").iterdir()]
    for name in names:
        for holder in (sdev / "block" / name / "holders").iterdir():
            with contextlib.suppress(FileNotFoundError):
                (holder / "slaves" / name).unlink()
        fs.unpublish(name)
        with contextlib.suppress(FileNotFoundError):
            (fs.dev / name).unlink()
        for d in ("by-path", "by-id"):
            for p in (fs.dev / "disk" / d).iterdir():
                if os.readlink(p).endswith(f"/{name}"):
                    p.unlink()
    shutil.rmtree(sdev)
    return names


def maps(fs: Sysfs) -> dict[str, str]:
    """``{map name: dm-N}`` of the dm devices in sysfs."""
    found = {}
    if fs.virtual.is_dir():
        for d in sorted(fs.virtual.iterdir()):
            found[(d / "dm" / "name").read_text().strip()] = d.name
    return found


def add_map(fs: Sysfs, wwn: str, disks: list[str]) -> str:
    """multipathd making (or growing) map ``wwn`` over sd ``disks``."""
    dm = maps(fs).get(wwn)
    if dm is None:
        dm = free_name(fs, "dm-", range(256))
        d = fs.virtual / dm
        number = os.stat(fs.dev / disks[0]).st_rdev
        block_dir(fs, d, number, subsystem=True)
        (d / "slaves").mkdir()
        (d / "dm").mkdir()
        (d / "dm" / "name").write_text(f"{wwn}\n")
        (d / "dm" / "uuid").write_text(f"mpath-{wwn}\n")
        (d / "dm" / "suspended").write_text("0\n")
        fs.publish(d)
        mknod(fs.dev / dm, number)
        link(fs.dev / dm, fs.dev / "mapper" / wwn)
        for alias in (f"dm-uuid-mpath-{wwn}", f"dm-name-{wwn}"):
            link(fs.dev / dm, fs.dev / "disk" / "by-id" / alias)
    d = fs.virtual / dm
    for name in disks:
        disk = fs.disk(name)
        if not (d / "slaves" / name).exists():
            link(disk, d / "slaves" / name)
            link(d, disk / "holders" / dm)
    return dm


def remove_map(fs: Sysfs, dm: str, keep_nodes: bool = False) -> None:
    """dm device ``dm`` goes; ``keep_nodes``: /dev as udev left it."""
    d = fs.virtual / dm
    wwn = (d / "dm" / "name").read_text().strip()
    for slave in (d / "slaves").iterdir():
        with contextlib.suppress(FileNotFoundError):
            (slave / "holders" / dm).unlink()
    fs.unpublish(dm)
    shutil.rmtree(d)
    if not keep_nodes:
        for p in (
            fs.dev / dm,
            fs.dev / "mapper" / wwn,
            fs.dev / "disk" / "by-id" / f"dm-uuid-mpath-{wwn}",
            fs.dev / "disk" / "by-id" / f"dm-name-{wwn}",
        ):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def fake_block_devices(fs: Sysfs) -> list[Path]:
    """The directory of every fake block device (disks and maps)."""
    # os.walk does not follow links: sysfs's links make cycles.
    return sorted(
        Path(top) / "block" / name
        for top, dirs, _ in os.walk(fs.devices)
        if "block" in dirs
        for name in os.listdir(Path(top) / "block")
    )


def scsi_devices(fs: Sysfs) -> list[Path]:
    """The directory of every fake SCSI device (the ones with ``delete``)."""
    return sorted(
        Path(top) for top, _, files in os.walk(fs.devices) if "delete" in files
    )


def hba_dir(fs: Sysfs, hba: dict[str, Any]) -> Path:
    # The kernel's fc_host/hostN is a link to
    # /sys/devices/pci0000:00/<bridge>/<pci>/hostN/fc_host/hostN.
    pci, host = str(hba["pci"]), str(hba["host"])
    return fs.devices / "pci0000:00" / "0000:00:03.0" / pci / host


def fake_sysfs(
    root: Path, fc: dict[str, Any], hidden: set[str] | None = None
) -> None:
    """/sys/class and /sys/block: the host's plus the fake devices.

    The host's links are made again at every start (its devices come and
    go); the fake devices under ``.devices`` are kept, like /dev, so they
    outlive a restart of the daemon as kernel state would.  The classes
    in ``hidden`` are left out.
    """
    fs = Sysfs.outside(root)
    fs.cls.mkdir(exist_ok=True)
    for name in os.listdir(fs.cls):
        if not name.startswith("."):
            shutil.rmtree(fs.cls / name)
    for name in os.listdir("/sys/class"):
        if name in (hidden or set()):
            continue
        (fs.cls / name).mkdir()
        for entry in os.listdir(f"/sys/class/{name}"):
            src = f"/sys/class/{name}/{entry}"
            if os.path.islink(src):
                # Relative links ("../../devices/...") resolve the same
                # from the bind mount at /sys/class.
                os.symlink(os.readlink(src), fs.cls / name / entry)
    if fs.block.exists():
        shutil.rmtree(fs.block)
    fs.block.mkdir()
    for entry in os.listdir("/sys/block"):
        os.symlink(os.readlink(f"/sys/block/{entry}"), fs.block / entry)
    for name in ("fc_host", "fc_transport", "fc_remote_ports", "scsi_host"):
        (fs.cls / name).mkdir(exist_ok=True)
    (fs.cls / "block").mkdir(exist_ok=True)
    for hba in fc["hbas"]:
        host = hba["host"]  # "host5"
        node = hba_dir(fs, hba)
        fc_dir = node / "fc_host" / host
        fc_dir.mkdir(parents=True, exist_ok=True)
        for attr in ("port_name", "node_name", "port_state"):
            (fc_dir / attr).write_text(hba[attr] + "\n")
        link(fc_dir, fs.cls / "fc_host" / host)
        sh = node / "scsi_host" / host
        sh.mkdir(parents=True, exist_ok=True)
        if not (sh / "scan").exists():
            os.mkfifo(sh / "scan")
        if os.path.lexists(fs.cls / "scsi_host" / host):
            os.unlink(fs.cls / "scsi_host" / host)
        link(sh, fs.cls / "scsi_host" / host)
        num = host[len("host") :]
        for target in hba.get("targets", []):
            t = fs.cls / "fc_transport" / f"target{num}:0:{target['id']}"
            t.mkdir()
            (t / "port_name").write_text(target["wwpn"] + "\n")
    # The fake block devices of an earlier run.
    for d in fake_block_devices(fs):
        fs.publish(d)
    run("mount", "--bind", str(fs.cls), "/sys/class")
    run("mount", "--bind", str(fs.block), "/sys/block")


SCSI_ID = """#!/bin/sh
# /lib/udev/scsi_id --page 0x83 --whitelisted DEVICE, for the fake LUNs.
for dev; do :; done
real=$(readlink -f "$dev")
wwn=$(awk -v d="$real" '$1 == d {print $2}' {map})
if [ -z "$wwn" ]; then exit 1; fi
echo "$wwn"
"""


def fake_scsi_id(root: Path) -> Path:
    """Bind a scsi_id answering from ``<root>/wwns`` over the real one."""
    wwns = root / "wwns"
    wwns.touch()
    script = root / "scsi_id"
    script.write_text(SCSI_ID.replace("{map}", str(wwns)))
    script.chmod(0o755)
    run("mount", "--bind", str(script), "/lib/udev/scsi_id")
    return wwns


TOOL = """#!{python}
import sys
sys.path.insert(0, {here!r})
import fakehost
sys.exit(fakehost.multipath_tool({root!r}, {name!r}, sys.argv[1:]))
"""


def fake_multipath_tools(root: Path) -> Path:
    """multipathd and multipath in ``<root>/bin``; that directory."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    here = str(Path(__file__).resolve().parent)
    for name in ("multipathd", "multipath"):
        (bin_dir / name).write_text(
            TOOL.format(
                python=sys.executable, here=here, root=str(root), name=name
            )
        )
        (bin_dir / name).chmod(0o755)
    return bin_dir


def multipath_tool(root: str, name: str, args: list[str]) -> int:
    """``multipathd ARGS`` / ``multipath ARGS`` on the fake host.

    Only what os-brick's FC and iSCSI connectors run; anything else fails
    (status 1, "unsupported" on stderr) so a new call shows up in a test
    rather than being answered wrongly.
    """
    with open(Path(root) / "multipath.log", "a") as log:
        log.write(" ".join([name, *args]) + "\n")
    fs = Sysfs.inside()
    with fs.locked():
        known = maps(fs)
        if name == "multipathd" and args == ["show", "status"]:
            print(f"path checker states:\nup {len(known)}\n")
            return 0
        if name == "multipathd" and args[:2] == ["show", "paths"]:
            return 0
        if name == "multipathd" and args[:2] == ["del", "map"]:
            if args[2] in known:
                remove_map(fs, known[args[2]])
                print("ok")
                return 0
            print("fail")
            return 1
        if name == "multipath" and args[:1] == ["-f"]:
            # A map's name, dm-N, or a device path (a node or a link).
            wanted = args[1]
            if wanted.startswith("/"):
                wanted = os.path.basename(os.path.realpath(wanted))
            by_dm = {dm: dm for dm in known.values()}
            dm = known.get(wanted) or by_dm.get(wanted)
            if dm is None:
                sys.stderr.write(f"{wanted}: map not present\n")
                return 1
            remove_map(fs, dm)
            return 0
        if name == "multipath" and args[:1] == ["-C"]:
            return 0 if args[1] in known.values() else 1
        if name == "multipath" and args[:1] in (["-l"], ["-ll"]):
            # Asked only when no map was found by name: none to print.
            holders = fs.disk(os.path.basename(args[1])) / "holders"
            if holders.is_dir() and any(holders.iterdir()):
                sys.stderr.write("fake multipath: unsupported: -l of a map\n")
                return 1
            return 0
        if name == "multipath" and args == ["-r"]:
            return 0
    sys.stderr.write(f"fake {name}: unsupported: {' '.join(args)}\n")
    return 1


class FakeKernel(threading.Thread):
    """Answers writes to the HBAs' scan and disks' delete files."""

    def __init__(
        self,
        root: Path,
        fc: dict[str, Any],
        wwns: Path | None,
        multipathd: bool,
    ):
        super().__init__(daemon=True)
        self.root = root
        self.fc = fc
        self.wwns = wwns
        self.multipathd = multipathd
        self.fs = Sysfs.inside()

    def run(self) -> None:
        for hba in self.fc["hbas"]:
            threading.Thread(
                target=self.serve, args=(hba,), daemon=True
            ).start()
        # The disks of an earlier run can still be deleted.
        for sdev in scsi_devices(self.fs):
            self.watch(sdev)

    def watch(self, sdev: Path) -> None:
        threading.Thread(
            target=self.serve_delete, args=(sdev,), daemon=True
        ).start()

    def serve(self, hba: dict[str, Any]) -> None:
        """Read the HBA's scan file: one writer's data is one write."""
        path = os.path.realpath(f"/sys/class/scsi_host/{hba['host']}/scan")
        while True:
            # The scan file is a FIFO: open blocks until a writer (tee)
            # opens it, and read returns at its close.  os-brick runs one
            # tee per write, so each read is one "C T L" write.
            with open(path, "rb") as f:
                data = f.read().decode()
            with self.fs.locked():
                self.scan(hba, data.split())

    def serve_delete(self, sdev: Path) -> None:
        """Read a SCSI device's delete file until "1" is written."""
        while True:
            with open(sdev / "delete", "rb") as f:
                data = f.read().decode().strip()
            if data == "1":
                break
        with self.fs.locked():
            names = delete_disk(self.fs, sdev)
            if self.wwns is not None:
                nodes = {f"/dev/{n}" for n in names}
                lines = self.wwns.read_text().splitlines()
                self.wwns.write_text(
                    "".join(
                        f"{x}\n" for x in lines if x.split()[0] not in nodes
                    )
                )
        with open(self.root / "delete.log", "a") as log:
            for name in names:
                log.write(f"{sdev.name} {name}\n")

    def scan(self, hba: dict[str, Any], ctl: list[str]) -> None:
        with open(self.root / "scan.log", "a") as log:
            log.write(f"{hba['host']}: {' '.join(ctl)}\n")
        if len(ctl) != 3:
            return
        channel, target, lun = ctl
        for t in hba.get("targets", []):
            if target not in ("-", str(t["id"])) or channel not in ("-", "0"):
                continue
            for lu in t.get("luns", []):
                if lun in ("-", str(lu["lun"])):
                    self.appear(hba, t, lu)

    def appear(
        self, hba: dict[str, Any], t: dict[str, Any], lu: dict[str, Any]
    ) -> None:
        by_path = (
            Path("/dev/disk/by-path")
            / f"pci-{hba['pci']}-fc-{t['wwpn']}-lun-{lu['lun']}"
        )
        if os.path.lexists(by_path):
            return  # a rescan finds the LUN it already has
        sdev = add_disk(self.fs, hba, t, lu)
        (name,) = [d.name for d in (sdev / "block").iterdir()]
        self.watch(sdev)
        if self.wwns is not None and lu.get("wwn"):
            with open(self.wwns, "a") as f:
                f.write(f"/dev/{name} {lu['wwn']}\n")
        if self.multipathd and lu.get("wwn") and lu.get("multipath", True):
            add_map(self.fs, lu["wwn"], [name])


def main() -> int:
    sep = sys.argv.index("--")
    spec = json.loads(Path(sys.argv[1]).read_text())
    cmd = sys.argv[sep + 1 :]
    root = Path(spec["root"])
    root.mkdir(parents=True, exist_ok=True)
    hidden: dict[str, set[str]] = {"/dev": set(), "/sys/class": set()}
    elsewhere = []
    for p in spec.get("hide", []):
        top, _, name = p.rpartition("/")
        if top in hidden:
            hidden[top].add(name)
        elif p.startswith(("/dev/", "/sys/", "/proc/")):
            raise SystemExit(f"fakehost: cannot hide {p}")
        else:
            elsewhere.append(p)
    hide(root, elsewhere)
    private_dev(root, hidden["/dev"])
    wwns = fake_scsi_id(root) if spec.get("scsi_id") else None
    env = dict(os.environ)
    if spec.get("multipathd"):
        bin_dir = fake_multipath_tools(root)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', os.defpath)}"
    if spec.get("fc") or hidden["/sys/class"]:
        fake_sysfs(root, spec.get("fc") or {"hbas": []}, hidden["/sys/class"])
        # libudev (pyudev) refuses device directories not on sysfs, such
        # as the fake ones; this is systemd's switch for testing with a
        # fake sysfs tree.  Real devices pass the check either way.
        env["SYSTEMD_DEVICE_VERIFY_SYSFS"] = "0"
    if spec.get("fc"):
        FakeKernel(
            root, spec["fc"], wwns, bool(spec.get("multipathd"))
        ).start()
    (root / "ready").touch()

    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_parent() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    child = subprocess.Popen(cmd, preexec_fn=die_with_parent, env=env)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
