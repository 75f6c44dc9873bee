"""One background retry of a failed detach (see :mod:`.retrier`)."""

from __future__ import annotations

import logging

from hostagent import db
from hostagent.errors import VolumeInUse
from hostagent.events import Events
from hostagent.service import detaching, secrecy, steps
from hostagent.service.host import Host

log = logging.getLogger(__name__)


async def retry_detach(h: Host, events: Events, vol_id: str) -> bool:
    """Detach ``vol_id`` again if its row is still ``detaching``.

    True when nothing is left to retry (done, or the row is gone or no
    longer ``detaching``); raises when the detach failed again (the
    teardown recorded the failure), False when the device is in use.
    Never forced: a device in use stays until its users are gone, and
    ``last_error`` names them.  When the volume is finally off the
    host, subscribers get ``ManagedVolume.changed`` with ``detached``.
    """
    async with h.locks.hold(vol_id):
        rec = await h.record(vol_id)
        if rec is None or rec.state != db.DETACHING:
            return True
        await h.brick_ready()
        log.info(
            "volume %s: retrying its detach (attempt %d)",
            vol_id,
            rec.attempts + 1,
            extra={"VOL_ID": vol_id},
        )
        try:
            checked = await detaching.check(h, rec, force=False)
        except VolumeInUse as e:
            await h.note_failure(vol_id, e.message)
            return False
        await steps.teardown(h, rec, "detach", rec.last_error, checked=checked)
        # The row is gone: nobody calls keep_secrets for a retry.
        secrecy.forgotten(vol_id)
        events.gone(vol_id, rec.path)
        log.info(
            "detached volume %s on retry", vol_id, extra={"VOL_ID": vol_id}
        )
        return True
