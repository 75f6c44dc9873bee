"""Which device a path names: its number, or its dm uuid."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hostagent.devices.errors import (
    _CONTROL,
    PSEUDO_ROOTS,
    SYSFS,
    BadPath,
    DeviceNotFound,
    NotBlockDevice,
    PseudoFsPath,
    printable,
)


@dataclass(frozen=True)
class DeviceId:
    """One block device, whatever path names it.

    Equal when ``key`` is equal: the dm uuid for a dm device (a multipath
    map keeps it when re-created under a new minor), else MAJ:MIN.
    """

    key: str
    path: str = field(compare=False)
    major: int = field(compare=False)
    minor: int = field(compare=False)
    dm_uuid: str | None = field(default=None, compare=False)
    dm_name: str | None = field(default=None, compare=False)

    @property
    def devno(self) -> str:
        """``MAJ:MIN`` as sysfs and mountinfo write it."""
        return f"{self.major}:{self.minor}"


def _validate(path: str) -> None:
    if not isinstance(path, str) or not path:
        raise BadPath(str(path), "the device path is empty")
    if _CONTROL.search(path):
        raise BadPath(
            path,
            f"the device path {printable(path)!r} holds control characters",
        )
    if not path.startswith("/"):
        raise BadPath(path, f"the device path {path!r} is not absolute")


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def _resolve(path: str) -> str:
    """realpath, refusing /proc and /sys on either side of the links."""
    _validate(path)
    if _under(os.path.normpath(path), PSEUDO_ROOTS):
        raise PseudoFsPath(
            path, f"{path} is under /proc or /sys, not a device path"
        )
    try:
        real = os.path.realpath(path, strict=True)
    except FileNotFoundError:
        raise DeviceNotFound(path, f"{path} does not exist") from None
    except OSError as e:
        raise DeviceNotFound(
            path, f"{path} cannot be resolved: {e.strerror}"
        ) from None
    if _under(real, PSEUDO_ROOTS):
        raise PseudoFsPath(
            path, f"{path} resolves to {real}, under /proc or /sys"
        )
    return real


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a block device"


def _read(path: str | Path) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def device_id(path: str, *, sysfs: str = SYSFS) -> DeviceId:
    """The identity of the block device ``path`` names.

    Follows symlinks (``/dev/mapper/x``, ``/dev/vg/lv``, ``/dev/../dev/
    loop0`` all name their device).  Raises :class:`BadPath`,
    :class:`DeviceNotFound`, :class:`PseudoFsPath` or
    :class:`NotBlockDevice`.
    """
    return _identify(path, _resolve(path), sysfs)


def _identify(path: str, real: str, sysfs: str) -> DeviceId:
    try:
        st = os.stat(real)
    except OSError as e:
        raise DeviceNotFound(path, f"{path}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise NotBlockDevice(
            path,
            f"{path} is {_kind(st.st_mode)}, not a block device",
            resolved=real,
        )
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    dm = Path(sysfs, "dev/block", f"{major}:{minor}", "dm")
    uuid = _read(dm / "uuid") or None
    name = _read(dm / "name") or None
    key = f"dm-uuid:{uuid}" if uuid else f"devno:{major}:{minor}"
    return DeviceId(key, real, major, minor, uuid, name)


def same_device(a: str, b: str) -> bool:
    """True when the paths ``a`` and ``b`` name one block device."""
    return device_id(a) == device_id(b)
