"""Block device facts from /proc and /sys: identity, holders, guards.

Pure stdlib on purpose: these checks run on the attach and detach paths
and must not depend on udevd (often absent) or on a library's cache.
Every refusal is a :class:`DeviceError` subclass with a ``reason`` word
and a message written for an operator; the caller maps them to numbered
JSON-RPC errors.  Messages never carry a command line (a qemu command
line can hold a password), only the 15-character ``comm`` of a process.

One module per job: ``errors`` (the refusals), ``identity`` (which
device a path names), ``stack`` (what is stacked on it), ``holders``
(who holds it), ``guard`` (the local driver's check); this package
re-exports their public names.
"""

from __future__ import annotations

from hostagent.devices.errors import (
    PROC,
    PSEUDO_ROOTS,
    SYSFS,
    BadPath,
    DeviceBusy,
    DeviceError,
    DeviceHeld,
    DeviceInUse,
    DeviceMounted,
    DeviceNotFound,
    HostDisk,
    NoMedia,
    NotAllowed,
    NotBlockDevice,
    PseudoFsPath,
    printable,
)
from hostagent.devices.guard import (
    allowed,
    check_local_device,
)
from hostagent.devices.holders import (
    Holders,
    Mount,
    ProcessHolder,
    describe_users,
    holders,
    mounts,
    open_by,
    users_data,
)
from hostagent.devices.identity import (
    DeviceId,
    device_id,
    same_device,
)
from hostagent.devices.stack import (
    Stacked,
    partition_maps,
    stacked_devices,
)

__all__ = [
    "PROC",
    "PSEUDO_ROOTS",
    "SYSFS",
    "BadPath",
    "DeviceBusy",
    "DeviceError",
    "DeviceHeld",
    "DeviceId",
    "DeviceInUse",
    "DeviceMounted",
    "DeviceNotFound",
    "Holders",
    "HostDisk",
    "Mount",
    "NoMedia",
    "NotAllowed",
    "NotBlockDevice",
    "ProcessHolder",
    "PseudoFsPath",
    "Stacked",
    "allowed",
    "check_local_device",
    "describe_users",
    "device_id",
    "holders",
    "mounts",
    "open_by",
    "partition_maps",
    "printable",
    "same_device",
    "stacked_devices",
    "users_data",
]
