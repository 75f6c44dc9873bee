"""Who holds a device: mounts, processes with it open, stacked maps."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from hostagent.devices.errors import PROC, SYSFS, printable
from hostagent.devices.identity import DeviceId, _read, device_id
from hostagent.devices.stack import Stacked, _block_dir, _walk


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

    ``devnos`` maps an ``st_rdev`` to the name to report (the first
    one open, in fd order).  Only fds whose link names something under
    /dev are stat'ed: stat on a file of a dead NFS server could hang a
    detach.
    """
    return list(_first_of(_scan(devnos, ignore_pids, proc), devnos))


# A process with one of the wanted devices open: pid, comm, and the
# ``st_rdev`` of each such fd, in fd order.
_Scanned = tuple[int, str, list[int]]


def _scan(
    devnos: Collection[int], ignore_pids: Collection[int], proc: str
) -> list[_Scanned]:
    """Every process with one of ``devnos`` open (one pass over /proc)."""
    found: list[_Scanned] = []
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
            hits = _fd_hits(dir_fd, devnos)
        finally:
            os.close(dir_fd)
        if hits:
            comm = _read(f"{proc}/{pid}/comm") or "?"
            found.append((int(pid), printable(comm), hits))
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


def _fd_hits(dir_fd: int, devnos: Collection[int]) -> list[int]:
    """The ``devnos`` open in this fd directory, in fd order."""
    hits: list[int] = []
    try:
        fds = os.listdir(dir_fd)
    except OSError:
        return hits
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
            hits.append(rdev)
    return hits


# ---------------------------------------------------------------- holders


@dataclass(frozen=True)
class Holders:
    """Everything that uses a device: processes, stacked maps, mounts."""

    device: DeviceId
    processes: tuple[ProcessHolder, ...]
    stacked: tuple[Stacked, ...]  # removal order, see stacked_devices
    mounts: tuple[Mount, ...]
    # Of a dm device: processes holding one of the devices under it (a
    # multipath map's paths) directly, found in the same scan.  Not in
    # ``busy``: whether they count is the caller's (see release).
    path_processes: tuple[ProcessHolder, ...] = ()

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
        return describe_users(self.processes, self.maps, self.mounts)

    def as_data(self) -> dict[str, object]:
        """JSON-friendly form for ``error.data``."""
        return users_data(self.processes, self.maps, self.mounts)


def describe_users(
    processes: Iterable[ProcessHolder],
    maps: Iterable[Stacked],
    mounts: Iterable[Mount],
) -> str:
    """One line for an operator: the processes, maps and mounts given."""
    parts = [p.describe() for p in processes]
    parts += [f"{m.describe()} on {m.parent}" for m in maps]
    parts += [f"{printable(m.mountpoint)} mounted" for m in mounts]
    return "; ".join(parts) if parts else "nothing"


def users_data(
    processes: Iterable[ProcessHolder],
    maps: Iterable[Stacked],
    mounts: Iterable[Mount],
) -> dict[str, object]:
    """The same as :func:`describe_users`, JSON-friendly (``error.data``)."""
    return {
        "processes": [
            {"pid": p.pid, "comm": p.comm, "device": p.device}
            for p in processes
        ],
        "maps": [
            {"name": m.name, "dm_name": m.dm_name, "parent": m.parent}
            for m in maps
        ],
        "mounts": [printable(m.mountpoint) for m in mounts],
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
    the device, its partitions and every dm/md map above it (and, of a
    dm device, the devices under it: ``path_processes``); maps from
    sysfs ``holders/``; mounts from mountinfo and /proc/swaps.  Raises
    the :func:`device_id` errors.
    """
    dev = device_id(path, sysfs=sysfs)
    block = _block_dir(dev.devno, sysfs)
    stack = list(_walk(block, set()))
    names = {dev.devno: os.path.basename(dev.path)}
    names.update({s.devno: s.name for s in stack})
    devnos = _devnos(names)
    paths = _devnos(_slaves(block)) if block.name.startswith("dm-") else {}
    # One scan of /proc for both: it is most of what a detach costs.
    scanned = _scan(devnos | paths, ignore_pids, proc)
    return Holders(
        dev,
        _first_of(scanned, devnos),
        tuple(stack),
        tuple(m for m in mounts(proc) if m.devno in names),
        _first_of(scanned, paths),
    )


def _devnos(names: dict[str, str]) -> dict[int, str]:
    """``MAJ:MIN`` -> name, as ``st_rdev`` -> name."""
    return {
        n: name
        for devno, name in names.items()
        if (n := _devno_int(devno)) is not None
    }


def _slaves(block: Path) -> dict[str, str]:
    """``MAJ:MIN`` -> name of the devices under ``block`` (sysfs)."""
    found: dict[str, str] = {}
    try:
        names = sorted(os.listdir(block / "slaves"))
    except OSError:
        return found
    for name in names:
        devno = _read(block / "slaves" / name / "dev")
        if devno:
            found[devno] = name
    return found


def _first_of(
    scanned: list[_Scanned], devnos: dict[int, str]
) -> tuple[ProcessHolder, ...]:
    """The processes with one of ``devnos`` open, each named by the
    first it has open."""
    return tuple(
        ProcessHolder(pid, comm, devnos[hit[0]])
        for pid, comm, hits in scanned
        if (hit := [h for h in hits if h in devnos])
    )
