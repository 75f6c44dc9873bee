"""What is stacked on a device: partitions and dm/md maps, in removal order."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hostagent.devices.errors import SYSFS
from hostagent.devices.identity import DeviceId, _read, device_id


@dataclass(frozen=True)
class Stacked:
    """A partition or dm/md device that sits on another device."""

    name: str  # kernel name: loop3p1, dm-4, md127
    kind: str  # "partition", "dm", "md" or "other"
    devno: str  # MAJ:MIN
    parent: str  # kernel name of the device it sits on
    dm_name: str | None = None
    dm_uuid: str | None = None

    @property
    def devnode(self) -> str:
        """The node udev or devtmpfs makes for it."""
        return f"/dev/{self.name}"

    def describe(self) -> str:
        """``dm-4 (36001405abcp1)`` or ``loop3p1``."""
        return f"{self.name} ({self.dm_name})" if self.dm_name else self.name


def _block_dir(devno: str, sysfs: str) -> Path:
    return Path(os.path.realpath(Path(sysfs, "dev/block", devno)))


def _stacked(block: Path, parent: str, kind: str) -> Stacked:
    dm_name = _read(block / "dm/name") or None
    dm_uuid = _read(block / "dm/uuid") or None
    if kind == "holder":
        if (block / "dm").is_dir():
            kind = "dm"
        elif (block / "md").is_dir():
            kind = "md"
        else:
            kind = "other"
    return Stacked(
        block.name,
        kind,
        _read(block / "dev") or "?",
        parent,
        dm_name,
        dm_uuid,
    )


def _partitions(block: Path) -> list[Path]:
    # The kernel names a partition after its disk (sda1, loop0p1,
    # nvme0n1p2): the disk's other entries, some 30 attributes, are not
    # looked at (through pathlib that was most of an attach's guard).
    prefix = block.name
    try:
        with os.scandir(block) as entries:
            names = sorted(
                e.name
                for e in entries
                if e.name.startswith(prefix)
                and e.is_dir(follow_symlinks=False)
            )
    except OSError:
        return []
    return [
        block / name
        for name in names
        if os.path.exists(f"{block}/{name}/partition")
    ]


def _holders(block: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(block / "holders"))
    except OSError:
        return []
    return [Path(os.path.realpath(block / "holders" / n)) for n in names]


def _walk(block: Path, seen: set[str]) -> Iterator[Stacked]:
    """Everything above ``block``, each after what sits on it."""
    above = [(p, "partition") for p in _partitions(block)]
    above += [(h, "holder") for h in _holders(block)]
    for child, kind in above:
        entry = _stacked(child, block.name, kind)
        if entry.name in seen:
            continue
        seen.add(entry.name)
        yield from _walk(child, seen)
        yield entry


def stacked_devices(path: str, *, sysfs: str = SYSFS) -> list[Stacked]:
    """Partitions and dm/md maps on ``path``, in removal order.

    Each device comes after everything stacked on it (an LV on a
    partition map on a multipath map: LV, partition map, then the
    caller's own map), so removing them in list order never removes a
    device something still sits on.  Kernel partitions are listed for
    completeness; they go away with their disk.
    """
    dev = device_id(path, sysfs=sysfs)
    return list(_walk(_block_dir(dev.devno, sysfs), set()))


def _is_partition_map(entry: Stacked, parent: DeviceId) -> bool:
    # kpartx names a map's partitions "part<N>-<parent uuid>"; its names
    # are "<parent>p<N>" or, with some udev rules, "<parent>-part<N>".
    if entry.kind != "dm":
        return False
    uuid, name = parent.dm_uuid, parent.dm_name
    if uuid and entry.dm_uuid:
        pattern = rf"part\d+-{re.escape(uuid)}"
        if re.fullmatch(pattern, entry.dm_uuid):
            return True
    if name and entry.dm_name:
        pattern = rf"{re.escape(name)}(p|-part)\d+"
        return re.fullmatch(pattern, entry.dm_name) is not None
    return False


def partition_maps(path: str, *, sysfs: str = SYSFS) -> list[Stacked]:
    """The host's partition maps on the dm device ``path``, removal order.

    These are maps kpartx (or multipathd) made from a partition table a
    guest wrote on the LUN; they are attributed to the volume by dm uuid
    ``part<N>-<uuid of path>`` or by name ``<name>p<N>`` /
    ``<name>-part<N>``.  Whatever sits on a partition map (a guest VG
    the host activated) is listed before it.  Other holders of ``path``
    are not the volume's to remove and are left out.
    """
    dev = device_id(path, sysfs=sysfs)
    block = _block_dir(dev.devno, sysfs)
    found: list[Stacked] = []
    seen: set[str] = set()
    for child in _holders(block):
        entry = _stacked(child, block.name, "holder")
        if entry.name in seen or not _is_partition_map(entry, dev):
            continue
        seen.add(entry.name)
        found += _walk(child, seen)
        found.append(entry)
    return found
