"""Device presence checks: the only module that imports pyudev.

udev's database is used when udevd runs; without it (containers, early
boot, this project's CI) the same facts are read from sysfs attributes
through pyudev, which enumerates devices from sysfs either way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Any

import pyudev

UDEV_DATA = "/run/udev/data"
SYS_DEV_BLOCK = "/sys/dev/block"
PROC_PARTITIONS = "/proc/partitions"


class Udev:
    """Answers "is this volume's device really there?"."""

    def __init__(self) -> None:
        self._context = pyudev.Context()

    @staticmethod
    def has_database() -> bool:
        """True when udevd keeps a database (so udev properties exist)."""
        return os.path.isdir(UDEV_DATA)

    def multipath_uuids(self) -> set[str]:
        """The dm uuid (``mpath-<wwid>`` for multipath) of every dm device."""
        found: set[str] = set()
        use_db = self.has_database()
        for dev in self._context.list_devices(subsystem="block"):
            if not dev.sys_name.startswith("dm-"):
                continue
            uuid = dev.properties.get("DM_UUID") if use_db else None
            if uuid is None:
                try:
                    uuid = dev.attributes.asstring("dm/uuid")
                except (KeyError, UnicodeDecodeError):
                    continue
            found.add(uuid.strip())
        return found

    def device_present(
        self, path: str, with_media: set[int] | None = None
    ) -> bool:
        """True when ``path`` exists and, if a block device, has media.

        A detached loop device or a SCSI disk whose LUN went away can keep
        its node in /dev; its sysfs size of zero (or a missing sysfs
        entry) tells that nothing usable is behind it.  ``with_media``
        (see :func:`devices_with_media`) answers for the devices it holds
        without a sysfs read.
        """
        try:
            st = os.stat(path)
        except OSError:
            return False
        if not stat.S_ISBLK(st.st_mode):
            return True
        if with_media is not None and st.st_rdev in with_media:
            return True
        # The sysfs attribute pyudev would read, read directly: building a
        # pyudev Device for it costs ten times as much, and volumes_info
        # asks this of every volume.
        number = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        try:
            with open(f"{SYS_DEV_BLOCK}/{number}/size", "rb") as f:
                return int(f.read()) > 0
        except (OSError, ValueError):
            return False

    def exists(
        self,
        path: str | None,
        multipath_id: str | None,
        uuids: set[str] | None = None,
        with_media: set[int] | None = None,
    ) -> bool:
        """The ``exists`` of ``volumes_info``.

        ``uuids`` and ``with_media`` let a caller checking many volumes
        enumerate the dm devices and the sizes once (see
        :meth:`multipath_uuids` and :func:`devices_with_media`).
        """
        if not path or not self.device_present(path, with_media):
            return False
        if multipath_id:
            if uuids is None:
                uuids = self.multipath_uuids()
            return f"mpath-{multipath_id}" in uuids
        return True

    def exists_many(
        self, volumes: Iterable[tuple[str | None, str | None]]
    ) -> list[bool]:
        """:meth:`exists` for many ``(path, multipath_id)`` pairs at once."""
        items = list(volumes)
        uuids = self.multipath_uuids() if any(m for _, m in items) else set()
        media = devices_with_media() if len(items) > 1 else None
        return [self.exists(p, m, uuids, media) for p, m in items]


def devices_with_media() -> set[int]:
    """Device numbers of the block devices whose size is not zero.

    The kernel lists in /proc/partitions exactly the disks and partitions
    with a non-zero capacity (hidden ones aside), so one read answers for
    all of them; a device missing from it is checked in sysfs after all.
    """
    found: set[int] = set()
    try:
        with open(PROC_PARTITIONS, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) == 4 and fields[0].isdigit() and fields[1].isdigit():
            found.add(os.makedev(int(fields[0]), int(fields[1])))
    return found


class BlockMonitor:
    """Kernel uevents for block devices, for an event loop's reader.

    The kernel's netlink source needs no udevd (containers, this
    project's CI): the kernel itself announces every add, remove and
    change (a loop device losing or regaining its backing file is a
    "change").  udev's source would carry the same events later and
    only where udevd runs.
    """

    def __init__(self, context: pyudev.Context | None = None) -> None:
        self._monitor: Any = pyudev.Monitor.from_netlink(
            context or pyudev.Context(), source="kernel"
        )
        self._monitor.filter_by("block")
        # A burst of events (a multipath map with many paths, a host
        # rescan) must not overflow the socket: 4 MiB of buffer.
        self._monitor.set_receive_buffer_size(4 * 1024 * 1024)
        self._monitor.start()

    def fileno(self) -> int:
        """The netlink socket, for ``loop.add_reader``."""
        return int(self._monitor.fileno())

    def drain(self) -> list[tuple[str, str]]:
        """``(action, device node)`` of every event waiting; never blocks."""
        events = []
        while True:
            try:
                dev = self._monitor.poll(timeout=0)
            except OSError:
                # ENOBUFS: events were lost; the caller rechecks all.
                events.append(("overflow", ""))
                return events
            if dev is None:
                return events
            events.append((str(dev.action), str(dev.device_node or "")))

    def close(self) -> None:
        """Stop receiving (pyudev closes the socket with the monitor)."""
        self._monitor = None
