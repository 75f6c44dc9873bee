"""What a detach must know and do before os-brick lets go of a device.

- :func:`survey`: who uses the volume's device.  Processes with it (or
  one of its multipath paths, or a map on it) open, mounts, and maps
  stacked on it that are not the volume's own partition maps: any of
  these makes a detach refuse (932) unless forced.  The partition maps
  kpartx's udev rules made from a partition table a guest wrote on the
  LUN are the volume's own: the detach removes them.
- :func:`stop_queueing`: a multipath map with no usable path and
  ``queue_if_no_path`` holds every write, and every command that
  touches the map, until a path comes back, which with the target gone
  is never.  Turning queueing off fails that I/O and lets the flush and
  removal finish.
- :func:`remove_maps`: remove the volume's partition maps, top first.

Every command runs with a timeout, so nothing here can hang a detach.
These calls block: the volume service runs them on worker threads.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass

from hostagent import devices
from hostagent.devices import Mount, ProcessHolder, Stacked

log = logging.getLogger(__name__)

DMSETUP_TIMEOUT = 20.0
# Processes that hold a multipath map's paths open by design.
PATH_KEEPERS = frozenset({"multipathd"})
# udev's workers open a device for a moment to probe it (blkid after the
# change event that closing a written device raises), and so do the
# tools its rules run on a path or map event (multipath's "multipath -u"
# on a path, kpartx on a map; the lab saw a multipath detach refused
# with "pid 479 (multipath) on sda"): they never keep it, and a detach
# that waited for them would be refused at random.
PROBERS = frozenset(
    {"(udev-worker)", "systemd-udevd", "udevd", "multipath", "kpartx"}
)
_PATH_STATE = re.compile(r"(\d+:\d+) ([AF]) ")


class ReleaseError(Exception):
    """A command of the release failed or timed out."""


@dataclass(frozen=True)
class Survey:
    """What uses a volume's device, and which maps on it are its own."""

    path: str
    processes: tuple[ProcessHolder, ...]
    maps: tuple[Stacked, ...]  # not the volume's: they block a detach
    mounts: tuple[Mount, ...]
    own_maps: tuple[Stacked, ...]  # partition maps, removal order

    @property
    def busy(self) -> bool:
        """True when a detach would pull the device from a user."""
        return bool(self.processes or self.maps or self.mounts)

    def describe(self) -> str:
        """One line for an operator: who holds the device."""
        return devices.describe_users(self.processes, self.maps, self.mounts)

    def as_data(self) -> dict[str, object]:
        """JSON-friendly holders, for ``error.data`` and log lines."""
        return devices.users_data(self.processes, self.maps, self.mounts)


def survey(
    path: str | None,
    *,
    sysfs: str = devices.SYSFS,
    proc: str = devices.PROC,
) -> Survey | None:
    """Who uses the device at ``path``; None when there is no device.

    The agent's own process is not a holder (a worker thread of a
    concurrent os-brick call may have it open for a moment).
    """
    if not path:
        return None
    try:
        held = devices.holders(
            path, ignore_pids={os.getpid()}, sysfs=sysfs, proc=proc
        )
        own = devices.partition_maps(path, sysfs=sysfs)
    except devices.DeviceError:
        return None  # gone already (or never there): nothing holds it
    names = {s.name for s in own}
    processes = [p for p in held.processes if p.comm not in PROBERS]
    # A process may hold one of the multipath map's paths directly;
    # multipathd's path checkers keep every path open, and let go of a
    # path when the path is removed.
    processes += [
        p for p in held.path_processes if p.comm not in PATH_KEEPERS | PROBERS
    ]
    return Survey(
        path,
        tuple(processes),
        tuple(m for m in held.maps if m.name not in names),
        held.mounts,
        tuple(own),
    )


def _dmsetup(*args: str) -> str:
    cmd = ["dmsetup", *args]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=DMSETUP_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as e:
        raise ReleaseError("dmsetup is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise ReleaseError(
            f"{' '.join(cmd)} did not finish in {DMSETUP_TIMEOUT:g} s"
        ) from e
    if done.returncode != 0:
        raise ReleaseError(
            f"{' '.join(cmd)} exited {done.returncode}: "
            f"{devices.printable(done.stderr.strip())[-500:]}"
        )
    return done.stdout


def path_states(map_name: str) -> list[tuple[str, bool]]:
    """``(MAJ:MIN, active)`` of each path of multipath map ``map_name``.

    Read from ``dmsetup status`` (the kernel's view, no I/O involved).
    """
    out = _dmsetup("status", "--target", "multipath", map_name)
    return [(m[1], m[2] == "A") for m in _PATH_STATE.finditer(out + " ")]


def queueing(map_name: str) -> bool:
    """Whether the map queues I/O when it has no path."""
    out = _dmsetup("table", "--target", "multipath", map_name)
    return "queue_if_no_path" in out.split(" multipath ", 1)[-1].split()[:8]


def stop_queueing(map_name: str, *, force: bool) -> str | None:
    """Turn ``queue_if_no_path`` off when the map has no usable path.

    Always when ``force``: the caller accepted losing what cannot be
    written.  Returns why it was turned off, None when it was not (a
    path is up, queueing is off already, or there is no such map).
    """
    if not os.path.exists(f"/dev/mapper/{map_name}"):
        return None
    try:
        states = path_states(map_name)
        active = sum(1 for _, up in states if up)
        if (active and not force) or not queueing(map_name):
            return None
        _dmsetup("message", map_name, "0", "fail_if_no_path")
    except ReleaseError as e:
        # The flush that follows decides; this only makes it finish.
        log.warning("multipath map %s: queueing left as is: %s", map_name, e)
        return None
    why = "forced detach" if active else f"no usable path of {len(states)}"
    log.warning(
        "multipath map %s: %s; queueing turned off so the detach can "
        "finish (writes that cannot reach the storage fail)",
        map_name,
        why,
    )
    return why


def remove_maps(maps: tuple[Stacked, ...] | list[Stacked]) -> list[str]:
    """Remove dm maps in the order given; the names removed.

    Partition maps are removed with ``dmsetup remove`` rather than
    ``kpartx -d``: the map names come from sysfs, so it does not matter
    which naming scheme made them.
    """
    removed = []
    for m in maps:
        if m.kind != "dm" or not m.dm_name:
            continue
        if not os.path.exists(f"/sys/block/{m.name}"):
            continue
        _dmsetup("remove", "--retry", m.dm_name)
        removed.append(m.dm_name)
    if removed:
        log.info("removed partition maps %s", ", ".join(removed))
    return removed


def remove_deferred(names: list[str]) -> list[str]:
    """Fail all I/O of held maps and have the kernel remove them later.

    For a forced detach whose device a process still holds: the map's
    table becomes one that fails every I/O (so nothing below it, the
    SCSI paths, is held any more and os-brick removes them at once
    instead of retrying a flush of a map in use), and the map itself
    goes when its last user closes it.  ``names`` are dm names, top
    first.  Failures are logged, not raised: the caller forces.
    """
    done = []
    for name in names:
        if not os.path.exists(f"/dev/mapper/{name}"):
            continue
        try:
            _dmsetup("remove", "--force", "--deferred", name)
        except ReleaseError as e:
            log.warning("map %s: deferred removal failed: %s", name, e)
            continue
        done.append(name)
    if done:
        log.warning(
            "maps %s still in use: their I/O fails from now on and the "
            "kernel removes them when the last user closes them",
            ", ".join(done),
        )
    return done
