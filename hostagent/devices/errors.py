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

    def __init_subclass__(cls, reason: str = "", **kwargs: object) -> None:
        # A refusal names its reason word in its class line.
        super().__init_subclass__(**kwargs)
        if reason:
            cls.reason = reason

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


class BadPath(DeviceError, reason="bad_path"):
    """Empty, relative, or holding control characters."""


class DeviceNotFound(DeviceError, reason="not_found"):
    """Nothing at the path (or a symlink loop)."""


class PseudoFsPath(DeviceError, reason="pseudo_fs"):
    """The path (given or resolved) lies under /proc or /sys."""


class NotBlockDevice(DeviceError, reason="not_block_device"):
    """A regular file, directory, character device, socket, FIFO."""


class NotAllowed(DeviceError, reason="not_allowed"):
    """No ``[brick] local_allowed`` glob matches."""


class NoMedia(DeviceError, reason="no_media"):
    """A block device node without media (size 0: a detached loop)."""


class DeviceBusy(DeviceError, reason="busy"):
    """Base of the "something on this host uses it" refusals."""


class DeviceMounted(DeviceBusy, reason="mounted"):
    """A file system on the device itself is mounted (or it is swap)."""


class HostDisk(DeviceBusy, reason="host_disk"):
    """The device carries host mounts through partitions or dm/md maps."""


class DeviceHeld(DeviceBusy, reason="held"):
    """A dm or md device (LVM, multipath, crypt, RAID) sits on it."""


class DeviceInUse(DeviceBusy, reason="in_use"):
    """An exclusive open fails (EBUSY): claimed by the kernel elsewhere.

    Catches what /proc/self/mountinfo cannot show: a mount in another
    mount namespace, a holder that sysfs does not list, an O_EXCL opener.
    """
