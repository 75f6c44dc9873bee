"""Run a command on a "fake storage host" in a private mount namespace.

    unshare -m --propagation private python fakehost.py SPEC -- CMD ...

This machine has no Fibre Channel HBA, no udevd and no Ceph, and its
/dev and /sys are shared with everything else running here.  Inside a
private mount namespace this helper gives CMD (the real hostagentd):

* a private /dev: a directory holding copies of the host's device nodes, so
  what the fake kernel and the shims create there (``/dev/disk/by-path``
  links, ``/dev/sdX`` and ``/dev/rbd*`` nodes) is seen by nobody else;
* with ``"fc"`` in SPEC, a /sys/class that is the host's (every entry is
  the same symlink into /sys/devices) plus ``fc_host``, ``fc_transport``
  and ``scsi_host`` entries for fake HBAs, laid out like the kernel's
  (``fc_host/hostN`` resolves under the HBA's PCI function, whose name
  os-brick uses for ``/dev/disk/by-path``);
* a fake kernel: a thread reading each HBA's ``scan`` file (a FIFO).  When
  "C T L" (or "- - L") is written to it, every LUN of SPEC that answers
  on that HBA, channel and target appears the way the SCSI midlayer and
  udev would make it appear: a ``/dev/sdX`` block node (whose device
  numbers are those of a real loop device holding the data) and its
  ``/dev/disk/by-path/pci-<pci>-fc-0x<wwpn>-lun-<L>`` link;
* with ``"scsi_id"`` in SPEC, ``/lib/udev/scsi_id`` answering the VPD
  page 0x83 query with the LUN's WWN, as the real one does for a disk.

Every write to a scan file is also appended to ``<root>/scan.log`` as
``hostN: C T L`` so a test can assert what the agent asked for.
CMD runs as a child; SIGTERM/SIGINT are passed on and it dies with this
helper (PR_SET_PDEATHSIG).  The exit status is CMD's.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def private_dev(root: Path) -> None:
    """Replace /dev (in this namespace) with a private copy of it.

    The copy is a directory under ``root``, so what was created in it
    (mapped devices, links) outlives a restart of the daemon the way
    kernel state does; nodes that appeared on the host since (new loop
    devices) are copied in at every start.
    """
    new = root / "dev"
    new.mkdir(exist_ok=True)
    for entry in sorted(os.listdir("/dev")):
        src = Path("/dev") / entry
        dst = new / entry
        if os.path.ismount(src):
            dst.mkdir(exist_ok=True)
            run("mount", "--rbind", str(src), str(dst))
        elif not os.path.lexists(dst):
            run("cp", "-a", str(src), str(dst))
    (new / "disk" / "by-path").mkdir(parents=True, exist_ok=True)
    (new / "disk" / "by-id").mkdir(parents=True, exist_ok=True)
    run("mount", "--rbind", str(new), "/dev")


def fake_sysfs_class(root: Path, fc: dict[str, Any]) -> None:
    """/sys/class = the host's entries plus fake FC HBAs and targets."""
    cls = root / "class"
    if cls.exists():
        shutil.rmtree(cls)
    cls.mkdir()
    for name in os.listdir("/sys/class"):
        (cls / name).mkdir()
        for entry in os.listdir(f"/sys/class/{name}"):
            src = f"/sys/class/{name}/{entry}"
            if os.path.islink(src):
                # Relative links ("../../devices/...") resolve the same
                # from the bind mount at /sys/class.
                os.symlink(os.readlink(src), cls / name / entry)
    for name in ("fc_host", "fc_transport", "fc_remote_ports", "scsi_host"):
        (cls / name).mkdir(exist_ok=True)
    devices = cls / ".devices"
    for hba in fc["hbas"]:
        host = hba["host"]  # "host5"
        pci = hba["pci"]  # "0000:05:00.2"
        # The kernel's fc_host/hostN is a link to
        # /sys/devices/pci0000:00/<bridge>/<pci>/hostN/fc_host/hostN.
        node = devices / "pci0000:00" / "0000:00:03.0" / pci / host
        fc_dir = node / "fc_host" / host
        fc_dir.mkdir(parents=True)
        for attr in ("port_name", "node_name", "port_state"):
            (fc_dir / attr).write_text(hba[attr] + "\n")
        os.symlink(
            os.path.relpath(fc_dir, cls / "fc_host"), cls / "fc_host" / host
        )
        sh = node / "scsi_host" / host
        sh.mkdir(parents=True)
        os.mkfifo(sh / "scan")
        link = cls / "scsi_host" / host
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.relpath(sh, cls / "scsi_host"), link)
        num = host[len("host") :]
        for target in hba.get("targets", []):
            t = cls / "fc_transport" / f"target{num}:0:{target['id']}"
            t.mkdir()
            (t / "port_name").write_text(target["wwpn"] + "\n")
    run("mount", "--bind", str(cls), "/sys/class")


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


class FakeKernel(threading.Thread):
    """Answers writes to the HBAs' scan files the way the kernel does."""

    def __init__(self, root: Path, fc: dict[str, Any], wwns: Path | None):
        super().__init__(daemon=True)
        self.root = root
        self.fc = fc
        self.wwns = wwns

    def run(self) -> None:
        for hba in self.fc["hbas"]:
            threading.Thread(
                target=self.serve, args=(hba,), daemon=True
            ).start()

    def serve(self, hba: dict[str, Any]) -> None:
        """Read the HBA's scan file: one writer's data is one write."""
        path = os.path.realpath(f"/sys/class/scsi_host/{hba['host']}/scan")
        lock = threading.Lock()
        while True:
            # The scan file is a FIFO: open blocks until a writer (tee)
            # opens it, and read returns at its close.  os-brick runs one
            # tee per write, so each read is one "C T L" write.
            with open(path, "rb") as f:
                data = f.read().decode()
            with lock:
                self.scan(hba, data.split())

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
        link = (
            Path("/dev/disk/by-path")
            / f"pci-{hba['pci']}-fc-{t['wwpn']}-lun-{lu['lun']}"
        )
        if os.path.lexists(link):
            return  # a rescan finds the LUN it already has
        st = os.stat(lu["device"])
        name = next(
            f"sd{c}"
            for c in "abcdefghijklmnopqrstuvwxyz"
            if not os.path.lexists(f"/dev/sd{c}")
        )
        node = Path("/dev") / name
        os.mknod(node, stat.S_IFBLK | 0o660, st.st_rdev)
        os.symlink(f"../../{name}", link)
        if self.wwns is not None and lu.get("wwn"):
            with open(self.wwns, "a") as f:
                f.write(f"{node} {lu['wwn']}\n")


def main() -> int:
    sep = sys.argv.index("--")
    spec = json.loads(Path(sys.argv[1]).read_text())
    cmd = sys.argv[sep + 1 :]
    root = Path(spec["root"])
    root.mkdir(parents=True, exist_ok=True)
    private_dev(root)
    wwns = fake_scsi_id(root) if spec.get("scsi_id") else None
    if spec.get("fc"):
        fake_sysfs_class(root, spec["fc"])
        FakeKernel(root, spec["fc"], wwns).start()
    (root / "ready").touch()

    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_parent() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    child = subprocess.Popen(cmd, preexec_fn=die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
