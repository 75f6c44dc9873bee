"""A detach's guard and its release step (issue 19).

- :func:`check`, before anything is torn down: users of the device
  (:func:`hostagent.release.survey`: a running VM, a mount, a map that
  is not the volume's own) make the detach refuse with 932 naming them,
  so a detach never pulls a disk from under a VM and never leaves a
  half-removed stack.  With ``force`` it goes on, logged at warning
  with the holders.
- :func:`release`, the teardown step just before the disconnect: a
  multipath map with no usable path stops queueing (any map, when
  forced), so queued writes fail instead of holding the flush forever;
  the volume's own partition maps are removed; a map still held after a
  forced release fails its I/O and is left for the kernel to remove
  when its last user closes it (deferred removal).
"""

from __future__ import annotations

import asyncio
import logging
import time

from hostagent import release as device_release
from hostagent.db import VolumeRecord
from hostagent.errors import VolumeInUse
from hostagent.release import Survey
from hostagent.service import connection
from hostagent.service.connection import recorded_device
from hostagent.service.host import Host

log = logging.getLogger(__name__)

# After a forced release turned queueing off, a writer whose I/O now
# fails needs a moment to see the error and close the device.
HOLDER_GRACE = 5.0
HOLDER_POLL = 0.2


async def survey(h: Host, rec: VolumeRecord) -> Survey | None:
    """Who uses ``rec``'s device now (a /proc scan: on a worker)."""
    path, _ = recorded_device(rec)
    return await h.in_worker(device_release.survey, path)


async def check(h: Host, rec: VolumeRecord, force: bool) -> Survey | None:
    """Refuse (932) when the device is in use, unless ``force``.

    Returns the survey it made (None: none, or no device), for
    :func:`release` to use rather than scan /proc again: a scan is most
    of what a detach costs the agent (``make bench``: ``holders()``).
    """
    # A shared device is not disconnected: its users stay.  Asked on
    # the database thread while a worker surveys (the survey only
    # reads): one wait instead of two in a row.
    sharer, found = await asyncio.gather(
        h.in_db(connection.device_sharer, h.db, rec), survey(h, rec)
    )
    if sharer is not None:
        return None
    if found is None or not found.busy:
        return found
    holders = found.describe()
    if not force:
        raise VolumeInUse(
            f"volume {rec.vol_id}: {found.path} is in use ({holders}); "
            "nothing was detached. Stop its users and detach again, or "
            "detach with force (writes not yet flushed may be lost)",
            {
                "vol_id": rec.vol_id,
                "path": found.path,
                "holders": found.as_data(),
            },
        )
    log.warning(
        "volume %s: forced detach of %s while in use (%s); writes not "
        "yet flushed may be lost",
        rec.vol_id,
        found.path,
        holders,
        extra={"VOL_ID": rec.vol_id},
    )
    return found


async def release(
    h: Host, rec: VolumeRecord, force: bool, checked: Survey | None = None
) -> None:
    """Make the device removable before os-brick disconnects it.

    ``checked`` is what :func:`check` found: a device nobody used then
    is not surveyed again (its own partition maps are as they were);
    one in use (a forced detach) is, after queueing was turned off.
    """
    _, mpath = recorded_device(rec)
    if mpath:
        await h.in_worker(
            lambda: device_release.stop_queueing(mpath, force=force)
        )
    if checked is not None and not checked.busy:
        found: Survey | None = checked
    else:
        found = await survey(h, rec)
    if found is None:
        return
    if force and found.busy:
        found = await _wait_holders(h, rec, found)
    if found.busy:
        # Forced (a plain detach was refused by check()): a user that
        # still holds a map keeps it until it closes it.
        names = [m.dm_name for m in found.own_maps if m.dm_name]
        if mpath:
            names.append(mpath)
        await h.in_worker(device_release.remove_deferred, names)
    elif found.own_maps:
        await h.in_worker(device_release.remove_maps, found.own_maps)


async def _wait_holders(h: Host, rec: VolumeRecord, found: Survey) -> Survey:
    """``found`` again once its holders let go, or after the grace."""
    deadline = time.monotonic() + HOLDER_GRACE
    while found.busy and time.monotonic() < deadline:
        await asyncio.sleep(HOLDER_POLL)
        again = await survey(h, rec)
        if again is None:
            break
        found = again
    return found
