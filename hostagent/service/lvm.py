"""The host's LVM and managed volumes, as the service uses it.

After an attach with a ``multipath_id`` the volume is dropped from the
host's LVM devices file (vdsm's ``_invalidate_lvm_devices``); a
failure there is logged, never an attach's failure: the volume is
attached and the VM can use it.  ``getCapabilities`` reports whether
the host's LVM keeps managed volumes out (:func:`hostagent.lvmcheck.status`).

LVM's own ``LVM_SYSTEM_DIR`` in the agent's environment says where its
config is, as it does for the lvm commands.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hostagent import lvmcheck
from hostagent.db import StoredVolume
from hostagent.redact import SCRUBBER
from hostagent.service.host import Host

log = logging.getLogger(__name__)

_MULTIPATH_ID = StoredVolume._fields.index("multipath_id")


def system_dir() -> str:
    """Where the host's LVM config is (``LVM_SYSTEM_DIR`` or /etc/lvm)."""
    return os.environ.get("LVM_SYSTEM_DIR") or lvmcheck.LVM_SYSTEM_DIR


async def after_attach(h: Host, vol_id: str, info: dict[str, Any]) -> None:
    """Keep the host's LVM off a new multipath volume (best effort)."""
    if not info.get("multipath_id"):
        return
    try:
        done = await h.in_worker(
            lvmcheck.invalidate_devices, info, system_dir()
        )
    except Exception as e:
        log.warning(
            "volume %s: cannot keep the host's LVM off its device: %s",
            vol_id,
            SCRUBBER.scrub(str(e)),
            extra={"VOL_ID": vol_id},
        )
        return
    log.debug("volume %s: LVM devices: %s", vol_id, done)


async def status(h: Host) -> dict[str, Any]:
    """:func:`hostagent.lvmcheck.status` for the volumes attached now."""
    rows = await h.in_db(h.db.stored)
    ids = [r[_MULTIPATH_ID] for r in rows if r[_MULTIPATH_ID]]
    return await h.in_worker(lvmcheck.status, system_dir(), ids)


def warn_later(h: Host) -> None:
    """:func:`warn_at_start` on a worker: start-up does not wait for it."""
    h.in_background(warn_at_start, "LVM check")


def warn_at_start() -> dict[str, Any]:
    """Log a warning when the host's LVM may scan managed volumes."""
    result = lvmcheck.status(system_dir())
    if not result.get("keeps_managed_volumes_out"):
        log.warning(
            "the host's LVM does not keep managed volumes out: %s; a "
            "guest's LVM on an attached volume may be scanned or "
            "activated by the host",
            result.get("why"),
        )
    return result
