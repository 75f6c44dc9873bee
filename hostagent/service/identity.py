"""What a recorded device is, beyond the path that named it.

* :func:`device_key`: one device is one volume, whatever path names it
  (``/dev/loop3``, a symlink to it, ``/dev/../dev/loop3``): the key is
  the device number of the resolved node, or the dm uuid for a dm device
  (a multipath map keeps it when re-made under another minor).
* :func:`boot_id`: the kernel's id of this boot, recorded with each
  attachment, so a row written before a reboot (or a fence) is told
  from one of this boot: its device numbers may name another device now.
"""

from __future__ import annotations

import functools
import os
import stat

from hostagent import devices

BOOT_ID = "/proc/sys/kernel/random/boot_id"


@functools.cache
def boot_id() -> str | None:
    """This boot's id (None where the kernel does not say)."""
    try:
        with open(BOOT_ID) as f:
            return f.read().strip() or None
    except OSError:
        return None


def device_key(path: str) -> str | None:
    """The identity of what ``path`` names now, or None if it cannot tell.

    A block device: :attr:`hostagent.devices.DeviceId.key`.  A regular
    file (an NFS volume is a file on the share): its file system and
    inode, so a second path to the same file is the same volume too.
    """
    try:
        return devices.device_id(path).key
    except devices.NotBlockDevice:
        pass
    except devices.DeviceError:
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return f"inode:{st.st_dev}:{st.st_ino}"


def dm_has_paths(path: str, sysfs: str = devices.SYSFS) -> bool:
    """Whether the dm device ``path`` names has a device under it.

    A multipath map can outlive its last path (a logout, a fence): its
    node and size stay, but nothing is behind it.
    """
    name = os.path.basename(os.path.realpath(path))
    try:
        return bool(os.listdir(f"{sysfs}/block/{name}/slaves"))
    except OSError:
        return False
