"""Start-up reconciliation: finish or roll back what a crash left.

Runs once, before the daemon listens, so no client ever sees a half-done
attach or detach:

* ``attaching`` rows are completed (``attached`` + symlink) when the
  recorded device is verifiably there, otherwise rolled back (disconnect
  with the recorded connection info, delete the row);
* ``detaching`` rows have their detach finished;
* a failed rollback or detach keeps the row ``detaching`` with
  ``last_error``, for a later ``detach_volume`` to retry; a row deleted
  lets go of its secrets in the scrubber;
* managed symlinks without a row are removed; those of ``attached`` rows
  are created or pointed back at the row's path;
* ``attached`` rows whose device is gone stay (``exists: false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from hostagent import db
from hostagent.db import VolumeRecord
from hostagent.errors import AgentError, VolumeBusy
from hostagent.flow import Flow, Step
from hostagent.redact import SCRUBBER

if TYPE_CHECKING:
    from hostagent.volumes import VolumeService

log = logging.getLogger(__name__)


class Reconciler:
    """One start-up pass over the volume records of a service."""

    def __init__(self, service: VolumeService) -> None:
        self.s = service

    async def run(self) -> dict[str, int]:
        """Reconcile every record (see the module); counts by decision.

        os-brick is waited for only when a row needs it, so a clean
        database does not delay start-up.
        """
        started = time.monotonic()
        stats: dict[str, int] = {}
        records = await self.s.in_db(self.s.db.list)
        await self.s.in_worker(self._links, records, stats)
        attached = [r for r in records if r.state == db.ATTACHED]
        present = await self.s.in_worker(
            self.s.udev.exists_many,
            [(r.path, r.multipath_id) for r in attached],
        )
        for rec, ok in zip(attached, present, strict=True):
            if not ok:
                _count(stats, "device_missing")
                log.warning(
                    "reconcile: volume %s is attached but its device %s is "
                    "missing; keeping the record (exists: false)",
                    rec.vol_id,
                    rec.path,
                    extra={"VOL_ID": rec.vol_id},
                )
        unfinished = [r for r in records if r.state != db.ATTACHED]
        if unfinished:
            try:
                await self.s.brick_ready()
            except AgentError as e:
                await self._without_brick(unfinished, e, stats)
            else:
                outcomes = await asyncio.gather(
                    *(self._one(r) for r in unfinished),
                    return_exceptions=True,
                )
                for rec, outcome in zip(unfinished, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        _count(stats, "failed")
                        log.error(
                            "reconcile: volume %s: unexpected error",
                            rec.vol_id,
                            exc_info=outcome,
                        )
                    else:
                        _count(stats, outcome)
        log.info(
            "reconciled %d volume record(s) in %.3f s: %s",
            len(records),
            time.monotonic() - started,
            ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
            or "nothing to do",
        )
        return stats

    def _links(
        self, records: list[VolumeRecord], stats: dict[str, int]
    ) -> None:
        """Make ``run_dir/volumes`` match the rows (on a worker thread)."""
        rows = {r.vol_id: r for r in records}
        seen: set[str] = set()
        with os.scandir(self.s.volumes_dir) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name.endswith(".tmp"):
                    # make_link's temporary name: a crash between symlink
                    # and rename left it.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    continue
                if not entry.is_symlink():
                    log.warning(
                        "reconcile: %s is not a symlink; leaving it alone",
                        entry.path,
                    )
                    continue
                seen.add(name)
                target = os.readlink(entry.path)
                rec = rows.get(name)
                if rec is None:
                    os.unlink(entry.path)
                    _count(stats, "link_removed")
                    log.info(
                        "reconcile: removed symlink %s -> %s: no volume "
                        "record",
                        entry.path,
                        target,
                    )
                elif (
                    rec.state == db.ATTACHED
                    and rec.path
                    and target != rec.path
                ):
                    self.s.make_link(name, rec.path)
                    _count(stats, "link_repaired")
                    log.warning(
                        "reconcile: symlink %s pointed to %s, not to volume "
                        "%s's device %s; repaired",
                        entry.path,
                        target,
                        name,
                        rec.path,
                        extra={"VOL_ID": name},
                    )
        for rec in records:
            if (
                rec.state == db.ATTACHED
                and rec.path
                and rec.vol_id not in seen
            ):
                # /run is a tmpfs: a reboot or a crash before the link
                # step leaves an attached volume without its link.
                self.s.make_link(rec.vol_id, rec.path)
                _count(stats, "link_created")
                log.info(
                    "reconcile: created symlink for attached volume %s -> %s",
                    rec.vol_id,
                    rec.path,
                    extra={"VOL_ID": rec.vol_id},
                )

    async def _without_brick(
        self,
        records: list[VolumeRecord],
        error: AgentError,
        stats: dict[str, int],
    ) -> None:
        """Keep rows that need os-brick, saying why they were not done."""
        for rec in records:
            message = (
                f"interrupted {rec.state[:-3]} not finished at start-up: "
                f"{error.message} ({error.data}); run detach_volume once "
                "os-brick works"
            )
            await self.s.in_db(
                self.s.db.set_state, rec.vol_id, db.DETACHING, message
            )
            _count(stats, "failed")
            log.error(
                "reconcile: volume %s: %s",
                rec.vol_id,
                message,
                extra={"VOL_ID": rec.vol_id},
            )

    async def _one(self, rec: VolumeRecord) -> str:
        """Complete, roll back or finish one row; the decision taken."""
        vol_id = rec.vol_id
        note: str | None
        async with self.s.volume_lock(vol_id):
            if rec.state == db.ATTACHING:
                path, why = await self._completable(rec)
                if path is not None:
                    log.info(
                        "reconcile: volume %s was attaching and its device "
                        "%s is there: completing the attach",
                        vol_id,
                        path,
                        extra={"VOL_ID": vol_id},
                    )
                    try:
                        await self._complete(rec, path)
                    except Exception as e:
                        why = SCRUBBER.scrub(f"completing it failed: {e}")
                    else:
                        return "completed"
                log.info(
                    "reconcile: volume %s was attaching (%s): rolling back",
                    vol_id,
                    why,
                    extra={"VOL_ID": vol_id},
                )
                note = f"attach interrupted by a restart ({why}); rolling back"
                context = "rolling back an attach interrupted by a restart"
                decision = "rolled_back"
            else:
                log.info(
                    "reconcile: volume %s was detaching: finishing the detach",
                    vol_id,
                    extra={"VOL_ID": vol_id},
                )
                note = rec.last_error
                context = "finishing an unfinished detach at start-up"
                decision = "finished_detach"
            try:
                await self.s.teardown(rec, "reconcile", note, context)
            except Exception:
                return "failed"
            # The row is gone: open() had the scrubber hold its secrets,
            # and nothing else would let go of them (VolumeService.
            # keep_secrets does this after an attach or a detach).
            SCRUBBER.release(vol_id)
            log.info(
                "reconcile: volume %s: %s",
                vol_id,
                decision.replace("_", " "),
                extra={"VOL_ID": vol_id},
            )
            return decision

    async def _completable(self, rec: VolumeRecord) -> tuple[str | None, str]:
        """The path if an ``attaching`` row can be completed, else why not."""
        driver = str(rec.connection_info["driver_volume_type"])
        info = rec.attachment
        if info is None:
            return None, "os-brick had not returned the device"
        if driver not in self.s.config.brick.drivers:
            return None, f"driver {driver} is no longer allowed"
        mpath = info.get("multipath_id") or None
        if (
            self.s.config.brick.enforce_multipath
            and self.s.brick.uses_multipath(driver)
            and not mpath
        ):
            return None, "multipath is enforced and there is no multipath id"
        path = self.s.device_path(driver, info)
        if not path:
            return None, "os-brick returned no device path"
        owner = await self.s.in_db(
            self.s.db.find_device_owner, mpath, path, rec.vol_id
        )
        if owner is not None:
            return None, f"device {path} is volume {owner}'s"
        if not await self.s.in_worker(self.s.udev.exists, path, mpath):
            return None, f"device {path} is not there"
        return path, ""

    async def _complete(self, rec: VolumeRecord, path: str) -> None:
        """Record an interrupted attach as done and link it."""
        await Flow("reconcile", self.s.failpoints, f"volume {rec.vol_id}").run(
            self.completion_steps(rec, path)
        )

    def completion_steps(self, rec: VolumeRecord, path: str) -> list[Step]:
        """attached -> link, for an ``attaching`` row whose device is there.

        (A teardown at start-up runs the detach flow's steps, as
        ``reconcile``.)
        """
        assert rec.attachment is not None
        attachment = rec.attachment

        async def attached() -> None:
            owner = await self.s.in_db(
                self.s.db.set_attached,
                rec.vol_id,
                path,
                attachment,
                attachment.get("multipath_id") or None,
            )
            if owner is not None:
                raise VolumeBusy(
                    f"device {path} is volume {owner}'s",
                    {"vol_id": rec.vol_id, "attached_as": owner},
                )

        async def link() -> None:
            await self.s.in_worker(self.s.make_link, rec.vol_id, path)

        return [Step("attached", attached), Step("link", link)]


def _count(stats: dict[str, int], key: str) -> None:
    stats[key] = stats.get(key, 0) + 1
