"""The local driver's guard: a free block device of the host, or a refusal."""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Sequence

from hostagent.devices import errors
from hostagent.devices.holders import Mount, mounts
from hostagent.devices.identity import DeviceId, _identify, _read, _resolve
from hostagent.devices.stack import Stacked, _block_dir, _walk


def _glob_match(pattern: str, path: str) -> bool:
    # Segment by segment, so "*" never crosses "/": "/dev/loop*" must
    # not admit "/dev/loop0/../vda".
    pat, parts = pattern.split("/"), path.split("/")
    return len(pat) == len(parts) and all(
        fnmatch.fnmatchcase(s, p) for s, p in zip(parts, pat, strict=True)
    )


def allowed(path: str, real: str, globs: Sequence[str]) -> bool:
    """The ``[brick] local_allowed`` rule.

    A glob must match the resolved device path (``/dev/loop3``,
    ``/dev/dm-4``) or the path exactly as given, when that is already
    normal (no ``.``, ``..`` or ``//``): this lets ``/dev/<vg>/*`` admit
    LVM volumes, which resolve to ``/dev/dm-N``, without letting
    ``/dev/<vg>/../vda`` through.  ``*`` and ``?`` never match ``/``.
    An empty list allows any path.
    """
    if not globs:
        return True
    names = [real]
    if os.path.normpath(path) == path:
        names.append(path)
    return any(_glob_match(g, n) for g in globs for n in names)


def _device_mounts(
    dev: DeviceId, stack: list[Stacked], proc: str
) -> tuple[list[Mount], list[tuple[Mount, str]]]:
    """Mounts on ``dev`` itself, and mounts through its stack."""
    by_devno = {s.devno: s.name for s in stack}
    own: list[Mount] = []
    above: list[tuple[Mount, str]] = []
    for m in mounts(proc):
        if m.devno == dev.devno:
            own.append(m)
        elif m.devno in by_devno:
            above.append((m, by_devno[m.devno]))
    return own, above


def _exclusive_open(path: str, real: str) -> None:
    try:
        fd = os.open(real, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise errors.DeviceInUse(
                path,
                f"{path} is in use: the kernel refuses an exclusive open "
                "(mounted in another namespace, or claimed by a holder)",
                resolved=real,
            ) from None
        if e.errno in (errno.ENXIO, errno.ENOMEDIUM, errno.ENODEV):
            raise errors.NoMedia(
                path, f"{path} has no media: {e.strerror}", resolved=real
            ) from None
        raise errors.DeviceNotFound(
            path, f"{path} cannot be opened: {e.strerror}", resolved=real
        ) from None
    os.close(fd)


def check_local_device(
    path: str,
    allowed_globs: Sequence[str] = (),
    *,
    sysfs: str = errors.SYSFS,
    proc: str = errors.PROC,
) -> DeviceId:
    """Refuse ``path`` unless it is a free block device a VM may take.

    In order: the path must be absolute, without control characters,
    not under /proc or /sys, exist, match ``allowed_globs`` (see
    :func:`allowed`), resolve to a block device with media; then nothing
    on the host may use it: no mount or swap on the device
    (:class:`DeviceMounted`), none through its partitions or maps
    (:class:`HostDisk`: e.g. a disk whose partition is mounted, a PV
    under a mounted LV), no dm/md holder (:class:`DeviceHeld`: an
    active VG, a multipath or crypt map), and the kernel must grant an
    exclusive open, closed at once (:class:`DeviceInUse`).  Processes
    that merely have it open are not refused here; see :func:`holders`.
    Returns the device's :class:`DeviceId`.
    """
    real = _resolve(path)
    # Before looking at what the path is: outside the allowed names a
    # client learns nothing about the host's files.
    if not allowed(path, real, allowed_globs):
        raise errors.NotAllowed(
            path,
            f"{path} (resolved: {real}) matches no [brick] "
            "local_allowed pattern",
            resolved=real,
            allowed=list(allowed_globs),
        )
    dev = _identify(path, real, sysfs)
    block = _block_dir(dev.devno, sysfs)
    size = _read(block / "size")
    if size == "0":
        raise errors.NoMedia(
            path,
            f"{path} has no media (size 0, e.g. a detached loop device)",
            resolved=dev.path,
        )
    if size is None:
        # A node whose number the kernel has no device for.  Not opened:
        # opening a loop number the kernel has not made would make it.
        raise errors.NoMedia(
            path,
            f"{path} has no media: the kernel has no device {dev.devno}",
            resolved=dev.path,
        )
    stack = list(_walk(block, set()))
    own, above = _device_mounts(dev, stack, proc)
    if own:
        where = ", ".join(m.mountpoint for m in own)
        raise errors.DeviceMounted(
            path,
            f"{path} is mounted on the host ({where})",
            resolved=dev.path,
            mounts=[m.mountpoint for m in own],
        )
    if above:
        where = ", ".join(f"{m.mountpoint} on {name}" for m, name in above)
        raise errors.HostDisk(
            path,
            f"{path} carries the host's mounts ({where})",
            resolved=dev.path,
            mounts=[m.mountpoint for m, _ in above],
        )
    maps = [s for s in stack if s.kind != "partition"]
    if maps:
        held = ", ".join(f"{s.describe()} on {s.parent}" for s in maps)
        raise errors.DeviceHeld(
            path,
            f"{path} is held by {held}",
            resolved=dev.path,
            holders=[s.name for s in maps],
        )
    _exclusive_open(path, dev.path)
    return dev
