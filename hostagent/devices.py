"""Block device facts from /proc and /sys: identity, holders, guards.

Pure stdlib on purpose: these checks run on the attach and detach paths
and must not depend on udevd (often absent) or on a library's cache.
Every refusal is a :class:`DeviceError` subclass with a ``reason`` word
and a message written for an operator; the caller maps them to numbered
JSON-RPC errors.  Messages never carry a command line (a qemu command
line can hold a password), only the 15-character ``comm`` of a process.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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


# ---------------------------------------------------------------- sysfs stack


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
    try:
        entries = sorted(block.iterdir())
    except OSError:
        return []
    return [e for e in entries if (e / "partition").exists()]


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


# ---------------------------------------------------------------- mounts


@dataclass(frozen=True)
class Mount:
    """A mounted file system (or active swap) on a block device."""

    devno: str  # MAJ:MIN of the device the file system is on
    mountpoint: str  # "[swap]" for swap
    fstype: str


def _unescape(field_: str) -> str:
    # mountinfo writes space, tab, newline, backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _devno_of(source: str) -> str | None:
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def mounts(proc: str = PROC) -> list[Mount]:
    """Block-backed mounts of this mount namespace, and active swap.

    btrfs (and some others) show an anonymous 0:N device in mountinfo;
    their source device node is stat'ed instead.
    """
    found: list[Mount] = []
    with open(Path(proc, "self/mountinfo")) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, tail = pre.split(), post.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            devno: str | None = fields[2]
            if devno is not None and devno.startswith("0:"):
                src = _unescape(tail[1])
                devno = _devno_of(src) if src.startswith("/dev/") else None
            if devno:
                found.append(Mount(devno, _unescape(fields[4]), tail[0]))
    try:
        with open(Path(proc, "swaps")) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                devno = _devno_of(_unescape(parts[0])) if parts else None
                if devno:
                    found.append(Mount(devno, "[swap]", "swap"))
    except OSError:
        pass
    return found


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcessHolder:
    """A process with a file descriptor on the device (or a device on it)."""

    pid: int
    comm: str  # /proc/PID/comm, escaped; never the command line
    device: str  # kernel name of the device it has open

    def describe(self) -> str:
        """``pid 4242 (qemu-kvm) on loop3p1``."""
        return f"pid {self.pid} ({self.comm}) on {self.device}"


def open_by(
    devnos: dict[int, str],
    *,
    ignore_pids: Collection[int] = (),
    proc: str = PROC,
) -> list[ProcessHolder]:
    """Processes holding an fd on any ``st_rdev`` in ``devnos``.

    ``devnos`` maps an ``st_rdev`` to the name to report.  Only fds whose
    link names something under /dev are stat'ed: stat on a file of a
    dead NFS server could hang a detach.
    """
    found: list[ProcessHolder] = []
    try:
        pids = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if int(pid) in ignore_pids:
            continue
        try:
            # Names relative to the open fd directory: one path lookup
            # per fd instead of four (this loop is the cost of a scan).
            dir_fd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # gone, or not ours to read
            continue
        try:
            hit = _fd_hit(dir_fd, devnos)
        finally:
            os.close(dir_fd)
        if hit is not None:
            comm = _read(f"{proc}/{pid}/comm") or "?"
            found.append(ProcessHolder(int(pid), printable(comm), hit))
    return found


# Character devices nearly every process has open: never a block device.
_NOT_BLOCK = ("/dev/pts/", "/dev/tty", "/dev/vhost-", "/dev/shm/")
_NOT_BLOCK_NAMES = frozenset(
    "/dev/" + name
    for name in [
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "kvm",
        "ptmx",
        "net/tun",
        "console",
    ]
)


def _fd_hit(dir_fd: int, devnos: dict[int, str]) -> str | None:
    """The name of the first of ``devnos`` open in this fd directory."""
    try:
        fds = os.listdir(dir_fd)
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(fd, dir_fd=dir_fd)
            if (
                not target.startswith("/dev/")
                or target in _NOT_BLOCK_NAMES
                or target.startswith(_NOT_BLOCK)
            ):
                continue
            rdev = os.stat(fd, dir_fd=dir_fd).st_rdev
        except OSError:
            continue
        if rdev in devnos:
            return devnos[rdev]
    return None


# ---------------------------------------------------------------- holders


@dataclass(frozen=True)
class Holders:
    """Everything that uses a device: processes, stacked maps, mounts."""

    device: DeviceId
    processes: tuple[ProcessHolder, ...]
    stacked: tuple[Stacked, ...]  # removal order, see stacked_devices
    mounts: tuple[Mount, ...]

    @property
    def maps(self) -> tuple[Stacked, ...]:
        """The dm/md devices on it (partitions are not holders)."""
        return tuple(s for s in self.stacked if s.kind != "partition")

    @property
    def busy(self) -> bool:
        """True when removing the device would pull it from a user."""
        return bool(self.processes or self.maps or self.mounts)

    def describe(self) -> str:
        """One line for an operator: who holds the device."""
        parts = [p.describe() for p in self.processes]
        parts += [f"{m.describe()} on {m.parent}" for m in self.maps]
        parts += [f"{printable(m.mountpoint)} mounted" for m in self.mounts]
        return "; ".join(parts) if parts else "nothing"

    def as_data(self) -> dict[str, object]:
        """JSON-friendly form for ``error.data``."""
        return {
            "processes": [
                {"pid": p.pid, "comm": p.comm, "device": p.device}
                for p in self.processes
            ],
            "maps": [
                {"name": m.name, "dm_name": m.dm_name, "parent": m.parent}
                for m in self.maps
            ],
            "mounts": [printable(m.mountpoint) for m in self.mounts],
        }


def _devno_int(devno: str) -> int | None:
    try:
        major, minor = (int(x) for x in devno.split(":"))
    except ValueError:
        return None
    return os.makedev(major, minor)


def holders(
    path: str,
    *,
    ignore_pids: Collection[int] = (),
    sysfs: str = SYSFS,
    proc: str = PROC,
) -> Holders:
    """Who uses the block device ``path`` or anything stacked on it.

    Processes are found by scanning /proc/*/fd for the device numbers of
    the device, its partitions and every dm/md map above it; maps from
    sysfs ``holders/``; mounts from mountinfo and /proc/swaps.  Raises
    the :func:`device_id` errors.
    """
    dev = device_id(path, sysfs=sysfs)
    stack = list(_walk(_block_dir(dev.devno, sysfs), set()))
    names = {dev.devno: os.path.basename(dev.path)}
    names.update({s.devno: s.name for s in stack})
    devnos = {
        n: name
        for devno, name in names.items()
        if (n := _devno_int(devno)) is not None
    }
    return Holders(
        dev,
        tuple(open_by(devnos, ignore_pids=ignore_pids, proc=proc)),
        tuple(stack),
        tuple(m for m in mounts(proc) if m.devno in names),
    )


# ---------------------------------------------------------------- local guard


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
            raise DeviceInUse(
                path,
                f"{path} is in use: the kernel refuses an exclusive open "
                "(mounted in another namespace, or claimed by a holder)",
                resolved=real,
            ) from None
        if e.errno in (errno.ENXIO, errno.ENOMEDIUM, errno.ENODEV):
            raise NoMedia(
                path, f"{path} has no media: {e.strerror}", resolved=real
            ) from None
        raise DeviceNotFound(
            path, f"{path} cannot be opened: {e.strerror}", resolved=real
        ) from None
    os.close(fd)


def check_local_device(
    path: str,
    allowed_globs: Sequence[str] = (),
    *,
    sysfs: str = SYSFS,
    proc: str = PROC,
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
        raise NotAllowed(
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
        raise NoMedia(
            path,
            f"{path} has no media (size 0, e.g. a detached loop device)",
            resolved=dev.path,
        )
    if size is None:
        # A node whose number the kernel has no device for.  Not opened:
        # opening a loop number the kernel has not made would make it.
        raise NoMedia(
            path,
            f"{path} has no media: the kernel has no device {dev.devno}",
            resolved=dev.path,
        )
    stack = list(_walk(block, set()))
    own, above = _device_mounts(dev, stack, proc)
    if own:
        where = ", ".join(m.mountpoint for m in own)
        raise DeviceMounted(
            path,
            f"{path} is mounted on the host ({where})",
            resolved=dev.path,
            mounts=[m.mountpoint for m in own],
        )
    if above:
        where = ", ".join(f"{m.mountpoint} on {name}" for m, name in above)
        raise HostDisk(
            path,
            f"{path} carries the host's mounts ({where})",
            resolved=dev.path,
            mounts=[m.mountpoint for m, _ in above],
        )
    maps = [s for s in stack if s.kind != "partition"]
    if maps:
        held = ", ".join(f"{s.describe()} on {s.parent}" for s in maps)
        raise DeviceHeld(
            path,
            f"{path} is held by {held}",
            resolved=dev.path,
            holders=[s.name for s in maps],
        )
    _exclusive_open(path, dev.path)
    return dev
