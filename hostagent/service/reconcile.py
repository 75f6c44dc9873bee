"""Start-up reconciliation: finish or roll back what a crash left.

Runs once, before the daemon listens, so no client ever sees a half-done
attach or detach:

* ``attaching`` rows are completed (``attached`` + symlink, the same
  steps as a live attach's tail) when the recorded device is verifiably
  there and passes the checks a live attach makes (the driver allowed,
  multipath as ``[brick]`` or the volume's backend enforces it),
  otherwise rolled back (disconnect with the recorded connection info,
  delete the row);
* ``detaching`` rows have their detach finished;
* a failed rollback or detach keeps the row ``detaching`` with
  ``last_error``, for a later ``detach_volume`` to retry; a row deleted
  lets go of its secrets in the scrubber;
* managed symlinks without a row are removed; those of ``attached`` rows
  are created or pointed back at the row's path;
* ``attached`` rows whose device is gone stay (``exists: false``),
  without a link: a link never points at a missing device; a re-attach
  attaches them again.

It depends on the steps and the :class:`~.host.Host`, not on the
service that serves requests.
"""

from __future__ import annotations

import asyncio
import logging
import time

from hostagent import db
from hostagent.db import VolumeRecord
from hostagent.errors import AgentError
from hostagent.redact import SCRUBBER
from hostagent.service import identity, lvm, secrecy, steps
from hostagent.service.backends import record_backend
from hostagent.service.device import device_path, unusable
from hostagent.service.flow import Flow, Step
from hostagent.service.host import Host

log = logging.getLogger(__name__)


class Reconciler:
    """One start-up pass over the volume records."""

    def __init__(self, host: Host) -> None:
        self.h = host
        self.stats: dict[str, int] = {}

    def count(self, key: str) -> None:
        """Add one to the decision ``key``."""
        self.stats[key] = self.stats.get(key, 0) + 1

    async def run(self) -> dict[str, int]:
        """Reconcile every record (see the module); counts by decision.

        os-brick is waited for only when a row needs it, so a clean
        database does not delay start-up.
        """
        h = self.h
        started = time.monotonic()
        # Only the unfinished rows are decoded: 10,000 decoded rows
        # would cost some 30 MB that the process then keeps.
        records = await h.in_db(h.db.summaries)
        attached = [r for r in records if r.state == db.ATTACHED]
        present = await h.in_worker(
            h.udev.exists_many,
            [(r.path, r.multipath_id) for r in attached],
        )
        missing = {
            r.vol_id for r, ok in zip(attached, present, strict=True) if not ok
        }
        h.links.repair(records, self.count, missing)
        for rec, ok in zip(attached, present, strict=True):
            if not ok:
                self.count("device_missing")
                log.warning(
                    "reconcile: volume %s is attached but its device %s is "
                    "missing; keeping the record (exists: false)",
                    rec.vol_id,
                    rec.path,
                    extra={"VOL_ID": rec.vol_id},
                )
        unfinished_ids = [r.vol_id for r in records if r.state != db.ATTACHED]
        if unfinished_ids:
            unfinished = await h.in_db(h.db.list, unfinished_ids)
            try:
                await h.brick_ready()
            except AgentError as e:
                await self._without_brick(unfinished, e)
            else:
                await self._all(unfinished)
        log.info(
            "reconciled %d volume record(s) in %.3f s: %s",
            len(records),
            time.monotonic() - started,
            ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items()))
            or "nothing to do",
        )
        return self.stats

    async def _all(self, records: list[VolumeRecord]) -> None:
        outcomes = await asyncio.gather(
            *(self._one(r) for r in records), return_exceptions=True
        )
        for rec, outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.count("failed")
                log.error(
                    "reconcile: volume %s: unexpected error",
                    rec.vol_id,
                    exc_info=outcome,
                )
            else:
                self.count(outcome)

    async def _without_brick(
        self, records: list[VolumeRecord], error: AgentError
    ) -> None:
        """Keep rows that need os-brick, saying why they were not done."""
        for rec in records:
            message = (
                f"interrupted {rec.state[:-3]} not finished at start-up: "
                f"{error.message} ({error.data}); run detach_volume once "
                "os-brick works"
            )
            await self.h.in_db(
                self.h.db.set_state, rec.vol_id, db.DETACHING, message
            )
            self.count("failed")
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
        async with self.h.locks.hold(vol_id):
            if rec.state == db.ATTACHING:
                why = await self._try_completing(rec)
                if why is None:
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
                await steps.teardown(self.h, rec, "reconcile", note, context)
            except Exception:
                return "failed"
            # The row is gone: open() had the scrubber hold its secrets.
            secrecy.forgotten(vol_id)
            log.info(
                "reconcile: volume %s: %s",
                vol_id,
                decision.replace("_", " "),
                extra={"VOL_ID": vol_id},
            )
            return decision

    async def _try_completing(self, rec: VolumeRecord) -> str | None:
        """Complete an ``attaching`` row if it can be; else why not."""
        path, why = await self._completable(rec)
        if path is None:
            return why
        log.info(
            "reconcile: volume %s was attaching and its device %s is "
            "there: completing the attach",
            rec.vol_id,
            path,
            extra={"VOL_ID": rec.vol_id},
        )
        try:
            await Flow(
                "reconcile", self.h.failpoints, f"volume {rec.vol_id}"
            ).run(completion_steps(self.h, rec, path))
        except Exception as e:
            return SCRUBBER.scrub(f"completing it failed: {e}")
        assert rec.attachment is not None
        await lvm.after_attach(self.h, rec.vol_id, rec.attachment)
        return None

    async def _completable(self, rec: VolumeRecord) -> tuple[str | None, str]:
        """The path if an ``attaching`` row can be completed, else why not.

        The checks of a live attach, with the options it was made with.
        """
        h = self.h
        driver = str(rec.connection_info["driver_volume_type"])
        info = rec.attachment
        if info is None:
            return None, "os-brick had not returned the device"
        if driver not in h.config.brick.drivers:
            return None, f"driver {driver} is no longer allowed"
        problem = unusable(h, driver, info, record_backend(h.config, rec))
        if problem is not None:
            return None, problem.message
        mpath = info.get("multipath_id") or None
        path = device_path(driver, info)
        if not await h.in_worker(h.udev.exists, path, mpath):
            return None, f"device {path} is not there"
        owner = await h.in_db(
            h.db.find_device_owner,
            mpath,
            path,
            rec.vol_id,
            identity.device_key(path),
        )
        if owner is not None:
            return None, f"device {path} is volume {owner}'s"
        return path, ""


def completion_steps(h: Host, rec: VolumeRecord, path: str) -> list[Step]:
    """attached -> link, for an ``attaching`` row whose device is there.

    The tail of a live attach (:func:`~.steps.attached_steps`).  A
    teardown at start-up runs the detach flow's steps, as ``reconcile``.
    """
    attachment = rec.attachment
    return steps.attached_steps(
        h, rec.vol_id, lambda: (path, attachment), rec.sd_id
    )
