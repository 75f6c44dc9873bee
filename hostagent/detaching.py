"""The detach's guard and release steps, and its background retries.

- Before anything is torn down, :meth:`DetachGuard.check` looks for
  users of the device (:func:`hostagent.release.survey`): a running VM,
  a mount, a map that is not the volume's own.  It refuses with 932
  naming them, so a detach never pulls a disk from under a VM and never
  leaves a half-removed stack; with ``force`` it goes on, logged at
  warning with the holders.
- :meth:`DetachGuard.release` runs in the detach flow just before the
  disconnect: a multipath map without a usable path stops queueing (or
  any map, when forced), the volume's own partition maps are removed,
  and a map still held after a forced release is left to the kernel to
  remove when its last user closes it (deferred removal).
- :meth:`DetachGuard.retry` is one background attempt of a detach that
  failed (see :mod:`hostagent.retrier`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from hostagent import db, release
from hostagent.db import VolumeRecord
from hostagent.errors import VolumeInUse
from hostagent.release import Survey

if TYPE_CHECKING:
    from hostagent.volumes import VolumeService

log = logging.getLogger(__name__)

# After a forced release turned queueing off, a writer whose I/O now
# fails needs a moment to see the error and close the device.
HOLDER_GRACE = 5.0
HOLDER_POLL = 0.2


class DetachGuard:
    """Held-device check, release before disconnect, background retry."""

    def __init__(self, service: VolumeService) -> None:
        self.s = service

    def device_path(self, rec: VolumeRecord) -> str | None:
        """The device the volume's users open (the map, for multipath)."""
        path, _ = self.s.recorded_device(rec)
        return path

    async def survey(self, rec: VolumeRecord) -> Survey | None:
        """Who uses ``rec``'s device now (on a worker thread)."""
        return await self.s.in_worker(release.survey, self.device_path(rec))

    async def check(self, rec: VolumeRecord, force: bool) -> None:
        """Refuse (932) when the device is in use, unless ``force``."""
        survey = await self.survey(rec)
        if survey is None or not survey.busy:
            return
        holders = survey.describe()
        if not force:
            raise VolumeInUse(
                f"volume {rec.vol_id}: {survey.path} is in use ({holders}); "
                "nothing was detached. Stop its users and detach again, or "
                "detach with force (writes not yet flushed may be lost)",
                {
                    "vol_id": rec.vol_id,
                    "path": survey.path,
                    "holders": survey.as_data(),
                },
            )
        log.warning(
            "volume %s: forced detach of %s while in use (%s); writes not "
            "yet flushed may be lost",
            rec.vol_id,
            survey.path,
            holders,
            extra={"VOL_ID": rec.vol_id},
        )

    async def release(self, rec: VolumeRecord, force: bool) -> None:
        """Make the device removable before os-brick disconnects it."""
        _, mpath = self.s.recorded_device(rec)
        if mpath:
            await self.s.in_worker(
                lambda: release.stop_queueing(mpath, force=force)
            )
        survey = await self.survey(rec)
        if survey is None:
            return
        if force and survey.busy:
            survey = await self._wait_holders(rec, survey)
        if survey is not None and survey.busy:
            # Forced: a user that still holds a map keeps it until it
            # closes it; the kernel removes it then.
            names = [m.dm_name for m in survey.own_maps if m.dm_name]
            if mpath:
                names.append(mpath)
            await self.s.in_worker(release.remove_deferred, names)
            return
        if survey is not None and survey.own_maps:
            await self.s.in_worker(release.remove_maps, survey.own_maps)

    async def _wait_holders(
        self, rec: VolumeRecord, survey: Survey
    ) -> Survey | None:
        deadline = time.monotonic() + HOLDER_GRACE
        current: Survey | None = survey
        while current is not None and current.busy:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(HOLDER_POLL)
            current = await self.survey(rec)
        return current

    async def retry(self, vol_id: str) -> bool:
        """One background attempt; True when nothing is left to retry.

        Not forced: a device in use stays (the attempt fails with 932's
        words in ``last_error``) until its users are gone.
        """
        async with self.s.volume_lock(vol_id):
            rec = await self.s.record(vol_id)
            if rec is None or rec.state != db.DETACHING:
                return True
            await self.s.brick_ready()
            try:
                await self.check(rec, force=False)
            except VolumeInUse as e:
                await self.s.note_failure(vol_id, e.message)
                return False
            log.info(
                "volume %s: retrying its detach (attempt %d)",
                vol_id,
                rec.attempts + 1,
                extra={"VOL_ID": vol_id},
            )
            await self.s.teardown(rec, "detach", rec.last_error)
            self.s.events.gone(vol_id, rec.path)
            log.info(
                "detached volume %s on retry",
                vol_id,
                extra={"VOL_ID": vol_id},
            )
            return True
