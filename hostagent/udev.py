"""Device presence checks: the only module that imports pyudev.

udev's database is used when udevd runs; without it (containers, early
boot, this project's CI) the same facts are read from sysfs attributes
through pyudev, which enumerates devices from sysfs either way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

import pyudev

UDEV_DATA = "/run/udev/data"


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

    def device_present(self, path: str) -> bool:
        """True when ``path`` exists and, if a block device, has media.

        A detached loop device or a SCSI disk whose LUN went away can keep
        its node in /dev; its sysfs size of zero (or a missing sysfs
        entry) tells that nothing usable is behind it.
        """
        try:
            st = os.stat(path)
        except OSError:
            return False
        if not stat.S_ISBLK(st.st_mode):
            return True
        try:
            dev = pyudev.Devices.from_device_number(
                self._context, "block", st.st_rdev
            )
            return int(dev.attributes.asint("size")) > 0
        except (pyudev.DeviceNotFoundError, KeyError, ValueError):
            return False

    def exists(
        self,
        path: str | None,
        multipath_id: str | None,
        uuids: set[str] | None = None,
    ) -> bool:
        """The ``exists`` of ``volumes_info``.

        ``uuids`` lets a caller checking many volumes enumerate the dm
        devices once (see :meth:`multipath_uuids`).
        """
        if not path or not self.device_present(path):
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
        return [self.exists(p, m, uuids) for p, m in items]
