"""Device facts: the refusals, and text made safe for a log line."""

from __future__ import annotations

import re

SYSFS = "/sys"
PROC = "/proc"
# Paths under these never name a device a VM may use, whatever they
# resolve to (/proc/self/fd/N, /proc/PID/root/...).
PSEUDO_ROOTS = ("/proc", "/sys")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters as ``\\xNN`` (safe in a message).

    A device path comes from a client; a newline in it must not forge a
    log line, a NUL must not cut one.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# ---------------------------------------------------------------- errors


class DeviceError(Exception):
    """A path that cannot be used as asked; ``reason`` says why in a word.

    ``path`` is the path as the client gave it (escaped), ``detail`` a
    JSON-friendly dict for ``error.data``.
    """

    reason = "device"

    def __init__(self, path: str, message: str, **detail: object) -> None:
        # Resolved names and mount points come from the host's files and
        # may hold control characters as well.
        self.path = printable(path)
        self.message = printable(message)
        self.detail: dict[str, object] = {
            "reason": self.reason,
            "path": self.path,
            **{
                k: printable(v) if isinstance(v, str) else v
                for k, v in detail.items()
            },
        }
        super().__init__(self.message)


class BadPath(DeviceError):
    """Empty, relative, or holding control characters."""

    reason = "bad_path"


class DeviceNotFound(DeviceError):
    """Nothing at the path (or a symlink loop)."""

    reason = "not_found"


class PseudoFsPath(DeviceError):
    """The path (given or resolved) lies under /proc or /sys."""

    reason = "pseudo_fs"


class NotBlockDevice(DeviceError):
    """A regular file, directory, character device, socket, FIFO."""

    reason = "not_block_device"


class NotAllowed(DeviceError):
    """No ``[brick] local_allowed`` glob matches."""

    reason = "not_allowed"


class NoMedia(DeviceError):
    """A block device node without media (size 0: a detached loop)."""

    reason = "no_media"


class DeviceBusy(DeviceError):
    """Base of the "something on this host uses it" refusals."""

    reason = "busy"


class DeviceMounted(DeviceBusy):
    """A file system on the device itself is mounted (or it is swap)."""

    reason = "mounted"


class HostDisk(DeviceBusy):
    """The device carries host mounts through partitions or dm/md maps."""

    reason = "host_disk"


class DeviceHeld(DeviceBusy):
    """A dm or md device (LVM, multipath, crypt, RAID) sits on it."""

    reason = "held"


class DeviceInUse(DeviceBusy):
    """An exclusive open fails (EBUSY): claimed by the kernel elsewhere.

    Catches what /proc/self/mountinfo cannot show: a mount in another
    mount namespace, a holder that sysfs does not list, an O_EXCL opener.
    """

    reason = "in_use"


# ---------------------------------------------------------------- identity
