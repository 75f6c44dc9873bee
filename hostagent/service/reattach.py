"""A second attach of a recorded volume (the case vdsm issue 433 is about).

With the same connection info it returns the existing attachment only
while the recorded device is live (:func:`live`); otherwise (a reboot,
a fence, a logout) the service attaches it again over its row, which
:func:`again` prepares and :func:`note_failure` ends when that fails.
With other connection info, backend or sd_id, or on a row that is not
``attached``, it is refused (:func:`.matching.check_reattach`).
"""

from __future__ import annotations

import logging

from hostagent import db
from hostagent.db import VolumeRecord
from hostagent.errors import AgentError
from hostagent.redact import SCRUBBER
from hostagent.service import identity
from hostagent.service.device import exists
from hostagent.service.host import Host

log = logging.getLogger(__name__)


async def live(h: Host, rec: VolumeRecord) -> bool:
    """Whether an attached row's device is still the one recorded.

    There with media (and its dm device with a path under it, for
    multipath), the same device by identity, and recorded in this
    boot: after a reboot a device number may name another disk.  Rows
    of older versions recorded neither identity nor boot.
    """
    if not rec.path:
        return False
    if rec.boot_id is not None and rec.boot_id != identity.boot_id():
        return False
    if not await exists(h, rec.path, rec.multipath_id):
        return False
    if rec.multipath_id and not identity.dm_has_paths(rec.path):
        return False
    return rec.device_key is None or (
        identity.device_key(rec.path) == rec.device_key
    )


async def existing(h: Host, rec: VolumeRecord) -> str:
    """The live attachment's path, its link made again.

    A ``last_error`` left by a failed re-attach is cleared: the device
    is back, and the answer is success.
    """
    assert rec.path is not None
    if rec.last_error is not None:
        await h.in_db(h.db.set_state, rec.vol_id, db.ATTACHED, None)
    # The symlink lives on tmpfs; a reboot without a detach loses it.
    h.links.make(rec.vol_id, rec.path, rec.sd_id)
    log.info("volume %s already attached; returning it", rec.vol_id)
    return rec.path


def again(h: Host, rec: VolumeRecord) -> None:
    """Before attaching ``rec`` again: no link to its missing device.

    Nothing points a VM at it while the attach runs, nor after it
    failed.
    """
    log.warning(
        "volume %s: its recorded device %s is gone or from an earlier "
        "boot (%s); attaching it again",
        rec.vol_id,
        rec.path,
        rec.boot_id or "boot unknown",
        extra={"VOL_ID": rec.vol_id},
    )
    h.links.remove(rec.vol_id, rec.sd_id)


async def note_failure(h: Host, vol_id: str, e: Exception) -> None:
    """Keep why the attach again failed in the row's ``last_error``.

    The row stays ``attached`` (its device missing) so that the next
    re-attach tries again and ``volumes_info`` tells the engine; a
    failed clean-up already left it ``detaching`` with its own note.
    """
    message = SCRUBBER.scrub(
        "re-attach failed: "
        + (e.message if isinstance(e, AgentError) else str(e))
    )
    try:
        rec = await h.in_db(h.db.get, vol_id)
        if rec is not None and rec.state == db.ATTACHED:
            await h.in_db(h.db.set_state, vol_id, db.ATTACHED, message)
    except AgentError as db_error:
        log.error(
            "volume %s: cannot record why its re-attach failed: %s",
            vol_id,
            db_error.message,
            extra={"VOL_ID": vol_id},
        )
